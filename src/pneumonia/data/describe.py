"""Dataset overview (`python -m pneumonia.tools.describe data.root=DIR`, or `--root DIR`).

Per split and class: images, patients (from the file names), pneumonia subtypes; duplicates
by content hash (within a split and across splits) and patients found in more than one split;
image sizes, modes and formats from the file headers; and a grid of sample images per class
(`samples.png`). Written to `outputs/describe/<date_time>/` (`--out DIR`): `dataset.json`,
`samples.png`. `eval.py` puts the same counts of the split it scored into its report.

Each file is read once: its bytes are hashed and its header parsed from those bytes (PIL
`Image.open` without `load()`, pydicom without the pixel data), so nothing is decoded except
the few sample images.
"""

from __future__ import annotations

import hashlib
import io
import logging
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pneumonia import CLASSES
from pneumonia.data.dicom import is_dicom
from pneumonia.data.folder import DataLayoutError, scan_split
from pneumonia.data.layout import find_data_root
from pneumonia.data.patients import patient_id, pneumonia_subtype

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SUBTYPE_KEYS = ("bacteria", "virus")


# ---- one file ---------------------------------------------------------------------------
def file_info(path: str | Path) -> dict[str, Any]:
    """sha256 of the bytes, and width, height, mode and format from the header (no pixel
    decoding); `error` instead of the header fields for a file that is not a readable image."""
    data = Path(path).read_bytes()
    info: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if data[128:132] == b"DICM" or Path(path).suffix.lower() in (".dcm", ".dicom") or is_dicom(path):
        return {**info, **_dicom_header(data)}
    from pneumonia.data.pixels import open_image

    try:
        with open_image(io.BytesIO(data)) as img:  # parses the header only
            info.update(width=img.width, height=img.height, mode=img.mode, format=img.format or "?")
    except Exception as err:  # noqa: BLE001 - a bad file is counted, not fatal
        info["error"] = f"{type(err).__name__}: {str(err)[:120]}"
    return info


def _dicom_header(data: bytes) -> dict[str, Any]:
    try:
        import pydicom
    except ImportError:
        return {"format": "DICOM", "mode": "DICOM (pydicom not installed)"}
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        return {
            "format": "DICOM",
            "width": int(ds.Columns),
            "height": int(ds.Rows),
            "mode": f"DICOM {ds.get('PhotometricInterpretation', '?')} {int(ds.get('BitsStored', 0))}-bit",
        }
    except Exception as err:  # noqa: BLE001
        return {"format": "DICOM", "error": f"{type(err).__name__}: {str(err)[:120]}"}


# ---- a split ----------------------------------------------------------------------------
def _stats(values: Sequence[int]) -> dict[str, Any] | None:
    if not values:
        return None
    median = statistics.median(values)
    return {"min": min(values), "median": int(median) if float(median).is_integer() else median, "max": max(values)}


