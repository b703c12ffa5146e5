"""Candidate recipes against another hospital's images: each trained over 3 seeds and ranked
by the worst case of stress validation (`python -m pneumonia.tools.stress --set all`), not
by plain validation (docs/results.md, "Candidates against the worst case").

    python benchmarks/shift_candidates.py --data-root ../shared/data/chest_xray
    python benchmarks/shift_candidates.py --data-root ... --candidates best,overlay --seeds 1,2,3

Each run is `python train.py experiment=best seed=S <overrides> callbacks.gradcam=null` in
its own process, under outputs/shift_candidates/<candidate>/seed<S>; a run whose
train_summary.json exists is not trained again (the script can be stopped and restarted).
Everything is scored on the validation split only. Writes docs/results/shift_candidates.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from results import ROOT, write_result

# name: (overrides, what it adds)
CANDIDATES: dict[str, tuple[list[str], str]] = {
    "best": ([], "`experiment=best` as it is"),
    "acquisition": (["data.augment.acquisition=0.5"], "+ `data.augment.acquisition=0.5`"),
    "overlay": (["data.augment.overlay=0.5"], "+ `data.augment.overlay=0.5`"),
    "frame": (["data.augment.frame=0.5"], "+ `data.augment.frame=0.5`"),
    "both": (
        ["data.augment.acquisition=0.5", "data.augment.overlay=0.5"],
        "+ `data.augment.acquisition=0.5 data.augment.overlay=0.5`",
    ),
    "overlay_frame": (
        ["data.augment.overlay=0.5", "data.augment.frame=0.5"],
        "+ `data.augment.overlay=0.5 data.augment.frame=0.5`",
    ),
    "longer": (["trainer.max_epochs=20"], "+ `trainer.max_epochs=20` (cosine over twice the epochs)"),
    "crop": (["data.crop=content"], "+ `data.crop=content` (each image cut to its content, every path)"),
    "longer_crop": (
        ["trainer.max_epochs=20", "data.crop=content"],
        "+ `trainer.max_epochs=20 data.crop=content`",
    ),
    # the teacher: the ensemble of this sitting's `best` runs (seeds as --seeds), built first
    "distill": (
        ["distill.teacher={teacher}", "distill.weight=0.5"],
        "+ `distill.teacher=<ensemble of the best runs above> distill.weight=0.5`",
    ),
}
# perturbation kinds that no candidate's augmentation imitates: the held-out worst case
# (acquisition: gamma, blur, noise, resolution, composed; overlay: marker, border; frame: fov)
UNTRAINED_KINDS = ("contrast", "jpeg", "crop", "apex", "costophrenic")


def train(name: str, overrides: list[str], seed: int, data_root: str, out: Path) -> dict:
    run = out / name / f"seed{seed}"
    summary = run / "train_summary.json"
    if not summary.is_file():
        cmd = [
            sys.executable,
            "train.py",
            "experiment=best",
            f"seed={seed}",
            *overrides,
            "callbacks.gradcam=null",
            f"data.root={data_root}",
            f"hydra.run.dir={run}",
        ]
        print("+", " ".join(cmd[1:]), flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads(summary.read_text())


def teacher(seeds: list[int], data_root: str, out: Path) -> Path:
    """The ensemble of the `best` runs of `seeds` (trained first when missing): distill's teacher."""
    folder = out / "teacher"
    if not (folder / "checkpoints" / "best.ckpt").is_file():
        members = [str(out / "best" / f"seed{s}") for s in seeds]
        cmd = [
            sys.executable,
            "-m",
            "pneumonia.tools.ensemble",
            *members,
            "--out",
            str(folder),
            "--data-root",
            data_root,
        ]
        print("+", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return folder


def stress(name: str, seeds: list[int], out: Path, which: str = "all") -> dict:
    path = out / name / f"stress_{which}.json"
    runs = [out / name / f"seed{s}" for s in seeds]
    if not path.is_file() or set(json.loads(path.read_text())) != {str(r / "checkpoints" / "best.ckpt") for r in runs}:
        cmd = [sys.executable, "-m", "pneumonia.tools.stress", *map(str, runs), "--set", which, "--json", str(path)]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads(path.read_text())


def mean_sd(values: list[float], digits: int = 4) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--candidates", default="best,acquisition,overlay,both")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "shift_candidates")
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for every run (a smoke test: debug=tiny)")
    ap.add_argument("--no-write", action="store_true", help="print the table, write no docs/results file")
    ap.add_argument("--name", default="shift_candidates", help="the docs/results/NAME.json to write")
    ap.add_argument("--note", default="", help="a sentence added to the table's notes (what shared the CPU)")
    ap.add_argument("--no-dicom", action="store_true", help="leave out the DICOM-path column (--set dicom)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.candidates.split(",")
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        sys.exit(f"error: unknown candidates {unknown}: choose from {', '.join(CANDIDATES)}")
    data_root = str(Path(args.data_root).resolve())

    rows, per_seed = [], {}
    for name in names:
        overrides, label = CANDIDATES[name]
        if any("{teacher}" in o for o in overrides):
            for s in seeds:
                train("best", CANDIDATES["best"][0] + args.extra, s, data_root, args.out)
            folder = teacher(seeds, data_root, args.out)
            overrides = [o.format(teacher=folder) for o in overrides]
        summaries = [train(name, [*overrides, *args.extra], s, data_root, args.out) for s in seeds]
        results = stress(name, seeds, args.out)
        by_seed = [results[str(args.out / name / f"seed{s}" / "checkpoints" / "best.ckpt")] for s in seeds]
        dicom = [] if args.no_dicom else stress(name, seeds, args.out, "dicom")
        dicom_auroc = (
            [dicom[str(args.out / name / f"seed{s}" / "checkpoints" / "best.ckpt")]["worst"]["auroc"] for s in seeds]
            if dicom
            else []
        )
        worst = [r["worst"]["auroc"] for r in by_seed]
        held_out = [
            min(m["auroc"] for p, m in r["per_perturbation"].items() if p.split("_", 1)[0] in UNTRAINED_KINDS)
            for r in by_seed
        ]
        where = Counter(r["worst"]["auroc_perturbation"] for r in by_seed).most_common()
        per_seed[name] = [
            {
                "seed": s,
                "plain_auroc": r["plain"]["auroc"],
                "worst_auroc": r["worst"]["auroc"],
                "worst_at": r["worst"]["auroc_perturbation"],
                "untrained_worst_auroc": h,
                "stress_auroc": r["stress"]["auroc"],
                "stress_specificity": r["stress"]["specificity"],
                "plain_specificity": r["plain"]["specificity"],
                "plain_sensitivity": r["plain"]["recall"],
                "threshold": r["threshold"],
                "train_minutes": sm["train_minutes"],
                **({"dicom_auroc": d} if dicom_auroc else {}),
                "per_perturbation_auroc": {p: m["auroc"] for p, m in r["per_perturbation"].items()},
            }
            for s, r, h, sm, d in zip(seeds, by_seed, held_out, summaries, dicom_auroc or [None] * len(seeds))
        ]
        rows.append(
            [
                label,
                mean_sd([r["plain"]["auroc"] for r in by_seed]),
                mean_sd(worst) + " (" + ", ".join(f"{p} {c}x" if c > 1 else p for p, c in where) + ")",
                mean_sd(held_out),
                mean_sd([r["stress"]["auroc"] for r in by_seed]),
                *(
                    [mean_sd(dicom_auroc), mean_sd([min(w, d) for w, d in zip(worst, dicom_auroc)])]
                    if dicom_auroc
                    else []
                ),
                f"{statistics.fmean(r['plain']['specificity'] for r in by_seed):.3f} / "
                f"{statistics.fmean(r['stress']['specificity'] for r in by_seed):.3f}",
                mean_sd([s["train_minutes"] for s in summaries], 1),
            ]
        )
        print(" | ".join(map(str, rows[-1])), flush=True)

    if args.no_write:
        return
    write_result(
        args.name,
        title=(
            f"Candidates against the worst case: mean ± sample sd over seeds {args.seeds}, "
            "validation split only, each checkpoint at its stored threshold and TTA"
        ),
        command=f"python benchmarks/shift_candidates.py --data-root <chest_xray> --candidates {args.candidates} "
        f"--seeds {args.seeds}" + (f" --name {args.name}" if args.name != "shift_candidates" else ""),
        columns=[
            "recipe",
            "plain AUROC",
            "worst-case stress AUROC (where)",
            f"worst AUROC, untrained kinds ({', '.join(UNTRAINED_KINDS)})",
            "pooled stress AUROC",
            *([] if args.no_dicom else ["DICOM path AUROC", "worst case with the DICOM path"]),
            "specificity plain / stress",
            "train minutes per seed",
        ],
        rows=rows,
        notes=(
            "Stress set `all`: the 9 acquisition changes and the 6 shortcut perturbations of data/stress.py. "
            "The overlay augmentation burns in A, P and digits, never the R/L of the `marker` perturbation; "
            "the untrained kinds are imitated by no candidate's augmentation. The DICOM path (`--set dicom`): each "
            "validation image as a 12-bit DICOM with a window 0.8 times its 1-99th percentile range, half of them "
            "MONOCHROME1, read back by data/dicom.py (imitated by no candidate). Train minutes from each run's "
            "train_summary.json (the fit alone, one run at a time)." + (f" {args.note}" if args.note else "")
        ),
        extra={"per_seed": per_seed},
    )


if __name__ == "__main__":
    main()
