"""Console commands installed with the package (`pneumonia-train`, `pneumonia-eval`,
`pneumonia-predict`, `pneumonia-export`, `pneumonia-app`, `pneumonia-serve`): each runs the checkout's
top-level script (train.py, ...) with its conf/, from any folder. Like the scripts, they
read `data/chest_xray` and write `outputs/` relative to the folder they run in (give
`data.root=` and `hydra.run.dir=` to choose), and the decoded-image cache goes to
`~/.cache/pneumonia/images` wherever they run.

They need an editable install (`pip install -e .`): conf/ and the scripts live beside
src/, not inside the package, so a wheel built from the checkout has neither."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _run(script: str) -> None:
    path = PROJECT_ROOT / script
    if not path.is_file() or not (PROJECT_ROOT / "conf").is_dir():
        print(
            f"error: pneumonia-{Path(script).stem} runs {script} and conf/ of the source checkout, not found "
            f"beside {Path(__file__).parent}: install the checkout with pip install -e <checkout>",
            file=sys.stderr,
        )
        raise SystemExit(2)
    sys.argv[0] = str(path)
    runpy.run_path(str(path), run_name="__main__")


def train() -> None:
    _run("train.py")


def evaluate() -> None:
    _run("eval.py")


def predict() -> None:
    _run("predict.py")


def export() -> None:
    _run("export.py")


def app() -> None:
    _run("app.py")


def serve() -> None:
    _run("serve.py")
