"""Startup checks of values the YAML types cannot express; each error names its key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from pneumonia.config.plain import to_dict
from pneumonia.errors import ConfigError
from pneumonia.hardware import cuda_available, no_gpu_visible
from pneumonia.signature import check_values, static_hints
from pneumonia.validators import check_temperature, check_tta, optional_int, threshold_override

if TYPE_CHECKING:
    from pneumonia.data.datamodule import ChestXrayDataModule
    from pneumonia.models.classifier import PneumoniaClassifier


def _get(cfg: DictConfig, key: str) -> object:
    value = cfg
    for part in key.split("."):
        value = value[part]
    return value


def _int(cfg: DictConfig, key: str, low: int | None = None) -> int:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} must be an integer")
    if low is not None and value < low:
        raise ConfigError(f"{key}={value} must be >= {low}")
    return value


def _bool(cfg: DictConfig, key: str) -> bool:
    value = _get(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    return value


def _optional_int(cfg: DictConfig, key: str, low: int) -> int | None:
    return optional_int(_get(cfg, key), key, low)


def _optional_path(cfg: DictConfig, key: str) -> str | None:
    value = _get(cfg, key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{key}={value!r} must be a path (or null)")
    return value


def monitored_metrics() -> tuple[str, ...]:
    """What a `monitor` may name: the loss or a metric of a phase that is logged every epoch."""
    from pneumonia.evaluation import METRIC_NAMES

    return tuple(f"{phase}/{name}" for phase in ("val", "train") for name in ("loss", *METRIC_NAMES))


def check_monitor(key: str, value: object, stress: tuple[str, ...] = ()) -> None:
    """A metric a checkpoint, early stopping or a scheduler can watch (else Lightning stops
    the run after the first validation epoch, past the decoding). `stress`: the stress
    validation's metrics, when `data.stress.enabled` logs them."""
    known = monitored_metrics()
    prefixes = tuple(s for s in stress if s.endswith("/"))  # quick checks: any val_stress/ name, checked later
    if value not in known and value not in stress and not (prefixes and str(value).startswith(prefixes)):
        raise ConfigError(
            f"{key}={value!r} is not a logged metric: one of {', '.join(known)}"
            + (", or a val_stress/ metric" if stress else "")
        )


def stress_metrics(cfg: DictConfig) -> tuple[str, ...]:
    """The `val_stress/*` names a run logs (none unless `data.stress.enabled`)."""
    stress = cfg.data.get("stress") or {}
    if not stress.get("enabled"):
        return ()
    from pneumonia.data.stress import StressSettings
    from pneumonia.evaluation import METRIC_NAMES

    names = StressSettings.from_config(to_dict(stress, resolve=True)).names
    return (*(f"val_stress/{m}" for m in METRIC_NAMES), *(f"val_stress/{n}/auroc" for n in names))


