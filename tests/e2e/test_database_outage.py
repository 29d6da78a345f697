"""The database goes away and comes back: circuit breaker, fail-fast, recovery.

Each test runs its own PostgreSQL so it can stop and start it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests import tlsca
from tests.conftest import APP_PASSWORD, SERVER_TLS, Poold, pgcluster, wait_until
from tests.e2e.test_http import scrape, value


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[pgcluster.Cluster]:
    base = tmp_path / "own-pg"
    base.mkdir()
    for d in (tmp_path, *tmp_path.parents):
        if "/pytest-of-" in str(d):  # the tree pytest made (under any PYTEST_DEBUG_TEMPROOT)
            os.chmod(d, os.stat(d).st_mode | 0o711)
    cluster = pgcluster.Cluster(base=str(base))
    tlsca.init(cluster, base / "tls", SERVER_TLS)
    cluster.start()
    cluster.create_role_and_db("app", APP_PASSWORD)
    yield cluster
    cluster.destroy()


def query_fails_with(p: Poold, timeout: float = 10) -> tuple[str | None, float]:
    """Connect and run one query; the SQLSTATE it fails with (None if it worked) and the time taken."""
    start = time.monotonic()
    try:
        with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True, connect_timeout=int(timeout)) as conn:
            conn.execute("SELECT 1")
        return None, time.monotonic() - start
    except psycopg.Error as exc:
        state = exc.sqlstate or ("57P03" if "57P03" in str(exc) or "unavailable" in str(exc) else "other")
        return state, time.monotonic() - start


def test_breaker_fails_fast_and_recovers(poold_factory: Callable[..., Poold], own_pg: pgcluster.Cluster) -> None:
    p = poold_factory(mode="transaction", max_size=4, min_size=1, breaker_failures=3, breaker_reset=3,
                      acquire_timeout=30, cluster=own_pg)
    assert query_fails_with(p)[0] is None
    held = psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True)
    held.execute("SELECT 1")
    own_pg.stop("fast")
    # A client already connected, needing a server connection, gets 57P03 long before acquire_timeout.
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        held.execute("SELECT 1")
    first_error = time.monotonic() - start
    assert first_error < 10
    assert "57P03" in str(info.value) or "unavailable" in str(info.value) or "server connection lost" in str(info.value)
    wait_until(lambda: value(scrape(p), "poold_breaker_open", pool="app.app") == 1, timeout=15)
    # While open: every client fails fast with 57P03 and a message that says when poold retries.
    for _ in range(5):
        with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as c:  # login needs no server
            query_start = time.monotonic()
            try:
                c.execute("SELECT 1")
            except psycopg.OperationalError as exc:
                text = str(exc)
                assert "57P03" in text or "unavailable" in text, text
                assert "retries in" in text
                assert "Connection refused" in text and "Is the server running" not in text, text  # the cause
            else:
                raise AssertionError("query worked while the database was down")
            assert time.monotonic() - query_start < 0.1  # failed fast: 57P03 within 100 ms
    status, body = p.http("/health/ready")
    assert status == 503 and "every pool is down" in body
    pools = p.poolctl("--json", "pools")
    assert '"breaker": "open"' in pools.stdout or '"breaker": "half-open"' in pools.stdout
    connects_before = value(scrape(p), "poold_server_connects_total", pool="app.app", result="failed")
    time.sleep(4)
    connects_after = value(scrape(p), "poold_server_connects_total", pool="app.app", result="failed")
    assert connects_after - connects_before <= 8  # no connection storm: bounded attempts in 4 s
    # The database comes back: used again within breaker_reset + 2 s, without restarting poold.
    own_pg.start()
    restarted = time.monotonic()
    wait_until(lambda: query_fails_with(p, 3)[0] is None, timeout=3 + 2, interval=0.1)
    recovery = time.monotonic() - restarted
    assert value(scrape(p), "poold_breaker_open", pool="app.app") == 0
    print(f"breaker: first failure after {first_error:.2f} s, {connects_after - connects_before:.0f} connect "
          f"attempts in 4 s while down, recovered {recovery:.2f} s after the restart")
    held.close()


def test_postgres_restart_under_load(poold_factory: Callable[..., Poold], own_pg: pgcluster.Cluster) -> None:
    p = poold_factory(mode="transaction", max_size=4, min_size=2, breaker_failures=3, breaker_reset=2,
                      acquire_timeout=10, cluster=own_pg)
    pid = p.proc.pid  # type: ignore[union-attr]
    stop = threading.Event()
    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0}
    last_ok: list[float] = []
    slow: list[float] = []

    def worker() -> None:
        conn = None
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True, connect_timeout=10)
                conn.execute("SELECT 1")
                with lock:
                    counts["ok"] += 1
                    last_ok.append(time.monotonic())
            except psycopg.Error:
                with lock:
                    counts["failed"] += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
            if time.monotonic() - t0 > 12:
                slow.append(time.monotonic() - t0)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(2)
    fds_before = len(os.listdir(f"/proc/{pid}/fd"))  # steady load, before the outage
    own_pg.stop("fast")
    down_at = time.monotonic()
    time.sleep(4)
    own_pg.start()
    up_at = time.monotonic()
    wait_until(lambda: any(t > up_at for t in last_ok), timeout=15, interval=0.1)
    recovered = min(t for t in last_ok if t > up_at) - up_at
    time.sleep(2)
    fds_after = len(os.listdir(f"/proc/{pid}/fd"))  # steady load again, after it
    ok_before_end = counts["ok"]
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join(20)
    assert counts["ok"] > ok_before_end  # full service again
    assert not slow  # nobody hung
    assert p.proc.poll() is None  # type: ignore[union-attr]
    assert fds_after <= fds_before + 4  # no leaked descriptors
    print(f"restart under load: {counts['failed']} failed queries during a {up_at - down_at:.1f} s outage, "
          f"{counts['ok']} ok, recovery {recovered:.2f} s after PostgreSQL was back, fds {fds_before}->{fds_after}")

