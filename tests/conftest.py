import os
from pathlib import Path

import pytest

from tests.synthetic import make_chest_xray_tree

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests run on the CPU, always
PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data" / "chest_xray"


@pytest.fixture(scope="session")
def xray_root(tmp_path_factory) -> Path:
    """A synthetic data root, built once per test session (read-only for tests)."""
    return make_chest_xray_tree(tmp_path_factory.mktemp("chest_xray"))
