"""`report.html`: one self-contained page per eval run, rendered with Jinja2 from
`templates/report.html.j2` (shipped in the package, read through `importlib.resources`).

Figures are embedded as base64 PNG `data:` URIs: the file opens offline, from anywhere, with
no network and no JavaScript. Values are HTML-escaped by the template engine (autoescape).
"""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

from pneumonia.evaluation import METRIC_NAMES
from pneumonia.evaluation.tables import fmt, fmt_ci

TEMPLATE = "report.html.j2"
FIGURES = {  # file in the run folder → (section, caption)
    "confusion_matrix.png": "Confusion matrix at the chosen threshold",
    "roc_curve.png": "ROC curve with the operating points",
    "pr_curve.png": "Precision-recall curve with the operating points",
    "reliability_diagram.png": "Reliability diagram",
    "errors_gallery.png": "The most confident errors",
    "shift.png": "This split against the validation split: scores and image statistics",
}


def git_state(start: str | Path | None = None) -> dict[str, Any]:
    """{"commit", "dirty"} of the git checkout holding this package (None when it is not one):
    read-only `git rev-parse` and `git status`."""
    repo = Path(start) if start else Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {
            "commit": commit.stdout.strip(),
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None,
        }
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def png_data_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _template() -> Any:
    import jinja2

    text = resources.files("pneumonia.evaluation").joinpath("templates").joinpath(TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["ci"] = fmt_ci
    env.filters["pct"] = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"
    env.filters["tojson"] = lambda x: json.dumps(x, default=str)
    return env.from_string(text)


MAX_LIST = 12  # longer lists (the validation ROC's points) are summarised, not printed
MAX_CELL = 200  # characters of one value cell; longer values are cut with an ellipsis


def _cell(node: Any) -> str:
    """One value as table text: short lists inline, long ones as their length."""
    if isinstance(node, list) and len(node) > MAX_LIST:
        return f"{len(node)} values (not shown)"
    text = json.dumps(node, default=str) if isinstance(node, (dict, list)) else str(node)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "\u2026"


def _flat(prefix: str, node: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(node, dict) and node:
        for k, v in node.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out.append((prefix, _cell(node)))


def _roc_summary(roc: Any) -> str:
    if not isinstance(roc, dict):
        return _cell(roc)
    arrays = sorted(k for k, v in roc.items() if isinstance(v, list))
    points = max((len(roc[k]) for k in arrays), default=0)
    return f"{points} points ({', '.join(arrays)}; stored in the checkpoint, not shown)"


def recipe_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The Predictor's `summary()` as readable (key, value) rows: nested settings flattened to
    dotted keys, the validation ROC summarised as its number of points, long lists as their
    length, no cell longer than `MAX_CELL` characters. The validation report is shown apart."""
    summary = json.loads(json.dumps(summary, default=str))
    recipe = summary.get("recipe", {})
    recipe.pop("val_report", None)
    roc = recipe.pop("val_roc", None)
    rows: list[tuple[str, str]] = []
    _flat("", summary, rows)
    if roc is not None:
        rows.append(("recipe.val_roc", _roc_summary(roc)))
    return rows


def render_report(
    path: str | Path,
    *,
    rep: dict[str, Any],
    run: dict[str, Any],
    predictor_summary: dict[str, Any],
    dataset: dict[str, Any] | None,
    figures_dir: str | Path,
    shift: dict[str, Any] | None = None,
) -> Path:
    """Write `report.html` to `path` from metrics.json's `rep`, the run's facts (`run`:
    checkpoint, data root, precision, ...), the Predictor's summary, the dataset overview of
    the scored split, the comparison with the validation split (`shift`, evaluation/shift.py;
    None: not made) and the PNG figures found in `figures_dir`."""
    figures_dir = Path(figures_dir)
    figures = {
        name: {"uri": png_data_uri(figures_dir / name), "caption": caption}
        for name, caption in FIGURES.items()
        if (figures_dir / name).is_file()
    }
    val = (predictor_summary.get("recipe") or {}).get("val_report")
    metrics = [
        {"name": m, "value": rep.get(m), "ci": (rep.get("ci95") or {}).get(m), "val": val.get(m) if val else None}
        for m in METRIC_NAMES
    ]
    html = _template().render(
        rep=rep,
        run=run,
        metrics=metrics,
        val=val,
        figures=figures,
        dataset=dataset,
        shift=shift,
        recipe=recipe_rows(predictor_summary),
        summary=predictor_summary,
        generated=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    path = Path(path)
    path.write_text(html, encoding="utf-8")
    return path


def run_facts(
    *,
    checkpoint: str,
    data_root: str,
    split: str,
    precision: str,
    threshold: float,
    threshold_source: str,
    temperature: float,
    temperature_source: str,
    out_dir: str,
) -> dict[str, Any]:
    """The run box of the report: what was scored, with what, from which code."""
    import platform

    import torch

    import pneumonia

    return {
        "checkpoint": checkpoint,
        "data_root": data_root,
        "split": split,
        "precision": precision,
        "threshold": threshold,
        "threshold_source": threshold_source,
        "temperature": temperature,
        "temperature_source": temperature_source,
        "out_dir": out_dir,
        "package_version": getattr(pneumonia, "__version__", "?"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        **git_state(),
    }
