"""Shared fixtures: committed and optional data, tiny models with fully random weights, the official package.

Data: ``tests/data`` is committed and always present. The larger real data sets (``../shared/data`` beside the
checkout, or ``$SEGANY_SHARED_DATA``) are optional extras; tests that need them skip when they are absent,
except under ``SEGANY_REQUIRE_DATA=1`` (set by ``.ci/run``), where any "data missing" skip is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
SHAPES = TEST_DATA / "shapes"  # the committed synthetic COCO data set (see tests/data/README.md)
DATA_MISSING = "data missing: "  # prefix of every skip that SEGANY_REQUIRE_DATA=1 turns into a failure

# Two cores shared with other work: one intra-op thread keeps timings stable and runs predictable.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def require_data() -> bool:
    return os.environ.get("SEGANY_REQUIRE_DATA", "") not in ("", "0")


def skip_missing_data(what: str) -> None:
    """Skip the running test because ``what`` is absent (a failure under SEGANY_REQUIRE_DATA=1)."""
    pytest.skip(DATA_MISSING + what)


def shared_data_dir() -> Path | None:
    env = os.environ.get("SEGANY_SHARED_DATA")
    candidate = Path(env) if env else REPO.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and require_data() and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if reason.startswith("Skipped: " + DATA_MISSING) or reason.startswith(DATA_MISSING):
            report.outcome = "failed"
            report.longrepr = f"SEGANY_REQUIRE_DATA=1 and {reason.removeprefix('Skipped: ')}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests on the optional shared data get a marker, so CI can leave them out when it has no such data.
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared_data)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The optional shared real data sets ($SEGANY_SHARED_DATA, else ../shared/data beside the checkout)."""
    path = shared_data_dir()
    if path is None:
        skip_missing_data("shared data ($SEGANY_SHARED_DATA or ../shared/data)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def shapes_data() -> Path:
    """The committed synthetic COCO data set: 8 images, 34 masks, splits.json (train 6, val 1, test 1)."""
    if not (SHAPES / "annotations.json").is_file():
        skip_missing_data(f"{SHAPES} (committed test data)")
    return SHAPES


@pytest.fixture(scope="session")
def test_images() -> list[Path]:
    """Small real images kept in the repository (JPEG, PNG, greyscale, RGBA, 16-bit)."""
    return sorted(p for p in (TEST_DATA / "images").iterdir() if p.is_file())
