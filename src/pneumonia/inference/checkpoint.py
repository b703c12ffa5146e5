"""The checkpoint format: the only module that knows a checkpoint's keys.

A checkpoint is Lightning's dict, loaded with `weights_only=True` (tensors and plain types
only, so it cannot run code), with:

- `state_dict`: the LightningModule's weights; `net.*` is the network, `threshold` the
  decision threshold (0.5 until calibration stores the validation-chosen one);
- `hyper_parameters`: the LightningModule's arguments as plain dicts, `net` the network
  spec of `pneumonia.models.build_net`;
- `datamodule_hyper_parameters`: the DataModule's arguments (root, image size, channels...);
- `pneumonia`: written by calibration after training: `threshold_method`, `val_report`
  (validation metrics at the threshold), `precision` (what the threshold was chosen under)
  and, when temperature scaling was fitted on validation, `temperature` (P = sigmoid(logit / T);
  the threshold was then chosen on those scaled probabilities), and `val_roc`: sensitivity
  and specificity on validation at each candidate threshold (`evaluation.threshold.roc_points`),
  and `shift_reference`: per-image statistics of the decoded validation images
  (`evaluation.shift.image_reference`), what eval.py and predict.py compare a folder with;
- `ensemble` (only in a checkpoint built by `python -m pneumonia.ensemble`, whose `net` is a
  `pneumonia.models.Ensemble` spec): how it was built: `combine`, and per member its source
  checkpoint, seed, epoch, temperature and stored validation report. Such a checkpoint has no
  optimizer or trainer state (it is scored, never resumed); `new_checkpoint` writes one;
- `weights_digest`: a checksum of `state_dict` (`pneumonia.integrity`), written with every
  checkpoint (Lightning's saves through `PneumoniaClassifier.on_save_checkpoint` and the
  Trainer's `AtomicCheckpointIO`; calibration and `new_checkpoint` here) and verified by
  `load_checkpoint`: a damaged file is refused, one without a digest (older) loads with a notice.

Typed records, built here only: `Recipe` (`recipe_of`: how the network was trained and
calibrated, what `Predictor.recipe` holds) and `Calibration` (`calibration_of`: the
`pneumonia` entry); both frozen, with `to_dict()` for the places that write them out.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from pneumonia.errors import CheckpointError
from pneumonia.integrity import seal, stored_digest, weights_digest
from pneumonia.io import atomic_torch_save, checkpoint_file

log = logging.getLogger(__name__)

# DataModule arguments stored in a checkpoint that decide which images are in its validation
# split and what its network sees, with the value a checkpoint that predates the key stands
# for: an ensemble's members must agree on all of them, a distillation teacher with its
# student on all but `tta` (the teacher scores without it)
SPLIT_KEYS = ("root", "val_fraction", "min_val_images", "split_seed", "on_bad_image", "folds", "fold")
INPUT_KEYS = ("image_size", "channels", "normalize", "crop", "tta")
KEY_DEFAULTS: dict[str, Any] = {"normalize": "none", "crop": "none", "tta": False, "folds": None, "fold": None}


def data_setting(data: Any, key: str) -> Any:
    """`key` of stored (or configured) data settings, its default where it is missing; a
    `root` normalised (`~` expanded, `..` folded) so equal folders compare equal."""
    value = data.get(key, KEY_DEFAULTS.get(key))
    if key == "root" and isinstance(value, str):
        return os.path.normpath(os.path.expanduser(value))
    return value


REQUIRED_KEYS = ("state_dict", "hyper_parameters", "datamodule_hyper_parameters")
NET_PREFIX = "net."
CALIBRATION = "pneumonia"
ENSEMBLE = "ensemble"
_NOTICED: set[str] = set()  # checkpoints without a digest already reported (one notice per file)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint as a dict; a `CheckpointError` for anything that is not one of ours."""
    path = checkpoint_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if first.startswith("Weights only load failed"):  # torch's hint to load unsafely is no advice here
            first = "not a PyTorch checkpoint, or one holding objects other than tensors and plain types"
        raise CheckpointError(
            f"ckpt_path='{path}' is not a readable checkpoint of this project ({first[:200]})"
        ) from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise CheckpointError(f"ckpt_path='{path}' is not a checkpoint written by this project's train.py")
    _check_settings(path, ckpt)
    _check_digest(path, ckpt)
    return ckpt


