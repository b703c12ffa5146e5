"""`PneumoniaAPI`: LitServe's `LitAPI` around the scorer `predict.py` uses.

Every request reaches `decode_request` as a dict (`guard.RequestGuard` turns a multipart
upload into the same JSON a client may send itself):

    {"image": "<base64 of a JPEG, PNG or DICOM file>", "filename": "a.dcm", "gradcam": false}

The bytes are written to a private file (DICOM readers want a path) and decoded there by
the scorer's `load`: the one preset (`pneumonia.data.decode.load_image`, bit for bit what
`predict.py` decodes), under the pixel limit read from the header. A batch of decoded
images is scored by one `predict_images` call (the checkpoint's `Predictor` or the
export's `OnnxPredictor`), so an answer's probability is the one `predict.py` writes for
the same file.

LitServe fails a whole batch when any step raises, so a bad body never raises here: it
becomes a `Problem` that rides through the batch and is answered alone with its status
(400 bad body, 413 file too large, 422 not decodable or too many pixels) and one line.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import io
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, cast

import litserve as ls
import numpy as np
from omegaconf import DictConfig, OmegaConf

from pneumonia import CLASSES
from pneumonia.config.plain import to_dict
from pneumonia.errors import UserError
from pneumonia.serve.settings import MB, ServeSettings

log = logging.getLogger(__name__)

INTENDED_USE = (
    "Research and teaching, not diagnosis: trained on one hospital's pediatric chest X-rays "
    "(Kaggle/Mendeley 'Chest X-Ray Images (Pneumonia)'); on other hospitals, machines, adults or "
    "diseases it can be much worse, and it does not know when it is."
)


@dataclass
class Problem:
    """A request that cannot be scored: the HTTP status and one line saying why."""

    status: int
    error: str


@dataclass
class Item:
    """One decoded request on its way through a batch."""

    image: np.ndarray | None = None
    filename: str = ""
    gradcam: bool = False
    problem: Problem | None = None
    decode_ms: float = 0.0
    out: dict[str, Any] = field(default_factory=dict)


def model_id(scorer: Any) -> dict[str, Any]:
    """What identifies the served weights: the checkpoint's weights checksum (torch) or the
    export's sha256 and format version (onnx)."""
    if getattr(scorer, "backend", "") == "onnx":
        meta = scorer.meta
        return {
            "backend": "onnx",
            "sha256": meta.get("sha256"),
            "format_version": meta.get("format_version"),
            "file": os.path.basename(str(scorer.model_path)),
        }
    from pneumonia.integrity import weights_digest

    predictor = scorer.predictor
    return {
        "backend": "torch",
        "weights_digest": weights_digest(predictor._module_state),
        "file": os.path.basename(predictor.recipe.checkpoint or ""),
    }


def describe(scorer: Any) -> dict[str, Any]:
    """/info's model part: classes, threshold and its method, preprocessing, recipe summary."""
    if getattr(scorer, "backend", "") == "onnx":
        summary = scorer.summary()
        recipe = summary.get("recipe") or {}
        validation = scorer.meta.get("validation") or {}
        method = scorer.meta.get("threshold_method") or recipe.get("threshold_method")
        prep = summary["preprocess"]
        precision = "int8 (QDQ)" if (scorer.meta.get("quantization") or {}).get("mode") == "int8" else "32-true"
    else:
        p = scorer.predictor
        summary = p.summary()
        recipe = summary["recipe"]
        validation = p.recipe.val_report or {}
        method = p.recipe.threshold_method
        prep = summary["preprocess"]
        precision = p.precision
    keep = ("net", "image_size", "channels", "epoch", "seed", "tta", "normalize", "crop", "temperature", "calibrated")
    return {
        "classes": list(CLASSES),
        "positive_class": CLASSES[1],
        "threshold": float(scorer.threshold),
        "threshold_method": method,
        "precision": precision,
        "preprocess": prep,
        "recipe": {k: recipe[k] for k in keep if k in recipe},
        "validation": {k: validation[k] for k in ("n", "auroc", "recall", "specificity") if k in validation},
        "model": model_id(scorer),
        "intended_use": INTENDED_USE,
    }