def describe_files(paths: Sequence[str], labels: Sequence[int], *, threads: int = 8) -> dict[str, Any]:
    """Counts, patients, subtypes, duplicates and header statistics of one split's files."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        infos = list(pool.map(file_info, paths))
    classes: dict[str, Any] = {}
    for index, name in enumerate(CLASSES):
        sel = [i for i, label in enumerate(labels) if label == index]
        ids = [patient_id(paths[i]) for i in sel]
        known = [p for p in ids if not p.startswith("file:")]
        entry: dict[str, Any] = {
            "images": len(sel),
            "patients": len(set(ids)),
            "patients_from_names": len(set(known)),
            "unnamed_images": len(ids) - len(known),
            "patients_with_several_images": sum(1 for c in Counter(ids).values() if c > 1),
        }
        if index == 1:
            kinds = Counter(pneumonia_subtype(paths[i]) for i in sel)
            entry["subtypes"] = {**{k: kinds.get(k, 0) for k in SUBTYPE_KEYS}, "not_in_name": kinds.get(None, 0)}
        classes[name] = entry
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, info in enumerate(infos):
        by_hash[info["sha256"]].append(i)
    groups = [idx for idx in by_hash.values() if len(idx) > 1]
    readable = [info for info in infos if "width" in info]
    return {
        "images": len(paths),
        "classes": classes,
        "patients": len({patient_id(p) for p in paths}),
        "duplicates": {
            "groups": len(groups),
            "extra_copies": sum(len(g) - 1 for g in groups),
            "across_classes": sum(1 for g in groups if len({labels[i] for i in g}) > 1),
            "examples": [[Path(paths[i]).name for i in g] for g in groups[:5]],
        },
        "width": _stats([i["width"] for i in readable]),
        "height": _stats([i["height"] for i in readable]),
        "modes": dict(Counter(i.get("mode", "?") for i in infos if "error" not in i).most_common()),
        "formats": dict(Counter(i.get("format", "?") for i in infos).most_common()),
        "unreadable": [{"file": paths[i], "error": info["error"]} for i, info in enumerate(infos) if "error" in info],
        "megabytes": round(sum(i["bytes"] for i in infos) / 1e6, 1),
        "_hashes": [i["sha256"] for i in infos],  # for the cross-split check; dropped from the output
    }


def describe_split(root: str | Path, split: str, *, required: bool = True) -> dict[str, Any] | None:
    """`describe_files` of `root/split` (None when the split is absent and not required)."""
    files = scan_split(root, split, required=required)
    if files is None:
        return None
    out = describe_files(files.paths, files.labels)
    out.pop("_hashes")
    return {"split": split, "folder": str(files.split_dir), **out}


def describe_root(root: str | Path, splits: Sequence[str] = SPLITS) -> dict[str, Any]:
    """Every split present under `root` (train is required), and what the splits share:
    identical files and patient ids."""
    root = find_data_root(root)
    found: dict[str, Any] = {}
    files_of: dict[str, Any] = {}
    for split in splits:
        files = scan_split(root, split, required=False)
        if files is None:
            continue
        files_of[split] = files
        found[split] = {"split": split, "folder": str(files.split_dir), **describe_files(files.paths, files.labels)}
    if not found:
        raise DataLayoutError(f"data.root '{root}' holds none of the split folders {', '.join(splits)}")
    hashes: dict[str, set[str]] = {s: set(d.pop("_hashes")) for s, d in found.items()}
    patients = {
        s: {patient_id(p) for p in f.paths if not patient_id(p).startswith("file:")} for s, f in files_of.items()
    }
    shared: dict[str, Any] = {}
    names = list(found)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared[f"{a}/{b}"] = {
                "identical_files": len(hashes[a] & hashes[b]),
                "patients_in_both": len(patients[a] & patients[b]),
            }
    return {"root": str(Path(root).expanduser()), "splits": found, "shared": shared}


# ---- sample grid --------------------------------------------------------------------------
def sample_grid(
    root: str | Path, path: str | Path, *, split: str = "train", per_class: int = 6, seed: int = 0, size: int = 160
) -> Path:
    """A PNG grid: one row per class, `per_class` random images of `split` (decoded with the
    project's preset, gray, squashed to `size` px as the model sees them), file names below."""
    import random

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pneumonia.data.preprocess import Preprocess

    files = scan_split(find_data_root(root), split)
    rng = random.Random(seed)
    prep = Preprocess(size, 1)
    fig, axes = plt.subplots(
        len(CLASSES), per_class, figsize=(1.9 * per_class, 2.2 * len(CLASSES)), dpi=100, squeeze=False
    )
    for row, name in enumerate(CLASSES):
        pool = [p for p, label in zip(files.paths, files.labels) if label == row]
        chosen = sorted(rng.sample(pool, min(per_class, len(pool))))
        for col, ax in enumerate(axes[row]):
            ax.set_axis_off()
            if col >= len(chosen):
                continue
            try:
                ax.imshow(prep.load(chosen[col])[0], cmap="gray", vmin=0, vmax=255)
            except Exception:  # noqa: BLE001 - an unreadable sample leaves its cell empty
                ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
            ax.set_title(Path(chosen[col]).stem[:28], fontsize=7)
        axes[row][0].text(
            -0.08,
            0.5,
            name,
            transform=axes[row][0].transAxes,
            rotation=90,
            ha="right",
            va="center",
            fontsize=11,
            weight="bold",
        )
    fig.suptitle(f"{split}/: {per_class} random images per class (seed {seed})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- text -------------------------------------------------------------------------------
def format_overview(desc: dict[str, Any]) -> str:
    """The printed tables: counts per split and class, then duplicates, sharing and sizes."""
    lines = [
        f"Data root: {desc['root']}",
        "",
        f"{'split':<6} {'class':<10} {'images':>7} {'patients':>9} {'several':>8}  subtypes",
        "-" * 70,
    ]
    for split, d in desc["splits"].items():
        for name, c in d["classes"].items():
            sub = c.get("subtypes")
            subtypes = (
                f"bacteria {sub['bacteria']}, virus {sub['virus']}, not in name {sub['not_in_name']}" if sub else ""
            )
            lines.append(
                f"{split:<6} {name:<10} {c['images']:>7} {c['patients']:>9} "
                f"{c['patients_with_several_images']:>8}  {subtypes}"
            )
        lines.append(f"{split:<6} {'all':<10} {d['images']:>7} {d['patients']:>9}")
    lines += [
        "",
        "(patients: distinct ids from the file names, an unrecognised name counting as its own patient; "
        "several: patients with more than one image)",
        "",
    ]
    for split, d in desc["splits"].items():
        dup = d["duplicates"]
        w, h = d["width"], d["height"]
        size = (
            f"width {w['min']}-{w['max']} (median {w['median']}), height {h['min']}-{h['max']} (median {h['median']})"
            if w and h
            else "sizes unknown"
        )
        modes = ", ".join(f"{k} {v}" for k, v in d["modes"].items())
        formats = ", ".join(f"{k} {v}" for k, v in d["formats"].items())
        lines.append(
            f"{split}: {dup['groups']} group(s) of byte-identical files ({dup['extra_copies']} extra "
            f"copies{', ' + str(dup['across_classes']) + ' across classes' if dup['across_classes'] else ''}); "
            f"{size}; modes: {modes}; formats: {formats}; {d['megabytes']} MB"
            + (f"; {len(d['unreadable'])} unreadable" if d["unreadable"] else "")
        )
    for pair, s in desc.get("shared", {}).items():
        lines.append(f"{pair}: {s['identical_files']} identical file(s), {s['patients_in_both']} patient id(s) in both")
    return "\n".join(lines)
