"""Grad-CAM: sanity checks after Adebayo et al., "Sanity Checks for Saliency Maps" (2018),
on a tiny CNN trained in-process on a synthetic task whose evidence lies in a known place;
plus the sign convention, the API contract and the figures.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia.models.custom_cnn import CustomCNN

SIZE = 48
CENTRE = (14, 34)  # (row, col) of the blob that makes an image "pneumonia"
SIGMA = 4.0
RADIUS = 10  # the known region: a disc of this radius around CENTRE
NET_KW = dict(
    depth=3, widths=[8, 16, 32], in_channels=1, image_size=SIZE, dense_units=32, batch_norm=True, dilated_blocks=[]
)


def make_images(n: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n gray 1x48x48 images of noise around 0.4; label 1 ones carry a bright blob at CENTRE."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 2).float()[torch.randperm(n, generator=g)]
    x = 0.4 + 0.1 * torch.randn(n, 1, SIZE, SIZE, generator=g)
    rows, cols = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    blob = torch.exp(-((rows - CENTRE[0]) ** 2 + (cols - CENTRE[1]) ** 2) / (2 * SIGMA**2))
    amplitude = 0.3 + 0.2 * torch.rand(n, generator=g)  # 0.3..0.5 above the background
    x = x + (labels * amplitude)[:, None, None, None] * blob
    return x.clamp(0.0, 1.0), labels


def region_mask() -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    return ((rows - CENTRE[0]) ** 2 + (cols - CENTRE[1]) ** 2) <= RADIUS**2


def rankdata(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their ranks), like scipy.stats.rankdata.

    Plain argsort-of-argsort ranks would break ties by pixel index; Grad-CAM maps have large
    tied regions (ReLU zeros), and index-ordered ties in both maps would correlate by themselves.
    """
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    new_group = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    starts = np.flatnonzero(new_group)
    counts = np.diff(np.r_[starts, a.size])
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = np.repeat(starts + (counts - 1) / 2.0, counts)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps (0 when either is constant)."""
    ra, rb = rankdata(a.flatten().numpy()), rankdata(b.flatten().numpy())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


@pytest.fixture(scope="module")
def trained(one_thread):
    """A small CustomCNN trained (plain torch, seeded) until it separates the two classes."""
    torch.manual_seed(0)
    x, y = make_images(320, seed=1)
    net = CustomCNN(**NET_KW)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(2)
    train_acc = 0.0
    for _epoch in range(8):  # 3 epochs reach 1.0 when written
        net.train()
        for idx in torch.randperm(len(x), generator=g).split(16):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            train_acc = ((net(x) > 0).float() == y).float().mean().item()
        if train_acc >= 0.99:
            break
    opt.zero_grad(set_to_none=True)
    net.eval()
    x_test, y_test = make_images(128, seed=3)
    with torch.no_grad():
        test_acc = ((net(x_test) > 0).float() == y_test).float().mean().item()
    return net, train_acc, test_acc, x_test, y_test


@pytest.mark.slow
def test_the_model_learned_the_task(trained):
    _, train_acc, test_acc, _, _ = trained
    assert train_acc > 0.95, train_acc
    assert test_acc > 0.95, test_acc


def test_maps_put_their_mass_on_the_evidence(trained):
    from pneumonia.explain.gradcam import gradcam

    net, _, _, x_test, y_test = trained
    positives = x_test[y_test == 1][:16]
    maps, probs = gradcam(net, positives)
    assert (probs >= 0.5).float().mean() > 0.9
    mask = region_mask()
    area_fraction = mask.float().mean().item()
    assert 0.1 < area_fraction < 0.2  # ~0.14
    mass = maps.sum(dim=(1, 2))
    inside = (maps * mask).sum(dim=(1, 2)) / mass.clamp_min(1e-12)
    assert (mass > 0).all()
    assert inside.mean() > 0.5, inside
    assert (inside > 2 * area_fraction).float().mean() >= 0.8, inside
    # the peak of the map lies in the known region for most images
    peaks = maps.flatten(1).argmax(dim=1)
    assert mask.flatten()[peaks].float().mean() >= 0.8


def test_model_randomisation_changes_the_maps(trained):
    """Adebayo et al.'s cascading test, in its extreme form: all weights re-initialised."""
    from pneumonia.explain.gradcam import gradcam

    net, _, _, x_test, y_test = trained
    images = x_test[y_test == 1][:12]
    maps, _ = gradcam(net, images, explain="pneumonia")
    again, _ = gradcam(net, images, explain="pneumonia")
    same = [spearman(a, b) for a, b in zip(maps, again)]
    assert min(same) > 0.999  # the computation itself is deterministic

    # three re-initialised nets: one random net's maps can correlate by chance (border and
    # padding structure); the mean over several is near 0 (0.01 over 20 seeds when written)
    randomised, inside = [], []
    mask = region_mask()
    for seed in (101, 102, 103):
        torch.manual_seed(seed)
        random_net = CustomCNN(**NET_KW).eval()
        random_maps, _ = gradcam(random_net, images, explain="pneumonia")
        randomised += [spearman(a, b) for a, b in zip(maps, random_maps)]
        inside.append((random_maps * mask).sum(dim=(1, 2)) / random_maps.sum(dim=(1, 2)).clamp_min(1e-12))
    assert float(np.mean(randomised)) < 0.4, randomised
    assert float(np.mean(same)) - float(np.mean(randomised)) > 0.5
    # and the randomised nets' maps do not find the evidence
    assert torch.cat(inside).mean() < 0.4


