"""What the page does, without Gradio or a browser: tested in CI on its own.

    service = Service.from_checkpoint("outputs/train/<run>/checkpoints/best.ckpt")
    results = service.score(["a.jpeg", "b.dcm"])            # P(pneumonia) + both Grad-CAM maps, or a reason
    service.table(results, 0.4)                              # the rows at another threshold: no model run
    service.operating_point(0.4)                             # sensitivity/specificity on validation there

Scoring goes through `pneumonia.inference.Predictor` only (the one reader of checkpoints):
its preset decodes each file (`Preprocess.load`: JPEG, PNG, ..., DICOM), `predict_images`
scores the batch under the checkpoint's precision. Grad-CAM runs once per upload for
*both* classes (evidence for NORMAL and for PNEUMONIA), so moving the threshold slider
re-decides the images and redraws their maps from what is kept in memory, without running
the model again.

Files are checked before they are decoded: the count (`Limits.max_files`), the size in
bytes (`max_file_mb`) and the pixel count read from the header (`max_megapixels`, so a
30000 x 30000 PNG "decompression bomb" is refused without decoding it). Anything that
still fails to decode (truncated, not an image, a DICOM without pixels) becomes a row
with its reason, never an exception out of `score`. Every upload is read through `read`:
there is no other decoding path.

The page scores each request from its own hard links of the uploads (`score(...,
private_dir=)`): Gradio stores identical uploads at one shared path, so two users uploading
the same X-ray at once each keep theirs. The shared paths are left to the janitor
(`pneumonia.app.guards`).
"""

from __future__ import annotations

import bisect
import csv
import math
import os
import shutil
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumonia import CLASSES
from pneumonia.errors import ConfigError, UserError, file_error
from pneumonia.evaluation.predictions import APP_COLUMNS, app_row

if TYPE_CHECKING:
    from PIL import Image

    from pneumonia.inference import Predictor

MB = 1024 * 1024
GONE = (
    "the upload was removed before its turn to be scored (the server keeps uploads app.upload_ttl_s "
    "seconds and the upload folder under app.upload_dir_max_mb): upload it again"
)
TABLE_COLUMNS = APP_COLUMNS  # predictions.csv's app/1 layout (evaluation.predictions owns it)

NOTE = (
    "**For research and teaching, not diagnosis.** The model learned from one hospital's pediatric "
    'chest X-rays (the Kaggle/Mendeley "Chest X-Ray Images (Pneumonia)" data: children aged 1 to 5 '
    "from one center in Guangzhou). The sensitivity and specificity shown are measured on its "
    "validation split, images of that same hospital held out from training: on other hospitals, "
    "machines, adults or other diseases the model can be much worse, and it does not know when it is. "
    "The heatmap shows which region drove the score, not a finding."
)


class UploadRejected(UserError):
    """An upload refused as a whole (too many files); the message says why and what to do."""


class UnreadableFile(UserError):
    """One file refused or not decodable; the message is the reason shown in its row."""


@dataclass(frozen=True)
class Limits:
    """What one upload may hold: files per upload, bytes per file, pixels per image."""

    max_files: int = 20
    max_file_mb: float = 20.0
    max_megapixels: float = 50.0

    def __post_init__(self) -> None:
        if isinstance(self.max_files, bool) or not isinstance(self.max_files, int) or self.max_files < 1:
            raise ConfigError(f"app.max_files={self.max_files!r} must be an integer >= 1")
        for key in ("max_file_mb", "max_megapixels"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"app.{key}={value!r} must be a positive number")

    @property
    def max_bytes(self) -> int:
        return int(self.max_file_mb * MB)


@dataclass
class Result:
    """One uploaded file: its probability and maps, or the reason it could not be scored."""

    name: str
    probability: float | None = None
    error: str | None = None
    image: np.ndarray | None = None  # (C, S, S) uint8: what the model saw
    cams: np.ndarray | None = None  # (2, S, S) float16 in [0, 1]: evidence for NORMAL [0], PNEUMONIA [1]

    @property
    def ok(self) -> bool:
        return self.probability is not None

    def decision(self, threshold: float) -> int | None:
        """1 (PNEUMONIA) when the probability reaches `threshold`, 0 (NORMAL); None if unscored."""
        if not self.ok:
            return None
        return int(np.float32(self.probability) >= as_float32(threshold))


