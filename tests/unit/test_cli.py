"""The command lines' own answers: --version on both commands, the project's one version."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_version_on_both_commands() -> None:
    for module in ("poold", "poolctl"):
        out = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"{module} {VERSION}"


def test_poolctl_prints_modes_in_octal_and_durations_with_units() -> None:
    from poolctl.__main__ import render

    text = render("config", {"control.mode": 0o660, "listen.unix_socket_mode": 0o777, "pool.mode": "session",
                             "pool.acquire_timeout": 60.0, "databases.app.max_lifetime": 3600.0,
                             "pool.breaker_reset": 30.0, "pool.max_size": 5})
    lines = dict(line.split(None, 1) for line in text.splitlines())
    assert lines == {"control.mode": "0o660", "listen.unix_socket_mode": "0o777", "pool.mode": "session",
                     "pool.acquire_timeout": "60 s", "databases.app.max_lifetime": "3600 s",
                     "pool.breaker_reset": "30 s", "pool.max_size": "5"}
    assert dict(line.split(None, 1) for line in render("status", {"uptime": 10.3}).splitlines()) == {"uptime": "10.3 s"}
