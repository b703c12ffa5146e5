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


def _plain(**kw):
    return BatchAugment(shear=0, zoom=0, hflip=False, **kw)


def _chests(n=16, size=64):
    """A bright disc on a darker ground with a smooth gradient: no black corners, no text."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    base = 0.35 + 0.4 * ((xx**2 + yy**2) < 0.5).float() + 0.1 * yy
    return base.expand(n, 1, size, size).clone()


def test_acquisition_changes_a_share_of_images_and_keeps_the_range():
    x = _chests(64)
    out = _plain(acquisition=0.5)(x, torch.Generator().manual_seed(0))
    changed = (out - x).abs().flatten(1).amax(1) > 1e-4
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert 16 <= int(changed.sum()) <= 48  # about half of 64, never all or none
    again = _plain(acquisition=0.5)(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the generator decides everything
    assert torch.equal(_plain(acquisition=0.0)(x, torch.Generator().manual_seed(0)), x)


def test_overlay_burns_in_white_text_and_black_bands():
    x = _chests(32)
    out = _plain(overlay=1.0)(x, torch.Generator().manual_seed(1))
    white = (out >= 0.999).flatten(1).sum(1)
    black = (out <= 0.001).flatten(1).sum(1)
    assert (white > 0).all() and (black > 0).all()  # probability 1: every image gets both
    assert (x >= 0.999).sum() == 0 and (x <= 0.001).sum() == 0
    # the text sits in a corner: the centre of every image is untouched unless a band covers it
    assert torch.equal(out[:, :, 24:40, 24:40], x[:, :, 24:40, 24:40])
    half = _plain(overlay=0.3)(x, torch.Generator().manual_seed(1))
    assert 0 < int(((half - x).abs().flatten(1).amax(1) > 0).sum()) < 32


def test_overlay_text_is_not_the_stress_marker_letters():
    from pneumonia.data.augment import OVERLAY_TEXT

    assert "R" not in OVERLAY_TEXT and "L" not in OVERLAY_TEXT


def test_new_augmentations_refuse_a_share_outside_0_1():
    import pytest

    from pneumonia.errors import ConfigError

    for key in ("acquisition", "overlay"):
        with pytest.raises(ConfigError, match=f"{key}=1.5 must be a number >= 0 and <= 1"):
            BatchAugment(**{key: 1.5})


def test_frame_shrinks_a_share_of_images_onto_black():
    x = _chests(32)
    out = _plain(frame=0.5)(x, torch.Generator().manual_seed(2))
    black = (out <= 1e-6).flatten(1).float().mean(1)
    framed = black > 0
    assert 4 <= int(framed.sum()) <= 28 and torch.equal(out[~framed], x[~framed])
    assert float(black.max()) <= 1 - 0.7**2 + 0.05  # shrunk to at least 0.7 of the side
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, _plain(frame=0.5)(x, torch.Generator().manual_seed(2)))