def test_sign_convention_for_normal_images(trained):
    from pneumonia.explain.gradcam import gradcam

    net, _, _, x_test, y_test = trained
    _, probs_all = gradcam(net, x_test)
    normal = x_test[(y_test == 0) & (probs_all < 0.1)][:8]
    assert len(normal) >= 4
    predicted, probs = gradcam(net, normal)  # evidence for NORMAL: the Grad-CAM of -logit
    pneumonia, probs2 = gradcam(net, normal, explain="pneumonia")
    torch.testing.assert_close(probs, probs2)
    for maps in (predicted, pneumonia):
        assert maps.shape == (len(normal), SIZE, SIZE)
        assert maps.dtype == torch.float32
        assert torch.isfinite(maps).all()
        assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert predicted.amax(dim=(1, 2)).max() == pytest.approx(1.0)
    assert (predicted - pneumonia).abs().mean() > 0.05
    # ReLU(w.A) and ReLU(-w.A) have disjoint supports at layer resolution, so after upsampling
    # they barely overlap
    overlap = (predicted.clamp_max(pneumonia)).sum() / predicted.sum().clamp_min(1e-12)
    assert overlap < 0.2

    # for images predicted PNEUMONIA both modes are the same map
    positives = x_test[(y_test == 1) & (probs_all > 0.9)][:6]
    a, _ = gradcam(net, positives)
    b, _ = gradcam(net, positives, explain="pneumonia")
    torch.testing.assert_close(a, b)


def test_threshold_decides_the_sign(trained):
    from pneumonia.explain.gradcam import gradcam

    net, _, _, x_test, _ = trained
    x = x_test[:8]
    as_pneumonia, probs = gradcam(net, x, explain="pneumonia")
    everything_pneumonia, _ = gradcam(net, x, threshold=0.0)  # every image predicted PNEUMONIA
    torch.testing.assert_close(everything_pneumonia, as_pneumonia)
    nothing_pneumonia, _ = gradcam(net, x, threshold=1.01)  # every image predicted NORMAL
    assert not torch.allclose(nothing_pneumonia, as_pneumonia)
    # decisions made elsewhere (a Predictor under bf16) win over this pass' own threshold
    given, _ = gradcam(net, x, threshold=1.01, decisions=torch.ones(8, dtype=torch.long))
    torch.testing.assert_close(given, as_pneumonia)


