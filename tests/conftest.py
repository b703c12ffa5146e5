import os
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests run on the CPU, always
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one of several test processes (pytest-xdist, one per core): one thread each, set before torch
    # is imported, and inherited by the command lines the tests run. Two processes of two threads
    # on 2 cores spin-wait on each other (see `one_thread`).
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402

from pneumonia.data.synthetic import make_chest_xray_tree  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny batches, restored afterwards (modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`). On a 2-core machine busy with
    anything else, two intra-op threads spin-wait on each other at every op: training steps
    measured 10-100x slower on two threads under load than on one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def xray_root(tmp_path_factory) -> Path:
    """A synthetic data root, built once per test session (read-only for tests)."""
    return make_chest_xray_tree(tmp_path_factory.mktemp("chest_xray"))


@pytest.fixture(scope="session")
def tiny_checkpoint(xray_root, tmp_path_factory) -> Path:
    """best.ckpt of a tiny CNN trained 3 epochs on the synthetic data, calibrated on validation."""
    from pneumonia.runners.train import train
    from tests.helpers import train_cfg

    out = tmp_path_factory.mktemp("tiny_run")
    train(train_cfg(xray_root, out, "trainer.max_epochs=3", "logger=none", "seed=2", "callbacks.early_stopping=null"))
    return out / "checkpoints" / "best.ckpt"
