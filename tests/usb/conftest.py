"""The USB guest for the whole session, and a clean :class:`Bed` per test.

The guest boots once (about 30 s under TCG, see the README's "USB tests" section) and every
test plugs and unplugs devices in it. If QEMU or a guest kernel cannot be found the tests
skip with the reason (what ``scripts/setup --test`` installs); a guest that is installed but
fails to boot is an error, never a skip.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.usb.bed import Bed
from tests.usb.guest import Guest, GuestError, unavailable_reason

_REPORT: dict[str, float] = {}


@pytest.fixture(scope="session")
def guest() -> Iterator[Guest]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"USB guest unavailable: {reason}")
    t0 = time.monotonic()
    g = Guest()
    _REPORT["prepare_s"] = time.monotonic() - t0  # image + bytecode cache (cached after the first run)
    g.boot()
    _REPORT["boot_s"] = g.boot_seconds or 0.0
    try:
        yield g
    finally:
        g.close()


@pytest.fixture
def bed(guest: Guest, request: pytest.FixtureRequest) -> Iterator[Bed]:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:60]
    b = Bed(guest, name)
    try:
        yield b
    finally:
        problems = b.close()
    # After the test body so a failing test shows its own error first.
    if problems:
        raise GuestError("the test left the guest unclean:\n" + "\n".join(problems))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPORT:
        terminalreporter.write_line(
            f"USB guest: prepared in {_REPORT.get('prepare_s', 0):.1f} s, booted in "
            f"{_REPORT.get('boot_s', 0):.1f} s (TCG)")
