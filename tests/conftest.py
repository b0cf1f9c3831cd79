"""Test-wide settings: the suite never touches the network, so a hub lookup fails at once instead of retrying."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def pytest_collection_modifyitems(items):
    # `-m "not shared"` leaves out every test that reads ../shared: they carry a skipif naming it.
    for item in items:
        reasons = " ".join(str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif"))
        if "shared" in reasons or "golden" in reasons:
            item.add_marker(pytest.mark.shared)
