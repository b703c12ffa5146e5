"""How much does each threshold rule's choice vary, measured on the validation split alone?

    python -m pneumonia.tools.threshold_study CKPT [CKPT ...] [--data-root DIR]
        [--splits 300] [--resamples 1000] [--seed 0] [--out study.md] [--out study.json]

Each checkpoint's validation split (defined by the data settings stored in it, as training
defined it; `--data-root` when the data moved) is scored the way calibration scores it
(`calibration.predict_logits` on the raw logits, under the precision the threshold was chosen
under), then for every rule of `RULES` (`threshold.choose_threshold`'s methods):

- the threshold on the whole validation split;
- its spread over `--resamples` bootstrap resamples of the validation **patients** (every image
  of a patient in or out together): the standard deviation (in logits, where thresholds of 0.03
  and 0.3 are as far apart as they look to the network) and the 5-95% range of the resampled
  thresholds, and the balanced accuracy those thresholds give on the whole validation split;
- split-half: `--splits` times, the patients of each class are halved at random, the rule
  chooses on one half and is scored on the other: accuracy, balanced accuracy, specificity and
  sensitivity there, mean and standard deviation over the splits (the same halves for every
  rule, so the rules are compared pairwise);
- margin: validation specificity if every normal image's logit rose by `SHIFT` (1 logit), and
  sensitivity if every pneumonia image's fell by as much: how much room the cut leaves to a
  shift that validation, from the same hospital as training, cannot show;
- across checkpoints (seeds of one recipe): the mean and standard deviation of each rule's
  threshold, and of its split-half numbers.

Everything after the scoring is numpy, seeded (`--seed`) and vectorised where the rule allows:
the same checkpoints and seed give the same tables. This module holds that numpy part; the
scoring and the command line are `pneumonia.tools.threshold_study`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pneumonia.evaluation.statistics import confusion_rates, group_codes, logit
from pneumonia.evaluation.threshold import DEFAULTS, EMPIRICAL, choose_threshold, empirical_thresholds

SHIFT = 1.0  # logits, for the margin columns
# (name in the tables, threshold.method, its options): the candidates of issue 15
RULES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("youden", "youden", {}),
    ("fixed 0.5", "fixed", {"value": 0.5}),
    ("max_f1", "max_f1", {}),
    ("youden_bootstrap", "youden_bootstrap", {}),
    ("binormal", "binormal", {}),
    ("kernel", "kernel", {}),
    ("platt", "platt", {}),
    ("midpoint", "midpoint", {}),
    ("sensitivity 0.95", "sensitivity", {"target_sensitivity": 0.95}),
    ("sensitivity 0.98", "sensitivity", {"target_sensitivity": 0.98}),
)


# ---- the machinery, on arrays -------------------------------------------------------------------
def rule_threshold(
    rule: tuple[str, str, dict[str, Any]], probs: np.ndarray, labels: np.ndarray, logits: np.ndarray | None = None
) -> float:
    """One rule's threshold on (probs, labels), with `DEFAULTS` for the options it does not set."""
    _, method, options = rule
    opts = {
        "value": DEFAULTS["value"],
        "target_sensitivity": DEFAULTS["target_sensitivity"],
        "resamples": DEFAULTS["bootstrap_resamples"],
        "seed": DEFAULTS["bootstrap_seed"],
        "bandwidth": DEFAULTS["kernel_bandwidth"],
        **options,
    }
    return choose_threshold(probs, labels, method, logits=logits, **opts)


