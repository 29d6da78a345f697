"""CancelRequest through the real poold: a cancel reaches only the query it was sent for.

PostgreSQL signals the backend, then closes the cancel connection, and libpq 17+
(psycopg's cancel_safe) waits for that close; so a cancel sent directly never hits a
later query. Through poold the same must hold, whoever gets the server connection
next. Each reproduction runs RUNS times and counts the queries cancelled that no
cancel was sent for: there must be none. The counts are in the assertion messages.

And nothing but that close answers a cancel, even when poold stops while the cancel is
in flight: libpq 17+ fails a cancel that reads any byte ("unexpected response from server").

And the backend's identity: in session mode a client is told its server's process
id, so pg_backend_pid() and a notification's sender are what the driver knows.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import tlsca
from tests.conftest import APP_PASSWORD, Poold, pgcluster, wait_until

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


#: the client leg of a cancel connection: poold's client TLS configured, and the client's sslmode
CLIENT_LEGS = {
    "sslrequest-answered-n": (False, "prefer"),  # SSLRequest, 'N', then the CancelRequest
    "cancelrequest-first": (False, "disable"),
    "tls": (True, "require"),  # SSLRequest, 'S', TLS, then the CancelRequest in it
}


def accept_backlog(port: int) -> int:
    """Connections the kernel has completed on ``port`` that its listener has not
    accepted yet: the rx_queue of a LISTEN socket (state 0A) in /proc/net/tcp*."""
    waiting = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in rows.readlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    waiting += int(cols[4].split(":")[1], 16)
    return waiting


@contextmanager
def postmaster_stopped(pg: pgcluster.Cluster) -> Iterator[None]:
    """The cluster's postmaster stopped (SIGSTOP): its backends run on, but a new
    connection to it, poold's CancelRequest among them, waits in its listen backlog."""
    postmaster = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(postmaster, signal.SIGCONT)


def in_thread(outcome: dict[str, Any], name: str, call: Callable[[], object]) -> threading.Thread:
    """Run ``call`` in a thread; ``outcome[name]``: its exception, or None."""
    def run() -> None:
        try:
            call()
            outcome[name] = None
        except Exception as exc:
            outcome[name] = exc
    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("leg", list(CLIENT_LEGS))
def test_a_cancel_in_flight_when_poold_stops_is_answered_by_its_close_alone(
        poold_factory: Callable[..., Poold], pg: pgcluster.Cluster, core: dict[str, str], tmp_path: Path,
        leg: str) -> None:
    """SIGTERM while poold forwards a CancelRequest (the server has not closed poold's own
    cancel connection yet): the drain ends an idle client with 57P01, but writes nothing on
    the cancel connection, which closes once the cancel is delivered, as PostgreSQL's does.
    libpq 17+ (psycopg's cancel_safe) takes any byte there for a failed cancel: before, the
    drain wrote its 57P01 there too, and the cancel failed with "unexpected response from
    server" (as a cancel still in flight at a test's end met poold's teardown)."""
    tls, sslmode = CLIENT_LEGS[leg]
    raw = ""
    if tls:
        files = tlsca.issue(tmp_path / "tls", None)
        raw = f'\n[tls]\ncert_file = "{files.server_cert}"\nkey_file = "{files.server_key}"\n'
    p = poold_factory(mode="transaction", max_size=2, min_size=1, environ=core, raw=raw)
    outcome: dict[str, Any] = {}
    sql = "SELECT pg_sleep(30) AS cancel_in_flight"
    with psycopg.connect(p.dsn(sslmode=sslmode), autocommit=True) as conn, \
            psycopg.connect(p.dsn(sslmode=sslmode), autocommit=True) as idle:
        assert conn.pgconn.ssl_in_use is tls
        idle.execute("SELECT 1")
        query = in_thread(outcome, "query", lambda: conn.execute(sql))
        wait_until(lambda: pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE query = '{sql}'") == "1")
        with postmaster_stopped(pg):
            queued = accept_backlog(pg.port)
            cancel = in_thread(outcome, "cancel", conn.cancel_safe)
            wait_until(lambda: accept_backlog(pg.port) > queued)  # poold's cancel waits for the postmaster
            p.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            # the drain's pass over the clients: idle's 57P01 arrives, the cancel connection was passed too
            assert select.select([idle.fileno()], [], [], 10)[0]
            assert cancel.is_alive(), outcome.get("cancel")  # not delivered yet, so not answered
        cancel.join(10)
        query.join(10)
    assert outcome["cancel"] is None, outcome["cancel"]
    assert isinstance(outcome["query"], psycopg.errors.QueryCanceled), outcome["query"]
    assert p.proc.wait(timeout=30) == 0  # type: ignore[union-attr]