def _check_settings(path: Path, ckpt: dict[str, Any]) -> None:
    """One line naming what a checkpoint with the right keys lacks (instead of a KeyError
    wherever a reader first looks)."""
    state, module, data = ckpt["state_dict"], ckpt["hyper_parameters"], ckpt["datamodule_hyper_parameters"]
    missing = []
    if not isinstance(state, dict) or not any(str(k).startswith(NET_PREFIX) for k in state):
        missing.append("the network's weights (state_dict 'net.*')")
    if not isinstance(module, dict) or not isinstance(module.get("net"), dict) or not module["net"]:
        missing.append("the network's spec (hyper_parameters 'net')")
    if not isinstance(data, dict):
        missing.append("the data settings (datamodule_hyper_parameters)")
    else:
        size, channels = data.get("image_size"), data.get("channels")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            missing.append(f"a valid image size (datamodule_hyper_parameters 'image_size': {size!r})")
        if channels not in (1, 3) or isinstance(channels, bool):
            missing.append(f"valid channels (datamodule_hyper_parameters 'channels': {channels!r}, not 1 or 3)")
    if missing:
        raise CheckpointError(
            f"ckpt_path='{path}' lacks {'; '.join(missing)}: not a complete checkpoint of this project's train.py"
        )


def _check_digest(path: Path, ckpt: dict[str, Any]) -> None:
    """Refuse weights that differ from those the checkpoint was written with; a notice, once,
    for a checkpoint written before digests."""
    stored = stored_digest(ckpt)
    if stored is None:
        if str(path.resolve()) not in _NOTICED:
            _NOTICED.add(str(path.resolve()))
            log.warning("%s has no weights checksum (written by an older version): it loads unchecked", path)
        return
    if weights_digest(ckpt["state_dict"]) != stored:
        raise CheckpointError(
            f"ckpt_path='{path}' is damaged: its weights differ from the checksum stored when it "
            f"was written (a corrupted or altered file); use an intact copy"
        )


