"""`predict(cfg)`: score files with a checkpoint, as `python predict.py` does.

Files are decoded in a thread pool with the checkpoint's preprocessing preset, scored in
batches by the `Predictor`, and every batch's rows are appended to `predictions.csv` as
soon as they are scored, so an interruption or a bad file never loses what was predicted.

Two backends share the loop, which works on numpy arrays: `backend=torch` (the default)
scores with the checkpoint through `TorchScorer` (the Predictor; Grad-CAM and galleries),
`backend=onnx` with an `export.py` model.onnx and its model.json through
`pneumonia.export.onnx_predictor.OnnxPredictor`. This module imports no torch: the onnx
backend runs where torch is not installed (tested).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pneumonia import CLASSES
from pneumonia.data.folder import DataLayoutError, find_inputs, label_from_path
from pneumonia.data.pixels import DEFAULT_MAX_PIXELS, check_max_pixels
from pneumonia.config.rundir import make_output_dir
from pneumonia.validators import optional_int, threshold_override
from pneumonia.errors import ConfigError, file_error
from pneumonia.evaluation.predictions import PREDICT_COLUMNS, predict_row
from pneumonia.evaluation.shift import image_statistics, merge_statistics

if TYPE_CHECKING:
    from pneumonia.export.onnx_predictor import OnnxPredictor

log = logging.getLogger(__name__)

CSV_COLUMNS = PREDICT_COLUMNS  # predictions.csv: evaluation.predictions owns its layouts
BACKENDS = ("torch", "onnx")


class Loader(Protocol):
    def load(self, path: str) -> np.ndarray: ...


class TorchScorer:
    """The checkpoint's `Predictor` behind the numpy interface the loop uses (the one the
    `OnnxPredictor` has): `load`, `predict_images`, `decide`, `threshold`, `precision`."""

    backend = "torch"

    def __init__(self, cfg: DictConfig) -> None:
        try:
            import torch
        except ImportError:
            raise ConfigError(
                "backend=torch needs torch, which is not installed here: score an export.py model "
                "with backend=onnx model_path=<export>/model.onnx instead"
            ) from None

        from pneumonia.inference import Predictor

        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        self.predictor = Predictor.from_checkpoint(
            cfg.ckpt_path, device=cfg.device, precision=cfg.precision, threshold=cfg.threshold, tta=cfg.get("tta")
        )
        self.threshold, self.precision = self.predictor.threshold, self.predictor.precision
        self.tta = self.predictor.tta
        self.device, self.source = self.predictor.device, str(cfg.ckpt_path)
        self.max_pixels = cfg.get("max_pixels", DEFAULT_MAX_PIXELS)

    def load(self, path: str) -> np.ndarray:
        """`Preprocess.load` of the checkpoint's preset, under predict's `max_pixels`."""
        from pneumonia.data.decode import load_image

        prep = self.predictor.preprocess
        return load_image(path, prep.image_size, prep.channels, self.max_pixels, "max_pixels")

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        import torch

        return self.predictor.predict_images(torch.from_numpy(images)).numpy()

    def decide(self, probs: np.ndarray) -> np.ndarray:
        import torch

        return self.predictor.decide(torch.from_numpy(probs)).numpy()

    def gradcam(
        self, images: np.ndarray, decisions: np.ndarray, explain: Literal["predicted", "pneumonia"]
    ) -> np.ndarray:
        """Grad-CAM maps (N, h, w) of the batch, under the scoring precision."""
        import torch

        from pneumonia.explain.gradcam import gradcam

        p = self.predictor
        x = p.preprocess.to_input(torch.from_numpy(images))
        with p.autocast():  # the scoring precision: bf16 maps cost less than fp32 ones
            maps, _ = gradcam(
                p.net, x.to(p.device), explain=explain, threshold=p.threshold, decisions=torch.from_numpy(decisions)
            )
        return maps.float().cpu().numpy()


def open_scorer(cfg: DictConfig) -> TorchScorer | OnnxPredictor:
    """The backend `cfg.backend` names, ready to score."""
    if cfg.backend == "onnx":
        from pneumonia.export.onnx_predictor import OnnxPredictor

        return OnnxPredictor.from_model(
            cfg.model_path,
            threshold=cfg.threshold,
            threads=cfg.get("threads"),
            max_pixels=cfg.get("max_pixels", DEFAULT_MAX_PIXELS),
        )
    return TorchScorer(cfg)


def decoded_batches(
    paths: list[str], preprocess: Loader, batch_size: int, threads: int | None
) -> Iterator[tuple[list[str], list[np.ndarray], list[tuple[str, str]]]]:
    """(paths, uint8 arrays, bad files) per batch, each batch decoded by a thread pool (PIL
    and pydicom release the GIL); `preprocess` is anything with `load(path)`: the
    `Preprocess` preset, a `TorchScorer` or an `OnnxPredictor`. Decoding does not overlap
    scoring: a 224 px JPEG decodes to 112 px in ~0.2 ms against ~1.2 ms for its forward
    pass (2 cores, benchmarks/predict.py), so overlapping would gain little and compete
    with torch's threads for the cores."""

    def load(path: str) -> tuple[str, np.ndarray | None, str | None]:
        try:
            return path, preprocess.load(path), None
        except Exception as err:  # PIL/pydicom raise many types for bad files; each is reported
            return path, None, file_error(err)

    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = list(pool.map(load, paths[start : start + batch_size]))
            ok = cast("list[tuple[str, np.ndarray]]", [(p, a) for p, a, e in chunk if e is None])  # decoded
            yield [p for p, _ in ok], [a for _, a in ok], [(p, e) for p, _, e in chunk if e is not None]


