"""poolctl as a subprocess against the real daemon's control socket."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.conftest import Poold


def test_status_and_pools(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(mode="transaction", max_size=4, min_size=1)
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        conn.execute("SELECT 1")
        status = p.poolctl("--json", "status")
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        assert st["clients"] == 1 and st["pools"] == 1 and st["pid"] == p.proc.pid  # type: ignore[union-attr]
        pools = p.poolctl("pools")
        assert pools.returncode == 0, pools.stderr
        header, row = pools.stdout.splitlines()[:2]
        assert header.split()[:4] == ["POOL", "MODE", "CLIENTS", "ACTIVE"]
        assert row.split()[:3] == ["app.app", "transaction", "1"]
        data = json.loads(p.poolctl("--json", "pools").stdout)
        assert data[0]["max_size"] == 4 and data[0]["active"] == 0  # released between transactions


def test_not_running_exits_non_zero_with_a_reason(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "poolctl", "--socket", str(tmp_path / "none.sock"), "status"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip() == f"poolctl: poold is not running (no control socket at {tmp_path / 'none.sock'})"
