"""Choosing the decision threshold on the validation split, after training.

A sigmoid output of 0.5 is the right cut only when train and deployment share a class
balance; the official test split has 37.5% normal images against 25.7% in train.

The rules (`threshold.method`; a decision is PNEUMONIA when P(pneumonia) >= threshold):

- `fixed`: `threshold.value` (0.5: the loss's own cut, class-balanced when
  `module.pos_weight=balanced`); nothing is learnt from validation.
- `youden`: the empirical ROC's maximum of sensitivity + specificity - 1 (Youden's J);
  `max_f1`: the maximum of F1; `sensitivity`: the highest threshold that keeps recall >=
  `threshold.target_sensitivity`. Each of the three sits in the middle of the gap between
  two neighbouring validation probabilities (every threshold in that gap decides alike).
- `youden_bootstrap`: the median of the Youden thresholds of `threshold.bootstrap_resamples`
  bootstrap resamples of the validation images (seeded by `threshold.bootstrap_seed`): a
  bagged Youden threshold, which no single validation image near the boundary moves far.
- `binormal`: Youden's J of a smoothed ROC, the binormal model: a normal distribution fitted to
  the logits of each class (mean and standard deviation); J is maximal where the two fitted
  densities cross (closed form; Metz 1978, Zou & Hall 2000).
- `kernel`: Youden's J of a kernel-smoothed ROC: each class's logits smoothed by a logistic
  kernel (bandwidth by Silverman's rule per class, or `threshold.kernel_bandwidth` logits),
  J maximised on a fine grid (Lloyd 1998; Zhou & Harezlak 2002).
- `platt`: Platt scaling fitted on validation with the two classes weighted equally (a
  logistic regression sigmoid(a logit + b)), cut where the refitted probability is 0.5: the
  class-balanced cut of the loss, re-estimated on validation.
- `midpoint`: halfway between the two classes' median logits: the same margin to the bulk of
  each class (the equal-variance binormal cut, with medians, which the few images near the
  boundary barely move).

Temperature scaling (`calibration.temperature=true`) changes no decision of these rules on
validation (except `kernel` with a fixed `kernel_bandwidth`, which does not scale with 1/T, and
`youden_bootstrap` marginally, whose median of an even count is averaged in probability): sigmoid(z / T) >= 0.5 exactly when z >= 0, the empirical rules depend
only on the order of the scores, and the logit-space rules move with the logits (their cut
becomes cut / T). All T can move is where the threshold sits inside the gap between two
neighbouring validation scores (a midpoint in probability), which matters for new images only.

The logit-space rules take the logits when given (`logits=`; calibration passes them), else
the logit of the probabilities (float32 probabilities saturate at about logit 17).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
import torch

from pneumonia.errors import ConfigError
from pneumonia.evaluation import statistics as st
from pneumonia.signature import Ge, Gt, Le, Lt, check_arguments, check_values, hints_of

EMPIRICAL = ("max_f1", "youden", "sensitivity")
METHODS = ("fixed", *EMPIRICAL, "youden_bootstrap", "binormal", "kernel", "platt", "midpoint")
# the `threshold:` block of conf/train.yaml, as calibration reads it
DEFAULTS: dict[str, Any] = {
    "method": "youden",
    "value": 0.5,
    "target_sensitivity": 0.95,
    "bootstrap_resamples": 200,
    "bootstrap_seed": 0,
    "kernel_bandwidth": None,
}
_GRID = 256  # kernel: points of the coarse grid of candidate logits; a finer one of 65 around its best


def threshold_settings(
    method: Literal[
        "fixed", "max_f1", "youden", "sensitivity", "youden_bootstrap", "binormal", "kernel", "platt", "midpoint"
    ] = DEFAULTS["method"],  # METHODS
    value: Annotated[float, Ge(0), Le(1)] = DEFAULTS["value"],
    target_sensitivity: Annotated[float, Gt(0), Le(1)] = DEFAULTS["target_sensitivity"],
    bootstrap_resamples: Annotated[int, Ge(1)] = DEFAULTS["bootstrap_resamples"],
    bootstrap_seed: Annotated[int, Ge(0)] = DEFAULTS["bootstrap_seed"],
    # null: Silverman's rule
    kernel_bandwidth: Annotated[float, Gt(0), Lt(float("inf"))] | None = DEFAULTS["kernel_bandwidth"],
) -> dict[str, Any]:
    """The schema of the `threshold:` settings (its signature, read by the quick CLI too):
    the settings as a dict, each checked against its declaration (errors name the bare key)."""
    settings = dict(locals())
    check_arguments(threshold_settings, settings)
    return settings


def check_threshold_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The `threshold:` settings with the defaults filled in; a one-line `ConfigError`
    naming the key for a wrong value (the one place they are checked): `threshold_settings`'
    signature, with the `threshold.` prefix."""
    s = {**DEFAULTS, **(settings or {})}
    check_values(hints_of(threshold_settings), s, prefix="threshold.")
    return s