def _check(cfg: DictConfig) -> None:
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"backend={cfg.backend!r} must be one of: {', '.join(BACKENDS)}")
    if cfg.backend == "onnx":
        if not cfg.model_path:
            raise ConfigError(
                "backend=onnx needs model_path=, e.g. model_path=outputs/export/<time>/model.onnx "
                "(written by export.py)"
            )
        if cfg.get("tta") is not None:
            value = str(cfg.tta).lower() if isinstance(cfg.tta, bool) else repr(cfg.tta)
            raise ConfigError(
                f"tta={value} is for backend=torch: an ONNX model scores as it was exported (its "
                f"model.json 'tta'); export the checkpoint again with export.py tta={value}"
            )
        for key in ("explain", "gallery"):
            if cfg[key]:
                raise ConfigError(
                    f"{key}=true (Grad-CAM and its drawings) needs gradients and torch: use "
                    f"backend=torch with ckpt_path=; backend=onnx only scores"
                )
        if cfg.precision not in (None, "32-true", "32"):
            raise ConfigError(f"precision={cfg.precision!r}: backend=onnx scores in fp32 only (leave precision unset)")
        if str(cfg.device) not in ("auto", "cpu"):
            raise ConfigError(
                f"device={cfg.device}: backend=onnx runs on the CPU (onnxruntime); use device=cpu or backend=torch"
            )
    else:
        if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
            raise ConfigError(
                "ckpt_path is required with backend=torch, e.g. ckpt_path=outputs/train/<run>/checkpoints/best.ckpt"
            )
        if cfg.get("model_path"):
            raise ConfigError("model_path= is for backend=onnx; add backend=onnx, or give ckpt_path= alone")
    for key in ("batch_size", "gallery_size", "print_rows"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "batch_size" else 0):
            raise ConfigError(f"{key}={value!r} must be an integer >= {1 if key == 'batch_size' else 0}")
    if cfg.on_bad_image not in ("skip", "error"):
        raise ConfigError(f"on_bad_image={cfg.on_bad_image!r} must be 'skip' or 'error'")
    if cfg.explain_target not in ("predicted", "pneumonia"):
        raise ConfigError(f"explain_target={cfg.explain_target!r} must be 'predicted' or 'pneumonia'")
    threshold_override(cfg.threshold)
    if cfg.get("mlflow") is not None:
        from pneumonia.tracking.settings import MlflowSettings

        MlflowSettings.from_config(cfg.mlflow)
    if cfg.get("model_uri") is not None:
        from pneumonia.tracking.registry import parse_model_uri

        parse_model_uri(cfg.model_uri)
    check_max_pixels(cfg.get("max_pixels", DEFAULT_MAX_PIXELS), "max_pixels")
    for key in ("threads", "decode_threads"):
        optional_int(cfg.get(key), key, 1)
    for key in ("explain", "gallery"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key}={cfg[key]!r} must be true or false")


