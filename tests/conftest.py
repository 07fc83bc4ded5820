"""Shared fixtures. Real scans live in ../shared/data beside the checkout;
tests that need them skip cleanly when it is absent."""
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get(
    "DCE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real scans not found at {SHARED_DATA} (set DCE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests write PNGs for a person to look at."""
    out = Path(os.environ.get("DCE_TEST_ARTIFACTS",
                              Path(__file__).resolve().parents[1] / "out" / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out
