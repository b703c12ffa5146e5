import re

import pytest
import torch

from pneumonia.errors import ConfigError
from pneumonia.models import CustomCNN, build_net


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_original_network_matches_keras_parameter_count():
    # Keras' model.summary() of the seed notebook at 150x150x3: 764,241 parameters
    model = CustomCNN(depth=5, in_channels=3, image_size=150)
    assert n_params(model) == 764_241
    assert model(torch.zeros(2, 3, 150, 150)).shape == (2,)


@pytest.mark.parametrize("depth, expected", [(3, 5_380_721), (4, 1_783_601), (5, 763_953), (6, 925_041)])
def test_depths_3_to_6_build_and_run(depth, expected):
    model = CustomCNN(depth=depth, in_channels=1, image_size=150)
    assert n_params(model) == expected
    out = model(torch.rand(3, 1, 150, 150))
    assert out.shape == (3,) and torch.isfinite(out).all()


def test_batch_norm_option_adds_norm_layers():
    model = CustomCNN(depth=5, batch_norm=True)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 10


def test_depth_too_large_for_image_size_is_rejected_with_the_keys():
    # the class names its bare arguments; build_net (the `model` config's builder) adds `model.`
    with pytest.raises(ConfigError, match=r"^depth=6 is too deep for image_size=48"):
        CustomCNN(depth=6, image_size=48)
    with pytest.raises(ConfigError, match=r"^model\.depth=6 is too deep for image_size=48"):
        build_net({"_target_": "pneumonia.models.CustomCNN", "depth": 6, "image_size": 48})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"in_channels": 2}, "in_channels=2 must be one of 1, 3"),
        ({"dropout": 1.0}, "dropout=1.0 must be a number >= 0 and < 1"),
        ({"depth": 0}, "depth=0 must be an integer >= 1"),
        ({"depth": 8}, "depth=8 needs 1..7"),
        ({"widths": [8, 0, 8]}, "widths=[8, 0, 8] must be a list of integers >= 1 (not empty)"),
        ({"dilated_blocks": ["4"]}, "dilated_blocks=['4'] must be a list of integers"),
        ({"batch_norm": "yes"}, "batch_norm='yes' must be true or false"),
    ],
)
def test_bad_model_settings_name_the_argument(kwargs, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        CustomCNN(**kwargs)
    with pytest.raises(ConfigError, match="^" + re.escape("model." + message)):
        build_net({"_target_": "pneumonia.models.CustomCNN", **kwargs})
