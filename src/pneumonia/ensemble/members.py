"""Which checkpoints a command line names, and what each member brings: its network, its
temperature, its data settings and the recipe settings its threshold was chosen with.
Light: no Lightning, so the CLI refuses bad input before anything heavy is imported."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumonia.evaluation import METRIC_NAMES
from pneumonia.evaluation.artefacts import ArtefactError, TrainSummary, read_train_summary
from pneumonia.evaluation.statistics import CALIBRATION_DEFAULTS, INTERVAL_DEFAULTS
from pneumonia.evaluation.threshold import DEFAULTS as threshold_defaults
from pneumonia.errors import UserError
from pneumonia.inference import checkpoint as ckpt_format

BEST = Path("checkpoints") / "best.ckpt"
SUMMARY_KEYS = (*METRIC_NAMES, "threshold", "n")  # what ensemble.json keeps of a validation report
# every member must have the same data settings (ckpt_format.SPLIT_KEYS, INPUT_KEYS): the
# ensemble's threshold is chosen on the split, and one preprocessing preset feeds every member
SPLIT_KEYS, INPUT_KEYS = ckpt_format.SPLIT_KEYS, ckpt_format.INPUT_KEYS
# defaults of conf/train.yaml, for members whose run folder has no .hydra/config.yaml
RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "threshold": dict(threshold_defaults),
    "calibration": dict(CALIBRATION_DEFAULTS),
    "intervals": dict(INTERVAL_DEFAULTS),
}


class EnsembleError(UserError):
    """Members that cannot make one ensemble, or a command line that names none."""


@dataclass
class Member:
    path: Path
    ckpt: dict[str, Any] = field(repr=False)
    recipe: dict[str, dict[str, Any]]  # threshold / calibration / intervals / monitor, as the run had them

    @property
    def run_dir(self) -> Path | None:
        return self.path.parent.parent if self.path.parent.name == "checkpoints" else None

    @property
    def net(self) -> dict[str, Any]:
        return dict(ckpt_format.module_settings(self.ckpt)["net"])

    @property
    def data(self) -> dict[str, Any]:
        return ckpt_format.data_settings(self.ckpt)

    @property
    def temperature(self) -> float:
        return ckpt_format.temperature(self.ckpt)

    @property
    def calibration(self) -> ckpt_format.Calibration:
        """What calibration stored (a member is calibrated: `load_member` refuses others)."""
        return ckpt_format.calibration_of(self.ckpt) or ckpt_format.Calibration()

    def describe(self) -> dict[str, Any]:
        """Plain types for the ensemble checkpoint and ensemble.json."""
        calibration = self.calibration
        report = calibration.val_report or {}
        keep = SUMMARY_KEYS
        summary = self.train_summary()
        return {
            "checkpoint": str(self.path),
            "seed": ckpt_format.module_settings(self.ckpt).get("seed"),
            "epoch": ckpt_format.saved_epoch(self.ckpt),
            "temperature": self.temperature,
            "threshold_method": calibration.threshold_method,
            "precision": calibration.precision,
            "val": {k: report[k] for k in keep if k in report},
            "train_minutes": summary.train_minutes if summary else None,
        }

    def train_summary(self) -> TrainSummary | None:
        """The member's train_summary.json (None: no run folder, no file or a damaged one)."""
        if self.run_dir is None:
            return None
        try:
            return read_train_summary(self.run_dir)
        except ArtefactError:
            return None


def find_members(sources: Sequence[str | Path]) -> list[Path]:
    """The checkpoints `sources` name: a .ckpt file; a run folder (its checkpoints/best.ckpt);
    a multirun folder (the checkpoints/best.ckpt of every job folder in it)."""
    found: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_file():
            found.append(path)
        elif not path.exists():
            raise EnsembleError(f"'{path}' does not exist: give run folders, multirun folders or .ckpt files")
        elif (path / BEST).is_file():
            found.append(path / BEST)
        else:
            jobs = sorted(
                (d for d in path.iterdir() if d.is_dir() and ((d / ".hydra").is_dir() or (d / "checkpoints").is_dir())),
                key=_job_order,
            )
            if not jobs:
                raise EnsembleError(
                    f"'{path}' holds no {BEST} and no job folders with one (a run folder, a multirun "
                    "folder or a .ckpt file was expected)"
                )
            missing = [d.name for d in jobs if not (d / BEST).is_file()]
            if missing:
                raise EnsembleError(
                    f"job folder(s) {', '.join(missing)} in '{path}' have no {BEST} (unfinished or "
                    "failed): name the finished jobs' folders instead"
                )
            found.extend(d / BEST for d in jobs)
    seen: dict[str, Path] = {}
    for p in found:
        key = os.path.realpath(p)
        if key in seen:
            raise EnsembleError(f"'{p}' is named twice (it would count double in the average)")
        seen[key] = p
    if len(found) < 2:
        raise EnsembleError(
            f"an ensemble needs at least 2 members; {len(found)} found in: "
            f"{', '.join(str(s) for s in sources) or '(nothing given)'}"
        )
    return found


