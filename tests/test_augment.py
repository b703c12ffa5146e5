import torch

from pneumonia.data.augment import BatchAugment
from pneumonia.data.datamodule import ChestXrayDataModule


def batch(n=16, c=1, s=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, c, s, s, generator=g)


def test_augmentation_keeps_shape_dtype_and_range():
    x = batch()
    aug = BatchAugment(shear=10, zoom=0.2, hflip=True, rotation=10, translate=0.1, brightness=0.1, contrast=0.2)
    y = aug(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(x, y)


def test_disabled_augmentation_is_identity():
    x = batch()
    aug = BatchAugment(shear=0, zoom=0, hflip=False)
    assert torch.equal(aug(x), x)


def test_flip_only_mirrors_some_images_exactly():
    x = batch(64)
    y = BatchAugment(shear=0, zoom=0, hflip=True)(x, torch.Generator().manual_seed(3))
    flipped = [torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(64)]
    same = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(64)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 16 < sum(flipped) < 48  # about half, as per-image flips with p=0.5


def test_each_image_gets_its_own_parameters():
    x = batch(8).mean(0, keepdim=True).expand(8, -1, -1, -1).contiguous()  # 8 copies of one image
    y = BatchAugment(shear=0.2, zoom=0.2, hflip=False)(x, torch.Generator().manual_seed(0))
    assert len({round(float(v), 5) for v in y.flatten(1).sum(1)}) == 8


def test_same_generator_seed_gives_same_augmentation():
    x = batch()
    aug = BatchAugment()
    assert torch.equal(aug(x, torch.Generator().manual_seed(5)), aug(x, torch.Generator().manual_seed(5)))


def test_datamodule_hook_preserves_labels_and_scales_to_unit_range(xray_root, tmp_path):
    dm = ChestXrayDataModule(
        root=str(xray_root), image_size=32, batch_size=8, val_fraction=0.25, cache_dir=str(tmp_path)
    )
    dm.setup("fit")
    images, labels, idx = next(iter(dm.train_dataloader()))

    class FakeTrainer:
        training, current_epoch, global_rank, world_size = True, 0, 0, 1

    dm.trainer = FakeTrainer()
    x, y, i = dm.on_after_batch_transfer((images, labels, idx), 0)
    assert x.dtype == torch.float32 and x.shape == images.shape
    assert torch.equal(y, labels) and torch.equal(i, idx)
    assert 0 <= x.min() and x.max() <= 1
