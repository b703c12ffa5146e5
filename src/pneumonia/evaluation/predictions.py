"""predictions.csv, the one module that writes and reads it. Three layouts, one per writer,
told apart by the header (`SCHEMAS`, `WRITTEN_ONLY`: header -> name and version):

- `eval/1`, written by eval.py: path, label, probability, prediction; label and prediction as
  class indices (0 NORMAL, 1 PNEUMONIA); every row labelled.
- `predict/1`, written by predict.py: path, probability, prediction, threshold, label;
  prediction and label as class names (`pneumonia.CLASSES`); the label empty when the file's
  folder names no class.
- `app/1`, the app's download (app.py): file, probability, prediction, threshold, error;
  prediction as a class name, no label; a file that could not be read has an error and no
  probability, prediction or threshold; file names and errors starting like a spreadsheet
  formula are prefixed with a quote (`spreadsheet_safe`).

`read_predictions` reads eval/1 and predict/1 into `Prediction` rows (class indices) and
refuses app/1 as before (it has no labels, so compare could not use it). No torch here:
predict.py's ONNX path writes through this module.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from pneumonia import CLASSES
from pneumonia.errors import UserError

FILE_NAME = "predictions.csv"
EVAL_COLUMNS = ("path", "label", "probability", "prediction")
PREDICT_COLUMNS = ("path", "probability", "prediction", "threshold", "label")
APP_COLUMNS = ("file", "probability", "prediction", "threshold", "error")
SCHEMAS = {EVAL_COLUMNS: "eval/1", PREDICT_COLUMNS: "predict/1"}  # the layouts read back
WRITTEN_ONLY = {APP_COLUMNS: "app/1"}  # no label: nothing compares it, so it is not read back


class PredictionsError(UserError):
    """A predictions.csv that is missing, empty or not one of `SCHEMAS`."""


@dataclass(frozen=True)
class Prediction:
    """One row of either layout."""

    path: str
    probability: float
    prediction: int  # class index
    label: int | None  # class index; None: not known (predict.py, a file outside a class folder)
    threshold: float | None = None  # None in eval/1 (the run's threshold is in metrics.json)


def eval_row(path: str, label: int, probability: float, threshold: float) -> list[object]:
    """A row of eval/1: the decision is `probability >= threshold`."""
    return [path, label, f"{probability:.6f}", int(probability >= threshold)]


def predict_row(path: str, probability: float, prediction: str, threshold: float, label: str) -> list[object]:
    """A row of predict/1 (`prediction`, `label`: class names; `label` may be "")."""
    return [path, f"{probability:.6f}", prediction, f"{threshold:.6f}", label]


def spreadsheet_safe(text: str) -> str:
    """A CSV cell that a spreadsheet will not run as a formula (names come from uploads)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def app_row(file: str, probability: float | None, prediction: str, threshold: float | None, error: str) -> list[object]:
    """A row of app/1 (`prediction`: a class name, "" when the file could not be read)."""
    return [
        spreadsheet_safe(file),
        "" if probability is None else f"{probability:.6f}",
        prediction,
        "" if threshold is None else f"{threshold:.6f}",
        spreadsheet_safe(error),
    ]


def _class_index(value: str, column: str, where: str) -> int:
    if value in CLASSES:
        return CLASSES.index(value)
    if value in ("0", "1"):
        return int(value)
    raise PredictionsError(f"{where}: {column}={value!r} is neither a class name ({', '.join(CLASSES)}) nor 0/1")


def read_predictions(source: str | Path) -> tuple[str, list[Prediction]]:
    """(schema, rows) of `source`: a predictions.csv, or a folder holding one (an eval.py or
    predict.py output folder). A `PredictionsError` (one line) for anything else."""
    path = Path(source).expanduser()
    csv_path = path / FILE_NAME if path.is_dir() else path
    if not csv_path.is_file():
        raise PredictionsError(f"'{source}' has no {FILE_NAME} (give an eval.py or predict.py output folder)")
    with csv_path.open(newline="") as f:
        reader = csv.reader(f)
        header = tuple(next(reader, ()))
        schema = SCHEMAS.get(header)
        if schema is None:
            raise PredictionsError(
                f"'{csv_path}' has the columns {', '.join(header) or '(none)'}: not a "
                f"{FILE_NAME} of eval.py ({', '.join(EVAL_COLUMNS)}) or predict.py "
                f"({', '.join(PREDICT_COLUMNS)})"
            )
        rows = []
        for n, values in enumerate(reader, start=2):
            if len(values) != len(header):
                raise PredictionsError(f"'{csv_path}' line {n}: {len(values)} values for {len(header)} columns")
            r = dict(zip(header, values))
            where = f"'{csv_path}' line {n}"
            try:
                probability = float(r["probability"])
                threshold = float(r["threshold"]) if r.get("threshold") else None
            except ValueError:
                raise PredictionsError(
                    f"{where}: probability={r['probability']!r} or threshold={r.get('threshold')!r} is not a number"
                ) from None
            label = _class_index(r["label"], "label", where) if r["label"] != "" else None
            rows.append(
                Prediction(r["path"], probability, _class_index(r["prediction"], "prediction", where), label, threshold)
            )
    if not rows:
        raise PredictionsError(f"'{csv_path}' has no predictions")
    return schema, rows
