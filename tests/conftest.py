import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MRISR_DATA", REPO.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    """Path of a team dataset; skips the test cleanly when it is absent."""
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} not available (set MRISR_DATA)")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
