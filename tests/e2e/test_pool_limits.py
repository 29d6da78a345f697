"""Pool limits and cleanup: many clients over few connections, cancel, dirty clients."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import Poold, RawClient, pgcluster, server_backends, wait_until


def test_200_clients_over_a_pool_of_5(poold_factory: Callable[..., Poold], pg: pgcluster.Cluster) -> None:
    p = poold_factory(mode="transaction", max_size=5, min_size=1)
    peak = 0

    async def client(i: int) -> int:
        async with await psycopg.AsyncConnection.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
            total = 0
            for j in range(3):
                cur = await conn.execute("SELECT %s::int + %s::int, pg_sleep(0.01)", (i, j))
                row = await cur.fetchone()
                assert row is not None
                total += row[0]
            return total

    async def sampler(stop: asyncio.Event) -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, await asyncio.to_thread(server_backends, pg))
            await asyncio.sleep(0.1)

    async def main() -> list[int]:
        stop = asyncio.Event()
        task = asyncio.create_task(sampler(stop))
        try:
            return await asyncio.gather(*(client(i) for i in range(200)))
        finally:
            stop.set()
            await task

    results = asyncio.run(main())
    assert results == [3 * i + 3 for i in range(200)]
    assert 1 <= peak <= 5


def test_cancel_reaches_the_held_server_connection(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(mode="transaction")
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        start = time.monotonic()
        timer = None

        def cancel_soon() -> None:
            conn.cancel_safe()

        import threading

        timer = threading.Timer(0.5, cancel_soon)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        elapsed = time.monotonic() - start
        timer.join()
        assert elapsed < 1.5, elapsed  # 0.5 s before the cancel, then well under a second
        # the connection is usable afterwards
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_cancel_with_a_wrong_key_is_ignored(poold_factory: Callable[..., Poold]) -> None:
    import socket
    import struct

    p = poold_factory(mode="transaction")
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        pid = conn.info.backend_pid
        with socket.create_connection(("127.0.0.1", p.port)) as s:
            s.sendall(struct.pack("!IIII", 16, 80877102, pid, 12345))
            assert s.recv(10) == b""  # closed, nothing said
        assert conn.execute("SELECT 1 FROM pg_sleep(0.3)").fetchone() == (1,)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_client_killed_mid_transaction_leaves_no_idle_in_transaction(
    poold_factory: Callable[..., Poold], pg: pgcluster.Cluster, mode: str
) -> None:
    p = poold_factory(mode=mode, max_size=2, min_size=1)
    proc = subprocess.Popen(
        [pgcluster.client_tool("psql"), "-X", "-q"], env=p.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write("BEGIN;\nCREATE TEMP TABLE IF NOT EXISTS killed(x int);\nSELECT 'in tx';\n")
    proc.stdin.flush()
    wait_until(lambda: server_backends(pg, "state = 'idle in transaction'") == 1, timeout=10)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_until(lambda: server_backends(pg, "state = 'idle in transaction'") == 0, timeout=10)
    # and the connection that was rolled back serves the next client cleanly
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('pg_temp.killed')").fetchone() == (None,)


def test_client_killed_mid_query_discards_the_server_connection(
    poold_factory: Callable[..., Poold], pg: pgcluster.Cluster
) -> None:
    p = poold_factory(mode="transaction", max_size=2, min_size=1)
    proc = subprocess.Popen(
        [pgcluster.client_tool("psql"), "-X", "-q", "-c", "SELECT pg_sleep(60)"], env=p.env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    wait_until(lambda: server_backends(pg, "query = 'SELECT pg_sleep(60)' AND state = 'active'") == 1, timeout=10)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # the busy backend is closed by poold, not handed to the next client
    wait_until(lambda: server_backends(pg, "query = 'SELECT pg_sleep(60)'") == 0, timeout=10)
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_over_max_client_conn_gets_53300(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(max_client_conn=3)
    held = [psycopg.connect(p.dsn(), prepare_threshold=None) for _ in range(3)]
    try:
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            psycopg.connect(p.dsn())
        raw = RawClient(p.port)
        raw.startup()
        err = raw.read_error()
        raw.close()
        assert (err["S"], err["C"]) == ("FATAL", "53300")
    finally:
        for c in held:
            c.close()
    with psycopg.connect(p.dsn()) as conn:  # room again
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_acquire_timeout_answers_with_an_error_not_a_hang(poold_factory: Callable[..., Poold], mode: str) -> None:
    """A transaction-mode client waits for a server connection at its query; a
    session-mode one at its login (its BackendKeyData names its server)."""
    p = poold_factory(mode=mode, max_size=1, min_size=1, acquire_timeout=1)
    with psycopg.connect(p.dsn(), autocommit=True) as holder:
        holder.execute("BEGIN")  # holds the only server connection
        start = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            with psycopg.connect(p.dsn(), autocommit=True) as waiter:
                waiter.execute("SELECT 1")
        elapsed = time.monotonic() - start
    if mode == "transaction":
        assert info.value.sqlstate == "53300"
    assert "acquire_timeout" in str(info.value)
    assert elapsed < 10


def test_sigterm_closes_every_server_connection(poold_factory: Callable[..., Poold], pg: pgcluster.Cluster) -> None:
    p = poold_factory(mode="transaction", max_size=3, min_size=2)
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        conn.execute("SELECT 1")
    wait_until(lambda: server_backends(pg) >= 1)
    assert p.stop() == 0
    wait_until(lambda: server_backends(pg) == 0, timeout=10)


def test_notification_on_an_idle_server_connection_is_not_delivered_to_the_next_client(
    poold_factory: Callable[..., Poold], pg: pgcluster.Cluster
) -> None:
    # One server connection, so every client gets the same one in turn.
    p = poold_factory(mode="transaction", max_size=1, min_size=1)
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as a:
        a.execute("LISTEN poold_test_channel")  # the shared server connection now listens
        server_pid = a.execute("SELECT pg_backend_pid()").fetchone()
    # NOTIFY from outside poold while that server connection sits idle in poold.
    pg.psql("NOTIFY poold_test_channel, 'stale'", dbname="app")
    time.sleep(0.3)
    received: list[str] = []
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as b:
        b.add_notify_handler(lambda n: received.append(n.payload))
        assert b.execute("SELECT pg_backend_pid()").fetchone() == server_pid
        b.execute("SELECT 1")
    assert received == []
