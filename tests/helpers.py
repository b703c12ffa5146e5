"""Test support: the project's real configs composed small (CPU, no workers, tiny models),
the entry points run as a user runs them, and a callback that kills a run."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from pneumonia.config.compose import CONF_DIR, compose

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data" / "chest_xray"
SHARED_DICOM = PROJECT_ROOT.parent / "shared" / "data" / "dicom"

# A small, quick version of the custom CNN that still learns the synthetic pattern.
TINY = [
    "debug=tiny",
    "data.val_fraction=0.25",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar=null",
]

__all__ = [
    "CONF_DIR",
    "PROJECT_ROOT",
    "SHARED_DATA",
    "SHARED_DICOM",
    "TINY",
    "compose_cfg",
    "train_cfg",
    "run_cli",
    "write_dicom",
    "KillAfterEpoch",
]


def compose_cfg(config_name: str, overrides: list[str], out_dir: Path) -> DictConfig:
    return compose(config_name, overrides, out_dir)


def train_cfg(root: Path, out_dir: Path, *overrides: str, tiny: bool = True) -> DictConfig:
    return compose_cfg(
        "train",
        [f"data.root={root}", f"data.cache_dir={out_dir / 'cache'}", *(TINY if tiny else []), *overrides],
        out_dir,
    )


@contextlib.contextmanager
def logged_lines(name: str = "pneumonia.runners.train") -> Iterator[list[str]]:
    """The messages logger `name` emits at INFO and above inside the block (module-scoped
    fixtures cannot use pytest's caplog); the logger's level is restored afterwards."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run_cli(script: str, *args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    """`python <script> args...` as a user runs it, on the CPU."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


class KillAfterEpoch:
    """Test callback: the process kills itself (SIGKILL, like an OOM kill or a pulled plug)
    once epoch `epoch` (0-based) is over and its checkpoints were written: at the start of
    the next epoch (checkpoint callbacks run after all others at an epoch's end)."""

    def __new__(cls, epoch: int = 1, sig: str = "SIGKILL"):
        import signal

        import lightning as L

        class _Kill(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                if trainer.current_epoch == epoch + 1:
                    os.kill(os.getpid(), getattr(signal, sig))

        return _Kill()


def write_dicom(
    path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", pixel_data: bool = True, samples: int = 1
) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8 if pixels.dtype == np.uint8 else 16
    ds.HighBit = ds.BitsStored - 1 if pixels.dtype == np.uint8 else 11
    if pixels.dtype != np.uint8:
        ds.BitsStored = 12
    ds.PixelRepresentation = 0
    if pixel_data:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def artifact_paths(client, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of an MLflow run, folders walked (paths relative to the run's root)."""
    found: list[str] = []
    for a in client.list_artifacts(run_id, path):
        found.extend(artifact_paths(client, run_id, a.path) if a.is_dir else [a.path])
    return found


# a tiny k-fold cross-validation with its ensemble (tests/test_cv.py, tests/test_data_flow.py)
CV_FOLDS = 3
TINY_CV = (
    f"cv.folds={CV_FOLDS}",
    "cv.ensemble=true",
    "trainer.max_epochs=1",
    "trainer.precision=32-true",  # bf16 would round the tiny models' scores to a few values
    "threshold.method=youden",
    "logger=none",
    "callbacks.gradcam=null",
    "intervals.resamples=20",
    "data.image_size=32",
    "model.depth=2",
    "model.widths=[4,8]",
    "model.dense_units=8",
)
