"""Data integrity through poold: a statement runs at most once, a server's error reaches its
client intact and alone, and a large request costs memory and CPU in proportion to nothing
but its bytes.

Each test runs on the C core and on the Python references (POOLD_RELAY_CORE=python with the
Python frame scanner and the event loop's transports), in both pool modes where they differ.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import Poold, RawClient, pgcluster, wait_until

PYTHON_TWINS = {"POOLD_RELAY_CORE": "python", "POOLD_FRAME_SCANNER": "python", "POOLD_SOCKET_IO": "asyncio"}


@pytest.fixture(params=["c", "python"])
def core(request: pytest.FixtureRequest) -> dict[str, str]:
    return PYTHON_TWINS if request.param == "python" else {}


def _terminate_when_running(pg: pgcluster.Cluster, marker: str, after: float) -> threading.Thread:
    """pg_terminate_backend on the backend running a query containing ``marker``, ``after`` s into it."""

    def kill() -> None:
        with psycopg.connect(pg.dsn("app"), autocommit=True) as admin:

            def running() -> bool:
                row = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
                    (f"%{marker}%",),
                ).fetchone()
                return row is not None

            wait_until(running, timeout=10)
            time.sleep(after)
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
                (f"%{marker}%",),
            )

    t = threading.Thread(target=kill, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_statement_killed_by_admin_runs_once(
    poold_factory: Callable[..., Poold], pg: pgcluster.Cluster, core: dict[str, str], mode: str
) -> None:
    """A statement whose backend is terminated while it runs is reported, never run again elsewhere."""
    p = poold_factory(mode=mode, max_size=3, min_size=2, environ=core)
    seq = f"once_{mode}_{'py' if core else 'c'}"
    pg.psql(f"DROP SEQUENCE IF EXISTS {seq}; CREATE SEQUENCE {seq}; GRANT ALL ON SEQUENCE {seq} TO app", "app")
    marker = f"killme_{seq}"
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        killer = _terminate_when_running(pg, marker, after=0.5)
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute(f"DO $$BEGIN PERFORM nextval('{seq}'); PERFORM pg_sleep(4); END$$ /* {marker} */")
        killer.join(10)
    assert info.value.sqlstate == "57P01", info.value  # the server's own FATAL, not poold's
    assert pg.psql(f"SELECT last_value FROM {seq}", "app") == "1"  # nextval ran once
    assert "request_replayed" not in p.log_text()


def test_terminated_backend_gives_one_fatal(poold_factory: Callable[..., Poold], pg: pgcluster.Cluster,
                                            core: dict[str, str]) -> None:
    """The server's FATAL reaches the client, and nothing after it: PostgreSQL sends one."""
    p = poold_factory(mode="transaction", auth_type="trust", max_size=2, min_size=1, environ=core)
    raw = RawClient(p.port)
    raw.startup()
    while raw.read_message()[0] != b"Z":
        pass
    marker = f"onefatal_{'py' if core else 'c'}"
    killer = _terminate_when_running(pg, marker, after=0.2)
    raw.send(b"Q", f"SELECT pg_sleep(5) /* {marker} */\0".encode())
    killer.join(10)
    messages = []
    try:
        while True:
            messages.append(raw.read_message())
    except ConnectionError:
        pass
    errors = [{chr(f[0]): f[1:].decode() for f in body.split(b"\0") if f} for t, body in messages if t == b"E"]
    assert [(e["S"], e["C"]) for e in errors] == [("FATAL", "57P01")], errors
    assert "poold" not in errors[0]["M"]
    raw.close()


