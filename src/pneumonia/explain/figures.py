"""Pictures of Grad-CAM maps: one X-ray with its heatmap, and a gallery of thumbnails.

The decision rule is the one used everywhere in the project: PNEUMONIA when
P(pneumonia) >= threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI without a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.layout_engine import ConstrainedLayoutEngine  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from pneumonia import CLASSES  # noqa: E402

CAM_CMAP = "jet"
CAM_ALPHA = 0.4  # opacity of the heatmap where the map is 1; scaled down with the map
CAM_FLOOR = 0.05  # map values below this are not drawn at all
WRONG_COLOR = "#d00000"
RIGHT_COLOR = "#2e9e44"


def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        if a.dtype in (torch.bfloat16, torch.float16):
            a = a.float()
        a = a.numpy()
    return np.asarray(a)


def _gray(image: Any) -> np.ndarray:
    """(H, W), (C, H, W) or (H, W, C) uint8/float image -> (H, W) float in [0, 1]."""
    img = _to_numpy(image)
    if img.ndim == 3:
        if img.shape[0] in (1, 3):
            img = img.mean(axis=0)
        elif img.shape[-1] in (1, 3):
            img = img.mean(axis=-1)
        else:
            raise ValueError(f"cannot read a {img.shape} array as (C, H, W) or (H, W, C)")
    elif img.ndim != 2:
        raise ValueError(f"image must be (H, W), (C, H, W) or (H, W, C); got shape {img.shape}")
    if np.issubdtype(img.dtype, np.integer):
        return img.astype(np.float32) / 255.0
    img = img.astype(np.float32)
    lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
    if lo < 0.0 or hi > 1.0:  # e.g. mean/std-normalised input: stretch for display
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img


def _resized_cam(cam: Any, shape: tuple[int, int]) -> np.ndarray:
    """A (h, w) or (1, h, w) map -> (H, W) float in [0, 1], bilinearly resized to `shape`."""
    c = torch.as_tensor(_to_numpy(cam), dtype=torch.float32)
    c = c.reshape(c.shape[-2:]) if c.ndim == 3 and c.shape[0] == 1 else c
    if c.ndim != 2:
        raise ValueError(f"cam must be (h, w) or (1, h, w); got shape {tuple(c.shape)}")
    if tuple(c.shape) != tuple(shape):
        c = torch.nn.functional.interpolate(c[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0]
    return torch.nan_to_num(c).clamp(0.0, 1.0).numpy()


def _draw(ax: plt.Axes, image: Any, cam: Any | None) -> None:
    gray = _gray(image)
    ax.imshow(gray, cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear")
    if cam is not None:
        c = _resized_cam(cam, gray.shape)
        rgba = plt.get_cmap(CAM_CMAP)(c)
        rgba[..., 3] = np.where(c > CAM_FLOOR, CAM_ALPHA * c, 0.0)  # faint evidence stays see-through
        ax.imshow(rgba, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


def _decision(probability: float, threshold: float) -> int:
    return int(float(probability) >= float(threshold))


def caption(probability: float, threshold: float, *, explain: str = "predicted", empty: bool = False) -> str:
    """'P(pneumonia) = 0.87, threshold 0.34 → PNEUMONIA (map: evidence for PNEUMONIA)'.

    Enough decimals that probability and threshold never print alike, and `empty` (a map
    with nothing above the drawing floor) says so instead of promising evidence."""
    predicted = CLASSES[_decision(probability, threshold)]
    evidence = predicted if explain == "predicted" else CLASSES[1]
    digits = 2
    while digits < 6 and round(float(probability), digits) == round(float(threshold), digits):
        digits += 1
    what = f"no region pushed towards {evidence}" if empty else f"evidence for {evidence}"
    return (
        f"P(pneumonia) = {float(probability):.{digits}f}, threshold {float(threshold):.{digits}f} "
        f"\u2192 {predicted} (map: {what})"
    )


def overlay_figure(
    image: Any,
    cam: Any | None,
    *,
    probability: float,
    threshold: float,
    title: str | None = None,
    explain: str = "predicted",
) -> plt.Figure:
    """The X-ray in gray with its Grad-CAM heatmap over it and the decision as caption.

    image: (H, W), (C, H, W) or (H, W, C) uint8 or float array/tensor; cam: a map in [0, 1] of
    any size (resized to the image), or None for the bare image. `explain` is the mode the map
    was computed with (see `pneumonia.explain.gradcam.gradcam`); it only changes the caption.
    """
    fig, ax = plt.subplots(figsize=(4, 4.4), dpi=100)
    _draw(ax, image, cam)
    if title:
        ax.set_title(title, fontsize=9)
    fig.text(
        0.5, 0.03, caption(probability, threshold, explain=explain), ha="center", va="bottom", fontsize=7.5, wrap=True
    )
    fig.subplots_adjust(left=0.03, right=0.97, top=0.92 if title else 0.97, bottom=0.1)
    return fig


def overlay_image(
    image: Any,
    cam: Any | None,
    *,
    probability: float,
    threshold: float,
    title: str | None = None,
    explain: str = "predicted",
    size: int = 400,
) -> Image.Image:
    """The same picture as `overlay_figure`, drawn with PIL: a (size) x (size + 40) RGB image.

    `predict.py explain=true` writes one per image; matplotlib takes ~70 ms a figure, this
    a few ms (measured with benchmarks/predict.py), so heatmaps of a large folder take
    seconds, not minutes.
    """
    gray = _gray(image)
    side = size - 20
    base = Image.fromarray((gray * 255).round().astype(np.uint8), "L").resize((side, side), Image.Resampling.BILINEAR)
    rgb = np.asarray(base.convert("RGB"), dtype=np.float32) / 255.0
    if cam is not None:
        c = _resized_cam(cam, (side, side))
        colors = matplotlib.colormaps[CAM_CMAP](c)[..., :3]
        alpha = np.where(c > CAM_FLOOR, CAM_ALPHA * c, 0.0)[..., None]  # faint evidence stays see-through
        rgb = rgb * (1 - alpha) + colors * alpha
    canvas = Image.new("RGB", (size, size + 40), "white")
    canvas.paste(Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB"), (10, 20))
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    if title:
        draw.text((size / 2, 10), str(title)[:60], fill="black", font=font, anchor="mm")
    empty = cam is not None and float(np.nanmax(_to_numpy(cam))) <= CAM_FLOOR
    first, _, second = caption(probability, threshold, explain=explain, empty=empty).partition(" (")
    draw.text((size / 2, size + 8), first, fill="black", font=font, anchor="mm")
    draw.text((size / 2, size + 26), "(" + second, fill="black", font=font, anchor="mm")
    return canvas


def _font(px: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans, which matplotlib ships (it has the arrow of the caption)."""
    from matplotlib import font_manager

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), px)


