"""End-to-end fixtures: a systemd user manager (tests/e2e/usermanager.py) and a directory beside it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.usermanager import SYSTEMD, UserManager


@pytest.fixture
def manager() -> Iterator[UserManager]:
    if not os.path.exists(SYSTEMD) or shutil.which("systemctl") is None:
        pytest.fail("systemd is required for these tests (install the systemd package)")
    base = Path(tempfile.mkdtemp(prefix="poold-systemd-", dir="/run"))
    m = UserManager(base / "xdg")
    m.runtime_dir.mkdir(mode=0o700)
    m.start()
    yield m
    m.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def files(manager: UserManager) -> Path:
    d = manager.runtime_dir.parent / "files"
    d.mkdir()
    return d
