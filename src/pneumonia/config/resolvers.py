"""OmegaConf resolvers the configs use; imported by the entry points before Hydra starts."""

from __future__ import annotations

import hashlib
from datetime import datetime

from omegaconf import OmegaConf

MAX_DIRNAME = 120  # file systems allow 255 bytes per name; long sweeps overflow that


def short_dirname(text: str) -> str:
    """`text` as a folder name: long override lists keep their start plus a hash."""
    text = str(text).replace("/", "_")
    if len(text) <= MAX_DIRNAME:
        return text
    return f"{text[: MAX_DIRNAME - 9]}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def precision(accelerator: str = "auto") -> str:
    from pneumonia.hardware import auto_precision

    return auto_precision(str(accelerator))


def resume_run_dir(resume: str | None, ckpt_path: str | None, fresh: str) -> str:
    """The run folder: a resumed run goes on in the folder it was started in, a fresh run
    gets `fresh`. `ckpt_path=<run>/checkpoints/x.ckpt` resumes in `<run>` too."""
    if resume:
        return str(resume).rstrip("/")
    if ckpt_path:
        parts = str(ckpt_path).replace("\\", "/").split("/")
        if len(parts) >= 3 and parts[-2] == "checkpoints":
            return "/".join(parts[:-2]) or "/"
    return fresh


def config_subdir(resume: str | None, ckpt_path: str | None) -> str:
    """Where Hydra saves the composed config: never over the first run's `.hydra/`."""
    if resume_run_dir(resume, ckpt_path, "") != "":
        return f".hydra-resume-{datetime.now():%Y-%m-%d_%H-%M-%S-%f}"
    return ".hydra"


def register() -> None:
    if not OmegaConf.has_resolver("dirname"):
        OmegaConf.register_new_resolver("dirname", short_dirname)
    if not OmegaConf.has_resolver("run_dir"):
        OmegaConf.register_new_resolver("run_dir", resume_run_dir)
    if not OmegaConf.has_resolver("config_subdir"):
        OmegaConf.register_new_resolver("config_subdir", config_subdir)
    if not OmegaConf.has_resolver("auto_precision"):
        OmegaConf.register_new_resolver("auto_precision", precision)


register()