def test_contract_modes_grads_channels_last_and_no_grad(trained):
    from pneumonia.explain.gradcam import default_layer, gradcam

    net, _, _, x_test, _ = trained
    x = x_test[:5]
    assert default_layer(net) is net.features[-1][-2]  # last ReLU of the last block, before the pool
    assert isinstance(default_layer(net), torch.nn.ReLU)

    reference, probs = gradcam(net, x)
    with torch.no_grad():
        torch.testing.assert_close(probs, torch.sigmoid(net(x)))

    fresh = CustomCNN(**NET_KW)
    fresh.load_state_dict(net.state_dict())
    fresh.train()
    fresh.head[3].eval()  # a mixed state must come back as it was
    before = {name: m.training for name, m in fresh.named_modules()}
    maps, _ = gradcam(fresh, x)
    assert {name: m.training for name, m in fresh.named_modules()} == before
    assert all(p.grad is None for p in fresh.parameters())
    torch.testing.assert_close(maps, reference)  # computed in eval mode: dropout off, BN running stats

    cl_net = fresh.to(memory_format=torch.channels_last)
    cl_x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        cl_maps, cl_probs = gradcam(cl_net, cl_x)
    torch.testing.assert_close(cl_maps, reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cl_probs, probs, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        im_maps, _ = gradcam(net, x)
    torch.testing.assert_close(im_maps, reference)

    # an all-zero map stays zero, not NaN
    zero_net = CustomCNN(**NET_KW).eval()
    with torch.no_grad():
        for p in zero_net.parameters():
            p.zero_()
    zero_maps, _ = gradcam(zero_net, x)
    assert torch.equal(zero_maps, torch.zeros_like(zero_maps))

    with pytest.raises(ValueError):
        gradcam(net, x, explain="normal")


def count_red(path) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 180) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())


@pytest.mark.slow
def test_figures(trained, tmp_path):
    from pneumonia.explain.figures import caption, save_gallery, save_overlay
    from pneumonia.explain.gradcam import gradcam

    net, _, _, x_test, y_test = trained
    x, y = x_test[:6], y_test[:6]
    maps, probs = gradcam(net, x)

    assert caption(0.87, 0.34) == ("P(pneumonia) = 0.87, threshold 0.34 \u2192 PNEUMONIA (map: evidence for PNEUMONIA)")
    assert caption(0.2, 0.34).endswith("NORMAL (map: evidence for NORMAL)")
    assert caption(0.2, 0.34, explain="pneumonia").endswith("NORMAL (map: evidence for PNEUMONIA)")

    # cam at layer size (12x12) over a uint8 3-channel image of another size: resized to the image
    image = (x[0].expand(3, -1, -1) * 255).to(torch.uint8)
    small_cam = torch.nn.functional.interpolate(maps[:1, None], size=(12, 12), mode="bilinear")[0, 0]
    out = save_overlay(
        tmp_path / "overlay.png", image, small_cam, probability=float(probs[0]), threshold=0.34, title="synthetic_0.png"
    )
    assert out.stat().st_size > 2048
    with Image.open(out) as im:
        assert im.size == (400, 440)

    predictions = (probs >= 0.5).long()
    assert torch.equal(predictions, y.long())  # all correct on these
    items = [
        dict(
            image=x[i],
            cam=maps[i],
            probability=float(probs[i]),
            prediction=int(predictions[i]),
            label=int(y[i]),
            title=f"img_{i}.jpeg",
        )
        for i in range(6)
    ]
    right = save_gallery(tmp_path / "right.png", items, columns=3)
    items[1]["prediction"] = 1 - items[1]["prediction"]
    wrong = save_gallery(tmp_path / "wrong.png", items, columns=3)
    for path in (right, wrong):
        assert path.stat().st_size > 2048
        with Image.open(path) as im:
            assert im.size == (3 * 240, 2 * 280)
    red_right, red_wrong = count_red(right), count_red(wrong)
    assert red_wrong > red_right + 500, (red_right, red_wrong)

    # unknown labels and an item without a cam draw too
    items = [dict(image=x[0, 0].numpy(), probability=0.3, prediction=0, label=None)]
    assert save_gallery(tmp_path / "one.png", items).stat().st_size > 2048


def test_package_import_is_light():
    code = "import pneumonia.explain, sys; assert 'matplotlib' not in sys.modules and 'captum' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