def save_overlay(
    path: str | Path,
    image: Any,
    cam: Any | None,
    *,
    probability: float,
    threshold: float,
    title: str | None = None,
    explain: str = "predicted",
) -> Path:
    """`overlay_image` written as a 400x440 PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay_image(image, cam, probability=probability, threshold=threshold, title=title, explain=explain).save(
        path, format="PNG", compress_level=3
    )  # zlib's default 6: 2x the time
    return path


def _frame(ax: plt.Axes, color: str, width: float) -> None:
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(color)
        spine.set_linewidth(width)


def gallery_figure(items: Sequence[Mapping[str, Any]], *, columns: int = 4) -> plt.Figure:
    """A grid of thumbnails, each titled with its name, P(pneumonia), true and predicted label.

    Each item: image, probability, prediction (0/1), label (0/1 or None when unknown), and
    optionally cam (drawn over the image) and title (e.g. the file name). Wrong predictions get
    a thick red frame and "WRONG" in the title, correct ones a thin green frame; unknown labels
    no frame. Each cell is 2.4 x 2.8 inches.
    """
    if not items:
        raise ValueError("gallery_figure needs at least one item")
    if columns < 1:
        raise ValueError(f"columns={columns} must be >= 1")
    columns = min(columns, len(items))
    rows = math.ceil(len(items) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(2.4 * columns, 2.8 * rows), dpi=100, squeeze=False, layout="constrained"
    )
    engine = fig.get_layout_engine()
    assert isinstance(engine, ConstrainedLayoutEngine)  # layout="constrained"
    engine.set(rect=(0, 0, 1, 1 - 0.12 / rows))  # constrained layout clips the top titles
    for ax in axes.flat[len(items) :]:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        _draw(ax, item["image"], item.get("cam"))
        prediction = int(item["prediction"])
        label = item.get("label")
        true = "?" if label is None else CLASSES[int(label)]
        lines = [str(item["title"])] if item.get("title") else []
        lines.append(f"P={float(item['probability']):.2f}  true {true}")
        verdict = ""
        if label is not None:
            wrong = int(label) != prediction
            _frame(ax, WRONG_COLOR if wrong else RIGHT_COLOR, 5.0 if wrong else 1.5)
            verdict = "  WRONG" if wrong else ""
        else:
            ax.spines[:].set_visible(False)
        lines.append(f"pred {CLASSES[prediction]}{verdict}")
        ax.set_title("\n".join(lines), fontsize=7)
    return fig


def save_gallery(path: str | Path, items: Sequence[Mapping[str, Any]], *, columns: int = 4, dpi: int = 100) -> Path:
    """`gallery_figure` written as a PNG (240*columns x 280*rows px at the default dpi)."""
    return _save(gallery_figure(items, columns=columns), path, dpi)


def _save(fig: plt.Figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path
