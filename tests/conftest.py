"""Shared fixtures: real data location, tiny models with fully random weights, the official package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"

# Two cores shared with other work: one intra-op thread keeps timings stable and runs predictable.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _shared_data_dir() -> Path | None:
    env = os.environ.get("SEGANY_SHARED_DATA")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data", Path("/work/shared/data")]:
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data sets (../shared/data); tests using them skip when it is absent."""
    path = _shared_data_dir()
    if path is None:
        pytest.skip("shared data (../shared/data) not available")
    return path


@pytest.fixture(scope="session")
def test_images() -> list[Path]:
    """Small real images kept in the repository (JPEG, PNG, greyscale, RGBA, 16-bit)."""
    return sorted(p for p in (TEST_DATA / "images").iterdir() if p.is_file())
