"""`data.crop=content`: each image cut to its content before normalisation, in every path (the
training batch, the Predictor, the exported graph); black bands and a wider black field of view
undone, burnt-in letters on black ignored, images without borders unchanged bit for bit."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pneumonia.data.preprocess import Preprocess, crop_to_content
from pneumonia.data.stress import perturb
from pneumonia.data.synthetic import _xray
from pneumonia.errors import ConfigError
from pneumonia.models.custom_cnn import CustomCNN

pytestmark = pytest.mark.usefixtures("one_thread")


def xrays(n: int = 6, size: int = 48) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(np.stack([_xray(rng, (size, size), i % 2 == 1) for i in range(n)])[:, None])


def test_images_without_borders_are_unchanged_and_black_frames_are_undone():
    x = xrays().float() / 255
    assert torch.equal(crop_to_content(x), x)
    # a wider field of view: the image shrunk onto black comes back as the shrunk image resized up
    small = F.interpolate(x, size=(40, 40), mode="bilinear", align_corners=False, antialias=True)
    framed = torch.zeros_like(x)
    framed[:, :, 4:44, 4:44] = small
    torch.testing.assert_close(
        crop_to_content(framed), F.interpolate(small, size=(48, 48), mode="bilinear", align_corners=False)
    )
    # collimator bands: what they left is stretched back over the whole image
    banded = x.clone()
    banded[:, :, :6], banded[:, :, -6:] = 0, 0
    torch.testing.assert_close(
        crop_to_content(banded), F.interpolate(x[:, :, 6:-6], size=(48, 48), mode="bilinear", align_corners=False)
    )


def test_letters_on_black_and_tiny_boxes_do_not_move_the_box():
    img = torch.zeros(1, 1, 40, 40)
    img[:, :, 10:30, 10:30] = 0.5  # content of half the side: still trusted
    img[:, :, 1:6, 1:3] = 1.0  # a burnt-in letter on the black band
    assert crop_to_content(img).min() == 0.5  # the box is the content's, not the letter's
    tiny = torch.zeros(1, 1, 40, 40)
    tiny[:, :, 15:25, 15:25] = 0.5  # a quarter of the side: not trusted, left whole
    assert torch.equal(crop_to_content(tiny), tiny)


def test_the_stress_frames_are_undone_and_the_cuts_are_not():
    x = xrays(8, 64)
    clean = x.float() / 255
    shifted = perturb(x, "fov", 0.8).float() / 255  # the chest back where it was, up to resampling
    assert (crop_to_content(shifted) - clean).abs().mean() < 0.5 * (shifted - clean).abs().mean()
    banded = perturb(x, "border", 0.15).float() / 255  # what the bands hid is lost, but they are gone
    assert (banded == 0).float().mean() > 0.1 and (crop_to_content(banded) == 0).float().mean() < 0.005
    apex = perturb(x, "apex", 0.15).float() / 255
    assert torch.equal(crop_to_content(apex), apex)  # nothing black to remove


def test_the_preset_crops_before_normalising_and_says_so():
    x = xrays()
    x[:, :, :8] = 0
    plain, cropping = Preprocess(48, 1, "standardize"), Preprocess(48, 1, "standardize", crop="content")
    torch.testing.assert_close(cropping.to_input(x), plain.normalize_input(crop_to_content(x.float() / 255)))
    torch.testing.assert_close(cropping.normalizer()(x.float() / 255), cropping.to_input(x))
    assert cropping.describe()["crop"] == "content" and "crop" not in plain.describe()
    assert cropping.decode_description() == plain.decode_description()  # one decoded cache serves both
    with pytest.raises(ConfigError, match="crop"):
        Preprocess(48, 1, crop="lungs")


@pytest.mark.slow
def test_the_exported_graph_crops_as_the_predictor_does(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from pneumonia.export.exporter import export_net, load_exported
    from pneumonia.inference.predictor import Predictor

    torch.manual_seed(0)
    net = CustomCNN(depth=3, widths=(8, 16, 32), in_channels=1, image_size=48)
    predictor = Predictor(net, Preprocess(48, 1, "standardize", crop="content"), 0.5, precision="32-true")
    export_net(predictor, tmp_path / "model.onnx", "onnx")
    images = xrays(6)
    images[:3, :, :10] = 0  # half with bands, half without: both kinds in one batch
    expected = predictor.predict_images(images).numpy()
    logits = load_exported(tmp_path / "model.onnx", "onnx")(images.numpy().astype(np.float32) / np.float32(255))
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), expected, atol=1e-5)