def from_registry(cfg: DictConfig) -> DictConfig:
    """`model_uri=models:/<name>@<alias>` (or `/<version>`): the registered version's files
    downloaded into the run folder's `model/`, scored with backend=onnx (model_path set)."""
    from omegaconf import open_dict

    from pneumonia.tracking.registry import download_export, parse_model_uri
    from pneumonia.tracking.settings import MlflowSettings

    parse_model_uri(cfg.model_uri)
    if cfg.get("model_path"):
        raise ConfigError(
            "give either model_uri= (a registered model) or model_path= (an export folder's file), not both"
        )
    if not OmegaConf.is_missing(cfg, "ckpt_path") and cfg.get("ckpt_path"):
        raise ConfigError("model_uri= scores a registered export (backend=onnx): leave ckpt_path= out")
    if cfg.backend != "onnx" and cfg.backend != "torch":
        raise ConfigError(f"backend={cfg.backend!r} must be one of: {', '.join(BACKENDS)}")
    settings = MlflowSettings.from_config(cfg.get("mlflow"))
    out_dir = make_output_dir(cfg.paths.output_dir)
    model_path, _ = download_export(cfg.model_uri, settings, out_dir / "model")
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.backend = "onnx"
        cfg.model_path = str(model_path)
    return cfg


def _safe_name(index: int, path: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(path).stem)[:80]
    return f"{index:05d}_{stem}.png"


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict every input; writes predictions.csv (+ bad_images.tsv, summary.json,
    heatmaps/, gallery.png) into the run folder and returns the summary."""
    if cfg.get("model_uri"):
        cfg = from_registry(cfg)
    _check(cfg)
    predictor = open_scorer(cfg)
    inputs: Any = OmegaConf.to_container(cfg.inputs) if OmegaConf.is_config(cfg.inputs) else cfg.inputs
    found = find_inputs(inputs)
    paths = found.files
    out_dir = make_output_dir(cfg.paths.output_dir)
    log.info(
        "Predicting %d file(s) with %s (%s backend, threshold %.4f, precision %s, %s, TTA %s)",
        len(paths),
        predictor.source,
        predictor.backend,
        predictor.threshold,
        predictor.precision,
        predictor.device,
        "on" if predictor.tta else "off",
    )

    heatmap_dir = out_dir / "heatmaps"
    if cfg.explain:
        heatmap_dir.mkdir(exist_ok=True)
        from pneumonia.explain.figures import save_overlay

    tqdm = _progress_bar()

    # heatmap PNGs are drawn and written in threads (PIL and zlib release the GIL) while
    # the next batch is scored
    writers = ThreadPoolExecutor(max_workers=os.cpu_count() or 1) if cfg.explain else None
    pending: list[Any] = []
    rows: list[dict[str, Any]] = []
    bad: list[tuple[str, str]] = []
    gallery: list[dict[str, Any]] = []
    image_stats: list[dict[str, Any]] = []  # per batch, for the comparison with the validation split
    csv_path = out_dir / "predictions.csv"
    bad_path = out_dir / "bad_images.tsv"
    if found.skipped:  # special files and broken links the walk did not open
        if cfg.on_bad_image == "error":
            path, why = found.skipped[0]
            raise DataLayoutError(f"cannot read '{path}': {why} (on_bad_image=skip goes on without it)")
        bad.extend(found.skipped)
        with bad_path.open("a") as tsv:
            tsv.writelines(f"{p}\t{why}\n" for p, why in found.skipped)
    with (
        csv_path.open("w", newline="") as f,
        tqdm(
            total=len(paths), unit="img", desc="predict", disable=None if len(paths) > 2 * cfg.batch_size else True
        ) as bar,
    ):
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        f.flush()
        for batch_paths, arrays, batch_bad in decoded_batches(paths, predictor, cfg.batch_size, cfg.decode_threads):
            if batch_bad:
                if cfg.on_bad_image == "error":
                    path, why = batch_bad[0]
                    what = why if path in why else f"cannot read '{path}': {why}"
                    raise DataLayoutError(
                        f"{what}; the {len(rows)} rows predicted before it are in {csv_path} "
                        f"(on_bad_image=skip goes on without it)"
                    )
                bad.extend(batch_bad)
                with bad_path.open("a") as tsv:
                    tsv.writelines(f"{p}\t{why}\n" for p, why in batch_bad)
            if batch_paths:
                images = np.stack(arrays)
                image_stats.append(image_statistics(images))
                probs = predictor.predict_images(images)
                decisions = predictor.decide(probs)
                # _check: explain is for backend=torch only
                maps = (
                    cast(TorchScorer, predictor).gradcam(images, decisions, cfg.explain_target) if cfg.explain else None
                )
                for i, path in enumerate(batch_paths):
                    prob, decision, label = float(probs[i]), int(decisions[i]), label_from_path(path)
                    row: dict[str, Any] = {
                        "path": path,
                        "probability": prob,
                        "prediction": CLASSES[decision],
                        "threshold": predictor.threshold,
                        "label": CLASSES[label] if label is not None else "",
                    }
                    rows.append(row)
                    writer.writerow(predict_row(path, prob, row["prediction"], predictor.threshold, row["label"]))
                    if maps is not None:
                        assert writers is not None  # made when explain is on
                        pending.append(
                            writers.submit(
                                save_overlay,
                                heatmap_dir / _safe_name(len(rows), path),
                                arrays[i],
                                maps[i],
                                probability=prob,
                                threshold=predictor.threshold,
                                title=Path(path).name,
                                explain=cfg.explain_target,
                            )
                        )
                    if cfg.gallery and len(gallery) < cfg.gallery_size:
                        gallery.append(
                            {
                                "image": arrays[i],
                                "probability": prob,
                                "prediction": decision,
                                "label": label,
                                "title": Path(path).name,
                                "cam": maps[i] if maps is not None else None,
                            }
                        )
                f.flush()  # rows are on disk before the next batch is decoded
            if len(pending) > 4 * cfg.batch_size:  # bounded: memory stays flat on long lists
                keep = len(pending) - 2 * cfg.batch_size
                for job in pending[:keep]:
                    job.result()  # waits for the oldest writes; raises if one failed
                pending = pending[keep:]
            bar.update(len(batch_paths) + len(batch_bad))
    if writers is not None:
        for job in pending:
            job.result()  # a failed heatmap write raises here, after every row is saved
        writers.shutdown()

    if bad:
        log.warning("Skipped %d unreadable file(s), listed in %s", len(bad), bad_path)
    if not rows:
        raise DataLayoutError(
            f"none of the {len(paths) + len(found.skipped)} input file(s) could be read; reasons in {bad_path}"
        )
    if cfg.gallery:
        from pneumonia.explain.figures import save_gallery

        save_gallery(out_dir / "gallery.png", gallery)
    summary = summarize(rows, bad, predictor)
    summary["shift"] = shift_check(out_dir, predictor, rows, merge_statistics(image_stats))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_rows(rows, cfg.print_rows))
    print(format_summary(summary, out_dir))
    if summary["shift"].get("warning"):
        print(summary["shift"]["warning"])
    return summary


def shift_check(
    out_dir: Path, predictor: TorchScorer | OnnxPredictor, rows: list[dict[str, Any]], stats: dict[str, Any]
) -> dict[str, Any]:
    """The predicted images against the checkpoint's validation split (evaluation/shift.py):
    shift.json and shift.png in `out_dir`; returns its summary for summary.json (the KS tests,
    "shifted", "warning"). Not compared with backend=onnx (model.json carries no reference)."""
    from pneumonia.evaluation.shift import scoring_caveat, write_shift

    if not isinstance(predictor, TorchScorer):
        return {
            "available": False,
            "shifted": False,
            "warning": None,
            "note": "not compared with backend=onnx (the reference is in the checkpoint)",
        }
    recipe = predictor.predictor.recipe
    image_ref = predictor.predictor.shift_reference  # read with the checkpoint, once
    caveat = scoring_caveat(
        tta=predictor.predictor.tta,
        stored_tta=recipe.tta,
        temperature=predictor.predictor.temperature,
        stored_temperature=recipe.temperature,
    )
    result = write_shift(
        out_dir,
        np.array([r["probability"] for r in rows]),
        stats,
        val_roc=recipe.val_roc,
        image_ref=image_ref,
        caveat=caveat,
    )
    keep = (
        "available",
        "shifted",
        "warning",
        "tests",
        "alpha",
        "min_effect",
        "test",
        "reference",
        "note",
        "caveat",
        "figure",
    )
    return {k: result[k] for k in keep if k in result}


def summarize(
    rows: list[dict[str, Any]], bad: list[tuple[str, str]], predictor: TorchScorer | OnnxPredictor
) -> dict[str, Any]:
    """Counts per predicted class and, for files under NORMAL/PNEUMONIA folders, the metrics of
    the decisions in predictions.csv (numpy, the same for both backends; null where a class
    is missing)."""
    from pneumonia.evaluation.statistics import point_metrics

    summary: dict[str, Any] = {
        "n": len(rows),
        "skipped": len(bad),
        "threshold": predictor.threshold,
        "precision": predictor.precision,
        "backend": predictor.backend,
        "predicted": {c: sum(r["prediction"] == c for r in rows) for c in CLASSES},
    }
    labelled = [r for r in rows if r["label"]]
    if labelled:
        labels = np.array([CLASSES.index(r["label"]) for r in labelled])
        decided = np.array([CLASSES.index(r["prediction"]) for r in labelled])
        metrics = point_metrics([r["probability"] for r in labelled], labels, predictor.threshold, decisions=decided)
        counts = {
            "tn": int(((decided == 0) & (labels == 0)).sum()),
            "fp": int(((decided == 1) & (labels == 0)).sum()),
            "fn": int(((decided == 0) & (labels == 1)).sum()),
            "tp": int(((decided == 1) & (labels == 1)).sum()),
        }
        summary["labelled"] = {**metrics, **counts, "threshold": predictor.threshold, "n": len(labelled)}
    return summary


def _progress_bar() -> Any:
    """tqdm.auto's bar, or a silent stand-in where tqdm is not installed (a torch-free install)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:

        class tqdm:  # type: ignore[no-redef]  # noqa: N801  (tqdm's name)
            def __init__(self, *args: Any, **kwargs: Any) -> None: ...
            def __enter__(self) -> tqdm:
                return self

            def __exit__(self, *exc: Any) -> None: ...
            def update(self, n: int = 1) -> None: ...

    return tqdm


