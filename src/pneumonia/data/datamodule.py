"""`ChestXrayDataModule`: the Kaggle ImageFolder splits, decoded once, batched by index.

Batches are `(images, labels, indices)`: uint8 images leave the loader and become float
in [0, 1] through the preprocessing preset (and are augmented, when training, before the
preset's normalisation) in `on_after_batch_transfer`, that is on the model's device, one
batch at a time. Two kinds of batch carry a fourth element: training batches with mixup
(`data.augment.mixup > 0`) their soft targets, and the stress validation loader
(`data.stress.enabled`, the second validation dataloader) each image's perturbation index.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from pneumonia.data.augment import BatchAugment
from pneumonia.data.cache import DecodedImages, decode_images
from pneumonia.data.folder import DataLayoutError, SplitFiles, scan_split
from pneumonia.data.layout import find_data_root
from pneumonia.data.patients import grouped_folds, grouped_split
from pneumonia.data.pixels import DEFAULT_MAX_PIXELS
from pneumonia.data.preprocess import Preprocess
from pneumonia.data.sampler import EpochBatchSampler, IndexedImages, epoch_seed
from pneumonia.data.stress import StressImages, StressSettings, validation_images
from pneumonia.errors import ConfigError
from pneumonia.signature import Ge, Gt, Lt, MinLen, check_arguments

if TYPE_CHECKING:
    from lightning.fabric.utilities.data import AttributeDict

log = logging.getLogger(__name__)


# `data.device_resident: auto` moves the decoded images to a CUDA device when they take at most
# this share of its free memory (the rest is for the network, its activations and the optimizer)
RESIDENT_FREE_FRACTION = 0.25


def resident_on(setting: bool | str, device: torch.device, nbytes: int, free_bytes: int | None) -> bool:
    """Whether `data.device_resident` (true, false or auto) keeps a split of `nbytes` on
    `device`: true always (on the CPU the copy is the host tensor itself), false never, auto on
    a CUDA device when `nbytes` is at most RESIDENT_FREE_FRACTION of its `free_bytes`."""
    if setting is True:
        return True
    if setting == "auto":
        return device.type == "cuda" and free_bytes is not None and nbytes <= RESIDENT_FREE_FRACTION * free_bytes
    return False


class ChestXrayDataModule(L.LightningDataModule):
    """`root/{train,val,test}/{NORMAL,PNEUMONIA}` → decoded, resized uint8 tensors.

    When `val/` is missing or has fewer than `min_val_images` images (the official one
    has 16), validation is carved out of `train/` by patient: see `patients.py`.
    With `folds` (k-fold cross-validation, `cv.folds`), `train/` is cut into that many
    patient-grouped, class-stratified folds (`split_seed`): fold `fold` validates, the
    others train, and `val/` is not used; `use_fold` moves to another fold without decoding.
    """

    hparams: AttributeDict  # Lightning's property, typed AttributeDict | MutableMapping

    def __init__(
        self,
        root: str = "data/chest_xray",
        image_size: Annotated[int, Ge(8)] = 150,
        channels: int = 1,
        batch_size: Annotated[int, Ge(1)] = 64,
        eval_batch_size: Annotated[int, Ge(1)] = 256,
        val_fraction: Annotated[float, Gt(0), Lt(1)] = 0.1,
        min_val_images: Annotated[int, Ge(0)] = 100,
        split_seed: Annotated[int, Ge(0)] = 42,
        seed: Annotated[int, Ge(0)] = 0,
        drop_last: bool = False,
        num_workers: Annotated[int, Ge(0)] = 0,
        cache_dir: Annotated[str, MinLen(1)] | None = "auto",
        decode_threads: Annotated[int, Ge(1)] | None = None,
        on_bad_image: Literal["skip", "error"] = "skip",
        bad_image_report: str | None = None,
        augment: Mapping[str, Any] | None = None,
        download: bool = False,
        normalize: Literal["none", "standardize", "equalize"] = "none",
        crop: Literal["none", "content"] = "none",
        stress: Mapping[str, Any] | None = None,
        tta: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        device_resident: bool | Literal["auto"] = False,
        folds: Annotated[int, Ge(2)] | None = None,
        fold: Annotated[int, Ge(0)] | None = None,
    ) -> None:
        super().__init__()
        # the signature declares each argument's type and range; the config layer adds the `data.` prefix
        check_arguments(ChestXrayDataModule, locals())
        if (folds is None) != (fold is None) or (folds is not None and fold is not None and fold >= folds):
            raise ConfigError(f"fold={fold!r} must be one of 0..folds-1 with folds={folds!r} (both set, or both null)")
        # checks image_size, channels and normalize; stored in checkpoints with the other
        # arguments (datamodule_hyper_parameters), so every scoring path normalises alike
        self.preprocess = Preprocess(image_size, channels, normalize, max_pixels, crop)
        self.stress_settings = StressSettings.from_config(stress)
        self.save_hyperparameters(logger=False)
        try:
            self.augment = BatchAugment(**(augment or {}))
        except ConfigError as error:  # the class names its bare argument; the config layer adds `data.`
            raise ConfigError(f"augment.{error}") from None
        self._stress: StressImages | None = None
        self._aug_generator = torch.Generator()
        self._aug_epoch = -1
        self.splits: dict[str, IndexedImages] = {}
        self.paths: dict[str, tuple[str, ...]] = {}
        self._train_sampler: EpochBatchSampler | None = None
        self.predict_split = "test"  # which split predict_dataloader() serves
        self._data_root: Path | None = None
        # device copies of the splits (`data.device_resident`), made by the loaders; `splits`
        # keeps the host copies, which the stress set, Grad-CAM and eval's report read
        self._resident: dict[str, IndexedImages] = {}
        self._moved: dict[int, torch.Tensor] = {}
        # with `folds`: the decoded train/ images, their rows and each row's fold (`use_fold`)
        self._folds: tuple[DecodedImages, torch.Tensor, torch.Tensor] | None = None

    @property
    def cache_dir(self) -> str | None:
        """Where decoded images are cached: `data.cache_dir`, with `auto` = this machine's
        default (`pneumonia.data.cache.default_cache_dir()`: $PNEUMONIA_CACHE_DIR or
        ~/.cache/pneumonia/images), whatever folder the command runs in; None = in memory."""
        from pneumonia.data.cache import default_cache_dir

        value = self.hparams.cache_dir
        return default_cache_dir() if value == "auto" else value

    @property
    def data_root(self) -> Path:
        """The folder holding the split folders: `root` itself, or the one split set found
        below it (the Kaggle archive's top folder, kagglehub's cache, the Mendeley release);
        downloaded first when `download` is set and `root` does not exist."""
        if self._data_root is None:
            if self.hparams.download:
                from pneumonia.data.download import ensure

                ensure(self.hparams.root)
            self._data_root = find_data_root(self.hparams.root)
            if str(self._data_root) != str(Path(self.hparams.root).expanduser()):
                log.info("data.root %s: using the split folders in %s", self.hparams.root, self._data_root)
        return self._data_root

    # ---- discovery and decoding ------------------------------------------------
    def check_layout(self, stages: tuple[str, ...] = ("fit",)) -> None:
        """Raise `DataLayoutError` now if a folder needed by `stages` is missing or wrong."""
        if "fit" in stages:
            scan_split(self.data_root, "train")
            scan_split(self.data_root, "val", required=False)
        if "test" in stages:
            scan_split(self.data_root, "test")

    def _decode(self, files: SplitFiles) -> DecodedImages:
        h = self.hparams
        decoded = decode_images(
            files.paths, files.labels, self.preprocess, cache_dir=self.cache_dir, threads=h.decode_threads
        )
        bad = sorted([*files.skipped, *decoded.bad])  # special files left out by the walk, then decode failures
        if bad:
            self._report_bad(files, bad)
        return decoded

    def _report_bad(self, files: SplitFiles, bad: list[tuple[str, str]]) -> None:
        h = self.hparams
        if h.on_bad_image == "error":
            listing = "; ".join(f"{p} ({why})" for p, why in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise DataLayoutError(
                f"{len(bad)} unreadable image(s) in '{files.split_dir}': {listing}{more} "
                f"(set data.on_bad_image=skip to train without them)"
            )
        where = ""
        if h.bad_image_report:
            report = Path(h.bad_image_report)
            report.parent.mkdir(parents=True, exist_ok=True)
            with report.open("a") as f:
                for p, why in bad:
                    f.write(f"{p}\t{why}\n")
            where = f", listed in {report}"
        log.warning("Skipped %d unreadable image(s) in %s%s", len(bad), files.split_dir, where)

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        predicting_test = stage == "predict" and self.predict_split == "test"
        if stage in ("fit", "validate", "predict", None) and not predicting_test and "train" not in self.splits:
            train_files = scan_split(self.data_root, "train")
            val_files = scan_split(self.data_root, "val", required=False)
            train = self._decode(train_files)
            if h.get("folds") is not None:
                if val_files is not None:
                    log.info(
                        "data.folds=%d: validating on fold %d of train/, not on %s",
                        h.folds,
                        h.fold,
                        val_files.split_dir,
                    )
                self._set_folds(train)
            elif val_files is not None and len(val_files) >= h.min_val_images:
                val = self._decode(val_files)
                self._register("train", train, train.rows)
                self._register("val", val, val.rows)
            else:
                if val_files is not None:
                    log.info(
                        "Ignoring %s: %d images < data.min_val_images=%d; validating on a "
                        "patient-grouped split of train/",
                        val_files.split_dir,
                        len(val_files),
                        h.min_val_images,
                    )
                rows = train.rows  # the files that decoded; the split is made among them
                tr, va = grouped_split(
                    [train.paths[i] for i in rows.tolist()], train.labels[rows].tolist(), h.val_fraction, h.split_seed
                )
                self._register("train", train, rows[torch.from_numpy(tr)])
                self._register("val", train, rows[torch.from_numpy(va)])
            log.info("Train %d images, validation %d images", len(self.splits["train"]), len(self.splits["val"]))
        if (stage == "test" or predicting_test) and "test" not in self.splits:
            test = self._decode(scan_split(self.data_root, "test"))
            self._register("test", test, test.rows)

    def _set_folds(self, train: DecodedImages) -> None:
        h = self.hparams
        rows = train.rows  # the files that decoded; the folds are made among them
        try:
            fold_of = grouped_folds(
                [train.paths[i] for i in rows.tolist()], train.labels[rows].tolist(), h.folds, h.split_seed
            )
        except ValueError as err:
            raise ConfigError(f"folds={h.folds} in '{self.data_root}/train': {err}") from None
        self._folds = (train, rows, torch.from_numpy(fold_of))
        self.use_fold(h.fold)

    def fold_of(self) -> dict[str, int]:
        """Each decoded training image's path -> its fold (with `folds` only)."""
        if self._folds is None:
            raise RuntimeError("fold_of() needs folds and a DataModule set up for fit")
        train, rows, fold_of = self._folds
        return {train.paths[r]: int(k) for r, k in zip(rows.tolist(), fold_of.tolist())}

    def all_folds(self) -> IndexedImages:
        """Every decoded training image, all folds together (with `folds` only)."""
        if self._folds is None:
            raise RuntimeError("all_folds() needs folds and a DataModule set up for fit")
        train, rows, _ = self._folds
        return IndexedImages(train.images, train.labels, rows)

    def use_fold(self, fold: int) -> None:
        """Validate on fold `fold`, train on the others: the same decoded images, indexed again."""
        if self._folds is None:
            raise RuntimeError("use_fold() needs folds and a DataModule set up for fit")
        train, rows, fold_of = self._folds
        held_out = fold_of == fold
        self._register("train", train, rows[~held_out])
        self._register("val", train, rows[held_out])
        self.hparams.fold = fold
        for split in ("train", "val"):  # device copies and the stress set follow the split
            self._resident.pop(split, None)
        self._stress = None

    def _register(self, split: str, decoded: DecodedImages, indices: torch.Tensor) -> None:
        if len(indices) == 0:
            raise DataLayoutError(f"the {split} split of data.root '{self.data_root}' has no readable images")
        self.splits[split] = IndexedImages(decoded.images, decoded.labels, indices)
        self.paths[split] = decoded.paths

    def class_counts(self, split: str) -> torch.Tensor:
        data = self.splits[split]
        return torch.bincount(data.labels[data.indices], minlength=2)

    # ---- loaders -------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def resident_split(self, split: str) -> IndexedImages | None:
        """The split's device copy when `data.device_resident` puts it on the model's device
        (made once; splits sharing one decoded tensor share its copy), else None."""
        if split in self._resident:
            return self._resident[split]
        data, device = self.splits[split], self._device()
        setting = self.hparams.get("device_resident", False)
        free = None
        if setting == "auto" and device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
        pending = sum(
            t.numel() * t.element_size() for t in (data.images, data.labels, data.indices) if id(t) not in self._moved
        )
        if not resident_on(setting, device, pending, free):
            return None
        self._resident[split] = data.to(device, self._moved)
        log.info(
            "data.device_resident=%s: the %s split's decoded images on %s (%.0f MB moved)",
            setting,
            split,
            device,
            pending / 2**20,
        )
        return self._resident[split]

    def _loader(self, split: str, train: bool, dataset: Any = None) -> DataLoader:
        h = self.hparams
        rank, world = self._rank_world()
        workers = h.num_workers
        if dataset is None:
            resident = self.resident_split(split)
            dataset = self.splits[split] if resident is None else resident
            if resident is not None:
                workers = 0  # batches are gathered on the device: loader processes cannot do that
        sampler = EpochBatchSampler(
            len(dataset),
            h.batch_size if train else h.eval_batch_size,
            shuffle=train,
            seed=h.seed,
            drop_last=train and h.drop_last,
            rank=rank,
            world_size=world,
        )
        if train:
            self._train_sampler = sampler
        # its own generator: creating an iterator must not draw from the global RNG
        return DataLoader(
            dataset,
            batch_size=None,
            sampler=sampler,
            generator=torch.Generator(),
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation split; with `data.stress.enabled`, also (second loader) the same
        images under every perturbation of `data.stress.perturbations`."""
        plain = self._loader("val", train=False)
        stress = self.stress_set()
        return plain if stress is None else [plain, self._loader("val_stress", train=False, dataset=stress)]

    def stress_set(self) -> StressImages | None:
        """The perturbed validation images (None unless `data.stress.enabled`), built once from
        the decoded validation images: the same images every epoch and every run."""
        if not self.stress_settings.enabled or "val" not in self.splits:
            return None
        if self._stress is None:
            import time

            start = time.perf_counter()
            images, labels = validation_images(self.splits["val"])
            self._stress = StressImages(images, labels, self.stress_settings)
            log.info(
                "Stress validation: %d images x %d perturbations (%s) built in %.1f s",
                len(images),
                len(self.stress_settings.perturbations),
                ", ".join(self.stress_settings.names),
                time.perf_counter() - start,
            )
        return self._stress

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, train=False)

    # ---- on the device -------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels, indices, *extra = batch
        x = self.preprocess.to_unit(images)
        trainer = self.trainer
        if trainer is not None and trainer.training:
            epoch = self._train_sampler.epoch if self._train_sampler else trainer.current_epoch
            if epoch != self._aug_epoch:  # reseed per epoch: resumed runs augment identically
                self._aug_generator.manual_seed(epoch_seed(self.hparams.seed, epoch, stream=7))
                self._aug_epoch = epoch
            fast = "train" in self._resident  # device-resident: the parameters' copies do not wait either
            x = self.augment(x, self._aug_generator, non_blocking=fast)
            if self.augment.mixup:  # soft targets as a 4th element; the labels stay the hard ones
                x, targets = self.augment.mix(x, labels, self._aug_generator, non_blocking=fast)
                extra = [targets]
        # normalisation last, after the augmentation, as in every scoring path (Preprocess.to_input)
        return (self.preprocess.normalize_input(x), labels, indices, *extra)