def rule_options(settings: dict[str, Any] | None) -> dict[str, Any]:
    """`choose_threshold`'s keyword arguments from the (checked) `threshold:` settings."""
    s = check_threshold_settings(settings)
    return {
        "method": s["method"],
        "value": float(s["value"]),
        "target_sensitivity": float(s["target_sensitivity"]),
        "resamples": int(s["bootstrap_resamples"]),
        "seed": int(s["bootstrap_seed"]),
        "bandwidth": None if s["kernel_bandwidth"] is None else float(s["kernel_bandwidth"]),
    }


def choose_threshold(
    probs: Any,
    labels: Any,
    method: str = "youden",
    value: float = 0.5,
    target_sensitivity: float = 0.95,
    *,
    logits: Any | None = None,
    resamples: int = DEFAULTS["bootstrap_resamples"],
    seed: int = DEFAULTS["bootstrap_seed"],
    bandwidth: float | None = None,
) -> float:
    """Threshold on P(pneumonia) by `method` (see the module's docstring): `fixed` (=
    `value`), `max_f1`, `youden`, `sensitivity` (recall >= `target_sensitivity`),
    `youden_bootstrap` (`resamples`, `seed`), `binormal`, `kernel` (`bandwidth` in logits,
    None = Silverman's rule), `platt` or `midpoint`. With one class only there is nothing to
    choose from: `value`."""
    if method not in METHODS:
        raise ConfigError(f"threshold.method={method!r} must be one of {', '.join(METHODS)}")
    if method == "fixed":
        return float(value)
    p, y = _arr(probs), _arr(labels).astype(np.int64)
    if not len(y) or y.min() == y.max():
        return float(value)
    if method in EMPIRICAL:
        return float(empirical_thresholds(p, y, np.ones((1, len(y))), method, target_sensitivity)[0])
    if method == "youden_bootstrap":
        return youden_bootstrap(p, y, resamples, seed)
    z = _arr(logits) if logits is not None else st.logit(p)
    if method == "binormal":
        t = binormal_cut(z, y)
    elif method == "kernel":
        t = kernel_cut(z, y, bandwidth)
    elif method == "midpoint":
        t = float(np.median(z[y == 0]) + np.median(z[y == 1])) / 2
    else:
        t = platt_cut(z, y)
    return float(value) if t is None else _sigmoid(t)


# ---- the empirical ROC, for many resamples at once --------------------------------------
def empirical_thresholds(
    scores: Any, labels: Any, weights: np.ndarray, method: str = "youden", target_sensitivity: float = 0.95
) -> np.ndarray:
    """The `youden`, `max_f1` or `sensitivity` threshold of each row of integer `weights`
    (B, n) over the items (an item of weight k counts k times; a bootstrap resample), in
    O(B n) after one sort: each row's candidates are the distinct scores it holds, and the
    threshold is the middle of the gap below the chosen one (0 below the lowest). NaN for a
    row without both classes."""
    s, y = _arr(scores), _arr(labels).astype(bool)
    w = np.atleast_2d(np.asarray(weights))
    order = np.argsort(s, kind="stable")
    s, y, w = s[order], y[order], w[:, order]
    values, starts = np.unique(s, return_index=True)  # ascending; first sorted position of each
    pos_w = np.add.reduceat(w * y, starts, axis=1).astype(np.float64)  # (B, distinct scores)
    all_w = np.add.reduceat(w, starts, axis=1).astype(np.float64)
    neg_w = all_w - pos_w
    present = all_w > 0
    fn = np.cumsum(pos_w, axis=1) - pos_w  # positives scored below each candidate: called NORMAL
    tn = np.cumsum(neg_w, axis=1) - neg_w
    n_pos, n_neg = fn[:, -1:] + pos_w[:, -1:], tn[:, -1:] + neg_w[:, -1:]
    tp, fp = n_pos - fn, n_neg - tn
    with np.errstate(invalid="ignore", divide="ignore"):
        sens, spec = tp / n_pos, tn / n_neg
        if method == "youden":
            score = sens + spec - 1
        elif method == "max_f1":
            score = 2 * tp / (2 * tp + fp + fn)
        elif method == "sensitivity":
            # the highest candidate keeping recall >= target (sensitivity falls as the
            # threshold rises); the lowest candidate when none does
            idx = np.arange(len(values), dtype=np.float64)
            score = np.where(sens >= target_sensitivity, idx, -1.0)
        else:
            raise ConfigError(f"threshold.method={method!r} is not an empirical ROC rule ({', '.join(EMPIRICAL)})")
    score = np.where(present & ~np.isnan(score), score, -np.inf)
    if method == "sensitivity":  # none kept: the lowest candidate the row holds
        lowest = np.argmax(present, axis=1)
        none = ~(score > -1).any(axis=1)
        score[none, lowest[none]] = np.inf
    best = np.argmax(score, axis=1)  # the first (lowest) of ties, like torch.argmax
    last_present = np.maximum.accumulate(np.where(present, np.arange(len(values)), -1), axis=1)
    below = np.where(best > 0, last_present[np.arange(len(w)), np.maximum(best - 1, 0)], -1)
    low = np.where(below >= 0, values[np.maximum(below, 0)], 0.0)
    out = (low + values[best]) / 2
    return np.where((n_pos[:, 0] > 0) & (n_neg[:, 0] > 0), out, np.nan)


