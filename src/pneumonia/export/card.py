"""MODEL_CARD.md beside an export: rendered with Jinja2 from `templates/model_card.md.j2`
(read through `importlib.resources`, so it works from a wheel or a checkout) and the
export's `model.json`."""

from __future__ import annotations

from importlib import resources
from typing import Any

from pneumonia.evaluation.tables import fmt
from pneumonia.models import describe_net

__all__ = ["render_model_card"]

TEMPLATE = "model_card.md.j2"


def _shape(shape: Any) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def render_model_card(meta: dict[str, Any]) -> str:
    """The model card of the export that `meta` (the model.json dict) describes."""
    import jinja2

    text = resources.files("pneumonia.export").joinpath("templates").joinpath(TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["fmt"] = fmt
    env.filters["shape"] = _shape
    env.filters["describe_net"] = describe_net
    return env.from_string(text).render(meta=meta)