def weighted_thresholds(
    rule: tuple[str, str, dict[str, Any]],
    probs: np.ndarray,
    labels: np.ndarray,
    logits: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:
    """The rule's threshold for each row of integer `weights` (B, n) (a bootstrap resample, or
    0/1 for a half): vectorised for the empirical-ROC rules, one call per row for the others.
    NaN for a row missing a class."""
    _, method, options = rule
    weights = np.atleast_2d(weights)
    if method == "fixed":
        return np.full(len(weights), float(options.get("value", DEFAULTS["value"])))
    if method in EMPIRICAL:
        return empirical_thresholds(
            probs, labels, weights, method, options.get("target_sensitivity", DEFAULTS["target_sensitivity"])
        )
    out = np.full(len(weights), np.nan)
    for b, w in enumerate(weights):
        idx = np.repeat(np.arange(len(labels)), w.astype(np.int64))
        if len(idx) and labels[idx].min() != labels[idx].max():
            out[b] = rule_threshold(rule, probs[idx], labels[idx], logits[idx])
    return out


def decision_rates(
    probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, sensitivity and specificity of each threshold (T,) on the
    items of each row of `mask` (T, n) (all items when None); NaN for a NaN threshold."""
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    m = np.ones((len(t), len(labels)), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    pred = probs[None, :] >= t[:, None]
    pos = labels.astype(bool)[None, :]
    rates = confusion_rates(
        tp=(pred & pos & m).sum(1),
        fp=(pred & ~pos & m).sum(1),
        fn=(~pred & pos & m).sum(1),
        tn=(~pred & ~pos & m).sum(1),
    )
    sens, spec = rates["recall"], rates["specificity"]
    out = {
        "accuracy": rates["accuracy"],
        "balanced_accuracy": (sens + spec) / 2,
        "sensitivity": sens,
        "specificity": spec,
    }
    return {k: np.where(np.isnan(t), np.nan, v.astype(np.float64)) for k, v in out.items()}


def half_splits(labels: np.ndarray, groups: Sequence[Any] | None, splits: int, seed: int) -> np.ndarray:
    """(splits, n) booleans, True for the half the rule chooses on: each split halves the
    patients of each class at random (a patient's class is that of most of its images), so
    no patient is on both sides and both halves hold both classes."""
    labels = np.asarray(labels, dtype=np.int64)
    codes, n_groups = group_codes(groups, len(labels))
    share = np.bincount(codes, weights=labels, minlength=n_groups) / np.bincount(codes, minlength=n_groups)
    group_label = (share > 0.5).astype(np.int64)
    rng = np.random.default_rng(seed)
    masks = np.zeros((splits, len(labels)), dtype=bool)
    for s in range(splits):
        chosen = np.zeros(n_groups, dtype=bool)
        for cls in (0, 1):
            members = np.flatnonzero(group_label == cls)
            chosen[rng.permutation(members)[: (len(members) + rng.integers(0, 2)) // 2]] = True
        masks[s] = chosen[codes]
    return masks


def _summary(x: np.ndarray) -> dict[str, float | None]:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    if not len(x):
        return {"mean": None, "std": None, "p05": None, "p95": None}
    p05, p95 = np.quantile(x, [0.05, 0.95])
    return {
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
        "p05": float(p05),
        "p95": float(p95),
    }


def study_scores(
    probs: Any,
    labels: Any,
    logits: Any | None = None,
    groups: Sequence[Any] | None = None,
    *,
    rules: Sequence[tuple[str, str, dict[str, Any]]] = RULES,
    splits: int = 300,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """{rule name: its study} on one set of validation scores (see the module's docstring):
    `threshold`, `logit`, `validation` (its rates on all of it), `bootstrap` (`threshold` and
    `logit` and `balanced_accuracy` summaries over the resamples), `split_half` (summaries of
    the held-out half's `accuracy`, `balanced_accuracy`, `specificity`, `sensitivity`),
    `margin` (specificity and sensitivity after a `SHIFT`-logit shift toward the threshold)."""
    from pneumonia.evaluation.threshold import bootstrap_weights

    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    z = logit(p) if logits is None else np.asarray(logits, dtype=np.float64).reshape(-1)
    codes, _ = group_codes(groups, len(y))
    boot_w = bootstrap_weights(len(y), resamples, seed, codes)
    halves = half_splits(y, groups, splits, seed + 1)
    out: dict[str, dict[str, Any]] = {}
    for rule in rules:
        start = time.perf_counter()
        t = rule_threshold(rule, p, y, z)
        val = {k: float(v[0]) for k, v in decision_rates(p, y, np.array([t])).items()}
        zt = float(logit(t)[0])
        margin = {
            "specificity": float(((z[y == 0] + SHIFT) < zt).mean()),
            "sensitivity": float(((z[y == 1] - SHIFT) >= zt).mean()),
        }
        boot_t = weighted_thresholds(rule, p, y, z, boot_w)
        boot_rates = decision_rates(p, y, boot_t)
        half_t = weighted_thresholds(rule, p, y, z, halves.astype(np.float64))
        held_out = decision_rates(p, y, half_t, ~halves)
        out[rule[0]] = {
            "method": rule[1],
            "options": dict(rule[2]),
            "threshold": t,
            "logit": zt,
            "validation": val,
            "margin": margin,
            "bootstrap": {
                "threshold": _summary(boot_t),
                "logit": _summary(logit(boot_t)),
                "balanced_accuracy": _summary(boot_rates["balanced_accuracy"]),
                "resamples": int(resamples),
            },
            "split_half": {
                **{k: _summary(v) for k, v in held_out.items()},
                "splits": int(splits),
                "threshold": _summary(half_t),
            },
            "seconds": round(time.perf_counter() - start, 3),
            "_split_half_balanced_accuracy": held_out["balanced_accuracy"],  # per split, for pairwise comparisons
        }
    base = out[rules[0][0]]["_split_half_balanced_accuracy"]
    for r in out.values():
        diff = r.pop("_split_half_balanced_accuracy") - base
        r["split_half"]["vs_first_rule"] = {
            "rule": rules[0][0],
            "mean_difference": float(np.nanmean(diff)),
            "better": float(np.mean(diff > 0)),
            "worse": float(np.mean(diff < 0)),
        }
    return out


def across_checkpoints(studies: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per rule over the checkpoints: the threshold (and logit) mean and standard deviation,
    the mean bootstrap spread, the mean split-half numbers and the mean margin."""
    from pneumonia.evaluation.statistics import midranks

    names = list(studies[0])
    # each checkpoint's ranking of the rules by held-out balanced accuracy (1 = best; ties share)
    ranks = [
        dict(zip(names, midranks([-s[n]["split_half"]["balanced_accuracy"]["mean"] for n in names]))) for s in studies
    ]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        rows = [s[name] for s in studies]

        def stat(values: list[float]) -> dict[str, float]:
            v = np.asarray(values, dtype=np.float64)
            return {
                "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "min": float(v.min()),
                "max": float(v.max()),
            }

        out[name] = {
            "threshold": stat([r["threshold"] for r in rows]),
            "logit": stat([r["logit"] for r in rows]),
            "bootstrap_logit_std": stat([r["bootstrap"]["logit"]["std"] or 0.0 for r in rows]),
            "validation_balanced_accuracy": stat([r["validation"]["balanced_accuracy"] for r in rows]),
            **{
                f"split_half_{k}": stat([r["split_half"][k]["mean"] for r in rows])
                for k in ("accuracy", "balanced_accuracy", "specificity", "sensitivity")
            },
            "split_half_balanced_accuracy_rank": stat([r[name] for r in ranks]),
            "split_half_balanced_accuracy_std": stat([r["split_half"]["balanced_accuracy"]["std"] for r in rows]),
            "margin_specificity": stat([r["margin"]["specificity"] for r in rows]),
            "margin_sensitivity": stat([r["margin"]["sensitivity"] for r in rows]),
        }
    return out


# ---- tables -----------------------------------------------------------------------------------
def _pm(mean: float | None, std: float | None, digits: int = 3) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def checkpoint_table(study: dict[str, dict[str, Any]]) -> str:
    head = (
        "| rule | threshold (logit) | bootstrap: logit sd, 5-95% threshold | bootstrap bal. acc. 5-95% "
        "| split-half accuracy | split-half bal. acc. | split-half specificity | better / worse than "
        f"{next(iter(study))} | spec. / sens. at ±{SHIFT:g} logit |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for name, r in study.items():
        b, h, vs = r["bootstrap"], r["split_half"], r["split_half"]["vs_first_rule"]
        lines.append(
            f"| {name} | {r['threshold']:.3f} ({r['logit']:+.2f}) | {b['logit']['std']:.2f}, "
            f"[{b['threshold']['p05']:.3f}, {b['threshold']['p95']:.3f}] "
            f"| [{b['balanced_accuracy']['p05']:.3f}, {b['balanced_accuracy']['p95']:.3f}] "
            f"| {_pm(h['accuracy']['mean'], h['accuracy']['std'])} "
            f"| {_pm(h['balanced_accuracy']['mean'], h['balanced_accuracy']['std'])} "
            f"| {_pm(h['specificity']['mean'], h['specificity']['std'])} "
            f"| {vs['better']:.0%} / {vs['worse']:.0%} "
            f"| {r['margin']['specificity']:.3f} / {r['margin']['sensitivity']:.3f} |"
        )
    return "\n".join(lines)


def summary_table(summary: dict[str, dict[str, Any]], n: int) -> str:
    head = (
        f"| rule | threshold over {n} checkpoints: mean ± sd [min, max] | logit sd across checkpoints "
        "| bootstrap logit sd (mean) | split-half accuracy | split-half bal. acc. | its rank (mean) "
        f"| split-half specificity | spec. / sens. at ±{SHIFT:g} logit |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for name, r in summary.items():
        t = r["threshold"]
        lines.append(
            f"| {name} | {_pm(t['mean'], t['std'])} [{t['min']:.3f}, {t['max']:.3f}] | {r['logit']['std']:.2f} "
            f"| {r['bootstrap_logit_std']['mean']:.2f} "
            f"| {_pm(r['split_half_accuracy']['mean'], r['split_half_accuracy']['std'])} "
            f"| {_pm(r['split_half_balanced_accuracy']['mean'], r['split_half_balanced_accuracy']['std'])} "
            f"| {r['split_half_balanced_accuracy_rank']['mean']:.1f} "
            f"| {_pm(r['split_half_specificity']['mean'], r['split_half_specificity']['std'])} "
            f"| {r['margin_specificity']['mean']:.3f} / {r['margin_sensitivity']['mean']:.3f} |"
        )
    return "\n".join(lines)


def markdown_report(result: dict[str, Any]) -> str:
    s = result["settings"]
    n = len(result["checkpoints"])
    parts = [
        f"# Threshold study on validation ({n} checkpoint{'s' * (n > 1)}, {s['splits']} split-halves, "
        f"{s['resamples']} bootstrap resamples of patients, seed {s['seed']})",
        "",
    ]
    if len(result["checkpoints"]) > 1:
        parts += [
            "## Across checkpoints",
            "",
            "Thresholds: mean ± sd over the checkpoints; split-half columns: the mean over the checkpoints "
            "of each one's mean over its splits, ± the sd of those means across checkpoints.",
            "",
            summary_table(result["across_checkpoints"], len(result["checkpoints"])),
            "",
        ]
    for c in result["checkpoints"]:
        parts += [
            f"## {c['checkpoint']}",
            "",
            f"seed {c['seed']}, {c['n']} validation images ({c['n_normal']} normal) of {c['patients']} patients, "
            f"AUROC {c['auroc']:.4f}, precision {c['precision']}; stored threshold {c['stored_threshold']:.4f} "
            f"({c['stored_method']})"
            + (
                f", temperature {c['stored_temperature']:.3f} (not applied here)"
                if c.get("stored_temperature") not in (None, 1.0)
                else ""
            )
            + ".",
            "",
            checkpoint_table(c["rules"]),
            "",
        ]
    parts.append(f"{result['seconds']:.1f} s for the statistics ({result['scoring_seconds']:.1f} s scoring).")
    return "\n".join(parts) + "\n"