def format_rows(rows: list[dict[str, Any]], limit: int) -> str:
    width = min(60, max(len(r["path"]) for r in rows))
    lines = [f"{'path':<{width}}  {'P(pneumonia)':>12}  {'prediction':<10}  label", "-" * (width + 38)]
    for r in rows[:limit]:
        path = r["path"] if len(r["path"]) <= width else "..." + r["path"][-(width - 3) :]
        lines.append(f"{path:<{width}}  {r['probability']:>12.4f}  {r['prediction']:<10}  {r['label']}")
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more rows in predictions.csv")
    return "\n".join(lines)


def format_summary(summary: dict[str, Any], out_dir: Path) -> str:
    counts = ", ".join(f"{n} {c}" for c, n in summary["predicted"].items())
    text = [
        f"\n{summary['n']} image(s) predicted at threshold {summary['threshold']:.4f}: {counts}"
        + (f"; {summary['skipped']} unreadable file(s) skipped (bad_images.tsv)" if summary["skipped"] else "")
    ]
    rep = summary.get("labelled")
    if rep:

        def fmt(key: str) -> str:
            return "n/a (one class)" if rep[key] is None else f"{rep[key]:.4f}"

        text.append(
            f"{rep['n']} of them under NORMAL/PNEUMONIA folders: accuracy {fmt('accuracy')}, "
            f"recall {fmt('recall')}, specificity {fmt('specificity')}, AUROC {fmt('auroc')}"
        )
    text.append(f"Written to {out_dir}")
    return "\n".join(text)
