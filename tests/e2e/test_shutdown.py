"""Graceful shutdown under load: transactions finish, then 57P01, exit 0, nothing left behind."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Poold, pgcluster, server_backends, wait_until

SCRIPT = """\\set id random(1, 2000000000)
BEGIN;
INSERT INTO shutdown_probe VALUES (:id, 1);
SELECT pg_sleep(0.005);
INSERT INTO shutdown_probe VALUES (:id, 2);
COMMIT;
"""
BEGIN_COMMAND = 1  # \\set is command 0


def test_sigterm_during_pgbench(poold_factory: Callable[..., Poold], pg: pgcluster.Cluster, tmp_path: Path) -> None:
    p = poold_factory(mode="transaction", max_size=5, min_size=2)
    pg.psql("DROP TABLE IF EXISTS shutdown_probe; CREATE TABLE shutdown_probe(id bigint, part int)", dbname="app")
    pg.psql("GRANT ALL ON shutdown_probe TO app", dbname="app")
    script = tmp_path / "tx.sql"
    script.write_text(SCRIPT)
    bench = subprocess.Popen([pgcluster.client_tool("pgbench"), "-n", "-c", "16", "-j", "2", "-T", "30", "-f", str(script)],
                             env=p.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: int(pg.psql("SELECT count(*) FROM shutdown_probe", dbname="app")) > 200, timeout=20)
    start = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    code = p.proc.wait(timeout=15)  # type: ignore[union-attr]
    elapsed = time.monotonic() - start
    out, err = bench.communicate(timeout=60)
    assert code == 0
    assert elapsed < 10  # shutdown_timeout is 10 s in the test config
    aborted = [int(m) for m in re.findall(r"aborted in command (\d+)", err)]
    assert len(aborted) == 16, err[-2000:]
    # every client was closed between transactions, at its next BEGIN, never inside one
    assert set(aborted) == {BEGIN_COMMAND}, err[-2000:]
    assert "57P01" in err or "terminating connection" in err
    processed = int(re.search(r"transactions actually processed: (\d+)", out).group(1))  # type: ignore[union-attr]
    rows = pg.psql("SELECT count(DISTINCT id), count(*) FILTER (WHERE part = 1), count(*) FILTER (WHERE part = 2) "
                   "FROM shutdown_probe", dbname="app").split("|")
    distinct, firsts, seconds = map(int, rows)
    # each transaction pgbench counted is committed whole, and no other one is
    assert distinct == firsts == seconds == processed
    wait_until(lambda: server_backends(pg) == 0, timeout=10)
    log = p.log_text()
    assert '"shutting_down"' in log and '"stopped"' in log
    print(f"shutdown under load: {processed} transactions committed, 16 clients closed at BEGIN, "
          f"exit 0 after {elapsed:.2f} s")


def test_second_signal_exits_at_once(poold_factory: Callable[..., Poold]) -> None:
    import psycopg

    p = poold_factory(mode="session", max_size=2, min_size=1)
    conn = psycopg.connect(p.dsn(), autocommit=True)
    conn.execute("BEGIN")  # an open transaction holds the shutdown back
    p.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    time.sleep(0.5)
    assert p.proc.poll() is None  # type: ignore[union-attr]  # still draining
    start = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    code = p.proc.wait(timeout=5)  # type: ignore[union-attr]
    assert time.monotonic() - start < 2 and code != 0
    conn.close()
