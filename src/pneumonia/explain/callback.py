"""`GradCamImages`: a fixed set of validation images with their Grad-CAM overlays and
probabilities in TensorBoard's images tab, every validation epoch, so a user sees where the
model looks as it learns (`callbacks.gradcam.num_images=0` or `callbacks.gradcam=null`: off)."""

from __future__ import annotations

from typing import Any, cast

import lightning as L
import torch

from pneumonia.evaluation.tensorboard import tensorboard_loggers


class GradCamImages(L.Callback):
    """`num_images` validation images (half of each class, the same every epoch) as one
    gallery figure under the tag `val/gradcam`, every `every_n_epochs` epochs."""

    def __init__(self, num_images: int = 8, every_n_epochs: int = 1) -> None:
        from pneumonia.errors import ConfigError

        for key, value, low in (("num_images", num_images, 0), ("every_n_epochs", every_n_epochs, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"callbacks.gradcam.{key}={value!r} must be an integer >= {low}")
        self.num_images, self.every_n_epochs = num_images, every_n_epochs
        self._chosen: torch.Tensor | None = None

    def _pick(self, data: Any) -> torch.Tensor:
        """Dataset rows of the first images of each class, alternating NORMAL, PNEUMONIA."""
        labels = data.labels[data.indices]
        per_class = [data.indices[labels == c][: (self.num_images + 1 - c) // 2] for c in (0, 1)]
        rows = [t for pair in zip(*per_class) for t in pair]
        rows += [t for group in per_class for t in group[len(rows) // 2 :]]  # a class with fewer images
        return torch.stack(rows[: self.num_images]) if rows else torch.empty(0, dtype=torch.long)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (
            not self.num_images
            or trainer.sanity_checking
            or not trainer.is_global_zero
            or trainer.current_epoch % self.every_n_epochs
        ):
            return
        tensorboards = tensorboard_loggers(trainer.loggers)
        datamodule: Any = getattr(trainer, "datamodule", None)
        data = getattr(datamodule, "splits", {}).get("val")
        if not tensorboards or data is None:
            return
        if self._chosen is None:
            self._chosen = self._pick(data)
        if not len(self._chosen):
            return
        from pneumonia.explain.figures import gallery_figure
        from pneumonia.explain.gradcam import gradcam

        images = data.images[self._chosen]
        x = datamodule.preprocess.to_input(images.to(pl_module.device))
        threshold = float(cast(torch.Tensor, pl_module.threshold))  # a PneumoniaClassifier's buffer
        maps, probs = gradcam(cast(torch.nn.Module, pl_module.net), x, threshold=threshold)
        items = [
            {
                "image": images[i].numpy(),
                "cam": maps[i].cpu().numpy(),
                "probability": float(probs[i]),
                "prediction": int(probs[i] >= threshold),
                "label": int(data.labels[self._chosen[i]]),
            }
            for i in range(len(images))
        ]
        for tb in tensorboards:
            fig = gallery_figure(items, columns=4)
            tb.experiment.add_figure("val/gradcam", fig, global_step=trainer.current_epoch, close=True)
