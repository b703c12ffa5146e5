"""The one value checker (`pneumonia.signature`): list items, and the prefix the config layer adds."""

from collections.abc import Sequence
from typing import Annotated

import pytest

from pneumonia.errors import ConfigError
from pneumonia.signature import Ge, Le, MinLen, check_values, describe, matches, static_hints, with_prefix

SCALES = Annotated[Sequence[Annotated[float, Ge(0.5), Le(2.0)]], MinLen(1)]


def test_list_items_are_checked_against_their_declared_type():
    assert matches([1.0, 0.5], SCALES) is True
    assert matches((2,), SCALES) is True
    assert matches([0.1], SCALES) is False and matches([], SCALES) is False and matches("1.0", SCALES) is False
    assert matches([1, True], Sequence[int]) is False and matches([1, 2], list[int]) is True
    assert matches([1, "a"], tuple[int, ...]) is False and matches([1, "a"], tuple[int, str]) is True
    assert describe(SCALES) == "a list of numbers >= 0.5 and <= 2.0 (not empty)"
    with pytest.raises(ConfigError, match=r"^tta\.scales=\[3\] must be a list of numbers >= 0\.5"):
        check_values({"scales": SCALES}, {"scales": [3]}, prefix="tta.")


def test_the_config_layer_prefixes_only_a_bare_argument_name():
    err = ConfigError("depth=9 is too deep for image_size=40")
    assert str(with_prefix(err, "model.", ["depth", "image_size"])) == "model.depth=9 is too deep for image_size=40"
    assert with_prefix(err, "model.", ["dep", "widths"]) is err  # not a name it starts with
    other = ConfigError("model.depth=9 ...")
    assert with_prefix(other, "model.", ["depth"]) is other


@pytest.mark.parametrize(
    "target, name",
    [
        ("pneumonia.models.CustomCNN", "dropout"),
        ("pneumonia.models.Ensemble", "temperatures"),
        ("pneumonia.models.classifier.PneumoniaClassifier", "label_smoothing"),
        ("pneumonia.models.tta.TTA", "scales"),
        ("pneumonia.evaluation.threshold.threshold_settings", "kernel_bandwidth"),
    ],
)
def test_constraints_are_read_without_importing(target, name):
    hints = static_hints(target)
    assert hints is not None and name in hints


def test_literals_spelled_in_signatures_match_the_constants():
    import typing

    from pneumonia.data.datamodule import ChestXrayDataModule
    from pneumonia.data.preprocess import NORMALIZE, Preprocess
    from pneumonia.evaluation.threshold import METHODS, threshold_settings
    from pneumonia.models.classifier import COMPILE_MODES, PneumoniaClassifier
    from pneumonia.models.ensemble import COMBINES, Ensemble
    from pneumonia.signature import hints_of

    assert typing.get_args(hints_of(threshold_settings)["method"]) == METHODS
    assert typing.get_args(hints_of(Preprocess)["normalize"]) == NORMALIZE
    assert typing.get_args(hints_of(ChestXrayDataModule)["normalize"]) == NORMALIZE
    assert typing.get_args(hints_of(Ensemble)["combine"]) == COMBINES
    assert typing.get_args(typing.get_args(hints_of(PneumoniaClassifier)["compile"])[1]) == COMPILE_MODES
