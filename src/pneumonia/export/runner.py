"""`export(cfg)`: a checkpoint → an exported model, its model.json and MODEL_CARD.md, as
`python export.py` does."""

from __future__ import annotations

import json
import logging
from typing import Any

from omegaconf import DictConfig

from pneumonia.errors import ConfigError
from pneumonia.config.rundir import make_output_dir
from pneumonia.export.sidecar import FORMATS, ONNX_MODULES, SIDECAR_NAME, ExportError, require_export_extra

log = logging.getLogger(__name__)

__all__ = ["export"]

MIN_OPSET = 18  # the dynamo exporter's lowest opset


def _check(cfg: DictConfig) -> None:
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r} must be one of: {', '.join(FORMATS)}")
    if cfg.format == "onnx" and (
        isinstance(cfg.opset, bool) or not isinstance(cfg.opset, int) or cfg.opset < MIN_OPSET
    ):
        raise ConfigError(f"opset={cfg.opset!r} must be an integer >= {MIN_OPSET} (the dynamo exporter's lowest)")
    if not isinstance(cfg.verify, bool):
        raise ConfigError(f"verify={cfg.verify!r} must be true or false")
    quantize = cfg.get("quantize")
    root = cfg.get("data_root")
    if root is not None and (not isinstance(root, str) or not root.strip()):
        raise ConfigError(f"data_root={root!r} must be a folder path (or null: the checkpoint's)")
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize={quantize!r} must be null (fp32) or int8")
    if quantize and cfg.format != "onnx":
        raise ConfigError("quantize=int8 needs format=onnx (onnxruntime quantizes ONNX models)")
    n = cfg.get("calibration_images", 256)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"calibration_images={n!r} must be an integer >= 1")
    check_registration(cfg)
    if cfg.get("mlflow") is not None:
        from pneumonia.tracking.settings import MlflowSettings

        MlflowSettings.from_config(cfg.mlflow)


def check_registration(cfg: DictConfig) -> None:
    """register= a model name, alias= only with it (no torch, no mlflow imported)."""
    from pneumonia.tracking.registry import check_alias, check_name

    if cfg.get("register") is not None:
        check_name(cfg.register)
    if cfg.get("alias") is not None:
        if cfg.get("register") is None:
            raise ConfigError(f"alias={cfg.alias} names a registry alias: give register=<model name> with it")
        check_alias(cfg.alias)


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export `cfg.ckpt_path` as `cfg.format` into `cfg.paths.output_dir`; returns model.json's dict."""
    _check(cfg)
    if cfg.format == "onnx":
        require_export_extra("format=onnx", *ONNX_MODULES)
    if cfg.get("register"):
        from pneumonia.tracking.settings import MlflowSettings, require_mlflow

        require_mlflow(f"register={cfg.register}")
        settings = MlflowSettings.from_config(cfg.get("mlflow"))
    out_dir = make_output_dir(cfg.paths.output_dir, "paths.output_dir (hydra.run.dir)")

    from pneumonia.export import exporter  # torch (and onnx): only once the settings are known to be good
    from pneumonia.export.card import render_model_card
    from pneumonia.inference import Predictor, resolve_precision

    threshold = cfg.get("threshold")  # null: the stored one (an uncalibrated checkpoint is refused)
    predictor = Predictor.from_checkpoint(
        cfg.ckpt_path, device="cpu", precision="32-true", tta=cfg.get("tta"), threshold=threshold
    )
    # the precision the stored threshold was chosen under (fp32 export scores differ slightly from
    # bf16 ones): what a Predictor of the checkpoint would score with by default
    threshold_precision = (
        resolve_precision(None, predictor.calibration.precision, "auto")
        if predictor.calibration is not None and threshold is None
        else None
    )
    if threshold is not None:
        log.warning("threshold=%s: model.json carries this threshold, not the one chosen on validation", threshold)
    model_path = out_dir / FORMATS[cfg.format]
    try:
        info = exporter.export_net(predictor, model_path, cfg.format, opset=int(cfg.opset))
        verification = exporter.verify(predictor, model_path, cfg.format) if cfg.verify else None
        quantization = None
        if cfg.get("quantize") == "int8":
            from pneumonia.export.onnx_predictor import sha256_file
            from pneumonia.export.quantize import quantize_int8

            fp32_path = model_path.with_name("model.fp32.onnx")
            model_path.replace(fp32_path)
            quantization = quantize_int8(
                predictor,
                fp32_path,
                model_path,
                input_name=info["input"]["name"],
                output_name=info["output"]["name"],
                data_root=cfg.get("data_root"),
                calibration_images=int(cfg.get("calibration_images", 256)),
            )
            quantization["fp32_sha256"] = info["sha256"]
            info = {**info, "sha256": sha256_file(model_path), "bytes": model_path.stat().st_size}
        meta = exporter.build_sidecar(
            predictor, cfg.format, info, verification=verification, threshold_precision=threshold_precision
        )
        if quantization is not None:
            meta["quantization"] = quantization
            if quantization["parity"]["threshold_rechosen"]:
                meta["threshold"] = quantization["parity"]["threshold"]
        (out_dir / SIDECAR_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        (out_dir / "MODEL_CARD.md").write_text(render_model_card(meta))
    except OSError as err:
        raise ExportError(f"cannot write into the output folder '{out_dir}' ({err.strerror or err})") from None
    check = (
        f"; checked against PyTorch eager at batch sizes {verification['batch_sizes']}: max |Δp| "
        f"{verification['max_abs_probability_difference']:.1e}"
        if verification
        else ""
    )
    if quantization is not None:
        parity = quantization["parity"]
        change = parity["auroc_change"]
        check += (
            f"; int8 against fp32 on {parity['images']} validation images: AUROC change "
            f"{'n/a' if change is None else f'{change:+.4f}'}, decisions agreeing {parity['agreement']:.1%}"
            + (f" (threshold chosen again: {parity['threshold']:.4f})" if parity["threshold_rechosen"] else "")
        )
    print(
        f"Exported {cfg.ckpt_path} as {cfg.format}{' int8' if quantization else ''} ({info['bytes'] / 1e6:.1f} MB{check})\n"
        f"Written to {out_dir}: {model_path.name}, {SIDECAR_NAME}, MODEL_CARD.md"
    )
    if cfg.get("register"):
        from pneumonia.tracking.registry import register_export

        done = register_export(out_dir, cfg.register, cfg.ckpt_path, settings, alias=cfg.get("alias"))
        meta["registered"] = done
        (out_dir / "registered.json").write_text(json.dumps(done, indent=2) + "\n")
        run = (
            f"linked to the training run {done['training_run_id']}"
            if done["training_run_id"]
            else f"in a run of its own ({done['run_id']}): no training run of this checkpoint in the store"
        )
        alias = f", alias @{done['alias']}" if done["alias"] else ""
        print(
            f"Registered as {done['uri']}{alias} in {settings.tracking_uri}, {run}\n"
            f"Next: python -m pneumonia.tools.registry list {done['name']}"
        )
    return meta
