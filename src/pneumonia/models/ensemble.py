"""`Ensemble`: several trained networks as one, with one logit per image like any member.

Its spec is a plain dict like every net's (`pneumonia.models.build_net` builds the members
recursively, from the registry only):

    {"_target_": "pneumonia.models.Ensemble",
     "members": [<member net spec>, ...],      # e.g. three CustomCNN specs
     "temperatures": [1.0, 0.8, ...],          # each member's own calibration: z_i / T_i
     "combine": "prob"}                        # or "logit"

- `combine="prob"`: P = mean_i sigmoid(z_i / T_i), returned as its logit, log P - log(1 - P),
  computed in the log domain (logsumexp of logsigmoid): exact, finite for any member logits
  (no clamping) and in float32 even under bf16/fp16 autocast.
- `combine="logit"`: mean_i (z_i / T_i), the logit of the geometric mean of the odds.

The weights are the members' (`members.<i>.*` in the state dict); the temperatures are
plain numbers of the spec, so an ensemble checkpoint is an ordinary checkpoint of this
project: `Predictor.from_checkpoint` loads it, and eval.py, predict.py, Grad-CAM (the mean
of the members' maps, `pneumonia.explain.gradcam`) and export.py (one graph) work on it.
Built by `python -m pneumonia.tools.ensemble` (`pneumonia.ensemble`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import torch
from torch import nn

from pneumonia.errors import ConfigError
from pneumonia.signature import Gt, Lt, MinLen, check_arguments

COMBINES = ("prob", "logit")


class Ensemble(nn.Module):
    """The members' logits, each divided by its temperature, combined into one logit."""

    # builds a member from its spec: `pneumonia.models.build_net`, set by that registry when it
    # loads (it imports this module, so this one does not import it back)
    build_member: Callable[..., nn.Module]  # (spec, *, pretrained) -> net

    def __init__(
        self,
        members: Annotated[Sequence[dict[str, Any]], MinLen(1)],
        temperatures: Sequence[Annotated[float, Gt(0), Lt(float("inf"))]] | None = None,
        combine: Literal["prob", "logit"] = "prob",  # COMBINES
        *,
        pretrained: bool = True,
    ) -> None:
        """`pretrained=False`: the members' weights come from a checkpoint next (no download or
        read of a member's `weights`); the caller's choice, not the spec's."""
        super().__init__()
        # the signature declares each argument's type and range; the config layer adds the `model.` prefix
        check_arguments(Ensemble, locals())
        temperatures = [1.0] * len(members) if temperatures is None else list(temperatures)
        if len(temperatures) != len(members):
            raise ConfigError(f"temperatures has {len(temperatures)} entries for {len(members)} members")
        self.members = nn.ModuleList(self.build_member(dict(spec), pretrained=pretrained) for spec in members)
        self.temperatures = tuple(float(t) for t in temperatures)
        self.combine = combine

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(M, N) float32: each member's logit divided by its temperature."""
        return torch.stack([member(x).float() / t for member, t in zip(self.members, self.temperatures)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.member_logits(x)
        if self.combine == "logit":
            return z.mean(dim=0)
        # logit(mean_i sigmoid(z_i)) = logsumexp_i log sigmoid(z_i) - logsumexp_i log sigmoid(-z_i)
        # (the 1/M of both means cancels); float32 throughout, finite for any finite z
        return torch.logsumexp(nn.functional.logsigmoid(z), dim=0) - torch.logsumexp(
            nn.functional.logsigmoid(-z), dim=0
        )

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}, temperatures={list(self.temperatures)}"


def find_ensemble(net: nn.Module | None) -> Ensemble | None:
    """The `Ensemble` in `net` or behind its `.net` wrappers (`TemperatureScaled`, a
    LightningModule, the export's `Logits`), else None."""
    seen = 0
    while isinstance(net, nn.Module) and seen < 8:
        if isinstance(net, Ensemble):
            return net
        net = getattr(net, "net", None)
        seen += 1
    return None