# SQLSTATEs of the server's termination notices, raised by a user's own code: an ERROR like any other.
USER_ERRORS = [
    ("57P01", "terminated by you"),
    ("57P02", "crash? no"),
    ("57P03", "cannot connect now, says the function"),
    ("P0001", "invoice C57P03\x01 C57P01"),
]


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_user_errors_that_look_like_termination_reach_the_client(
    poold_factory: Callable[..., Poold], core: dict[str, str], mode: str
) -> None:
    p = poold_factory(mode=mode, max_size=2, min_size=1, environ=core)
    for sqlstate, text in USER_ERRORS:
        text = text.replace("\x01", "")
        body = f"DO $$BEGIN RAISE EXCEPTION '{text}' USING ERRCODE = '{sqlstate}'; END$$"
        # The first request on a fresh client (the first of a transaction), then again mid-session.
        with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
            for _ in range(2):
                with pytest.raises(psycopg.Error) as info:
                    conn.execute(body)
                assert info.value.sqlstate == sqlstate
                assert info.value.diag.message_primary == text
                assert info.value.diag.severity == "ERROR"
                assert conn.execute("SELECT 41 + 1").fetchone() == (42,)  # the session goes on
        # psql: the error and a non-zero exit, promptly (it used to print nothing and exit 0, or hang)
        out = subprocess.run(
            [pgcluster.client_tool("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-c", body],
            env=p.env(), capture_output=True, text=True, timeout=30,
        )
        assert out.returncode != 0 and text in out.stderr, out


def _rss_peak_reset(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _vm(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


@pytest.mark.rss
@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("form", ["query", "bind", "named-bind"])
def test_large_request_streams_in_bounded_memory(poold_factory: Callable[..., Poold], core: dict[str, str],
                                                 mode: str, form: str) -> None:
    """A 60 MB query, or a Bind of a 60 MB parameter (to an unnamed statement, or to a
    named one that transaction mode renames), passes with poold's peak memory growing by a
    small fraction of it."""
    p = poold_factory(mode=mode, max_size=2, min_size=1, environ=core)
    assert p.proc is not None
    size = 60 * 1024 * 1024
    big = "x" * size
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)  # warm: the pool, the login
        if form == "named-bind":  # prepared (and its name carried) before the measurement
            assert conn.execute("SELECT length(%s::text)", ("warm",), prepare=True).fetchone() == (4,)
        time.sleep(0.2)
        _rss_peak_reset(p.proc.pid)
        base = _vm(p.proc.pid, "VmRSS")
        for _ in range(2):
            if form == "query":
                assert conn.execute(f"SELECT length('{big}')").fetchone() == (size,)
            else:
                row = conn.execute("SELECT length(%s::text)", (big,), prepare=form == "named-bind").fetchone()
                assert row == (size,)
        grown = _vm(p.proc.pid, "VmHWM") - base
    # bounded extra memory: well under the message's size (the old replay buffer held all of it, twice)
    assert grown < size // 4, f"poold's peak RSS grew {grown / 2**20:.1f} MB for a {size / 2**20:.0f} MB query"


def test_large_request_and_others_keep_going(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    """While one client sends 60 MB queries, another's short queries still complete, in order."""
    p = poold_factory(mode="transaction", max_size=3, min_size=2, environ=core)
    size = 60 * 1024 * 1024
    big = "y" * size
    done = threading.Event()
    sent = []

    def large() -> None:
        with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
            for _ in range(3):
                sent.append(conn.execute(f"SELECT length('{big}')").fetchone())
        done.set()

    t = threading.Thread(target=large, daemon=True)
    t.start()
    small = 0
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        while not done.is_set():
            assert conn.execute("SELECT %s::int", (small,), prepare=False).fetchone() == (small,)
            small += 1
    t.join(60)
    assert sent == [(size,)] * 3
    assert small > 0


@pytest.mark.rss
def test_large_request_waiting_for_a_server_is_not_held_whole(poold_factory: Callable[..., Poold],
                                                              core: dict[str, str]) -> None:
    """A client that must wait for a server connection is read only as far as a few chunks:
    its 60 MB query waits in its own socket, not in poold's memory."""
    p = poold_factory(mode="transaction", max_size=1, min_size=1, acquire_timeout=60, environ=core)
    assert p.proc is not None
    size = 60 * 1024 * 1024
    big = "z" * size
    result: list[object] = []
    with psycopg.connect(p.dsn(), prepare_threshold=None) as holder:
        holder.execute("SELECT 1")  # in a transaction: holds the only server connection
        time.sleep(0.2)
        _rss_peak_reset(p.proc.pid)
        base = _vm(p.proc.pid, "VmRSS")

        def large() -> None:
            with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
                result.append(conn.execute(f"SELECT length('{big}')").fetchone())

        t = threading.Thread(target=large, daemon=True)
        t.start()
        wait_until(lambda: _waiting(p) == 1, timeout=20)
        time.sleep(1.0)  # let the client push what poold will take
        grown = _vm(p.proc.pid, "VmHWM") - base
        holder.commit()
    t.join(60)
    assert result == [(size,)]
    assert grown < size // 8, f"poold's peak RSS grew {grown / 2**20:.1f} MB holding a waiting 60 MB query"


def _waiting(p: Poold) -> int:
    from tests.e2e.test_http import scrape

    return int(sum(v for (name, labels), v in scrape(p).items() if name == "db_pool_size" and ("state", "waiting") in labels))


def _message(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


TERMINATE = _message(b"X", b"")


def _requests(form: str, sql: str) -> bytes:
    """``sql`` as one simple Query, or as an unnamed Parse, Bind, Execute and Sync."""
    if form == "simple":
        return _message(b"Q", sql.encode() + b"\0")
    return (_message(b"P", b"\0" + sql.encode() + b"\0\0\0") + _message(b"B", b"\0\0" + b"\0\0" * 3)
            + _message(b"E", b"\0\0\0\0\0") + _message(b"S", b""))


# (queued: transaction mode only; a session-mode client holds its server connection from its login on)
@pytest.mark.parametrize(("mode", "where"), [("transaction", "idle"), ("transaction", "queued"),
                                             ("transaction", "in-transaction"), ("session", "idle"),
                                             ("session", "in-transaction")])
@pytest.mark.parametrize("form", ["simple", "extended"])
def test_requests_sent_before_terminate_run(poold_factory: Callable[..., Poold], pg: pgcluster.Cluster,
                                            core: dict[str, str], mode: str, where: str, form: str) -> None:
    """A client that writes its requests and Terminate in one go, and closes, has its requests
    run as PostgreSQL runs them (it reads the socket in order): whether poold had a server
    connection for it, was to lease one, or was queued for one behind a busy pool. They were
    dropped, or cancelled."""
    table = f"before_x_{mode}_{where.replace('-', '_')}_{form}_{'py' if core else 'c'}"
    pg.psql(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (n int); GRANT ALL ON {table} TO app", "app")
    work = f"SELECT pg_sleep(0.3); INSERT INTO {table} VALUES (1)" if form == "simple" else \
        f"INSERT INTO {table} SELECT 1 FROM pg_sleep(0.3)"

    def rows() -> str:
        return pg.psql(f"SELECT count(*) FROM {table}", "app")

    # PostgreSQL itself, the behaviour to match
    raw = RawClient(pg.port)
    raw.startup()
    while raw.read_message()[0] != b"Z":
        pass
    raw.sock.sendall(_requests(form, work) + TERMINATE)
    raw.close()
    wait_until(lambda: rows() == "1", timeout=10)
    pg.psql(f"TRUNCATE {table}", "app")

    p = poold_factory(mode=mode, auth_type="trust", max_size=1, min_size=1, environ=core)
    holder = psycopg.connect(p.dsn()) if where == "queued" else None
    try:
        if holder is not None:
            holder.execute("SELECT 1")  # holds the pool's one server connection, in a transaction
        raw = RawClient(p.port)
        raw.startup()
        while raw.read_message()[0] != b"Z":
            pass
        if where == "in-transaction":
            raw.send(b"Q", b"BEGIN\0")
            while raw.read_message()[0] != b"Z":
                pass
            work += ";COMMIT" if form == "simple" else ""
        raw.sock.sendall(_requests(form, work) + (_message(b"Q", b"COMMIT\0") if where == "in-transaction"
                                                   and form == "extended" else b"") + TERMINATE)
        raw.close()
        if holder is not None:
            time.sleep(0.5)  # the request waits its turn, its client long gone
            assert rows() == "0"
            holder.commit()
        wait_until(lambda: rows() == "1", timeout=10)
        # the server connection was not lost to it: the pool serves the next client
        with psycopg.connect(p.dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        time.sleep(0.5)
        assert rows() == "1"  # and ran once
    finally:
        if holder is not None:
            holder.close()


def test_terminate_during_copy_from_stdin_ends_the_copy_and_the_session(
        poold_factory: Callable[..., Poold], pg: pgcluster.Cluster, core: dict[str, str]) -> None:
    """A client that leaves in the middle of COPY FROM STDIN (Terminate, then close: libpq's
    PQfinish) has its COPY aborted and its session ended at once, as PostgreSQL does, and
    its server connection serves the next client. poold puts a CopyFail where the Terminate
    was; before, with the requests kept until answered, the COPY waited for data that never
    came (forever with query_timeout = 0)."""
    table = f"copy_x_{'py' if core else 'c'}"
    pg.psql(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (n int); GRANT ALL ON {table} TO app", "app")

    def leave_mid_copy(port: int) -> None:
        raw = RawClient(port)
        raw.startup()
        while raw.read_message()[0] != b"Z":
            pass
        raw.send(b"Q", f"COPY {table} FROM STDIN\0".encode())
        assert raw.read_message()[0] == b"G"  # CopyInResponse
        raw.sock.sendall(_message(b"d", b"1\n") + TERMINATE)
        raw.close()

    leave_mid_copy(pg.port)  # PostgreSQL itself
    p = poold_factory(mode="transaction", auth_type="trust", max_size=1, min_size=1, query_timeout=0, environ=core)
    leave_mid_copy(p.port)
    started = time.monotonic()
    with psycopg.connect(p.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert time.monotonic() - started < 5
    assert pg.psql(f"SELECT count(*) FROM {table}", "app") == "0"  # the COPY was aborted on both


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_client_that_half_closes_after_terminate_reads_its_replies(
        poold_factory: Callable[..., Poold], pg: pgcluster.Cluster, core: dict[str, str], mode: str) -> None:
    """Query, Terminate, then shutdown(SHUT_WR): PostgreSQL writes the replies, then closes;
    so does poold. Before, the half-close ended the session and the replies were dropped."""
    def replies(port: int) -> list[bytes]:
        raw = RawClient(port)
        raw.startup()
        while raw.read_message()[0] != b"Z":
            pass
        raw.sock.sendall(_message(b"Q", b"SELECT pg_sleep(0.3), 42\0") + TERMINATE)
        raw.sock.shutdown(socket.SHUT_WR)
        got = []
        try:
            while True:
                got.append(raw.read_message()[0])
        except ConnectionError:
            pass
        raw.close()
        return got

    assert replies(pg.port) == [b"T", b"D", b"C", b"Z"]
    p = poold_factory(mode=mode, auth_type="trust", max_size=1, min_size=1, environ=core)
    assert replies(p.port) == [b"T", b"D", b"C", b"Z"]
    with psycopg.connect(p.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
