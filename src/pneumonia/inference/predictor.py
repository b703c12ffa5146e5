"""`Predictor`: a checkpoint turned into a ready scoring model, the one boundary between
checkpoint files and everything that scores (eval.py, calibration, predict, export).

    predictor = Predictor.from_checkpoint("outputs/train/<run>/checkpoints/best.ckpt")
    probs = predictor.predict_files(["a.jpeg", "b.dcm"])      # P(pneumonia) per file
    decisions = predictor.decide(probs)                        # 1 = PNEUMONIA at the stored threshold

It holds the network in eval mode (plain `torch.nn`, no Lightning: importing
`pneumonia.inference` pulls in neither Lightning, matplotlib nor TensorBoard), the
preprocessing preset the network was trained with, the validation-chosen threshold, the
precision that threshold was chosen under, the class names and a summary of the recipe.

Temperature scaling: when calibration fitted a temperature T on validation
(`calibration.temperature=true`), `Predictor.net` is the network behind a
`TemperatureScaled` wrapper that divides its logit by T, so every path that scores through
the Predictor (predict.py, eval.py and calibration through `lightning_module()`, Grad-CAM on
`Predictor.net`, export) gives P = sigmoid(logit / T), the probabilities the threshold was
chosen on. `Predictor.raw_net` is the network alone.

Test-time augmentation (`tta`): the network behind a `pneumonia.models.tta.TTA` wrapper
(the mean probability over small scale and shift variants), inside the temperature:
`TemperatureScaled(TTA(net))`. By default as the checkpoint's recipe says (`data.tta`,
false for older checkpoints; calibration then chose the threshold with it), or forced on or
off with `from_checkpoint(tta=...)` (`tta=` in eval.yaml and predict.yaml).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from pneumonia import CLASSES
from pneumonia.validators import check_temperature, check_tta, threshold_override
from pneumonia.data.pixels import DEFAULT_MAX_PIXELS
from pneumonia.data.preprocess import Preprocess
from pneumonia.errors import ConfigError, UserError
from pneumonia.hardware import auto_precision
from pneumonia.inference import checkpoint as ckpt_format
from pneumonia.inference.checkpoint import Calibration, Recipe
from pneumonia.models import build_net
from pneumonia.models.tta import with_tta

log = logging.getLogger(__name__)

_AUTOCAST = {"bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16, "16-mixed": torch.float16, "16": torch.float16}
_FULL = ("32-true", "32", "64-true", "64")
RECALIBRATE = "pneumonia.tools.calibrate"  # the command that calibrates a checkpoint again


def resolve_precision(requested: str | None, stored: str | None, accelerator: str = "auto") -> str:
    """`requested` if given, else the precision the checkpoint's threshold was chosen under,
    else what `auto` picks. Scores under another precision shift a little (bf16 keeps 8 bits
    of mantissa), and an undertrained model whose scores sit within that shift of its
    threshold then flips predictions: seen on a CPU with native bf16 scoring an fp32-trained
    checkpoint."""
    if requested is not None:
        return str(requested)
    return str(stored) if stored else auto_precision(str(accelerator))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} must be auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device} was asked for, but this machine has no usable CUDA GPU")
    return device


class TemperatureScaled(nn.Module):
    """`net`'s logit divided by a temperature T: sigmoid(net(x) / T). T > 1 softens
    over-confident probabilities; the ranking of the images (AUROC) does not change. The
    network stays reachable as `.net` (Grad-CAM finds its conv blocks there)."""

    def __init__(self, net: nn.Module, temperature: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("temperature", torch.tensor(check_temperature(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in float32 even under bf16/fp16 autocast: a second rounding to 8 bits of mantissa
        # would move scores near the threshold away from where calibration chose it
        return self.net(x).float() / self.temperature


def with_temperature(net: nn.Module, temperature: float) -> nn.Module:
    """`net` itself when T = 1, else `net` behind a `TemperatureScaled` wrapper."""
    return net if check_temperature(temperature) == 1.0 else TemperatureScaled(net, temperature)


class Predictor:
    """A network ready to score: eval mode, preprocessing, threshold, temperature, precision."""

    def __init__(
        self,
        net: nn.Module,
        preprocess: Preprocess,
        threshold: float = 0.5,
        *,
        temperature: float = 1.0,
        precision: str = "32-true",
        device: str | torch.device = "cpu",
        channels_last: bool = True,
        classes: Sequence[str] = CLASSES,
        recipe: Recipe | None = None,
        module_settings: dict[str, Any] | None = None,
        data_settings: dict[str, Any] | None = None,
        module_state: dict[str, torch.Tensor] | None = None,
        tta: bool = False,
        shift_reference: dict[str, Any] | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        if precision not in _AUTOCAST and precision not in _FULL:
            raise ConfigError(f"precision={precision!r} is not one of {', '.join([*_FULL[:1], *_AUTOCAST])}")
        self.device = resolve_device(device)
        self.channels_last = channels_last
        self.temperature = check_temperature(temperature)
        self.tta = check_tta(tta)
        self.raw_net = net
        self.net = with_temperature(with_tta(net, self.tta), self.temperature).to(self.device).eval()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.preprocess = preprocess
        self.threshold = float(threshold)
        self.precision = str(precision)
        self.classes = tuple(classes)
        self.recipe = recipe or Recipe()  # how it was trained (the blank one: not from a checkpoint)
        # what calibration stored in the checkpoint (None: never calibrated, or not from a checkpoint)
        self.calibration = calibration
        self.module_settings = module_settings or {}
        self.data_settings = data_settings or {"image_size": preprocess.image_size, "channels": preprocess.channels}
        self._module_state = module_state
        # the validation images' statistics calibration stored (evaluation/shift.py; None: not stored)
        self.shift_reference = shift_reference

    # ---- from a checkpoint ---------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        precision: str | None = None,
        threshold: float | None = None,
        temperature: float | None = None,
        accelerator: str = "auto",
        tta: bool | None = None,
        require_calibration: bool = True,
        loaded: dict[str, Any] | None = None,
    ) -> Predictor:
        """Load `path` (with `weights_only=True`). `precision`/`threshold`/`temperature`/`tta`
        override the stored ones (`temperature=1.0`: the raw logits; `tta=None`: the
        recipe's `data.tta`); `accelerator` is what `precision: auto` is resolved for when
        nothing is stored. A checkpoint that was never calibrated (its threshold is the
        default 0.5) is refused unless `threshold` is given or `require_calibration=False`
        (calibration itself, which chooses it). `loaded`: the checkpoint as
        `checkpoint.load_checkpoint(path)` gave it, when the caller has just read or written it
        (training's calibration): the file is then not read again."""
        ckpt = ckpt_format.load_checkpoint(path) if loaded is None else loaded
        if require_calibration and threshold is None and not ckpt_format.is_calibrated(ckpt):
            raise ckpt_format.CheckpointError(
                f"'{path}' is not calibrated (no validation-chosen threshold: calibration after training never "
                f"ran): run python -m {RECALIBRATE} {path}, or give threshold=<value in [0, 1]>"
            )
        module_hp = ckpt_format.module_settings(ckpt)
        data_hp = ckpt_format.data_settings(ckpt)
        try:
            net = build_net(module_hp["net"], pretrained=False)  # no download of model.weights: replaced next
        except (TypeError, ValueError, KeyError) as err:
            if isinstance(err, UserError):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ckpt_format.CheckpointError(
                f"'{path}': its network spec (hyper_parameters 'net') cannot be built ({first[:200]})"
            ) from None
        try:
            net.load_state_dict(ckpt_format.net_state(ckpt))
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise ckpt_format.CheckpointError(
                f"'{path}': the weights do not fit the network it names ({first})"
            ) from None
        calibration = ckpt_format.calibration_of(ckpt)
        recipe = ckpt_format.recipe_of(ckpt, path)
        chosen = ckpt_format.threshold(ckpt) if threshold is None else cast(float, threshold_override(threshold))
        temp = recipe.temperature if temperature is None else temperature
        stored_tta = recipe.tta
        use_tta = stored_tta if tta is None else check_tta(tta)
        if use_tta != stored_tta and threshold is None and calibration is not None:
            log.warning(
                "tta=%s: the stored threshold %.4f was chosen on validation with TTA %s; scores %s TTA sit "
                "a little differently (give threshold= to use another)",
                str(use_tta).lower(),
                chosen,
                "on" if stored_tta else "off",
                "with" if use_tta else "without",
            )
        return cls(
            net,
            Preprocess(
                int(data_hp["image_size"]),
                int(data_hp["channels"]),
                data_hp.get("normalize", "none"),
                data_hp.get("max_pixels", DEFAULT_MAX_PIXELS),
                data_hp.get("crop", "none"),
            ),
            chosen,
            temperature=temp,
            tta=use_tta,
            precision=resolve_precision(precision, calibration.precision if calibration else None, accelerator),
            device=device,
            channels_last=bool(module_hp.get("channels_last", True)),
            recipe=recipe,
            module_settings=module_hp,
            data_settings=data_hp,
            module_state=ckpt_format.module_state(ckpt),
            shift_reference=calibration.shift_reference if calibration else None,
            calibration=calibration,
        )

    # ---- scoring -------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """The stored precision: autocast to it, or autocast off for full precision (also
        inside a caller's autocast: a distillation teacher inside the student's bf16 step)."""
        dtype = _AUTOCAST.get(self.precision)
        if dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Float inputs (N, C, S, S) in [0, 1] → float32 logits (N,) on the CPU, divided by
        the temperature (logit / T: what the threshold applies to after sigmoid)."""
        return self.device_logits(x).cpu()

    def device_logits(self, x: torch.Tensor) -> torch.Tensor:
        """`logits` left on this Predictor's device, in the caller's grad mode (a distillation
        teacher: under no_grad, a plain tensor the student's loss can save for backward)."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return self.net(x).float()

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Float inputs (N, C, S, S) in [0, 1] → P(pneumonia) = sigmoid(logit / T) (N,)."""
        return torch.sigmoid(self.logits(x))

    def predict_images(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed uint8 images (N, C, S, S), as the decoded cache holds them → P(pneumonia)."""
        return self.predict_tensor(self.preprocess.to_input(images.to(self.device)))

    def predict_files(self, paths: Sequence[str | Path], batch_size: int = 64) -> torch.Tensor:
        """P(pneumonia) for each file (an unreadable file raises; `predict.py` skips and reports)."""
        probs = [
            self.predict_images(torch.stack([torch.from_numpy(self.preprocess.load(p)) for p in chunk]))
            for chunk in _chunks(list(paths), batch_size)
        ]
        return torch.cat(probs) if probs else torch.empty(0)

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """1 (PNEUMONIA) where the probability reaches the threshold, else 0 (NORMAL)."""
        return (probs >= self.threshold).long()

    # ---- for the Lightning paths (eval.py scores through a Trainer for DDP) ----------------
    def lightning_module(self, *, threshold: float | None = None, temperature: float | None = None) -> Any:
        """A `PneumoniaClassifier` with this checkpoint's weights, this threshold, this
        temperature and TTA (its `net` is then the `TemperatureScaled`/`TTA` wrapper);
        `threshold`/`temperature` instead of this Predictor's (calibration: the ones it has just
        chosen and stored, without reading the checkpoint again)."""
        from pneumonia.models.classifier import PneumoniaClassifier

        if self._module_state is None:
            raise ConfigError("this Predictor was not loaded from a checkpoint: no module to rebuild")
        keys = ("net", "optimizer", "scheduler", "pos_weight", "channels_last", "seed")
        settings = {k: self.module_settings[k] for k in keys if k in self.module_settings}
        module = PneumoniaClassifier(**settings, pretrained=False)  # the checkpoint's weights, loaded next
        module.load_state_dict(self._module_state)
        module.threshold.fill_(self.threshold if threshold is None else float(threshold))
        temp = self.temperature if temperature is None else check_temperature(temperature)
        module.net = with_temperature(with_tta(module.net, self.tta), temp)
        return module

    def summary(self) -> dict[str, Any]:
        """Plain-type description: classes, threshold, precision, preprocessing and recipe."""
        return {
            "classes": list(self.classes),
            "positive_class": self.classes[1],
            "threshold": self.threshold,
            "temperature": self.temperature,
            "tta": self.tta,
            "precision": self.precision,
            "preprocess": self.preprocess.describe(),
            "recipe": self.recipe.to_dict(),
        }


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