def _job_order(job: Path) -> tuple[int, str]:
    head = job.name.split("_", 1)[0]
    return (int(head), job.name) if head.isdigit() else (1 << 30, job.name)


def load_member(path: Path) -> Member:
    ckpt = ckpt_format.load_checkpoint(path)
    if ckpt_format.calibration_of(ckpt) is None:
        raise EnsembleError(
            f"'{path}' has no threshold chosen on validation: its training has not finished (or "
            "stopped before calibration); only finished runs can be members"
        )
    if str(ckpt_format.module_settings(ckpt)["net"].get("_target_", "")).rsplit(".", 1)[-1] == "Ensemble":
        raise EnsembleError(
            f"'{path}' is itself an ensemble: give its members instead (experiment=best_ensemble "
            "keeps them in <run>/members; an ensemble of ensembles would weigh members unevenly)"
        )
    return Member(path, ckpt, _recipe(path, ckpt))


def _recipe(path: Path, ckpt: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """threshold / calibration / intervals / monitor as the member's run had them: from its
    `.hydra/config.yaml` when the run folder has one, else what the checkpoint says."""
    config: dict[str, Any] = {}
    if path.parent.name == "checkpoints":
        file = path.parent.parent / ".hydra" / "config.yaml"
        if file.is_file():
            import yaml

            try:
                config = yaml.safe_load(file.read_text()) or {}
            except (OSError, yaml.YAMLError):
                config = {}
    calibration = ckpt_format.calibration_of(ckpt) or ckpt_format.Calibration()
    recipe: dict[str, dict[str, Any]] = {}
    for group, defaults in RECIPE_DEFAULTS.items():
        given: dict[str, Any] = config[group] if isinstance(config.get(group), dict) else {}
        recipe[group] = {k: given[k] if k in given and not _interpolation(given[k]) else v for k, v in defaults.items()}
    if not config:  # a bare checkpoint: what calibration stored
        recipe["threshold"]["method"] = calibration.threshold_method or "youden"
        if recipe["threshold"]["method"] == "fixed":
            recipe["threshold"]["value"] = ckpt_format.threshold(ckpt)
        recipe["calibration"]["temperature"] = calibration.temperature is not None
    monitor = config.get("monitor")
    recipe["run"] = {"monitor": monitor if isinstance(monitor, str) and not _interpolation(monitor) else "val/auroc"}
    return recipe


def _interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def check_agreement(members: Sequence[Member], ignore: Sequence[str] = ()) -> None:
    """One line naming the first data setting the members disagree on (but those in `ignore`:
    `fold`, for the fold models of a cross-validation, whose threshold is chosen on their
    out-of-fold scores)."""
    first = members[0]
    for key in (k for k in (*SPLIT_KEYS, *INPUT_KEYS) if k not in ignore):
        want = _setting(first, key)
        for m in members[1:]:
            got = _setting(m, key)
            if got != want:
                why = (
                    "one preprocessing feeds every member"
                    if key in INPUT_KEYS
                    else "their validation splits differ, so one member's training images would be in the split the "
                    "ensemble's threshold is chosen on"
                )
                if key in ("folds", "fold"):
                    why += (
                        "; a cross-validation's fold models become one ensemble with its threshold chosen on their "
                        "out-of-fold scores: python train.py <its overrides> cv.ensemble=true resume=<its run folder>"
                    )
                raise EnsembleError(
                    f"members disagree on data.{key}: {want!r} in '{first.path}', {got!r} in '{m.path}' ({why})"
                )


def _setting(member: Member, key: str) -> Any:
    return ckpt_format.data_setting(member.data, key)


def common_setting(
    members: Sequence[Member], group: str, what: str, given: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The recipe group (`threshold`, `calibration`, `intervals`) every member shares, with
    the keys in `given` taken from there; one line naming the key and two members where
    they differ on a key not given (`what` says how to choose)."""
    given = dict(given or {})
    first = members[0].recipe[group]
    for m in members[1:]:
        for key, value in first.items():
            if key not in given and m.recipe[group].get(key) != value:
                raise EnsembleError(
                    f"members disagree on {group}.{key}: {value!r} in '{members[0].path}', "
                    f"{m.recipe[group].get(key)!r} in '{m.path}'{what}"
                )
    return {**first, **given}
