"""Fixtures for the udev adapter tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdev import needs_netlink  # noqa: E402


@pytest.fixture
def netlink() -> None:
    needs_netlink()
