"""What every tracker records of a training run, tracker-neutral: the composed config as flat
params, the run's tags (git commit and dirty flag, data root and fingerprint, hardware,
precision, seed), the validation results at the chosen threshold. `mlflow_run` and
`wandb_run` log the same values, each in its own store."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MAX_PARAM = 500  # characters of a param value kept (lists of files, long strings)


def flat_config(container: dict[str, Any], typed: bool = False) -> dict[str, Any]:
    """The composed config (resolved, `hydra:` left out) as `a.b.c -> value` strings (MLflow
    params are text); `typed`: numbers, booleans and nulls kept as they are (W&B's config
    filters and plots them as numbers), the rest as strings."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not str(k).startswith("_") or str(k) == "_target_":
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif typed and (node is None or isinstance(node, (bool, int, float))):
            flat[prefix] = node
        else:
            flat[prefix] = str(node)[:MAX_PARAM]

    walk("", {k: v for k, v in container.items() if k != "hydra"})
    return flat


def config_params(cfg: Any, typed: bool = False) -> dict[str, Any]:
    """`flat_config` of the composed config, resolved."""
    from pneumonia.config.plain import to_dict

    return flat_config(to_dict(cfg, resolve=True), typed=typed)


def data_fingerprint(paths: dict[str, Any], root: str | Path) -> str:
    """sha256 (first 16 hex) over each split's files: path below the data root and size,
    sorted. The same images in another folder give the same fingerprint; an added, removed,
    renamed or rewritten (other size) file changes it."""
    root = Path(root)
    h = hashlib.sha256()
    for split in sorted(paths):
        for p in sorted(str(x) for x in paths[split]):
            try:
                rel = os.path.relpath(p, root)
                size = os.stat(p).st_size
            except (OSError, ValueError):
                rel, size = p, -1
            h.update(f"{split}\0{rel}\0{size}\n".encode())
    return h.hexdigest()[:16]


def hardware(trainer: Any) -> dict[str, str]:
    import torch

    accelerator = type(trainer.accelerator).__name__.replace("Accelerator", "").lower()
    device = torch.cuda.get_device_name(0) if accelerator == "cuda" and torch.cuda.is_available() else "cpu"
    return {
        "accelerator": accelerator,
        "device": device,
        "devices": str(trainer.num_devices),
        "precision": str(trainer.precision),
    }


def run_tags(cfg: Any, datamodule: Any, trainer: Any, out_dir: Path) -> dict[str, str]:
    """The tags of a training run: git commit and dirty flag (the checkout the package runs
    from), data root, fingerprint and file counts, seed, task, run folder, monitor, hardware
    and precision."""
    from pneumonia.evaluation.report import git_state

    git = git_state()
    paths = {s: datamodule.paths[s] for s in ("train", "val") if s in (datamodule.paths or {})}
    return {
        "git.commit": str(git["commit"]),
        "git.dirty": str(git["dirty"]),
        "data.root": str(datamodule.data_root),
        "data.fingerprint": data_fingerprint(paths, datamodule.data_root),
        "data.files": json.dumps({s: len(p) for s, p in paths.items()}),
        "seed": str(cfg.seed),
        "task_name": str(cfg.get("task_name")),
        "run_folder": str(out_dir),
        "monitor": str(cfg.monitor),
        **hardware(trainer),
    }


def val_results(val_report: dict[str, Any], metric_names: tuple[str, ...]) -> dict[str, float]:
    """The validation results at the chosen threshold as `hp/val_<name>` (the TensorBoard
    HPARAMS names), `hp/val_threshold` included."""
    return {
        f"hp/val_{k}": float(val_report[k])
        for k in (*metric_names, "threshold")
        if isinstance(val_report.get(k), (int, float))
    }


def weights_digest(best_path: str) -> str | None:
    """best.ckpt's weights checksum (finds the run of a copied checkpoint)."""
    if not best_path:
        return None
    from pneumonia.inference.checkpoint import load_checkpoint
    from pneumonia.integrity import stored_digest

    return stored_digest(load_checkpoint(best_path))


def read_run_file(folder: str | Path | None, name: str) -> dict[str, Any] | None:
    """A tracker's run file in a run folder (`mlflow_run.json`, `wandb_run.json`) when it names
    a run; None when there is no folder, no file, or no readable JSON object with a `run_id`."""
    if not folder:
        return None
    try:
        info = json.loads((Path(folder) / name).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("run_id") else None
