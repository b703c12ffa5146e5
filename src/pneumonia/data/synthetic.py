"""A small synthetic chest-X-ray-like ImageFolder tree (no real images needed): for tests,
and for trying the pipeline before the data is downloaded (`python -m pneumonia.data.synthetic DIR`).

PNEUMONIA images carry a bright diffuse patch in one lung field, NORMAL images do not:
a pattern a small CNN learns within a few epochs even after flips and zooms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _xray(rng: np.random.Generator, size: tuple[int, int], pneumonia: bool) -> np.ndarray:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    body = 90 + 60 * np.exp(-((xx - 0.5) ** 2) / 0.08)  # bright mediastinum, darker lungs
    img = body + rng.normal(0, 12, (h, w))
    if pneumonia:
        cx = rng.choice([0.3, 0.7]) + rng.uniform(-0.05, 0.05)
        cy = rng.uniform(0.45, 0.65)
        img += 120 * np.exp(-(((xx - cx) ** 2) + ((yy - cy) ** 2)) / 0.04)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_chest_xray_tree(root: Path, counts: dict[str, tuple[int, int]] | None = None, seed: int = 0) -> Path:
    """Write `root/<split>/<CLASS>/*` with `counts[split] = (n_normal, n_pneumonia)`.

    Sizes vary (40-90 px, not square), modes vary (grayscale JPEG, RGB JPEG, grayscale PNG),
    and names follow the Kaggle patterns, with two images for some patients.
    """
    counts = counts or {"train": (48, 48), "val": (4, 4), "test": (16, 16)}
    rng = np.random.default_rng(seed)
    patient = {"NORMAL": 100 + 1000 * seed, "PNEUMONIA": 100 + 1000 * seed}
    for split, (n_normal, n_pneu) in counts.items():
        for cls, n in (("NORMAL", n_normal), ("PNEUMONIA", n_pneu)):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            i = 0
            while i < n:
                patient[cls] += 1
                pid = patient[cls]
                for k in range(1 + (pid % 3 == 0)):  # every third patient has two images
                    if i >= n:
                        break
                    size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
                    arr = _xray(rng, size, cls == "PNEUMONIA")
                    if cls == "NORMAL":
                        prefix = "NORMAL2-" if pid % 2 else ""
                        name = f"{prefix}IM-{pid:04d}-{k + 1:04d}"
                    else:
                        name = f"person{pid}_{'bacteria' if pid % 2 else 'virus'}_{i}"
                    kind = i % 3
                    if kind == 0:
                        Image.fromarray(arr, "L").save(folder / f"{name}.jpeg", quality=90)
                    elif kind == 1:
                        Image.fromarray(np.stack([arr] * 3, -1), "RGB").save(folder / f"{name}.jpeg", quality=90)
                    else:
                        Image.fromarray(arr, "L").save(folder / f"{name}.png")
                    i += 1
    return root


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m pneumonia.data.synthetic",
        description="Write a small synthetic chest-X-ray-like ImageFolder tree "
        "(train/, val/, test/ with NORMAL/ and PNEUMONIA/) to try the "
        "pipeline without the real data.",
    )
    ap.add_argument("root", type=Path, help="folder to create (must not exist or be empty)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.root.exists() and any(args.root.iterdir()):
        raise SystemExit(f"error: {args.root} exists and is not empty")
    make_chest_xray_tree(args.root, seed=args.seed)
    print(f"Wrote {args.root}/{{train,val,test}}/{{NORMAL,PNEUMONIA}} (48+48 / 4+4 / 16+16 images)")


if __name__ == "__main__":
    main()