def open_model(cfg: DictConfig, max_pixels: int) -> Any:
    """The scorer of `predict.py` (`runners.predict.open_scorer`) for `cfg`."""
    from pneumonia.runners.predict import open_scorer
    from pneumonia.serve.settings import check_model_source

    backend = check_model_source(cfg)
    node = OmegaConf.create(
        {
            "backend": backend,
            "ckpt_path": cfg.get("ckpt_path"),
            "model_path": cfg.get("model_path"),
            "threshold": cfg.get("threshold"),
            "precision": cfg.get("precision"),
            "tta": cfg.get("tta"),
            "device": cfg.get("device", "cpu"),
            "threads": cfg.get("threads"),
            "max_pixels": int(max_pixels),
        }
    )
    return open_scorer(node)


class PneumoniaAPI(ls.LitAPI):
    """Loads the model in each worker (`setup`), decodes a request (`decode_request`),
    scores a batch (`predict`), answers JSON (`encode_response`)."""

    def __init__(self, cfg: DictConfig, settings: ServeSettings) -> None:
        super().__init__(
            max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout, api_path="/predict"
        )
        self.cfg: dict[str, Any] = to_dict(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        self.cfg.pop("hydra", None)
        self.cfg.get("serve", {}).pop("api_key", None)  # the workers need no key
        self.settings = settings
        self.scorer: Any = None

    # ---- in each worker ----------------------------------------------------------------
    def setup(self, device: Any) -> None:
        self.scorer = open_model(cast(DictConfig, OmegaConf.create(self.cfg)), self.settings.max_pixels)
        self.info = describe(self.scorer)
        self.tmp = tempfile.mkdtemp(prefix="pneumonia-serve-")  # mode 0700: request bytes stay private
        atexit.register(shutil.rmtree, self.tmp, True)
        size, channels = int(self.info["preprocess"]["image_size"]), int(self.info["preprocess"]["channels"])
        self.scorer.predict_images(np.zeros((1, channels, size, size), np.uint8))  # warm up

    def decode_request(self, request, **kwargs: Any) -> Item:  # noqa: ANN001 - unannotated: LitServe then passes the parsed JSON body
        start = time.perf_counter()
        item = Item()
        try:
            item.filename, item.gradcam, data = self._parse(request)
            item.image = self._decode(data, item.filename)
        except _Refused as err:
            item.problem = Problem(err.status, str(err))
        except Exception as err:  # noqa: BLE001 - one request's failure must not fail its batch
            log.exception("request not decoded")
            item.problem = Problem(500, f"internal error while decoding ({type(err).__name__})")
        item.decode_ms = (time.perf_counter() - start) * 1000
        return item

    def _parse(self, request: Any) -> tuple[str, bool, bytes]:
        if not isinstance(request, dict):
            raise _Refused(
                400, 'the body must be a JSON object {"image": "<base64>"} or a multipart upload with a \'file\' field'
            )
        unknown = sorted(set(request) - {"image", "filename", "gradcam"})
        if unknown:
            raise _Refused(400, f"unknown field(s) {unknown}: the body takes image, filename, gradcam")
        image = request.get("image")
        if not isinstance(image, str) or not image:
            raise _Refused(400, "the body needs \"image\": the file's bytes in base64 (or a multipart 'file')")
        filename = request.get("filename") or "upload"
        if not isinstance(filename, str):
            raise _Refused(400, '"filename" must be a string')
        gradcam = request.get("gradcam", False)
        if not isinstance(gradcam, bool):
            raise _Refused(400, '"gradcam" must be true or false')
        if gradcam and not self.settings.gradcam:
            raise _Refused(400, "Grad-CAM is turned off on this server (serve.gradcam=false)")
        if gradcam and getattr(self.scorer, "backend", "") == "onnx":
            raise _Refused(
                400, "Grad-CAM needs the torch backend (serve.py ckpt_path=...); this server scores an ONNX export"
            )
        if len(image) > (self.settings.max_bytes * 4) // 3 + 8:
            raise _Refused(413, self._too_large(len(image) * 3 // 4))
        try:
            data = base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise _Refused(400, '"image" is not valid base64') from None
        if not data:
            raise _Refused(400, "empty file (0 bytes)")
        if len(data) > self.settings.max_bytes:
            raise _Refused(413, self._too_large(len(data)))
        return os.path.basename(filename)[:200], gradcam, data

    def _too_large(self, size: int) -> str:
        return (
            f"file of {size / MB:.1f} MB: larger than the limit of {self.settings.max_file_mb:g} MB (serve.max_file_mb)"
        )

    def _decode(self, data: bytes, filename: str) -> np.ndarray:
        folder = tempfile.mkdtemp(dir=self.tmp)
        path = os.path.join(folder, "upload" + os.path.splitext(filename)[1][:10])
        try:
            with open(path, "wb") as f:
                f.write(data)
            try:
                return self.scorer.load(path)
            except Exception as err:  # the message names the private file: name the upload instead
                status = 422
                text = _first_line(err).replace(path, filename).replace(folder, "")
                if not isinstance(err, UserError):
                    text = f"not a readable image or DICOM file ({type(err).__name__}: {text})"
                raise _Refused(status, text) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def batch(self, inputs: list[Item]) -> list[Item]:
        return inputs  # stacked in predict: bad requests stay out of the model's batch

    def predict(self, items: list[Item] | Item, **kwargs: Any) -> list[Item] | Item:
        batch: list[Item] = [items] if isinstance(items, Item) else list(items)
        single = isinstance(items, Item)
        good = [it for it in batch if it.problem is None]
        if good:
            start = time.perf_counter()
            images = np.stack([cast(np.ndarray, it.image) for it in good])
            probs = np.asarray(self.scorer.predict_images(images), dtype=np.float32)
            decisions = self.scorer.decide(probs)
            ms = (time.perf_counter() - start) * 1000
            for it, prob, decision in zip(good, probs, decisions):
                it.out = {
                    "probability": float(prob),
                    "decision": CLASSES[int(decision)],
                    "predict_ms": round(ms, 3),
                    "batch_size": len(good),
                }
            explain = [i for i, it in enumerate(good) if it.gradcam]
            if explain:
                self._gradcams([good[i] for i in explain], images[explain], decisions[explain])
        return batch[0] if single else batch

    def _gradcams(self, items: list[Item], images: np.ndarray, decisions: np.ndarray) -> None:
        from pneumonia.explain.figures import overlay_image

        maps = self.scorer.gradcam(images, np.asarray(decisions), "predicted")
        for it, image, cam in zip(items, images, maps):
            drawn = overlay_image(
                image, cam, probability=it.out["probability"], threshold=self.scorer.threshold, title=it.filename
            )
            buffer = io.BytesIO()
            drawn.save(buffer, format="PNG")
            it.out["gradcam_png"] = base64.b64encode(buffer.getvalue()).decode("ascii")

    def unbatch(self, output: list[Item]) -> list[Item]:
        return list(output)

    def encode_response(self, item: Item, **kwargs: Any):  # noqa: ANN201 - unannotated: LitServe returns it as is
        from starlette.responses import JSONResponse

        if item.problem is not None:
            return JSONResponse({"error": item.problem.error}, status_code=item.problem.status)
        return {
            **{k: v for k, v in item.out.items() if k not in ("predict_ms", "batch_size")},
            "threshold": float(self.scorer.threshold),
            "threshold_method": self.info["threshold_method"],
            "positive_class": CLASSES[1],
            "filename": item.filename,
            "model": self.info["model"],
            "timing_ms": {
                "decode": round(item.decode_ms, 3),
                "predict": item.out["predict_ms"],
                "batch_size": item.out["batch_size"],
            },
        }


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]
