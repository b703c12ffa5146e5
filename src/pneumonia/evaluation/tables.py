"""The metric table with its intervals, as printed text and as Markdown (TensorBoard's text
tab): one formatter for both, so the console, TensorBoard and report agree."""

from __future__ import annotations

from typing import Any

from pneumonia.evaluation import METRIC_NAMES, REPORT_KEYS


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ci(ci: Any, digits: int = 4) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else ""


def metric_rows(rep: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(name, value, 95% interval) for each key of `REPORT_KEYS` in `rep`."""
    ci = rep.get("ci95") or {}
    return [
        (key, fmt(rep[key]), fmt_ci(ci.get(key)) if key in METRIC_NAMES else "") for key in REPORT_KEYS if key in rep
    ]


def format_table(rep: dict[str, Any]) -> str:
    """The printed table: metric, value and (for the six metrics) the bootstrap 95% interval,
    then the calibration line when `rep` has one."""
    rows = metric_rows(rep)
    lines = [f"{'metric':<12} {'value':>10}   {'95% CI':<18}", "-" * 44]
    lines += [f"{name:<12} {value:>10}   {ci}".rstrip() for name, value, ci in rows]
    lines += _footer(rep)
    return "\n".join(lines)


def markdown_table(rep: dict[str, Any]) -> str:
    """The same table in Markdown (TensorBoard renders it in its text tab)."""
    lines = ["| metric | value | 95% CI |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {ci} |" for name, value, ci in metric_rows(rep)]
    footer = _footer(rep)
    return "\n".join(lines + ([""] + footer if footer else []))


def _footer(rep: dict[str, Any]) -> list[str]:
    lines = []
    boot = rep.get("bootstrap")
    if boot and boot.get("resamples"):
        lines.append(
            f"95% CI: {boot['method']}, {boot['resamples']} resamples of the {boot['units']} "
            f"{boot['unit']}s (seed {boot['seed']})"
        )
        for metric, z in (boot.get("zero_width") or {}).items():
            lines.append(
                f"{metric} is {z['value']:.0f} on all {z['n']} images it counts, so every resample gives "
                f"the same: exact (Clopper-Pearson) 95% CI {fmt_ci(z['exact_ci95'])}"
            )
    cal = rep.get("calibration")
    if cal:
        text = f"ECE ({cal['bins']} equal-width bins) {fmt(cal.get('ece'))}, Brier {fmt(cal.get('brier'))}"
        if cal.get("temperature"):
            before = cal.get("before_temperature") or {}
            text += f" at temperature {cal['temperature']:.3f}"
            if before:
                text += f" (before: ECE {fmt(before.get('ece'))}, Brier {fmt(before.get('brier'))})"
        lines.append(text)
    return lines
