"""Fixtures of the kubelet adapter tests."""

from __future__ import annotations

import shutil
import tempfile

import pytest


@pytest.fixture
def plugin_dir():
    # Short: unix socket paths must stay under 108 bytes.
    d = tempfile.mkdtemp(prefix="dp-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)