def _sweeper_optimises() -> bool:
    """True inside a sweep whose sweeper optimises the returned value (hparams_search=optuna)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return bool(HydraConfig.get().runtime.choices.get("hparams_search"))
    except (ValueError, ImportError, AttributeError):  # not under @hydra.main
        return False


def check_optuna(cfg: DictConfig) -> None:
    """`optuna.*`: set together by the hparams_search=optuna sweeper for each job, else null."""
    import re

    node = cfg.get("optuna") or {}
    storage, study, trial = node.get("storage"), node.get("study"), node.get("trial")
    if storage is not None and (not isinstance(storage, str) or not re.match(r"^\w+(\+\w+)?://", storage)):
        raise ConfigError(
            f"optuna.storage={storage!r} must be a database URL (sqlite:///..., postgresql://...) or null"
        )
    if study is not None and (not isinstance(study, str) or not study.strip()):
        raise ConfigError(f"optuna.study={study!r} must be the study's name or null")
    if trial is not None and (isinstance(trial, bool) or not isinstance(trial, int) or trial < 0):
        raise ConfigError(f"optuna.trial={trial!r} must be a trial number (an integer >= 0) or null")
    given = [k for k, v in (("storage", storage), ("study", study), ("trial", trial)) if v is not None]
    if given and len(given) < 3:
        raise ConfigError(
            f"{', '.join('optuna.' + k for k in given)} set without the other optuna.* keys: the "
            "Optuna sweeper sets optuna.storage, optuna.study and optuna.trial together (all null "
            "outside a search)"
        )


def check_train_settings(cfg: DictConfig, *, quick: bool = False) -> None:
    """The train config's keys without an owner class, checked without torch or Lightning
    (`quick=True`: before Hydra starts the job, where the stress validation's metric names,
    which need torch, are not known: a `val_stress/` monitor is checked later)."""
    seed = _int(cfg, "seed", 0)
    if seed > 2**32 - 1:
        raise ConfigError(f"seed={seed} must be < 2**32 (numpy's limit)")
    _optional_int(cfg, "threads", 1)
    _bool(cfg, "test")
    _bool(cfg, "module.channels_last")
    _optional_path(cfg, "resume")
    _optional_path(cfg, "ckpt_path")
    from pneumonia.runners.distill import check_distill_settings

    check_distill_settings(cfg)
    epochs = _int(cfg, "trainer.max_epochs", -1)
    callbacks = cfg.get("callbacks") or {}
    if epochs == 0 or (epochs == -1 and not callbacks.get("early_stopping")):
        raise ConfigError(
            f"trainer.max_epochs={epochs} must be >= 1 (-1, no limit, only with "
            "callbacks.early_stopping to end the run)"
        )
    stress = ("val_stress/",) if quick and (cfg.data.get("stress") or {}).get("enabled") else stress_metrics(cfg)
    check_monitor("monitor", cfg.monitor, stress)
    if cfg.trainer.get("fast_dev_run") and _sweeper_optimises():
        raise ConfigError(
            "debug=fdr (trainer.fast_dev_run) scores nothing, so the hparams_search sweeper has "
            "nothing to optimise: use debug=tiny (or debug=limit) in a search"
        )
    check_optuna(cfg)
    if cfg.monitor_mode not in ("min", "max"):
        raise ConfigError(f"monitor_mode={cfg.monitor_mode!r} must be 'min' or 'max'")
    for name, callback in callbacks.items():
        if callback is not None and not OmegaConf.is_dict(callback):
            raise ConfigError(
                f"callbacks.{name}={callback!r} must be the callback's settings or null (off); "
                f"the options are in conf/callbacks/"
            )
        if callback and callback.get("monitor") is not None:
            check_monitor(f"callbacks.{name}.monitor", callback.monitor, stress)
    if (cfg.get("scheduler") or {}).get("monitor") is not None:
        check_monitor("scheduler.monitor", cfg.scheduler.monitor, stress)
    pw = cfg.module.pos_weight
    if pw is not None and pw != "balanced" and (isinstance(pw, bool) or not isinstance(pw, (int, float)) or pw <= 0):
        raise ConfigError(f"module.pos_weight={pw!r} must be null, 'balanced' or a positive number")
    check_cv_settings(cfg)


def check_cv_settings(cfg: DictConfig) -> int | None:
    """`cv.folds` (null, or an integer >= 2) and `cv.ensemble`, and the keys a cross-validation
    sets itself or cannot run with; the number of folds (None: no cross-validation)."""
    cv = cfg.get("cv")
    if cv is None:
        return None
    if not OmegaConf.is_dict(cv):
        raise ConfigError(f"cv={cv!r} must be the cross-validation settings (cv.folds, cv.ensemble, cv.combine)")
    folds = optional_int(cv.get("folds"), "cv.folds", 2)
    if not isinstance(cv.get("ensemble", False), bool):
        raise ConfigError(f"cv.ensemble={cv.get('ensemble')!r} must be true or false")
    # the ensemble's `combine`, as models.Ensemble declares it (read from its source: no torch)
    hints = static_hints("pneumonia.models.ensemble.Ensemble") or {}
    check_values(
        {"combine": hints["combine"]} if "combine" in hints else {}, {"combine": cv.get("combine", "prob")}, "cv."
    )
    if folds is None:
        if cv.get("ensemble"):
            raise ConfigError("cv.ensemble=true builds the fold models of a cross-validation: give cv.folds=K too")
        return None
    data = cfg.get("data") or {}
    for key in ("folds", "fold"):
        if data.get(key) is not None:
            raise ConfigError(
                f"data.{key}={data.get(key)!r} with cv.folds={folds}: the cross-validation sets data.folds and "
                "data.fold for each fold's run; leave them null (data.folds=K data.fold=k trains one fold alone)"
            )
    if cfg.get("ensemble"):
        raise ConfigError(
            "cv.folds with ensemble.seeds (experiment=best_ensemble): cross-validate one recipe with cv.folds, "
            "or train seeds into an ensemble, not both in one run (cv.ensemble=true builds the fold models into one)"
        )
    if cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path= resumes one run; a cross-validation resumes with resume=<its run folder>")
    trainer = cfg.get("trainer") or {}
    strategy = str(trainer.get("strategy", "auto"))
    if "ddp" in strategy or int(trainer.get("num_nodes", 1) or 1) > 1:
        raise ConfigError(
            f"trainer.strategy={strategy}: a cross-validation trains its folds one after another on one device; "
            "drop trainer=ddp"
        )
    return folds


def pretrained_weights(cfg: DictConfig) -> bool:
    """Whether a training run starts from `model.weights`: not when it resumes (`resume`,
    `ckpt_path`), whose checkpoint replaces every weight (so nothing is downloaded)."""
    return not (cfg.get("resume") or cfg.get("ckpt_path"))


@dataclass(frozen=True)
class TrainStart:
    """What `check_train_config` built, for `train()` to go on with: each built once per run."""

    datamodule: ChestXrayDataModule  # not set up: nothing decoded
    module: PneumoniaClassifier  # `module.pos_weight: balanced` is set once the data is set up


def check_train_config(cfg: DictConfig) -> TrainStart:
    """Check a composed train config before any image is decoded; return the DataModule and the
    LightningModule it built, for `train()` to go on with (`TrainStart`).

    Each value is checked once, by its owner: `data.*` by the DataModule (and
    `data.image_size`/`model.in_channels` by the preprocessing preset), `model.*` by the
    network, `data.augment.*` by the augmentation, `optimizer`/`scheduler` by torch,
    `trainer.*`, `callbacks.*` and `logger.*` by Lightning when they are built (before
    decoding, `runners.common`). The keys without an owner class are checked here.
    """
    check_train_settings(cfg)
    check_optimization(cfg)
    check_trainer(cfg)
    check_mlflow(cfg)
    from pneumonia.config.instantiate import check_arguments, instantiate_setting
    from pneumonia.config.rundir import check_output_dir
    from pneumonia.models import NETS

    check_output_dir(cfg.paths.output_dir, "paths.output_dir")  # before the keys that interpolate it
    check_folders(cfg)
    # the model before the data: data.channels follows model.in_channels, named here first
    target = NETS.get(str(cfg.model.get("_target_")))
    if target is not None:
        check_arguments("model", cfg.model, target)
    # the module (and its net: a depth too large for the image size) fails now, not after decoding;
    # this is the run's one build of it (and its one read of model.weights, downloaded into
    # torchvision's cache first if needed: a machine without network fails now, in one line)
    # seeded here, not after: the initial weights are the seed's first draw, as they were when
    # train() built the module after seeding, and nothing after this re-seeds
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg, pretrained=pretrained_weights(cfg))
    # the DataModule's constructor checks data.* (no decoding); train() goes on with this one
    return TrainStart(instantiate_setting("data", cfg.data, _convert_="all"), module)


def build_module(cfg: DictConfig, *, pretrained: bool) -> PneumoniaClassifier:
    """The LightningModule of a train config, its initial weights drawn from torch's RNG (which
    `check_train_config` has just seeded with `seed`). `module.pos_weight: balanced` is counted
    from the training split once the DataModule is set up (`PneumoniaClassifier.set_pos_weight`):
    it is built with no weight (1) until then."""
    from pneumonia.config.instantiate import check_arguments
    from pneumonia.models.classifier import PneumoniaClassifier

    # distill_weight: from distill.weight (a teacher named), not module.*
    module = {k: v for k, v in to_dict(cfg.module, resolve=True).items() if k not in ("pos_weight", "distill_weight")}
    check_arguments("module", module, PneumoniaClassifier)
    pos_weight = cfg.module.pos_weight
    from pneumonia.runners.distill import distill_weight

    return PneumoniaClassifier(
        net=to_dict(cfg.model, resolve=True),
        optimizer=to_dict(cfg.optimizer, resolve=True),
        scheduler=to_dict(cfg.scheduler, resolve=True) or None,
        pos_weight=None if pos_weight == "balanced" else pos_weight,
        seed=cfg.seed,
        pretrained=pretrained,
        distill_weight=distill_weight(cfg),
        **module,
    )


def check_mlflow(cfg: DictConfig) -> None:
    """The `mlflow:` settings (their types are MlflowSettings' signature), whether or not a
    logger or step uses them: a typo is refused before it matters."""
    if cfg.get("mlflow") is not None:
        from pneumonia.tracking.settings import MlflowSettings

        MlflowSettings.from_config(cfg.mlflow)


def check_eval_values(cfg: DictConfig) -> None:
    """eval.py's own values, under their eval.py names, with no torch (run before it is imported,
    and again by `check_eval_config`)."""
    _optional_int(cfg, "threads", 1)
    _int(cfg, "gallery_size", 0)
    _bool(cfg, "describe")
    threshold_override(cfg.get("threshold"))
    if "ece_bins" in cfg:
        _int(cfg, "ece_bins", 1)
    if cfg.get("intervals") is not None:
        _int(cfg, "intervals.resamples", 0)
        _int(cfg, "intervals.seed", 0)
    if cfg.get("tta") is not None:
        check_tta(cfg.tta)
    if cfg.get("temperature") is not None:
        check_temperature(cfg.temperature)


def check_eval_config(cfg: DictConfig) -> None:
    """Check a composed eval config before the checkpoint is scored (the keys without an
    owner class; `data.*` is checked by the DataModule, `trainer.*` by Lightning)."""
    from pneumonia.config.rundir import check_output_dir

    check_output_dir(cfg.paths.output_dir, "paths.output_dir")
    check_folders(cfg)
    check_trainer(cfg)
    check_mlflow(cfg)
    check_eval_values(cfg)
    if cfg.data.get("download") is not None:
        _bool(cfg, "data.download")


def check_optimization(cfg: DictConfig) -> None:
    """Build `optimizer` and `scheduler.scheduler` on a stand-in parameter: torch's own checks
    (a negative learning rate, betas outside [0, 1), an unknown plateau mode...) fail now, as
    one line naming the key, instead of inside `configure_optimizers` after decoding."""
    import torch

    from pneumonia.config.instantiate import instantiate_setting

    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = instantiate_setting("optimizer", cfg.optimizer, call={"params": params})
    scheduler: Any = cfg.get("scheduler") or {}
    if scheduler.get("scheduler"):
        instantiate_setting("scheduler.scheduler", scheduler.scheduler, call={"optimizer": optimizer})
        if scheduler.get("interval", "epoch") not in ("epoch", "step"):
            raise ConfigError(f"scheduler.interval={scheduler.interval!r} must be 'epoch' or 'step'")
        if "frequency" in scheduler:
            _int(cfg, "scheduler.frequency", 1)


# Lightning takes these at construction and divides by them during the run
TRAINER_AT_LEAST_ONE = ("check_val_every_n_epoch", "accumulate_grad_batches")
# config keys that name a folder a run writes into
FOLDER_KEYS = ("dirpath", "default_root_dir", "output_dir", "cache_dir", "save_dir", "root_dir")


def check_trainer(cfg: DictConfig, *, quick: bool = False) -> None:
    """What Lightning's Trainer accepts when it is built but fails on during the run, and
    the GPU asked for on a machine without one (Lightning's words name no key or fix).
    `quick=True`: without importing torch (a GPU that is visible but unusable is found later)."""
    accelerator = str(cfg.trainer.get("accelerator"))
    if accelerator in ("gpu", "cuda") and (no_gpu_visible() or (not quick and not cuda_available())):
        raise ConfigError(
            f"trainer.accelerator={accelerator}: this machine has no usable CUDA GPU "
            "(torch.cuda.is_available() is False); use trainer.accelerator=cpu, or auto"
        )
    for key in TRAINER_AT_LEAST_ONE:
        if cfg.trainer.get(key) is not None:
            _int(cfg, f"trainer.{key}", 1)
    clip = cfg.trainer.get("gradient_clip_val")
    if clip is not None and not (isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip >= 0):
        # a negative norm would flip the gradients' sign in torch's clip_grad_norm_
        raise ConfigError(f"trainer.gradient_clip_val={clip!r} must be a number >= 0 (or null: no clipping)")


def check_folders(cfg: DictConfig, prefix: str = "") -> None:
    """Every folder a run writes into (`*.dirpath`, `*.cache_dir`, `paths.output_dir`...): a
    `ConfigError` naming the key when it is a file or cannot be created, before the run
    spends minutes getting there."""
    from pneumonia.config.rundir import check_output_dir

    for key in cfg.keys():
        node = cfg._get_node(key)
        name = f"{prefix}{key!s}"
        if OmegaConf.is_dict(node):
            check_folders(cfg[key], f"{name}.")
        elif str(key) in FOLDER_KEYS and not OmegaConf.is_missing(cfg, key):
            value = cfg[key]
            if value is None or value == "auto":  # auto: the data cache's machine default
                continue
            if isinstance(value, bool) or not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name}={value!r} must be a folder path")
            check_output_dir(value, name)
