"""`PneumoniaClassifier`: the LightningModule around a net: BCE on logits, the optimizer and
scheduler, per-split metrics.

Training targets may be soft: label smoothing (`label_smoothing`, training loss only),
mixup (the DataModule's `data.augment.mixup`, whose training batches carry soft targets as a
4th element) and distillation (`distill_weight` with a `teacher`: the targets mixed with a
teacher's probabilities on the same augmented batch) change what the loss fits; the training
metrics always count the hard labels.
With the stress validation on (`data.stress.enabled`), validation has a second dataloader:
the same images under acquisition changes, scored into `val_stress/*` (its own metric
collection and an AUROC per perturbation), never into `val/*`, the loss or the monitor.

Hyperparameters are stored as plain dicts (no modules, no config objects) so a
checkpoint loads with `torch.load(weights_only=True)` and cannot run code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAUROC

from pneumonia.config.instantiate import instantiate
from pneumonia.evaluation.metrics import classification_metrics, set_threshold, split_confmat
from pneumonia.evaluation.tensorboard import tensorboard_loggers
from pneumonia.hardware import cpu_has_native_bf16
from pneumonia.integrity import seal
from pneumonia.errors import ConfigError
from pneumonia.signature import Ge, Le, Lt, check_arguments
from pneumonia.models import build_net
from pneumonia.models.custom_cnn import CustomCNN

if TYPE_CHECKING:
    from lightning.fabric.utilities.data import AttributeDict

PHASES = ("train", "val", "test")
# `module.compile`: false, true (= torch.compile's default mode) or one of torch.compile's modes
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class PneumoniaClassifier(L.LightningModule):
    hparams: AttributeDict  # Lightning's property, typed AttributeDict | MutableMapping
    # buffers and metric collections registered in __init__
    threshold: torch.Tensor
    pos_weight: torch.Tensor
    val_metrics: MetricCollection
    test_metrics: MetricCollection

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        pos_weight: float | None = None,
        channels_last: bool = True,
        seed: int = 0,
        label_smoothing: Annotated[float, Ge(0), Lt(1)] = 0.0,
        # COMPILE_MODES
        compile: bool | Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = False,
        defer_sync: bool | Literal["auto"] = False,
        split_batch: bool | Literal["auto"] = False,
        distill_weight: Annotated[float, Ge(0), Le(1)] = 0.0,
        *,
        pretrained: bool = True,
    ) -> None:
        """`pretrained=False`: the weights come from a checkpoint next (the Predictor, an
        ensemble's members, a resumed run), so the net's `weights` are not downloaded or read.
        The caller's choice, not a hyperparameter: it is not saved with the others."""
        super().__init__()
        # the signature declares each argument's type and range; the config layer adds the `module.` prefix
        check_arguments(PneumoniaClassifier, locals())
        self.save_hyperparameters(ignore=["pretrained"], logger=False)
        self.net = build_net(net, pretrained=pretrained)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # The decision threshold lives in the state dict: chosen on validation after
        # training, it travels with the weights into eval.py.
        self.register_buffer("threshold", torch.tensor(0.5))
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight) if pos_weight else 1.0))
        for phase in PHASES:
            setattr(self, f"{phase}_metrics", classification_metrics(prefix=f"{phase}/"))
            # the epoch loss as a metric too: synced inside our own epoch hooks, which every
            # rank runs in the same order (self.log(sync_dist=True) syncs lazily, when rank 0's
            # progress bar asks, and deadlocks DDP against the metric sync of the other ranks)
            setattr(self, f"{phase}_loss", MeanMetric())
        # the stress validation (second validation dataloader): pooled metrics, and one AUROC
        # per perturbation, made when the DataModule says which perturbations there are
        self.val_stress_metrics = classification_metrics(prefix="val_stress/")
        self.val_stress_auroc = nn.ModuleList()
        self._stress_names: tuple[str, ...] = ()
        self.test_outputs: dict[str, torch.Tensor] = {}
        self._test_batches: list[tuple[torch.Tensor, ...]] = []
        # `defer_sync`: per phase, the steps' (probabilities, labels, losses, weights), still on
        # the device, given to the metrics once at the epoch's end
        self._pending: dict[str, list[tuple[Any, ...]]] = {"train": [], "val": []}
        # `distill_weight`: a function from a training batch's inputs to a teacher's logits (N,),
        # set by the training run (runners/distill.py); a plain attribute, not a submodule: the
        # teacher is neither trained nor saved with the student
        self.teacher: Callable[[torch.Tensor], torch.Tensor] | None = None  # with `.to(device)` if it moves

    def set_pos_weight(self, pos_weight: float) -> None:
        """The BCE weight of the PNEUMONIA class, once known: `module.pos_weight: balanced` is
        counted from the training split after the module is built (the run builds it once,
        before decoding). Saved with the other hyperparameters, as a number."""
        self.hparams.pos_weight = float(pos_weight)
        self.pos_weight.fill_(float(pos_weight))

    def setup(self, stage: str) -> None:
        # torch.compile for training only (`module.compile`): scoring paths build the module
        # without it (the Predictor), where a minute of compiling would not pay back.
        # nn.Module.compile compiles in place: the state dict keeps its keys.
        mode = self.hparams.get("compile")
        if stage == "fit" and mode:
            self.net.compile(**({} if mode is True else {"mode": mode}))

    def on_fit_start(self) -> None:
        if self.hparams.get("distill_weight") and self.teacher is None:
            raise ConfigError("distill.weight > 0 needs a teacher: set distill.teacher=<checkpoint>")
        if self.teacher is not None and callable(getattr(self.teacher, "to", None)):
            self.teacher.to(self.device)  # type: ignore[attr-defined]  # this rank's device (DDP: its own GPU)
        if isinstance(self.net, CustomCNN) and (workers := self.split_workers()):
            self.net.split_workers = workers

    def on_fit_end(self) -> None:
        if isinstance(self.net, CustomCNN):
            self.net.split_workers = 0

    def split_workers(self) -> int:
        """`module.split_batch`: the threads the net's conv blocks run a training batch's chunks
        on (`models.thread_split`), 0 for none. true: on the CPU in fp32 with 2+ intra-op
        threads, for a net that allows it (the custom CNN without batch norm), not compiled;
        auto: that, on a CPU without native bf16 only (where it was measured to pay)."""
        setting = self.hparams.get("split_batch", False)
        trainer = self._trainer
        precision = str(trainer.precision) if trainer is not None else "32-true"
        if (
            not setting
            or not isinstance(self.net, CustomCNN)
            or not self.net.splits_batch
            or self.hparams.get("compile")
            or self.device.type != "cpu"
            or precision not in ("32", "32-true")
            or (setting == "auto" and cpu_has_native_bf16())
        ):
            return 0
        threads = torch.get_num_threads()
        return threads if threads >= 2 else 0

    @property
    def defers_sync(self) -> bool:
        """`module.defer_sync`: true, false, or auto (= on a GPU, not on the CPU)."""
        setting = self.hparams.get("defer_sync", False)
        return self.device.type != "cpu" if setting == "auto" else bool(setting)

    # ---- forward and steps ---------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _step(self, phase: str, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        logits = self(x).float()
        loss = nn.functional.binary_cross_entropy_with_logits(
            logits, self.targets(phase, batch), pos_weight=self.pos_weight
        )
        probs = torch.sigmoid(logits.detach())
        if phase in self._pending and self.defers_sync:
            # torchmetrics' update checks its inputs on the host (a sync per call): keep them
            # on the device and update once per epoch (`_flush`), to the same values
            self._pending[phase].append((probs, y, loss.detach().reshape(1), len(y)))
            return loss, probs
        getattr(self, f"{phase}_metrics").update(probs, y)
        getattr(self, f"{phase}_loss").update(loss.detach(), weight=len(y))
        return loss, probs

    def _flush(self, phase: str) -> None:
        """The steps' deferred metric inputs (`defer_sync`) into the phase's metrics: one update."""
        pending = self._pending.get(phase)
        if not pending:
            return
        probs, labels, losses, sizes = cast(Any, zip(*pending))  # tuples, each concatenated below
        probs, labels, losses = torch.cat(probs), torch.cat(labels), torch.cat(losses)
        weights = torch.tensor(sizes, dtype=losses.dtype).to(losses.device, non_blocking=True)
        pending.clear()
        getattr(self, f"{phase}_metrics").update(probs, labels)
        getattr(self, f"{phase}_loss").update(losses, weight=weights)

    def targets(self, phase: str, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """What the loss fits: the labels as floats, or a training batch's soft targets
        (mixup's 4th element); when training, mixed with the teacher's probability on the same
        inputs, (1 - w) * y + w * P_teacher (`distill_weight` w: BCE is linear in its target, so
        this is (1 - w) * BCE(label) + w * BCE(teacher)), then smoothed towards 0.5 by
        `label_smoothing`: y * (1 - eps) + eps / 2."""
        targets = batch[3].float() if phase == "train" and len(batch) > 3 else batch[1].float()
        weight = float(self.hparams.get("distill_weight") or 0.0)
        if phase == "train" and weight and self.teacher is not None:
            taught = torch.sigmoid(self.teacher(batch[0]).float()).to(targets.device)
            targets = (1 - weight) * targets + weight * taught
        eps = float(self.hparams.get("label_smoothing") or 0.0)
        if phase == "train" and eps:
            targets = targets * (1 - eps) + eps / 2
        return targets

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step("train", batch)[0]

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 0:
            self._step("val", batch)
        else:
            self._stress_step(batch)

    def _stress_step(self, batch: tuple[torch.Tensor, ...]) -> None:
        """A batch of the stress validation: (images, labels, indices, perturbation index)."""
        x, y, _, group = batch
        probs = torch.sigmoid(self(x).float())
        self.val_stress_metrics.update(probs, y)
        for g in torch.unique(group).tolist():
            chosen = group == g
            self.val_stress_auroc[g].update(probs[chosen], y[chosen])

    def test_step(self, batch: Any, batch_idx: int) -> None:
        _, probs = self._step("test", batch)
        self._test_batches.append((probs.cpu(), batch[1].cpu(), batch[2].cpu()))

    def predict_step(self, batch: Any, batch_idx: int) -> tuple[torch.Tensor, ...]:
        """(probabilities, labels, indices, logits) of a batch, on the CPU."""
        x, y, idx = batch
        logits = self(x).float()
        return torch.sigmoid(logits).cpu(), y.cpu(), idx.cpu(), logits.cpu()

    # ---- epoch ends: compute, log once, reset ---------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout draws from the global RNG, which Lightning and DataLoader iterators also
        # draw from at moments that differ between a fresh and a resumed run. Seeding it per
        # (seed, rank, epoch, batch) makes a resumed run continue exactly like an uninterrupted one.
        torch.manual_seed(hash((self.hparams.seed, self.global_rank, self.current_epoch, batch_idx)) % 2**62)

    def on_validation_epoch_start(self) -> None:
        set_threshold(self.val_metrics, float(self.threshold))
        # during training the threshold buffer is 0.5: the stored one is chosen after training
        set_threshold(self.val_stress_metrics, float(self.threshold))
        trainer = self._trainer
        stress = getattr(getattr(trainer, "datamodule", None), "stress_set", lambda: None)() if trainer else None
        names = stress.names if stress is not None else ()
        if names != self._stress_names:
            self._stress_names = names
            self.val_stress_auroc = nn.ModuleList([BinaryAUROC() for _ in names]).to(self.device)

    def on_test_epoch_start(self) -> None:
        set_threshold(self.test_metrics, float(self.threshold))
        self._test_batches = []

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")
        self._log_stress()

    def _log_stress(self) -> None:
        """`val_stress/*`: the metrics pooled over every perturbed image (at the threshold
        buffer), and `val_stress/<perturbation>/auroc`."""
        if not any(m.update_called for m in self.val_stress_metrics.values()):
            return
        scalars, _ = split_confmat(self.val_stress_metrics.compute(), "val_stress/")
        self.val_stress_metrics.reset()
        for name, auroc in zip(self._stress_names, cast("list[BinaryAUROC]", self.val_stress_auroc)):
            if auroc.update_called:
                scalars[f"val_stress/{name}/auroc"] = float(auroc.compute())
            auroc.reset()
        self.log_dict(scalars, prog_bar=False)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        if self._test_batches:
            probs, labels, indices = (torch.cat(t) for t in zip(*self._test_batches))
        else:
            probs, labels, indices = torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
        if self.trainer.world_size > 1:  # every rank scored a disjoint shard: collect them all
            probs, labels, indices = (self._gather_varlen(t) for t in (probs, labels, indices))
            order = torch.argsort(indices)
            probs, labels, indices = probs[order], labels[order], indices[order]
        self.test_outputs = {"probs": probs, "labels": labels, "indices": indices}

    def _gather_varlen(self, t: torch.Tensor) -> torch.Tensor:
        """all_gather for shards of different lengths (pad, gather, cut)."""
        sizes = cast(torch.Tensor, self.all_gather(torch.tensor(len(t), device=self.device))).flatten().tolist()
        padded = torch.zeros(max(sizes), dtype=t.dtype, device=self.device)
        padded[: len(t)] = t.to(self.device)
        gathered = cast(torch.Tensor, self.all_gather(padded)).reshape(len(sizes), -1).cpu()
        return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])

    def _log_epoch(self, phase: str) -> None:
        self._flush(phase)
        metrics = getattr(self, f"{phase}_metrics")
        if not any(m.update_called for m in metrics.values()):
            return  # e.g. a validation epoch with no batches
        scalars, confmat = split_confmat(metrics.compute(), f"{phase}/")
        loss = getattr(self, f"{phase}_loss")
        epoch_loss = float(loss.compute())
        metrics.reset()
        loss.reset()
        # torchmetrics already synced the ranks; validation AUROC and accuracy (what picks the
        # checkpoint) also go to the progress bar, beside the losses
        shown = {k: v for k, v in scalars.items() if k in ("val/auroc", "val/accuracy")}
        self.log_dict({k: v for k, v in scalars.items() if k not in shown}, prog_bar=False)
        if shown:
            self.log_dict(shown, prog_bar=True)
        self.log(f"{phase}/loss", epoch_loss, prog_bar=phase != "test")
        if phase != "train" and not self.trainer.sanity_checking:
            self._log_figure(f"{phase}/confusion_matrix", confmat)

    def _log_figure(self, tag: str, confmat: torch.Tensor) -> None:
        tensorboards = tensorboard_loggers(self.loggers) if self.trainer.is_global_zero else []
        if not tensorboards:
            return
        from pneumonia.evaluation.plots import confusion_matrix_figure  # matplotlib: only when drawing

        for tb in tensorboards:
            fig = confusion_matrix_figure(confmat, title=f"{tag} (threshold {float(self.threshold):.2f})")
            tb.experiment.add_figure(tag, fig, global_step=self.current_epoch, close=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the last hook before Lightning writes: a checksum of the weights, verified on load
        seal(checkpoint)

    # ---- optimisation -----------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        sched_cfg = self.hparams.scheduler
        if not sched_cfg:
            return optimizer
        scheduler = {
            "scheduler": instantiate(sched_cfg["scheduler"])(optimizer=optimizer),
            "interval": sched_cfg.get("interval", "epoch"),
            "frequency": sched_cfg.get("frequency", 1),
        }
        if sched_cfg.get("monitor"):  # only schedulers that watch a metric (plateau) have one
            scheduler["monitor"] = sched_cfg["monitor"]
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
