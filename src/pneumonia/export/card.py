"""MODEL_CARD.md beside an export: rendered with Jinja2 from `templates/model_card.md.j2`
(read through `importlib.resources`, so it works from a wheel or a checkout) and the
export's `model.json`."""

from __future__ import annotations

from importlib import resources
from typing import Any

from pneumonia.evaluation.tables import fmt

__all__ = ["render_model_card"]

TEMPLATE = "model_card.md.j2"


def _shape(shape: Any) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def describe_net(net: dict[str, Any]) -> str:
    """One line on the network a spec describes: the custom CNN, a torchvision backbone or an
    ensemble of members (each described the same way)."""
    target = str(net.get("_target_", "n/a")).rsplit(".", 1)[-1]
    if target == "Ensemble":
        members = net.get("members") or []
        return (f"an ensemble of {len(members)} networks, {net.get('combine', 'prob')} averaging: "
                + "; ".join(describe_net(m) for m in members))
    if target == "TorchvisionNet":
        weights = net.get("weights")
        start = f"from torchvision's {weights} ImageNet weights" if weights else "trained from scratch"
        return f"torchvision {net.get('arch', 'n/a')}, {net.get('in_channels', 'n/a')} input channel(s), {start}"
    return (f"{target}: depth {net.get('depth', 'n/a')}, batch norm {'yes' if net.get('batch_norm') else 'no'}, "
            f"dense {net.get('dense_units', 'n/a')}")


def render_model_card(meta: dict[str, Any]) -> str:
    """The model card of the export that `meta` (the model.json dict) describes."""
    import jinja2

    text = resources.files("pneumonia.export").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                             lstrip_blocks=True, autoescape=False)
    env.filters["fmt"] = fmt
    env.filters["shape"] = _shape
    env.filters["describe_net"] = describe_net
    return env.from_string(text).render(meta=meta)
