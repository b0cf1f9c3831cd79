"""Shared test helpers: where the read-only shared data lives and a skip for when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """`TED_SHARED_DIR`, else `<repo>/../shared` (data/, models/ of the project)."""
    return Path(os.environ.get("TED_SHARED_DIR", _REPO.parent / "shared"))


SHARED = shared_dir()

requires_shared = pytest.mark.skipif(
    not (SHARED / "data" / "glue").is_dir() or not (SHARED / "models").is_dir(),
    reason=f"shared data not found at {SHARED} (set TED_SHARED_DIR to the folder holding data/ and models/)",
)
