"""The file system as the core's ``PathMode`` seam sees it (``TEST{}`` keys, host paths)."""

from __future__ import annotations

import os
from typing import Optional


def path_mode(path: str) -> Optional[int]:
    """st_mode of ``path`` (symlinks followed), None when it does not exist."""
    try:
        return os.stat(path).st_mode
    except OSError:
        return None