@dataclass(frozen=True)
class OperatingPoint:
    """Sensitivity and specificity on the validation split at one threshold, when known."""

    threshold: float
    sensitivity: float | None = None
    specificity: float | None = None
    roc_threshold: float | None = None  # the stored ROC point the numbers are read at
    n_pneumonia: int | None = None  # validation images of each class (for the intervals)
    n_normal: int | None = None
    source: str = "none"  # val_roc | val_report | none

    def interval(self, which: str) -> tuple[float, float] | None:
        """Wilson 95% interval of `which` ("sensitivity" or "specificity")."""
        rate, n = (self.sensitivity, self.n_pneumonia) if which == "sensitivity" else (self.specificity, self.n_normal)
        if rate is None or not n:
            return None
        return wilson_interval(round(rate * n), n)


def as_float32(threshold: float) -> float:
    """The threshold as the float32 the Predictor compares in (`probs >= threshold` on a
    float32 tensor), so a decision here never differs from `Predictor.decide`'s."""
    return float(np.float32(threshold))


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion `successes / n` (95% for the default z)."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def validation_roc(roc: Any) -> dict[str, list[float]] | None:
    """The checkpoint's validation ROC (`Recipe.val_roc`: `thresholds`, `sensitivity`,
    `specificity`, where "probability >= threshold" means PNEUMONIA), sorted by threshold;
    None when absent or malformed (checkpoints trained before it was stored)."""
    if not isinstance(roc, dict):
        return None
    try:
        columns = [[float(v) for v in roc[key]] for key in ("thresholds", "sensitivity", "specificity")]
    except (KeyError, TypeError, ValueError):
        return None
    if not columns[0] or len({len(c) for c in columns}) != 1:
        return None
    if not all(math.isfinite(v) for v in columns[0]) or not all(0.0 <= v <= 1.0 for c in columns[1:] for v in c):
        return None
    rows = sorted(zip(*columns))
    return {
        "thresholds": [r[0] for r in rows],
        "sensitivity": [r[1] for r in rows],
        "specificity": [r[2] for r in rows],
    }


def roc_point(roc: dict[str, list[float]], threshold: float) -> tuple[float | None, float, float]:
    """(ROC threshold used, sensitivity, specificity) at `threshold`: the point of the
    smallest stored threshold >= `threshold`. When the stored thresholds are the distinct
    validation scores (as an ROC curve has them), that point has exactly the validation
    images with probability >= `threshold` as positives; above every stored threshold no
    validation image is called PNEUMONIA (sensitivity 0, specificity 1)."""
    thresholds = roc["thresholds"]
    i = bisect.bisect_left(thresholds, threshold)
    if i == len(thresholds):
        return None, 0.0, 1.0
    return thresholds[i], roc["sensitivity"][i], roc["specificity"][i]


def image_pixels(path: str | Path) -> int:
    """Width x height (x frames) from the file's header, without decoding the pixels
    (`pneumonia.data.pixels.header_size`, the check every decoder runs): 0 when the header
    cannot be read (the decoder then says what is wrong). Raises `UserError` for a DICOM
    whose compressed frame is not the size its header says, or a Pillow decompression bomb."""
    from pneumonia.data.pixels import header_size

    try:
        width, height, frames = header_size(path)
    except UserError:
        raise
    except Exception:  # not an image Pillow knows, or no pydicom: the decoder reports it
        return 0
    return width * height * frames


def _reason(err: BaseException, path: str | Path, name: str) -> str:
    """One line for a row: what went wrong, naming the file as uploaded (not the temp path)."""
    text = file_error(err)
    full = Path(path)
    for private in sorted({str(full), str(full.resolve())}, key=len, reverse=True):  # never show temp paths
        text = text.replace(private, name)
    for folder in sorted({str(full.parent), str(full.resolve().parent)} - {".", os.sep}, key=len, reverse=True):
        text = text.replace(folder + os.sep, "")
    return text[:300]


def md_literal(text: object) -> str:
    """`text` (a file name, a reason) shown literally inside Markdown."""
    import html

    escaped = html.escape(str(text), quote=False)
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!|~<>" else c for c in escaped)


