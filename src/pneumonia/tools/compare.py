"""Compare two models scored on the same images:
`python -m pneumonia.tools.compare <eval or predict dir A> <eval or predict dir B> [--out DIR]`.

Reads each folder's `predictions.csv` (written by `eval.py`, or by `predict.py` on labelled
images: `pneumonia.evaluation.predictions` reads both) and pairs the rows image by image.
Refuses, with one line, when the two were scored on different images (or disagree on a
label). Then:

- **McNemar's test** on the paired decisions: `b` images only A gets right, `c` only B gets
  right; the exact binomial test when b + c < 25, else the chi-square statistic with
  continuity correction (the output says which).
- **DeLong's test** on the AUROC difference (the fast midrank form of Sun & Xu 2014).
- **The difference of each metric** (B - A) with a paired bootstrap 95% interval: the same
  resamples of the patients (of the images when the file names carry no patient ids) for both.

Each model keeps the decisions it made (its own threshold), as in its `predictions.csv`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.errors import UserError
from pneumonia.evaluation import METRIC_NAMES
from pneumonia.evaluation import predictions
from pneumonia.evaluation import statistics as st
from pneumonia.evaluation.analysis import patient_groups


class CompareError(UserError):
    """The two evaluations cannot be compared (missing files, different images)."""


def read_predictions(folder: str | Path) -> dict[str, dict[str, Any]]:
    """{path: {label, probability, prediction}} (class indices) from the predictions.csv of an
    eval.py or a predict.py output folder (or the CSV itself); every image must have a label."""
    try:
        schema, rows = predictions.read_predictions(folder)
    except predictions.PredictionsError as err:
        raise CompareError(str(err)) from None
    unlabelled = [r.path for r in rows if r.label is None]
    if unlabelled:
        raise CompareError(
            f"'{folder}' has {len(unlabelled)} image(s) without a label, e.g. '{unlabelled[0]}': "
            f"compare needs the truth (predict.py reads it from a NORMAL/ or PNEUMONIA/ folder)"
        )
    return {r.path: {"label": r.label, "probability": r.probability, "prediction": r.prediction} for r in rows}


def _tail(path: str) -> str:
    """`CLASS/file name`: the same image under another data root."""
    parts = Path(path).parts
    return "/".join(parts[-2:])


def pair(
    a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], name_a: str = "A", name_b: str = "B"
) -> tuple[list[str], str]:
    """The paths of `a` in a common order with the keys to find them in `b`, and how they
    were matched: by full path, else by class folder and file name (the same images under
    two data roots). A `CompareError` when the image sets differ."""
    if set(a) == set(b):
        return sorted(a), "path"
    tails_a, tails_b = {_tail(p): p for p in a}, {_tail(p): p for p in b}
    if len(tails_a) == len(a) and len(tails_b) == len(b) and set(tails_a) == set(tails_b):
        return sorted(a), "class folder and file name"
    only_a, only_b = set(a) - set(b), set(b) - set(a)
    example = sorted(only_a or only_b)[0]
    raise CompareError(
        f"{name_a} and {name_b} were scored on different images ({len(a)} and {len(b)} images; "
        f"{len(only_a)} only in {name_a}, {len(only_b)} only in {name_b}, e.g. '{example}'): "
        f"compare needs both evaluations on the same images"
    )


def compare(
    folder_a: str | Path, folder_b: str | Path, *, resamples: int = st.DEFAULT_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """McNemar, DeLong and paired-bootstrap differences of B against A (see the module)."""
    a, b = read_predictions(folder_a), read_predictions(folder_b)
    paths, matched = pair(a, b)
    if matched == "path":
        rows_b = [b[p] for p in paths]
    else:
        by_tail = {_tail(p): p for p in b}
        rows_b = [b[by_tail[_tail(p)]] for p in paths]
    rows_a = [a[p] for p in paths]
    labels = np.array([r["label"] for r in rows_a])
    differ = [p for p, ra, rb in zip(paths, rows_a, rows_b) if ra["label"] != rb["label"]]
    if differ:
        raise CompareError(
            f"A and B disagree on the label of {len(differ)} image(s), e.g. '{differ[0]}': not the same data"
        )
    prob_a = np.array([r["probability"] for r in rows_a])
    prob_b = np.array([r["probability"] for r in rows_b])
    dec_a = np.array([r["prediction"] for r in rows_a])
    dec_b = np.array([r["prediction"] for r in rows_b])
    right_a, right_b = dec_a == labels, dec_b == labels
    groups, known = patient_groups(paths)
    out: dict[str, Any] = {
        "a": str(folder_a),
        "b": str(folder_b),
        "images": len(paths),
        "matched_by": matched,
        "positives": int(labels.sum()),
        "negatives": int((1 - labels).sum()),
        "mcnemar": {
            **st.mcnemar_test(int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())),
            "both_right": int((right_a & right_b).sum()),
            "both_wrong": int((~right_a & ~right_b).sum()),
        },
    }
    try:
        out["delong"] = st.delong_test(prob_a, prob_b, labels)
    except ValueError as err:
        out["delong"] = {"error": str(err)}
    out["metrics"] = st.paired_bootstrap_differences(
        prob_a, prob_b, labels, dec_a, dec_b, groups, n_resamples=resamples, seed=seed
    )
    out["bootstrap"] = {
        "method": "paired percentile bootstrap",
        "level": 0.95,
        "resamples": resamples,
        "seed": seed,
        "unit": "patient" if known else "image",
        "units": len(set(groups)),
    }
    return out


def _f(x: Any, digits: int = 4, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def format_comparison(res: dict[str, Any]) -> str:
    boot, mc, dl = res["bootstrap"], res["mcnemar"], res["delong"]
    lines = [
        f"A: {res['a']}",
        f"B: {res['b']}",
        f"{res['images']} images paired by {res['matched_by']} ({res['positives']} PNEUMONIA, "
        f"{res['negatives']} NORMAL); each model at its own threshold",
        "",
        f"{'metric':<12} {'A':>8} {'B':>8} {'B - A':>9}   95% CI of B - A",
        "-" * 62,
    ]
    for m in METRIC_NAMES:
        r = res["metrics"][m]
        ci = f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]" if r["ci95"] else ""
        lines.append(f"{m:<12} {_f(r['a']):>8} {_f(r['b']):>8} {_f(r['difference'], signed=True):>9}   {ci}")
    lines.append(
        f"(intervals: {boot['method']}, {boot['resamples']} resamples of the {boot['units']} "
        f"{boot['unit']}s, seed {boot['seed']})"
    )
    lines += [
        "",
        f"McNemar on the decisions: only A right {mc['b']}, only B right {mc['c']} (both right "
        f"{mc['both_right']}, both wrong {mc['both_wrong']}); {mc['method']}"
        + (f", statistic {mc['statistic']:.3f}" if mc["statistic"] is not None else "")
        + f": p = {mc['p_value']:.4g}",
    ]
    if "error" in dl:
        lines.append(f"DeLong: not computed ({dl['error']})")
    else:
        lines.append(
            f"DeLong on AUROC: A {dl['auroc_a']:.4f}, B {dl['auroc_b']:.4f}, B - A {dl['difference']:+.4f} "
            f"(SE {dl['se']:.4f}, 95% CI [{dl['ci95'][0]:+.4f}, {dl['ci95'][1]:+.4f}]), z = {_f(dl['z'], 3)}, "
            f"p = {dl['p_value']:.4g}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pneumonia.tools.compare",
        description="Compare two eval.py (or labelled predict.py) runs on the same images: "
        "McNemar, DeLong, paired bootstrap differences.",
    )
    parser.add_argument("a", help="eval.py or predict.py output folder of model A (holds predictions.csv)")
    parser.add_argument("b", help="eval.py or predict.py output folder of model B")
    parser.add_argument("--resamples", type=int, default=st.DEFAULT_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--out", default=None, help="also write compare.json into this folder")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        res = compare(args.a, args.b, resamples=args.resamples, seed=args.seed)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_comparison(res))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps(res, indent=2))
        print(f"\nWritten to {out / 'compare.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