def bootstrap_weights(n: int, resamples: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """(resamples, n) integer weights of seeded bootstrap resamples of n items (of their
    `groups`, codes 0..G-1, when given: the cluster bootstrap of `statistics`)."""
    from pneumonia.evaluation.statistics import resample_weights

    codes = np.arange(n) if groups is None else np.asarray(groups)
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    return resample_weights(codes, n_groups, int(resamples), np.random.default_rng(int(seed)))


def youden_bootstrap(
    probs: Any, labels: Any, resamples: int = DEFAULTS["bootstrap_resamples"], seed: int = DEFAULTS["bootstrap_seed"]
) -> float:
    """The median of the Youden thresholds of `resamples` seeded bootstrap resamples of the
    images (resamples missing a class left out)."""
    p, y = _arr(probs), _arr(labels).astype(np.int64)
    t = empirical_thresholds(p, y, bootstrap_weights(len(y), resamples, seed), "youden")
    t = t[~np.isnan(t)]
    return float(np.median(t)) if len(t) else float(empirical_thresholds(p, y, np.ones((1, len(y))))[0])


# ---- smoothed ROCs, in logit space ---------------------------------------------------------
def binormal_cut(logits: Any, labels: Any) -> float | None:
    """The logit maximising J(t) = Phi((t - m0) / s0) - Phi((t - m1) / s1) for normal fits
    (m0, s0) of the NORMAL and (m1, s1) of the PNEUMONIA logits: where the two densities
    cross (a root of a quadratic; of the two roots, or the midpoint of the means when they
    are not real, the one with the larger J). None when a class has fewer than 2 items."""
    z, y = _arr(logits), _arr(labels).astype(bool)
    if (~y).sum() < 2 or y.sum() < 2:
        return None
    m0, s0, m1, s1 = z[~y].mean(), z[~y].std(ddof=1), z[y].mean(), z[y].std(ddof=1)
    s0, s1 = max(s0, 1e-6), max(s1, 1e-6)

    def j(t: float) -> float:
        return _phi((t - m0) / s0) - _phi((t - m1) / s1)

    # log densities equal: (t - m0)^2 / s0^2 + 2 log s0 = (t - m1)^2 / s1^2 + 2 log s1
    a = 1 / s0**2 - 1 / s1**2
    b = -2 * (m0 / s0**2 - m1 / s1**2)
    c = m0**2 / s0**2 - m1**2 / s1**2 + 2 * math.log(s0 / s1)
    if abs(a) < 1e-12 * (1 / s0**2 + 1 / s1**2):
        roots = [-c / b] if b else []
    else:
        disc = b * b - 4 * a * c
        roots = [(-b + sign * math.sqrt(disc)) / (2 * a) for sign in (1, -1)] if disc >= 0 else []
    candidates = [*roots, (m0 + m1) / 2]
    return float(max(candidates, key=j))


def silverman_bandwidth(x: np.ndarray) -> float:
    """0.9 min(sd, IQR / 1.34) n^(-1/5) (Silverman 1986, eq. 3.31), at least 1e-3."""
    sd = x.std(ddof=1) if len(x) > 1 else 0.0
    q75, q25 = np.percentile(x, [75, 25])
    spread = min(sd, (q75 - q25) / 1.34) or sd
    return float(max(0.9 * spread * len(x) ** -0.2, 1e-3))


def kernel_cut(logits: Any, labels: Any, bandwidth: float | None = None) -> float | None:
    """The logit maximising J of the kernel-smoothed ROC: each class's empirical CDF of the
    logits smoothed by a logistic kernel of standard deviation h (Silverman's rule per class,
    or `bandwidth`); a grid over the logits' range, then a finer one around its best."""
    z, y = _arr(logits), _arr(labels).astype(bool)
    z0, z1 = z[~y], z[y]
    if not len(z0) or not len(z1):
        return None
    h0 = bandwidth or silverman_bandwidth(z0)
    h1 = bandwidth or silverman_bandwidth(z1)
    k0, k1 = h0 * math.sqrt(3) / math.pi, h1 * math.sqrt(3) / math.pi  # logistic scale of that sd

    def j(t: np.ndarray) -> np.ndarray:
        rows = max(1, 4_000_000 // len(z))  # grid points per chunk: about 32 MB at a time

        def row_means(a: np.ndarray) -> np.ndarray:  # the mean sigmoid of each grid point's row
            return st.sigmoid(a).reshape(a.shape).mean(1)

        return np.concatenate(
            [
                row_means((c[:, None] - z0[None, :]) / k0) - row_means((c[:, None] - z1[None, :]) / k1)
                for c in np.array_split(t, max(1, -(-len(t) // rows)))
            ]
        )

    grid = np.linspace(z.min(), z.max(), _GRID)
    step = grid[1] - grid[0] if len(grid) > 1 else 1.0
    best = grid[int(np.argmax(j(grid)))]
    fine = np.linspace(best - step, best + step, 65)
    return float(fine[int(np.argmax(j(fine)))])


def platt_cut(logits: Any, labels: Any, iterations: int = 100) -> float | None:
    """-b / a for the logistic regression sigmoid(a z + b) fitted to the labels with each
    class weighing half (Newton's method with a backtracking line search, from a = 1, b = 0:
    the model's own logits; a small ridge on a so that separable scores still give a finite
    answer): where the refitted, class-balanced probability is 0.5. None when the fit does
    not rank pneumonia higher (a <= 0)."""
    z, y = _arr(logits), _arr(labels)
    n_pos, n_neg = y.sum(), (1 - y).sum()
    if not n_pos or not n_neg:
        return None
    w = np.where(y > 0, 0.5 / n_pos, 0.5 / n_neg)
    sign = 2 * y - 1
    x = np.stack([z, np.ones_like(z)], 1)
    ridge = np.array([1e-4, 0.0])

    def loss(theta: np.ndarray) -> float:
        return float(w @ np.logaddexp(0.0, -sign * (x @ theta)) + 0.5 * ridge @ theta**2)

    theta = np.array([1.0, 0.0])
    current = loss(theta)
    for _ in range(iterations):
        p = st.sigmoid(x @ theta)
        grad = x.T @ (w * (p - y)) + ridge * theta
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + np.diag(ridge) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-10:  # backtracking: plain Newton overshoots on nearly separable scores
            candidate = theta - t * step
            new = loss(candidate)
            if new <= current - 1e-4 * t * float(grad @ step):
                break
            t /= 2
        else:
            break
        theta, converged = candidate, current - new < 1e-15
        current = new
        if converged:
            break
    a, b = theta
    return float(-b / a) if a > 0 and math.isfinite(a) and math.isfinite(b) else None


# ---- helpers --------------------------------------------------------------------------------
def _arr(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _sigmoid(t: float) -> float:
    return float(st.sigmoid(t)[0])


def roc_points(probs: torch.Tensor, labels: torch.Tensor, max_points: int = 2000) -> dict[str, list[float]]:
    """Sensitivity and specificity at each distinct score used as the threshold (PNEUMONIA
    when probability >= threshold), thresholds ascending; at most `max_points` of them
    (evenly spaced in rank) so a large validation split keeps a small checkpoint. Stored in
    the checkpoint, so the app can show what any threshold meant on validation."""
    probs, labels = probs.double().flatten(), labels.long().flatten()
    thresholds = torch.unique(probs)
    if len(thresholds) > max_points:
        thresholds = thresholds[torch.linspace(0, len(thresholds) - 1, max_points).round().long()]
    pred = probs[None, :] >= thresholds[:, None]
    pos = labels.bool()[None, :]
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    sens = (pred & pos).sum(1).double() / max(n_pos, 1)
    spec = (~pred & ~pos).sum(1).double() / max(n_neg, 1)
    return {
        "thresholds": thresholds.tolist(),
        "sensitivity": sens.tolist(),
        "specificity": spec.tolist(),
        "n_pneumonia": n_pos,
        "n_normal": n_neg,
    }
