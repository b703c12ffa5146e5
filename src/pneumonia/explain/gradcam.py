"""Grad-CAM maps for the one-logit pneumonia classifier, computed with captum.

The network gives one logit z per image, P(pneumonia) = sigmoid(z). With
``explain="predicted"`` (the default) each map shows the evidence for the class the image is
predicted as at the decision threshold: for PNEUMONIA the Grad-CAM of z, for NORMAL the
Grad-CAM of -z.

For an image predicted NORMAL, the map highlights the regions whose features pushed the
logit down, towards NORMAL; it is what the Grad-CAM of class NORMAL of an equivalent
two-class softmax model would show. It does not show where pneumonia is absent, and it can
be faint or empty: a NORMAL decision often rests on the absence of findings, which a map of
positive evidence cannot show. To see what, if anything, pushed a NORMAL image towards
pneumonia, compute the map with ``explain="pneumonia"``.

Each map is scaled by its own maximum, so it shows where the evidence lies, not how strong
it is: compare images by their probabilities, not by the brightness of their maps.

An ensemble (`pneumonia.models.Ensemble`, also behind a `TemperatureScaled` wrapper or a
LightningModule's `.net`) gets the mean of its members' maps: the decision and the
probabilities are the ensemble's; each member's map is computed for that decision (with
``explain="predicted"`` a member that disagrees still shows its evidence for the ensemble's
class), scaled by its own maximum, then the members' maps are averaged and the mean scaled by
its maximum again. Scaling each member first gives every member the same say: the raw
Grad-CAM magnitudes of independently trained networks are not on one scale (batch norm,
weight decay and training length set them), so an unscaled mean would show mostly whichever
member has the largest activations. Where the members look at different regions, the mean
shows all of them, each fainter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from pneumonia.models.ensemble import find_ensemble

Explain = Literal["predicted", "pneumonia"]


def _features(net: nn.Module) -> nn.Sequential:
    """`net.features` of a CustomCNN, or of the `.net` a LightningModule wraps."""
    for candidate in (net, getattr(net, "net", None)):
        features = getattr(candidate, "features", None)
        if isinstance(features, nn.Sequential) and len(features) > 0:
            return features
    raise TypeError(
        f"{type(net).__name__} has no `features` conv blocks (nor a `.net` with them); pass `layer=` explicitly"
    )


def default_layer(net: nn.Module) -> nn.Module:
    """The last ReLU of the last conv block: the output of the last conv stage, before its pool.

    Why this layer: Grad-CAM wants the deepest layer that still has a spatial layout, because
    its channels are the most class-specific features the head reads. The last block's output
    is that layer; taking it *before* the max-pool keeps twice the resolution of the pooled
    map (e.g. 12x12 instead of 6x6 at 48 px with 3 blocks) at no cost in meaning, since the
    pool only selects among these activations. Taking the ReLU rather than the conv (or its
    batch norm) gives non-negative activations, which is what Grad-CAM's weighted sum of
    activation maps assumes (Selvaraju et al., 2017).
    """
    block = _features(net)[-1]
    relus = [m for m in block.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise TypeError("the last conv block has no ReLU; pass `layer=` explicitly")
    return relus[-1]


def gradcam(
    net: nn.Module,
    x: torch.Tensor,
    *,
    layer: nn.Module | Sequence[nn.Module] | None = None,
    explain: Explain = "predicted",
    threshold: float = 0.5,
    decisions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps and probabilities for a batch.

    x: (N, C, H, W) float images in [0, 1] (any memory format, e.g. channels_last).
    layer: the layer to explain at; `default_layer(net)` when None. For an ensemble: None
        (each member's default layer) or one layer per member.
    explain: "predicted" - each map shows the evidence for the image's predicted class
        (PNEUMONIA when P(pneumonia) >= threshold: the Grad-CAM of the logit; NORMAL: of the
        negated logit); "pneumonia" - every map explains the pneumonia logit.
    threshold: the decision threshold on P(pneumonia), used only by explain="predicted".
    decisions: (N,) 0/1, the decisions already made for these images (e.g. by a Predictor
        scoring under bf16); explain="predicted" then explains these, so a map never
        contradicts the decision printed beside it when this fp32 pass lands on the other
        side of the threshold.

    Returns (maps, probs): maps (N, H, W) float in [0, 1], each scaled by its own maximum
    (an all-zero map stays zero), upsampled bilinearly to the input size; probs (N,) the
    sigmoid of the logits. The net is run in eval mode and its modes are restored afterwards;
    no gradients are left on its parameters.
    """
    if explain not in ("predicted", "pneumonia"):
        raise ValueError(f"explain={explain!r} must be 'predicted' or 'pneumonia'")
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    ensemble = find_ensemble(net)
    if ensemble is not None:
        return _ensemble_gradcam(
            net, ensemble, x, layer=layer, explain=explain, threshold=threshold, decisions=decisions
        )
    layer = default_layer(net) if layer is None else layer
    param = next(net.parameters(), None)
    if param is not None:  # the net's device and float dtype (uint8 input is not scaled: pass [0, 1] floats)
        x = x.to(device=param.device, dtype=param.dtype if param.is_floating_point() else None)
    height, width = x.shape[-2:]

    captured: dict[str, torch.Tensor] = {}

    def forward(inp: torch.Tensor) -> torch.Tensor:
        # One forward pass gives both the logits and the sign: the sign is computed from the
        # detached logits, so it is a per-sample constant and d(sign * z) = sign * dz.
        logits = net(inp).reshape(-1).float()
        captured["logits"] = logits.detach()
        if explain == "pneumonia":
            return logits
        if decisions is not None:
            predicted_pneumonia = decisions.to(logits.device).reshape(-1).bool()
        else:
            predicted_pneumonia = torch.sigmoid(logits.detach()) >= threshold
        sign = torch.where(predicted_pneumonia, 1.0, -1.0).to(logits.dtype)
        return logits * sign

    modes = {module: module.training for module in net.modules()}
    net.eval()
    try:
        # inference_mode(False) + a plain copy of x: works even when called under
        # torch.inference_mode() or torch.no_grad() (e.g. inside a validation step).
        with torch.inference_mode(False), torch.enable_grad():
            inp = x.detach().clone()
            # captum takes d(output)/d(layer) with torch.autograd.grad: parameter .grad untouched.
            cam = LayerGradCam(forward, layer).attribute(inp, relu_attributions=True)
    finally:
        for module, training in modes.items():
            module.training = training

    cam = LayerAttribution.interpolate(cam.detach().float(), (height, width), interpolate_mode="bilinear")
    maps = cam[:, 0].contiguous()
    peak = maps.amax(dim=(1, 2), keepdim=True)
    maps = maps / torch.where(peak > 0, peak, torch.ones_like(peak))
    maps = maps.clamp_(0.0, 1.0)
    probs = torch.sigmoid(captured["logits"])
    return maps, probs


