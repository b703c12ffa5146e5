import pytest
import torch

from pneumonia.errors import ConfigError
from pneumonia.models import CustomCNN


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
    with pytest.raises(ConfigError, match="model.depth=6.*data.image_size=48"):
        CustomCNN(depth=6, image_size=48)


@pytest.mark.parametrize(
    "kwargs, key",
    [({"in_channels": 2}, "model.in_channels"), ({"dropout": 1.0}, "model.dropout"), ({"depth": 0}, "model.depth")],
)
def test_bad_model_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        CustomCNN(**kwargs)
