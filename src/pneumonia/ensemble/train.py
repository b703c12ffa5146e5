"""`train(cfg)` for a config with `ensemble.seeds` (`python train.py experiment=best_ensemble`):
train one member per seed with `pneumonia.runners.train.train`, each exactly as
`python train.py <the same overrides> seed=S` would, into `<run>/members/seed<S>/`, then build
the ensemble into `<run>/checkpoints/best.ckpt` (`pneumonia.ensemble.build`).

`resume=<run>` goes on where a killed run stopped: finished members are kept, an interrupted
one resumes from its last.ckpt, and the ensemble is built again. Each member folder gets a
`.hydra/config.yaml` and `overrides.yaml` (`seed=S`), so
`python -m pneumonia.tools.sweep_summary <run>/members --over-seeds` summarises them and
`python -m pneumonia.tools.ensemble <run>/members --combine logit` rebuilds from them.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from pneumonia.config.plain import to_dict
from pneumonia.errors import ConfigError
from pneumonia.evaluation.artefacts import read_val_metrics, train_summary_path

log = logging.getLogger(__name__)

MEMBERS_DIR = "members"


def check_ensemble_config(cfg: DictConfig) -> tuple[list[int], str]:
    """`ensemble.seeds` (2 or more distinct integers) and `ensemble.combine`, or a `ConfigError`."""
    from pneumonia.models.ensemble import COMBINES

    seeds = cfg.ensemble.get("seeds")
    seeds = list(seeds) if OmegaConf.is_list(seeds) or isinstance(seeds, list) else seeds
    if (
        not isinstance(seeds, list)
        or len(seeds) < 2
        or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(
            f"ensemble.seeds={seeds!r} must be a list of 2 or more different integers, e.g. ensemble.seeds=[1,2,3]"
        )
    combine = cfg.ensemble.get("combine", "prob")
    if combine not in COMBINES:
        raise ConfigError(f"ensemble.combine={combine!r} must be one of: {', '.join(COMBINES)}")
    if cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path= resumes one run; an ensemble run resumes with resume=<its run folder>")
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if "ddp" in strategy or int(cfg.trainer.get("num_nodes", 1) or 1) > 1:
        raise ConfigError(
            f"trainer.strategy={strategy}: an ensemble trains its members one after another on one "
            "device; drop trainer=ddp"
        )
    return [int(s) for s in seeds], str(combine)


def member_config(cfg: DictConfig, seed: int, folder: Path, resume: bool) -> DictConfig:
    """`cfg` as `python train.py ... seed=<seed>` with its run folder at `folder`."""
    member = copy.deepcopy(cfg)
    with open_dict(member):
        member.pop("ensemble")
        member.seed = seed
        member.paths.output_dir = str(folder)
        member.resume = str(folder) if resume else None
        member.ckpt_path = None
    return member


def finished(folder: Path) -> bool:
    """A member whose training and calibration ended (train_summary.json, a calibrated best.ckpt)."""
    from pneumonia.inference.checkpoint import calibration_of, load_checkpoint

    best = folder / "checkpoints" / "best.ckpt"
    if not train_summary_path(folder).is_file() or not best.is_file():
        return False
    try:
        return calibration_of(load_checkpoint(best)) is not None
    except Exception:  # a damaged file: train it again
        return False


def train(cfg: DictConfig) -> tuple[float | None, dict[str, Any]]:
    """Train the members, build the ensemble; returns its validation `monitor` value and report."""
    from pneumonia.ensemble.build import build_ensemble, eval_command, members_table
    from pneumonia.runners.train import train_run

    seeds, combine = check_ensemble_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    resuming = bool(cfg.get("resume"))
    if resuming and Path(str(cfg.resume)).resolve() != run_dir.resolve():
        raise ConfigError(f"resume={cfg.resume}: an ensemble run resumes in its own folder, not in {run_dir}")
    start = time.perf_counter()
    paths = []
    for i, seed in enumerate(seeds):
        folder = run_dir / MEMBERS_DIR / f"seed{seed}"
        if resuming and finished(folder):
            log.info("Member %d/%d (seed %d): finished before, kept: %s", i + 1, len(seeds), seed, folder)
        else:
            again = resuming and (folder / "checkpoints" / "last.ckpt").is_file()
            member = member_config(cfg, seed, folder, again)
            write_member_config(member, folder, [f"seed={seed}"])
            log.info("Member %d/%d (seed %d)%s: %s", i + 1, len(seeds), seed, ", resumed" if again else "", folder)
            train_run(member)
        paths.append(folder / "checkpoints" / "best.ckpt")
    log.info("Members trained in %.1f min; building the ensemble (%s)", (time.perf_counter() - start) / 60, combine)

    target = run_dir / "checkpoints" / "best.ckpt"
    if resuming:
        target.unlink(missing_ok=True)  # derived from the members: built again
    summary = build_ensemble(
        paths,
        run_dir,
        combine=combine,
        threshold=to_dict(cfg.threshold, resolve=True),
        calibration=to_dict(cfg.calibration, resolve=True) if cfg.get("calibration") else None,
        intervals=to_dict(cfg.intervals, resolve=True) if cfg.get("intervals") else None,
        accelerator=str(cfg.trainer.get("accelerator", "auto")),
        monitor=str(cfg.monitor),
    )
    log.info("%s", members_table(summary))
    report = read_val_metrics(run_dir).at_threshold
    score = report.get(str(cfg.monitor).split("/", 1)[-1])
    log.info(
        "Ensemble of %d members (%s): %s: %s\nNext: %s",
        len(seeds),
        combine,
        f"{cfg.monitor} = {score:.4f}" if score is not None else "built",
        target,
        eval_command(target),
    )
    return score, report


def write_member_config(member: DictConfig, folder: Path, overrides: list[str]) -> None:
    """`.hydra/config.yaml` and `overrides.yaml` (`overrides`, what makes this run the member it
    is) in the member's folder, as a Hydra run has them."""
    hydra_dir = folder / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(member, hydra_dir / "config.yaml", resolve=False)
    (hydra_dir / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
