"""Shared fixtures: paths to the real data every test reads (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SAM2VOLUME_SHARED_DATA", ROOT.parent / "shared" / "data"))
TOTALSEG = SHARED / "totalseg"


def _pkg_data(pkg: str, *parts: str) -> Path:
    import importlib

    mod = importlib.import_module(pkg)
    return Path(mod.__file__).parent.joinpath(*parts)


@pytest.fixture(scope="session")
def totalseg() -> Path:
    if not TOTALSEG.is_dir():
        pytest.fail(f"shared test data missing at {TOTALSEG}; set SAM2VOLUME_SHARED_DATA")
    return TOTALSEG


@pytest.fixture(scope="session")
def slicerio_data() -> Path:
    return _pkg_data("slicerio", "data")


@pytest.fixture(scope="session")
def pydicom_data() -> Path:
    return _pkg_data("pydicom", "data", "test_files")
