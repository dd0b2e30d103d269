"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """Folder of real CT samples (``../shared/data/real``; override with MONAI_LIVER_REAL_DATA)."""
    path = Path(os.environ.get("MONAI_LIVER_REAL_DATA", Path(__file__).parents[1].parent / "shared/data/real"))
    if not path.is_dir():
        pytest.skip(f"real CT samples not found at {path} (set MONAI_LIVER_REAL_DATA)")
    return path
