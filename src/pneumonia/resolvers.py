"""OmegaConf resolvers the configs use; imported by the entry points before Hydra starts."""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

MAX_DIRNAME = 120  # file systems allow 255 bytes per name; long sweeps overflow that


def short_dirname(text: str) -> str:
    """`text` as a folder name: long override lists keep their start plus a hash."""
    text = str(text).replace("/", "_")
    if len(text) <= MAX_DIRNAME:
        return text
    return f"{text[:MAX_DIRNAME - 9]}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def precision(accelerator: str = "auto") -> str:
    from pneumonia.hardware import auto_precision

    return auto_precision(str(accelerator))


def register() -> None:
    if not OmegaConf.has_resolver("dirname"):
        OmegaConf.register_new_resolver("dirname", short_dirname)
    if not OmegaConf.has_resolver("auto_precision"):
        OmegaConf.register_new_resolver("auto_precision", precision)


register()