def _ensemble_gradcam(
    net: nn.Module,
    ensemble: nn.Module,
    x: torch.Tensor,
    *,
    layer: nn.Module | Sequence[nn.Module] | None,
    explain: Explain,
    threshold: float,
    decisions: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of the members' maps for the ensemble's decisions, and the ensemble's
    probabilities (`net`: the ensemble or what wraps it, e.g. with its temperature)."""
    members = list(cast(nn.ModuleList, ensemble.members))
    if layer is None:
        layers: list[nn.Module | None] = [None] * len(members)
    elif isinstance(layer, nn.Module) or len(layer) != len(members):
        raise ValueError(f"an ensemble of {len(members)} members needs `layer=None` or one layer per member")
    else:
        layers = list(layer)
    param = next(net.parameters(), None)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype if param.is_floating_point() else None)
    modes = {module: module.training for module in net.modules()}
    net.eval()
    try:
        with torch.no_grad():
            probs = torch.sigmoid(net(x).reshape(-1).float())
    finally:
        for module, training in modes.items():
            module.training = training
    if explain == "predicted" and decisions is None:
        decisions = (probs >= threshold).long()
    maps = torch.stack(
        [
            gradcam(member, x, layer=member_layer, explain=explain, decisions=decisions)[0]
            for member, member_layer in zip(members, layers)
        ]
    ).mean(dim=0)
    peak = maps.amax(dim=(1, 2), keepdim=True)
    maps = (maps / torch.where(peak > 0, peak, torch.ones_like(peak))).clamp_(0.0, 1.0)
    return maps, probs
