"""Server connection validation and ageing, and pool pressure, against the real daemon."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import psycopg

from tests.conftest import Poold, pgcluster, server_backends, wait_until


def burst(conns: list[psycopg.Connection]) -> None:  # type: ignore[type-arg]
    """One query on every connection at the same moment: each holds a server connection."""
    barrier = threading.Barrier(len(conns))

    def busy(c: psycopg.Connection) -> None:  # type: ignore[type-arg]
        barrier.wait()
        c.execute("SELECT pg_sleep(0.3)")

    threads = [threading.Thread(target=busy, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_terminated_idle_backends_are_replaced_without_client_errors(
    poold_factory: Callable[..., Poold], pg: pgcluster.Cluster
) -> None:
    p = poold_factory(mode="transaction", max_size=4, min_size=2)
    conns = [psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) for _ in range(4)]
    burst(conns)
    before = pg.psql("SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE usename = 'app' "
                     "AND backend_type = 'client backend'")
    # Terminated, and gone (the timeout waits for each backend to exit, after its FATAL
    # went out): poold has not read those FATALs yet, as a busy event loop might not have.
    killed = pg.psql("SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity WHERE usename = 'app' "
                     "AND backend_type = 'client backend'")
    assert int(killed) >= 2
    for c in conns:  # every next query works: poold finds the dead ones before it writes a byte to them
        assert c.execute("SELECT 1").fetchone() == (1,)
    after = {int(x) for x in pg.psql("SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE usename = 'app' "
                                     "AND backend_type = 'client backend'").split(",")}
    assert not after & {int(x) for x in before.split(",")}
    for c in conns:
        c.close()


def test_max_lifetime_recycles_and_idle_timeout_shrinks(
    poold_factory: Callable[..., Poold], pg: pgcluster.Cluster
) -> None:
    p = poold_factory(mode="transaction", max_size=4, min_size=1, max_lifetime=2, idle_timeout=1)
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        first = conn.execute("SELECT pg_backend_pid()").fetchone()
        wait_until(lambda: conn.execute("SELECT pg_backend_pid()").fetchone() != first, timeout=10, interval=0.2)
    # a burst opens all four, then idleness brings the pool back to min_size
    conns = [psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) for _ in range(4)]
    burst(conns)
    assert server_backends(pg) >= 3
    wait_until(lambda: server_backends(pg) <= 1, timeout=15, interval=0.2)
    for c in conns:
        c.close()


def test_pool_pressure_warns_degrades_and_clears(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(mode="transaction", max_size=2, min_size=1, pressure_threshold=0.9)
    holders = [psycopg.connect(p.dsn(), prepare_threshold=None) for _ in range(2)]
    for h in holders:
        h.execute("SELECT 1")  # implicit BEGIN: each holds a server connection
    wait_until(lambda: '"pool_pressure"' in p.log_text(), timeout=5)
    status, body = p.http("/health")
    assert status == 200 and json.loads(body)["pools"][0]["state"] == "degraded"
    assert json.loads(body)["status"] == "degraded"
    for h in holders:
        h.rollback()
    wait_until(lambda: '"pool_pressure_cleared"' in p.log_text(), timeout=5)
    assert json.loads(p.http("/health")[1])["pools"][0]["state"] == "ok"
    # rate-limited: one warning for this episode, not one per second
    time.sleep(0.1)
    assert p.log_text().count('"pool_pressure"') == 1
    for h in holders:
        h.close()
