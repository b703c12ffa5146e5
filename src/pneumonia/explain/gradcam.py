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
"""

from __future__ import annotations

from typing import Literal

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

Explain = Literal["predicted", "pneumonia"]


def _features(net: nn.Module) -> nn.Sequential:
    """`net.features` of a CustomCNN, or of the `.net` a LightningModule wraps."""
    for candidate in (net, getattr(net, "net", None)):
        features = getattr(candidate, "features", None)
        if isinstance(features, nn.Sequential) and len(features) > 0:
            return features
    raise TypeError(f"{type(net).__name__} has no `features` conv blocks (nor a `.net` with them); "
                    "pass `layer=` explicitly")


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
    layer: nn.Module | None = None,
    explain: Explain = "predicted",
    threshold: float = 0.5,
    decisions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps and probabilities for a batch.

    x: (N, C, H, W) float images in [0, 1] (any memory format, e.g. channels_last).
    layer: the layer to explain at; `default_layer(net)` when None.
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