def module_settings(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The LightningModule's arguments (`net`, `optimizer`, `scheduler`, ...)."""
    return dict(ckpt["hyper_parameters"])


def data_settings(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The DataModule's arguments as trained (image size, channels, root, ...)."""
    return dict(ckpt["datamodule_hyper_parameters"])


def module_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The LightningModule's whole state dict (the network under `net.`, the `threshold` buffer)."""
    return ckpt["state_dict"]


def net_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights alone (the `net.` entries of the module's state dict)."""
    return {k[len(NET_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(NET_PREFIX)}


def saved_epoch(ckpt: dict[str, Any]) -> int | None:
    """The 0-based epoch at which the checkpoint was saved (Lightning's `epoch`); None if unknown."""
    epoch = ckpt.get("epoch")
    return None if epoch is None else int(epoch)


def trained_epochs(ckpt: dict[str, Any]) -> int:
    """Epochs a training checkpoint has finished (Lightning's 0-based `epoch` + 1); 0 if unknown."""
    epoch = saved_epoch(ckpt)
    return 0 if epoch is None else epoch + 1


def threshold(ckpt: dict[str, Any]) -> float:
    return float(ckpt["state_dict"].get("threshold", torch.tensor(0.5)))


def temperature(ckpt: dict[str, Any]) -> float:
    """The stored temperature T (1.0 when none was fitted: the raw sigmoid of the logit)."""
    value = (ckpt.get(CALIBRATION) or {}).get("temperature")
    return 1.0 if value is None else float(value)


def calibration(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What calibration stored ({} for a checkpoint that was never calibrated); typed:
    `calibration_of`."""
    return dict(ckpt.get(CALIBRATION) or {})


@dataclass(frozen=True, slots=True)
class Calibration:
    """What calibration stored in a checkpoint (its `pneumonia` entry, see above), typed.
    Built here only: `calibration_of(ckpt)` reads one, `store_calibration` writes one."""

    threshold_method: str | None = None
    val_report: dict[str, Any] | None = None
    precision: str | None = None  # the precision the threshold was chosen under
    temperature: float | None = None  # None: none fitted (P = sigmoid(logit))
    val_roc: dict[str, Any] | None = None
    shift_reference: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's `pneumonia` entry: the three keys every calibration writes, the
        optional ones only when set."""
        stored: dict[str, Any] = {
            "threshold_method": self.threshold_method,
            "val_report": self.val_report,
            "precision": self.precision,
        }
        for key in ("temperature", "val_roc", "shift_reference"):
            if getattr(self, key) is not None:
                stored[key] = getattr(self, key)
        return stored


def calibration_of(ckpt: dict[str, Any]) -> Calibration | None:
    """What calibration stored, typed; None for a checkpoint that was never calibrated."""
    stored = ckpt.get(CALIBRATION)
    if not stored:
        return None
    value = stored.get("temperature")
    ref = stored.get("shift_reference")
    return Calibration(
        threshold_method=stored.get("threshold_method"),
        val_report=stored.get("val_report"),
        precision=None if stored.get("precision") is None else str(stored["precision"]),
        temperature=None if value is None else float(value),
        val_roc=stored.get("val_roc"),
        shift_reference=dict(ref) if isinstance(ref, dict) else None,
    )


@dataclass(frozen=True, slots=True)
class Recipe:
    """How a checkpoint's network was trained and calibrated, in brief: what a `Predictor`
    reports (`Predictor.recipe`), model.json's `recipe`, the app's and the server's model
    description. Built here only, by `recipe_of`; the blank `Recipe()` is a Predictor's made
    from a network rather than a checkpoint (`to_dict()` is then {})."""

    checkpoint: str | None = None  # the file it was read from; None: no checkpoint
    epoch: int | None = None  # 0-based, as Lightning saved it
    net: dict[str, Any] = field(default_factory=dict)  # the network spec (`pneumonia.models.build_net`)
    optimizer: Any = None
    scheduler: Any = None
    pos_weight: Any = None
    seed: int | None = None
    image_size: int | None = None
    channels: int | None = None
    augment: Any = None
    threshold_method: str | None = None
    val_report: dict[str, Any] | None = None
    val_roc: dict[str, Any] | None = None
    calibrated: bool = False
    temperature: float = 1.0  # the stored one (1.0: none fitted)
    tta: bool = False  # as trained and calibrated (data.tta)
    normalize: str = "none"
    crop: str = "none"  # data.crop

    def to_dict(self) -> dict[str, Any]:
        """Plain types, in this order (model.json, the report, /info); {} for the blank recipe."""
        if self.checkpoint is None:
            return {}
        return {f.name: getattr(self, f.name) for f in fields(self)}


def recipe_of(ckpt: dict[str, Any], path: str | Path) -> Recipe:
    """The recipe of checkpoint `ckpt`, read from `path`."""
    module, data = module_settings(ckpt), data_settings(ckpt)
    cal = calibration_of(ckpt) or Calibration()
    return Recipe(
        checkpoint=str(path),
        epoch=saved_epoch(ckpt),
        net=module["net"],
        optimizer=module.get("optimizer"),
        scheduler=module.get("scheduler"),
        pos_weight=module.get("pos_weight"),
        seed=module.get("seed"),
        image_size=data.get("image_size"),
        channels=data.get("channels"),
        augment=data.get("augment"),
        threshold_method=cal.threshold_method,
        val_report=cal.val_report,
        val_roc=cal.val_roc,
        calibrated=is_calibrated(ckpt),
        temperature=temperature(ckpt),
        tta=bool(data.get("tta", False)),
        normalize=data.get("normalize", "none"),
        crop=data.get("crop", "none"),
    )


def is_calibrated(ckpt: dict[str, Any]) -> bool:
    """Whether calibration chose and stored a threshold (else it is the default 0.5)."""
    return bool(ckpt.get(CALIBRATION))


def store_calibration(
    path: str | Path,
    threshold_value: float,
    *,
    method: str,
    val_report: dict[str, Any],
    precision: str,
    temperature_value: float | None = None,
    val_roc: dict[str, Any] | None = None,
    shift_reference: dict[str, Any] | None = None,
    loaded: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the validation-chosen threshold, its method and validation metrics, the
    precision they were measured under and the fitted temperature (None: none fitted) into
    the checkpoint at `path` (atomically). `loaded`: the checkpoint as `load_checkpoint(path)`
    gave it, when the caller holds it (the file is then not read again); it is left as it was.
    Returns the checkpoint as written (sealed: `stored_digest` gives its new weights checksum)."""
    source = load_checkpoint(path) if loaded is None else loaded
    # a new top-level dict and state dict: the tensors are shared, `loaded` is not changed
    ckpt = {**source, "state_dict": {**source["state_dict"], "threshold": torch.tensor(float(threshold_value))}}
    ckpt[CALIBRATION] = Calibration(
        threshold_method=method,
        val_report=val_report,
        precision=str(precision),
        temperature=None if temperature_value is None else float(temperature_value),
        val_roc=val_roc,
        shift_reference=shift_reference,
    ).to_dict()
    atomic_torch_save(seal(ckpt), path)
    return ckpt


def shift_reference(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The validation images' statistics stored by calibration (None: not stored)."""
    ref = (ckpt.get(CALIBRATION) or {}).get("shift_reference")
    return dict(ref) if isinstance(ref, dict) else None


def ensemble_info(ckpt: dict[str, Any]) -> dict[str, Any]:
    """How an ensemble checkpoint was built ({} for a single network's checkpoint)."""
    return dict(ckpt.get(ENSEMBLE) or {})


def new_checkpoint(
    path: str | Path,
    *,
    state_dict: dict[str, torch.Tensor],
    module_settings: dict[str, Any],
    data_settings: dict[str, Any],
    ensemble: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a checkpoint assembled from parts (atomically): the LightningModule's
    `state_dict` (`net.*` and the `threshold` buffer), its arguments and the DataModule's,
    plus `ensemble` (see above). Not yet calibrated: `store_calibration` adds that."""
    if not any(k.startswith(NET_PREFIX) for k in state_dict) or "net" not in module_settings:
        raise CheckpointError("a checkpoint needs the network's weights (net.*) and its spec (net)")
    ckpt: dict[str, Any] = {
        "state_dict": dict(state_dict),
        "hyper_parameters": dict(module_settings),
        "datamodule_hyper_parameters": dict(data_settings),
    }
    if ensemble is not None:
        ckpt[ENSEMBLE] = dict(ensemble)
    atomic_torch_save(seal(ckpt), path)
    return ckpt