class Service:
    """A `Predictor` and the upload limits: scores uploads, re-decides them at any threshold,
    reads the validation operating point and writes the table."""

    def __init__(self, predictor: Predictor, limits: Limits | None = None, *, batch_size: int = 32) -> None:
        self.predictor = predictor
        self.limits = limits or Limits()
        self.batch_size = int(batch_size)
        self.stored_threshold = as_float32(predictor.threshold)
        self.roc = validation_roc(predictor.recipe.val_roc)
        self._model_lock = threading.Lock()  # Grad-CAM hooks the net: one batch through it at a time

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        limits: Limits | None = None,
        *,
        device: str = "auto",
        precision: str | None = None,
        batch_size: int = 32,
        threshold: float | None = None,
    ) -> Service:
        from pneumonia.inference import Predictor

        return cls(
            Predictor.from_checkpoint(path, device=device, precision=precision, threshold=threshold),
            limits,
            batch_size=batch_size,
        )

    # ---- uploads -------------------------------------------------------------------------
    def check_count(self, n: int) -> None:
        if n > self.limits.max_files:
            raise UploadRejected(
                f"{n} files uploaded: this page scores at most {self.limits.max_files} at a time "
                f"(app.max_files={self.limits.max_files}); upload them in smaller groups"
            )

    def read(self, path: str | Path) -> np.ndarray:
        """The file as the model's (C, S, S) uint8 input, after the size and pixel checks;
        raises with a one-line reason."""
        size = os.path.getsize(path)
        if size == 0:
            raise UnreadableFile("empty file (0 bytes)")
        if size > self.limits.max_bytes:
            raise UnreadableFile(
                f"file of {size / MB:.1f} MB: larger than the limit of {self.limits.max_file_mb:g} MB (app.max_file_mb)"
            )
        pixels = image_pixels(path)
        if pixels > self.limits.max_megapixels * 1e6:
            raise UnreadableFile(
                f"image of {pixels / 1e6:.0f} megapixels: larger than the limit of "
                f"{self.limits.max_megapixels:g} megapixels (app.max_megapixels)"
            )
        return self.predictor.preprocess.load(path)

    @staticmethod
    def private_copy(path: str | Path, folder: str | Path) -> Path:
        """`path` hard-linked (or copied) into `folder`, a folder of one request's own. Gradio
        stores identical uploads at one path; the copy stays readable whatever happens to
        that shared path (the janitor's expiry, the size cap) while this request scores it."""
        src, folder = Path(path), Path(folder)
        try:
            mode = os.lstat(src).st_mode
        except FileNotFoundError:
            raise UnreadableFile(GONE) from None
        if not stat.S_ISREG(mode):  # a link or a special file is not an upload
            raise UnreadableFile("not a regular file")
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / src.name
        try:
            os.link(src, dest, follow_symlinks=False)
        except FileNotFoundError:
            raise UnreadableFile(GONE) from None
        except OSError:  # another file system, or links not allowed: a plain copy
            try:
                shutil.copyfile(src, dest, follow_symlinks=False)
            except FileNotFoundError:
                raise UnreadableFile(GONE) from None
        return dest

    def score(
        self, paths: Sequence[str | Path], names: Sequence[str] | None = None, *, private_dir: str | Path | None = None
    ) -> list[Result]:
        """Read, score and explain every file; a file that cannot be read gets a reason
        instead (this never raises for a bad file, only `UploadRejected` for too many).
        `private_dir`: each file is first linked into `private_dir/<i>/` (`private_copy`) and
        read from there; the caller removes that folder."""
        import torch

        self.check_count(len(paths))
        names = [Path(p).name for p in paths] if names is None else list(names)
        results = [Result(name) for name in names]
        arrays: dict[int, np.ndarray] = {}
        for i, path in enumerate(paths):
            try:
                if private_dir is not None:
                    path = self.private_copy(path, Path(private_dir) / str(i))
                arrays[i] = self.read(path)
            except Exception as err:  # PIL/pydicom raise many types for bad files; each becomes a row
                results[i].error = _reason(err, path, names[i])
        good = sorted(arrays)
        with self._model_lock:
            for start in range(0, len(good), self.batch_size):
                chunk = good[start : start + self.batch_size]
                images = np.stack([arrays[i] for i in chunk])
                probs = self.predictor.predict_images(torch.from_numpy(images)).numpy()
                cams = self.gradcams(images)
                for k, i in enumerate(chunk):
                    results[i].probability = float(probs[k])
                    results[i].image, results[i].cams = images[k], cams[k]
        return results

    def gradcams(self, images: np.ndarray) -> np.ndarray:
        """(N, 2, S, S) float16: the Grad-CAM map of the evidence for NORMAL and for
        PNEUMONIA of each image, under the scoring precision (see `pneumonia.explain.gradcam`)."""
        import torch

        from pneumonia.explain.gradcam import gradcam

        p = self.predictor
        x = p.preprocess.to_input(torch.from_numpy(images)).to(p.device)
        with p.autocast():
            normal, _ = gradcam(p.net, x, explain="predicted", decisions=torch.zeros(len(images), dtype=torch.long))
            pneumonia, _ = gradcam(p.net, x, explain="pneumonia")
        return torch.stack([normal, pneumonia], dim=1).float().cpu().numpy().astype(np.float16)

    def warm_up(self) -> None:
        """One blank image through scoring and Grad-CAM, so the first upload is not slower."""
        import torch

        size, channels = self.predictor.preprocess.image_size, self.predictor.preprocess.channels
        blank = np.zeros((1, channels, size, size), np.uint8)
        with self._model_lock:
            self.predictor.predict_images(torch.from_numpy(blank))
            self.gradcams(blank)

    # ---- at a threshold ------------------------------------------------------------------
    def overlay(self, result: Result, threshold: float) -> Image.Image:
        """The model's input with the Grad-CAM map of the class decided at `threshold`."""
        from pneumonia.explain.figures import overlay_image

        from PIL import Image

        threshold = as_float32(threshold)
        decided = result.decision(threshold)
        assert decided is not None and result.cams is not None and result.probability is not None  # a scored file
        cam = result.cams[decided].astype(np.float32)
        drawn = overlay_image(result.image, cam, probability=result.probability, threshold=threshold, title=result.name)
        square = Image.new("RGB", (max(drawn.size),) * 2, "white")  # galleries show square thumbnails
        square.paste(drawn, ((square.width - drawn.width) // 2, (square.height - drawn.height) // 2))
        return square

    @staticmethod
    def caption(result: Result, threshold: float) -> str:
        decided = result.decision(threshold)
        assert decided is not None  # a scored file
        return f"{result.name}: P(pneumonia) {result.probability:.3f} \u2192 {CLASSES[decided]}"

    @staticmethod
    def table(results: Sequence[Result], threshold: float) -> list[dict[str, Any]]:
        """One row per file (`TABLE_COLUMNS`); unscored files have no probability (nor threshold,
        nor prediction) but a reason."""
        threshold = as_float32(threshold)
        rows = []
        for r in results:
            decision = r.decision(threshold)
            rows.append(
                {
                    "file": r.name,
                    "probability": r.probability,
                    "prediction": "" if decision is None else CLASSES[decision],
                    "threshold": threshold if r.ok else None,
                    "error": r.error or "",
                }
            )
        return rows

    def write_csv(self, results: Sequence[Result], threshold: float, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(TABLE_COLUMNS)
            for row in self.table(results, threshold):
                writer.writerow(
                    app_row(row["file"], row["probability"], row["prediction"], row["threshold"], row["error"])
                )
        return path

    @staticmethod
    def message(results: Sequence[Result]) -> str:
        """Markdown: how many files were scored, and each unreadable file with its reason."""
        bad = [r for r in results if not r.ok]
        text = f"Scored {len(results) - len(bad)} of {len(results)} file(s)."
        if bad:
            text += f" **{len(bad)} could not be read** (no score; the reason is also in the table):\n" + "\n".join(
                f"- {md_literal(r.name)}: {md_literal(r.error)}" for r in bad
            )
        return text

    # ---- the operating point -------------------------------------------------------------
    def operating_point(self, threshold: float) -> OperatingPoint:
        """Sensitivity and specificity on validation at `threshold`: read off the stored
        validation ROC; without one, known only at the stored threshold (`val_report`)."""
        threshold = as_float32(threshold)
        report = self.predictor.recipe.val_report or {}
        counts: dict[str, Any] = {}
        if all(isinstance(report.get(k), (int, float)) for k in ("tn", "fp", "fn", "tp")):
            counts = {"n_pneumonia": int(report["fn"] + report["tp"]), "n_normal": int(report["tn"] + report["fp"])}
        if self.roc is not None:
            used, sens, spec = roc_point(self.roc, threshold)
            return OperatingPoint(threshold, sens, spec, used, source="val_roc", **counts)
        if report and threshold == self.stored_threshold:
            return OperatingPoint(
                threshold, report.get("recall"), report.get("specificity"), threshold, source="val_report", **counts
            )
        return OperatingPoint(threshold, **counts)

    def describe_operating_point(self, threshold: float) -> str:
        """Markdown for the slider: the numbers at `threshold`, or why they are not known."""
        op = self.operating_point(threshold)
        recipe = self.predictor.recipe
        method = recipe.threshold_method
        stored = f"The stored threshold, {self.stored_threshold:.3f}, was chosen on the validation split" + (
            f" ({method})." if method else "."
        )
        if not recipe.val_report:
            return (
                f"**At threshold {op.threshold:.3f}**: no validation numbers are stored in this checkpoint "
                f"(it was never calibrated: its threshold is {self.stored_threshold:.3f}, not chosen on "
                f"validation)."
            )
        if op.sensitivity is None:
            return (
                f"**At threshold {op.threshold:.3f}**: sensitivity and specificity were not measured. "
                f"This checkpoint stores validation numbers at its own threshold only "
                f"({self.stored_threshold:.3f}: {self._rates(self.operating_point(self.stored_threshold))}). "
                f"Numbers for every slider position need a checkpoint trained by a newer version of this "
                f"project, which stores the validation ROC. The images are re-decided at "
                f"{op.threshold:.3f} all the same."
            )
        text = f"**At threshold {op.threshold:.3f}**, on the validation split: {self._rates(op)}."
        if op.source == "val_report":
            text += (
                " Known at this threshold only: this checkpoint has no validation ROC, so the slider's "
                "other positions need a checkpoint trained by a newer version of this project."
            )
        elif op.roc_threshold is None:
            text += " (No validation image scores this high.)"
        elif abs(op.roc_threshold - op.threshold) > 5e-4:
            text += f" (Read at the nearest stored ROC point above, {op.roc_threshold:.4f}.)"
        return f"{text}\n\n{stored}"

    @staticmethod
    def _rates(op: OperatingPoint) -> str:
        parts = []
        for which, what, n in (("sensitivity", "pneumonia", op.n_pneumonia), ("specificity", "normal", op.n_normal)):
            value = getattr(op, which)
            ci = op.interval(which)
            part = f"{which} **{value:.3f}**"
            if ci is not None:
                part += f" (95% CI {ci[0]:.3f}\u2013{ci[1]:.3f}, {n} {what} images)"
            parts.append(part)
        return ", ".join(parts)

    def describe_model(self) -> str:
        """Markdown: what this checkpoint is (file, network, input, precision, validation)."""
        from pneumonia.models import describe_net

        p, recipe = self.predictor, self.predictor.recipe
        net = recipe.net or {}
        report = recipe.val_report or {}
        lines = [
            f"- checkpoint: `{md_literal(Path(recipe.checkpoint or '?').name)}`"
            + (f" (epoch {recipe.epoch})" if recipe.epoch is not None else ""),
            f"- network: {md_literal(describe_net(net))}",
            f"- input: {p.preprocess.image_size} px, "
            + ("grayscale" if p.preprocess.channels == 1 else "RGB")
            + f"; precision {p.precision}",
            f"- threshold: {self.stored_threshold:.4f}"
            + (
                f" ({md_literal(recipe.threshold_method)} on validation)"
                if recipe.threshold_method
                else " (not calibrated)"
            ),
        ]
        if report.get("n"):
            lines.append(f"- validation: {report['n']} images, AUROC {report.get('auroc', float('nan')):.4f}")
        lines.append(
            "- validation ROC stored: "
            + ("yes (the slider shows numbers at every threshold)" if self.roc else "no (trained by an older version)")
        )
        return "\n".join(lines)
