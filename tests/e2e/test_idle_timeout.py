"""idle_timeout as documented: server connections above min_size that sit idle for
idle_timeout are closed within idle_timeout plus the janitor's period (1 s) and the close."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg

from tests.conftest import Poold, pgcluster, server_backends, wait_until

IDLE_TIMEOUT = 4.0
SLACK = 2.0  # the janitor's 1 s period, the close, and this test's 50 ms polling


def test_idle_connections_above_min_size_close_after_idle_timeout(poold_factory: Callable[..., Poold],
                                                                   pg: pgcluster.Cluster) -> None:
    p = poold_factory(mode="transaction", max_size=8, min_size=2, idle_timeout=IDLE_TIMEOUT)
    wait_until(lambda: server_backends(pg) == 2, timeout=20)
    # Eight clients in a transaction at once: eight server connections.
    inside, release = threading.Barrier(9), threading.Event()

    def hold() -> None:
        with psycopg.connect(p.dsn(), prepare_threshold=None) as conn:
            conn.execute("SELECT 1")
            inside.wait(30)
            release.wait(30)
            conn.commit()

    threads = [threading.Thread(target=hold) for _ in range(8)]
    for t in threads:
        t.start()
    inside.wait(30)
    assert server_backends(pg) == 8
    release.set()
    for t in threads:
        t.join(30)
    idle_from = time.monotonic()
    wait_until(lambda: server_backends(pg) == 2, timeout=IDLE_TIMEOUT + 30)
    closed_after = time.monotonic() - idle_from
    assert IDLE_TIMEOUT - 0.5 <= closed_after <= IDLE_TIMEOUT + SLACK, closed_after
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:  # the kept ones serve
        assert conn.execute("SELECT 2").fetchone() == (2,)
