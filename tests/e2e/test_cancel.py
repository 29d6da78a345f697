"""CancelRequest through the real poold: a cancel reaches only the query it was sent for.

PostgreSQL signals the backend, then closes the cancel connection, and libpq 17+
(psycopg's cancel_safe) waits for that close; so a cancel sent directly never hits a
later query. Through poold the same must hold, whoever gets the server connection
next. Each reproduction runs RUNS times and counts the queries cancelled that no
cancel was sent for: there must be none. The counts are in the assertion messages.

And the backend's identity: in session mode a client is told its server's process
id, so pg_backend_pid() and a notification's sender are what the driver knows.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import APP_PASSWORD, Poold, pgcluster

RUNS = 50

#: the C core, and the Python reference classes (POOLD_RELAY_CORE=python)
CORES = {"c": {}, "python": {"POOLD_RELAY_CORE": "python"}}


@pytest.fixture(params=list(CORES))
def core(request: pytest.FixtureRequest) -> dict[str, str]:
    return CORES[request.param]


def direct_dsn(pg: pgcluster.Cluster) -> str:
    return f"host={pg.host} port={pg.port} dbname=app user=app password={APP_PASSWORD}"


def test_libpq_waits_for_the_cancel_to_be_delivered() -> None:
    # cancel_safe is PQcancelBlocking (libpq 17+), which returns once the server has
    # closed the cancel connection: the reproductions below rely on it.
    assert psycopg.pq.version() >= 170000


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_cancel_reaches_the_running_query(poold_factory: Callable[..., Poold], core: dict[str, str],
                                            mode: str) -> None:
    p = poold_factory(mode=mode, max_size=2, min_size=1, environ=core)
    with psycopg.connect(p.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        timer = threading.Timer(0.3, conn.cancel_safe)
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(30)")
        finally:
            timer.join()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_cancel_on_an_idle_connection_spares_its_next_query(poold_factory: Callable[..., Poold],
                                                              core: dict[str, str]) -> None:
    """cancel_safe() on an idle session-mode connection, then a query: PostgreSQL ignores
    a cancel that finds its backend idle, and closes the cancel connection after that."""
    p = poold_factory(mode="session", max_size=1, min_size=1, environ=core)
    hits = 0
    with psycopg.connect(p.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        for _ in range(RUNS):
            conn.cancel_safe()
            try:
                conn.execute("SELECT pg_sleep(0.2)")
            except psycopg.errors.QueryCanceled:
                hits += 1
    assert hits == 0, f"a query cancelled by the cancel sent before it in {hits} of {RUNS} runs"


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_cancel_from_a_client_that_left_spares_the_next_client(poold_factory: Callable[..., Poold],
                                                                  core: dict[str, str], mode: str) -> None:
    """Client A cancels and disconnects (in transaction mode from inside a transaction,
    so that it holds its server connection); client B gets the same server connection."""
    p = poold_factory(mode=mode, max_size=1, min_size=1, environ=core)
    hits, shared = 0, 0
    for _ in range(RUNS):
        with psycopg.connect(p.dsn(), autocommit=True) as a:
            if mode == "transaction":
                a.execute("BEGIN")
            a_pid = a.execute("SELECT pg_backend_pid()").fetchone()
            a.cancel_safe()
        with psycopg.connect(p.dsn(), autocommit=True) as b:
            try:
                b.execute("SELECT pg_sleep(0.3)")
            except psycopg.errors.QueryCanceled:
                hits += 1
                b.execute("SELECT 1")  # autocommit: nothing to roll back
            shared += b.execute("SELECT pg_backend_pid()").fetchone() == a_pid
    assert shared == RUNS  # max_size=1: B had A's server connection every time
    assert hits == 0, f"client B cancelled by client A's cancel in {hits} of {RUNS} runs"


def test_a_late_cancel_of_a_finished_query_spares_the_next_client(poold_factory: Callable[..., Poold],
                                                                  core: dict[str, str]) -> None:
    """Transaction mode, one server connection: A cancels its own 50 ms query near its
    end while B's query waits for that server connection."""
    p = poold_factory(mode="transaction", max_size=1, min_size=1, environ=core)

    async def main() -> tuple[int, int]:
        a = await psycopg.AsyncConnection.connect(p.dsn(), autocommit=True, prepare_threshold=None)
        b = await psycopg.AsyncConnection.connect(p.dsn(), autocommit=True, prepare_threshold=None)
        hits = a_cancelled = 0
        try:
            for i in range(RUNS):
                query_a = asyncio.create_task(a.execute("SELECT pg_sleep(0.05)"))
                await asyncio.sleep(0.005)
                query_b = asyncio.create_task(b.execute("SELECT pg_sleep(0.1)"))  # waits for A's connection
                await asyncio.sleep(0.03 + 0.003 * (i % 10))  # 35 to 62 ms into A's query
                await a.cancel_safe()
                result_a, result_b = await asyncio.gather(query_a, query_b, return_exceptions=True)
                a_cancelled += isinstance(result_a, psycopg.errors.QueryCanceled)
                if isinstance(result_b, psycopg.errors.QueryCanceled):
                    hits += 1
                elif isinstance(result_b, BaseException):
                    raise result_b
                if isinstance(result_a, BaseException) and not isinstance(result_a, psycopg.errors.QueryCanceled):
                    raise result_a
        finally:
            await a.close()
            await b.close()
        return hits, a_cancelled

    hits, a_cancelled = asyncio.run(main())
    assert hits == 0, f"client B cancelled by client A's cancel in {hits} of {RUNS} runs ({a_cancelled} of A's own)"


def test_session_mode_clients_know_their_server(poold_factory: Callable[..., Poold], pg: pgcluster.Cluster,
                                                core: dict[str, str]) -> None:
    """The same assertions on a direct connection and on a session-mode one through poold:
    the pid in BackendKeyData is the backend's, so pg_backend_pid() and a notification's
    sender agree with what the driver knows, and a cancel by that key works."""
    p = poold_factory(mode="session", max_size=2, min_size=1, environ=core)
    for dsn in (direct_dsn(pg), p.dsn()):
        with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn, autocommit=True) as other:
            pid = conn.info.backend_pid
            assert conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,), dsn
            assert other.info.backend_pid != pid
            assert other.execute("SELECT pg_backend_pid()").fetchone() == (other.info.backend_pid,), dsn
            conn.execute("LISTEN poold_identity")
            conn.execute("NOTIFY poold_identity, 'own'")
            other.execute("NOTIFY poold_identity, 'other'")
            got = [(n.payload, n.pid) for n in conn.notifies(timeout=5, stop_after=2)]
            assert got == [("own", pid), ("other", other.info.backend_pid)], dsn
            timer = threading.Timer(0.3, conn.cancel_safe)
            timer.start()
            try:
                with pytest.raises(psycopg.errors.QueryCanceled):
                    conn.execute("SELECT pg_sleep(30)")
            finally:
                timer.join()
            assert other.execute("SELECT 1").fetchone() == (1,)  # not the other connection's query
