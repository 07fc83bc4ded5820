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
def artifacts_dir(tmp_path_factory) -> Path:
    """Where tests write PNGs and tables for a person to look at:
    $DCE_TEST_ARTIFACTS when set, else a temporary folder (tests never write
    into the checkout)."""
    given = os.environ.get("DCE_TEST_ARTIFACTS")
    out = Path(given) if given else tmp_path_factory.mktemp("test-artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out
