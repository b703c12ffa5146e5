"""A checkpoint's `Predictor` scored on images plain and under the stress perturbations
(`pneumonia.data.stress`): what `python -m pneumonia.tools.stress` prints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pneumonia.data.stress import DEFAULT_PERTURBATIONS, StressSettings, perturb
from pneumonia.evaluation.metrics import report


def stress_metrics(
    predictor: Any,
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    threshold: float | None = None,
    *,
    perturbations: Mapping[str, float] | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Score `predictor` (a `pneumonia.inference.Predictor`: its preset, TTA and temperature
    apply) on `images_uint8` (N, C, S, S) plain and under every perturbation.

    Returns {"plain": metrics, "stress": metrics pooled over all N x P perturbed images,
    "per_perturbation": {name: metrics}, "worst": `worst_case(per_perturbation)`,
    "perturbations": {name: strength}, "seed", "threshold"}, each metrics dict with accuracy,
    precision, recall (= sensitivity), specificity, f1, auroc, tn/fp/fn/tp, n at `threshold`
    (None: the predictor's)."""
    settings = StressSettings.from_config(
        {"enabled": True, "seed": seed, "perturbations": dict(perturbations or DEFAULT_PERTURBATIONS)}, key="stress"
    )
    threshold = float(predictor.threshold if threshold is None else threshold)
    labels = labels.cpu().long()

    def score(batch: torch.Tensor) -> torch.Tensor:
        return (
            torch.cat([predictor.predict_images(batch[i : i + batch_size]) for i in range(0, len(batch), batch_size)])
            if len(batch)
            else torch.empty(0)
        )

    plain = score(images_uint8.cpu())
    per: dict[str, Any] = {}
    probs = []
    for name, strength in settings.perturbations:
        p = score(perturb(images_uint8, name, strength, seed))
        per[name] = report(p, labels, threshold)
        probs.append(p)
    pooled = report(torch.cat(probs), labels.repeat(len(probs)), threshold)
    return {
        "plain": report(plain, labels, threshold),
        "stress": pooled,
        "per_perturbation": per,
        "worst": worst_case(per),
        "perturbations": dict(settings.perturbations),
        "seed": seed,
        "threshold": threshold,
    }


def worst_case(per_perturbation: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The worst case over perturbations, to rank checkpoints by: the minimum AUROC (and the
    perturbation giving it), the minimum specificity and the minimum sensitivity at the
    threshold (each with its perturbation; they may differ). A perturbation whose AUROC is
    undefined (one class only) is left out of the AUROC minimum."""

    def lowest(key: str) -> tuple[str | None, float | None]:
        values = [
            (float(m[key]), name) for name, m in per_perturbation.items() if m.get(key) is not None and m[key] == m[key]
        ]
        if not values:
            return None, None
        value, name = min(values)
        return name, value

    auroc_at, auroc = lowest("auroc")
    spec_at, spec = lowest("specificity")
    sens_at, sens = lowest("recall")
    return {
        "auroc": auroc,
        "auroc_perturbation": auroc_at,
        "specificity": spec,
        "specificity_perturbation": spec_at,
        "sensitivity": sens,
        "sensitivity_perturbation": sens_at,
    }
