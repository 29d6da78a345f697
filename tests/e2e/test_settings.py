"""A client's session state in transaction mode follows the client and reaches no one else.

Startup settings (``options`` -c / --name=value, or a parameter given directly)
and a client's own SET, RESET, RESET ALL and SET ROLE belong to that client: it
sees them in every transaction, whichever server connection runs it, and no
other client sees them. The pools here have fewer server connections than
clients (one, mostly), so clients really share them. What cannot be carried
(LISTEN, a session advisory lock, a temporary table, a cursor WITH HOLD, SQL
PREPARE) pins the client to its server connection, or is refused with 0A000
(``session_state = "error"``); it never reaches another client. Each test runs
on the C core and on the Python one.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time
from collections.abc import Callable

import psycopg
import pytest
import scramp

from tests.conftest import APP_PASSWORD, Poold, RawClient, pgcluster, wait_until
from tests.e2e.test_parameters import _msg, _Reader, direct_dsn, raw_login

CORES = {"c": {}, "python": {"POOLD_RELAY_CORE": "python"}}
POOL_TIMEOUT = "15s"  # the pool's statement_timeout (15 s, poold's default), as SHOW says it


@pytest.fixture(params=list(CORES))
def core(request: pytest.FixtureRequest) -> dict[str, str]:
    return CORES[request.param]


def connect(poold: Poold, **kwargs: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(poold.dsn(), autocommit=True, prepare_threshold=None, **kwargs)  # type: ignore[arg-type]


def show(conn: psycopg.Connection[tuple[object, ...]], name: str) -> str:
    return str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]


def one(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> object:
    return conn.execute(sql).fetchone()[0]  # type: ignore[index]


# -- startup settings ---------------------------------------------------------------------


def test_options_c_follows_the_client(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    poold = poold_factory(max_size=2, min_size=1, environ=core)
    with_option = [connect(poold, options="-c statement_timeout=1234") for _ in range(3)]
    without = [connect(poold) for _ in range(3)]
    for _ in range(10):  # more clients than server connections: each transaction may land anywhere
        for conn in with_option:
            assert show(conn, "statement_timeout") == "1234ms"
        for conn in without:
            assert show(conn, "statement_timeout") == POOL_TIMEOUT
    with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
        with_option[0].execute("SELECT pg_sleep(5)")
    for conn in with_option + without:
        conn.close()
    # psql, as the issue was found
    out = subprocess.run(["psql", "-XAt", poold.dsn() + " options='-c statement_timeout=1234'", "-c",
                          "SHOW statement_timeout"], capture_output=True, text=True, timeout=30,
                         env=poold.env() | {"PGPASSWORD": APP_PASSWORD})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1234ms"


def test_long_option_forms(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    poold = poold_factory(max_size=1, min_size=1, environ=core)
    with (connect(poold, options="--statement_timeout=2345 --lock-timeout=3s -cwork_mem=3MB") as a,
          connect(poold) as b):
        for _ in range(3):
            assert (show(a, "statement_timeout"), show(a, "lock_timeout"), show(a, "work_mem")) == ("2345ms", "3s",
                                                                                                  "3MB")
            assert (show(b, "statement_timeout"), show(b, "lock_timeout"), show(b, "work_mem")) == (POOL_TIMEOUT, "0",
                                                                                                  "4MB")


#: startup parameters given directly, as a driver may send them
DIRECT = {"statement_timeout": "4321", "lock_timeout": "2s", "search_path": "pg_catalog, public",
          "TimeZone": "europe/paris", "DateStyle": "sql, dmy", "application_name": "direct app", "work_mem": "5MB"}


def test_startup_settings_given_directly(poold_factory: Callable[..., Poold], pg: pgcluster.Cluster,
                                         core: dict[str, str]) -> None:
    poold = poold_factory(max_size=1, min_size=1, environ=core)
    names = list(DIRECT)
    want = raw_session(pg.port, DIRECT, APP_PASSWORD, [f"SHOW {n}" for n in names])
    assert want[0] == "4321ms"  # the premise: PostgreSQL took it
    for _ in range(2):  # the first login asks the server, the second knows
        assert raw_session(poold.port, DIRECT, APP_PASSWORD, [f"SHOW {n}" for n in names]) == want
        with connect(poold) as other:  # the same server connection, without them
            assert show(other, "statement_timeout") == POOL_TIMEOUT
            assert show(other, "work_mem") == "4MB"
    # ParameterStatus at login: PostgreSQL's own (spelled its way)
    assert raw_login(poold.port, DIRECT, APP_PASSWORD) == raw_login(pg.port, DIRECT)


#: startup parameters PostgreSQL refuses at login
REFUSED = [{"nosuch_setting": "1"}, {"work_mem": "abc"}, {"options": "-c nosuch=1"}, {"options": "-c work_mem=abc"},
           {"options": "--lock_timeout=soon"}, {"options": "-c work_mem"}, {"options": "-x"}]


def test_refused_settings_get_postgresql_fatal(poold_factory: Callable[..., Poold], pg: pgcluster.Cluster,
                                               core: dict[str, str]) -> None:
    poold = poold_factory(max_size=1, min_size=1, environ=core)
    for params in REFUSED:
        want = raw_login(pg.port, params)
        assert want["severity"] == "FATAL", want  # the premise
        for _ in range(2):
            assert raw_login(poold.port, params, APP_PASSWORD) == want, params


def test_ignore_startup_parameters(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    poold = poold_factory(max_size=1, min_size=1,
                          environ=core | {"POOLD_CLIENTS__IGNORE_STARTUP_PARAMETERS": "nosuch_setting, work_mem"})
    assert raw_login(poold.port, {"nosuch_setting": "1", "work_mem": "abc"}, APP_PASSWORD)["status"] == "ready"


# -- SET follows its client ------------------------------------------------------------------


def test_set_does_not_leak(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    poold = poold_factory(max_size=1, min_size=1, environ=core)
    with connect(poold) as a, connect(poold) as b:
        a.execute("SET statement_timeout = 0")
        a.execute("SET work_mem = '7MB'")
        for _ in range(3):  # one server connection: they take turns on it
            assert show(b, "statement_timeout") == POOL_TIMEOUT
            assert show(b, "work_mem") == "4MB"
            assert show(a, "statement_timeout") == "0"
            assert show(a, "work_mem") == "7MB"
        a.execute("SELECT set_config('work_mem', '9MB', false)")
        assert show(b, "work_mem") == "4MB"
        assert show(a, "work_mem") == "9MB"


def test_set_in_a_pipeline(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    """A SET that is not the first request of what the client sends at once (psycopg's pipeline mode)."""
    poold = poold_factory(max_size=1, min_size=1, environ=core)
    with connect(poold) as a, connect(poold) as b:
        with a.pipeline():
            a.execute("SELECT 1")
            a.execute("SET work_mem = '6MB'")
            a.execute("SELECT 2")
        # (psycopg sends a Flush after its pipeline's Sync: poold holds the server connection to the next Sync)
        a.execute("SELECT 3")
        assert show(b, "work_mem") == "4MB"
        assert show(a, "work_mem") == "6MB"


def test_set_in_a_block_follows_postgresql(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    poold = poold_factory(max_size=1, min_size=1, environ=core)
    with connect(poold) as a, connect(poold) as b:
        a.execute("BEGIN")
        a.execute("SET work_mem = '6MB'")
        a.execute("ROLLBACK")
        assert show(b, "work_mem") == "4MB"
        assert show(a, "work_mem") == "4MB"  # rolled back: dropped
        a.execute("BEGIN")
        a.execute("SET work_mem = '6MB'")
        a.execute("SET LOCAL lock_timeout = '7s'")
        a.execute("COMMIT")
        assert show(b, "work_mem") == "4MB"
        assert (show(a, "work_mem"), show(a, "lock_timeout")) == ("6MB", "0")  # committed: kept; SET LOCAL: gone
        a.execute("BEGIN; SAVEPOINT s; SET work_mem = '8MB'; ROLLBACK TO SAVEPOINT s; COMMIT")
        assert show(b, "work_mem") == "4MB"
        assert show(a, "work_mem") == "6MB"


def test_reset_returns_to_the_startup_values(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    poold = poold_factory(max_size=1, min_size=1, environ=core)
    for _ in range(3):  # the first login asks the server, the next are planned, the third by the C login alone
        check_reset_all(poold)


def check_reset_all(poold: Poold) -> None:
    with connect(poold, options="-c work_mem=3MB") as a, connect(poold) as b:
        a.execute("SET work_mem = '5MB'")
        a.execute("SET lock_timeout = '9s'")
        assert show(b, "work_mem") == "4MB"
        a.execute("RESET ALL")
        assert show(b, "lock_timeout") == "0"
        assert (show(a, "work_mem"), show(a, "lock_timeout")) == ("3MB", "0")
        a.execute("SET work_mem = '5MB'")
        a.execute("RESET work_mem")
        assert show(a, "work_mem") == "3MB"
        assert show(b, "work_mem") == "4MB"


def test_set_role_does_not_leak(poold_factory: Callable[..., Poold], pg: pgcluster.Cluster,
                                core: dict[str, str]) -> None:
    pg.psql("DO $$BEGIN CREATE ROLE settings_reader NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    pg.psql("GRANT settings_reader TO app")
    poold = poold_factory(max_size=1, min_size=1, environ=core)
    with connect(poold) as a, connect(poold) as b:
        a.execute("SET ROLE settings_reader")
        a.execute("SET SESSION AUTHORIZATION DEFAULT")  # allowed to any user: back to itself
        a.execute("SET ROLE settings_reader")
        for _ in range(3):
            assert one(b, "SELECT current_user") == "app"
            assert one(a, "SELECT current_user") == "settings_reader"
        a.execute("RESET ROLE")
        assert one(a, "SELECT current_user") == "app"


def test_set_session_authorization_does_not_leak(poold_factory: Callable[..., Poold], pg: pgcluster.Cluster,
                                                  core: dict[str, str]) -> None:
    """A pool whose server user is a superuser, so that SET SESSION AUTHORIZATION may change it."""
    poold = poold_factory(max_size=1, min_size=1, environ=core,
                          raw=f'[databases.su]\ndsn = "host={pg.host} port={pg.port} dbname=app user=postgres"\n')
    with (psycopg.connect(poold.dsn(dbname="su"), autocommit=True, prepare_threshold=None) as a,
          psycopg.connect(poold.dsn(dbname="su"), autocommit=True, prepare_threshold=None) as b):
        a.execute("SET SESSION AUTHORIZATION app")
        a.execute("SET work_mem = '5MB'")
        for _ in range(3):
            assert (one(b, "SELECT session_user"), one(b, "SELECT current_user")) == ("postgres", "postgres")
            assert show(b, "work_mem") == "4MB"
            assert (one(a, "SELECT session_user"), one(a, "SELECT current_user")) == ("app", "app")
            assert show(a, "work_mem") == "5MB"
        a.execute("RESET SESSION AUTHORIZATION")
        assert one(a, "SELECT session_user") == "postgres"


def test_simple_query_protocol(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    """psql's protocol: SET, then another client, then the first again (as the issue found it)."""
    poold = poold_factory(max_size=1, min_size=1, environ=core)
    with (psycopg.connect(poold.dsn(), autocommit=True, cursor_factory=psycopg.ClientCursor) as a,
          psycopg.connect(poold.dsn(), autocommit=True, cursor_factory=psycopg.ClientCursor) as b):
        a.execute("SET statement_timeout = 0")
        a.execute("  -- a comment first\n  set work_mem to '7MB'")
        assert (show(b, "statement_timeout"), show(b, "work_mem")) == (POOL_TIMEOUT, "4MB")
        assert (show(a, "statement_timeout"), show(a, "work_mem")) == ("0", "7MB")
        a.execute("BEGIN; SET lock_timeout = '8s'; COMMIT")  # a statement after the first
        assert show(b, "lock_timeout") == "0"
        assert show(a, "lock_timeout") == "8s"


# -- what cannot be carried pins, or errors ----------------------------------------------------

#: statements that leave state on the server connection, and a query that finds that state (0: none)
PINS = {
    "LISTEN": (["LISTEN settings_channel"], "SELECT count(*) FROM pg_listening_channels()"),
    "advisory lock": (["SELECT pg_advisory_lock(4242)"],
                      "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"),
    "CREATE TEMPORARY": (["CREATE TEMP TABLE settings_tmp (i int)"],
                         "SELECT count(*) FROM pg_class WHERE relname = 'settings_tmp' AND relpersistence = 't' "
                         "AND pg_table_is_visible(oid)"),
    "DECLARE ... WITH HOLD": (["BEGIN", "DECLARE settings_cur CURSOR WITH HOLD FOR SELECT 1", "COMMIT"],
                              "SELECT count(*) FROM pg_cursors WHERE name = 'settings_cur'"),
    "PREPARE": (["PREPARE settings_stmt AS SELECT 1"],
                "SELECT count(*) FROM pg_prepared_statements WHERE name = 'settings_stmt'"),
}


@pytest.mark.parametrize("reason", list(PINS))
def test_session_state_pins(poold_factory: Callable[..., Poold], core: dict[str, str], reason: str) -> None:
    poold = poold_factory(max_size=2, min_size=2, environ=core)
    statements, probe = PINS[reason]
    with connect(poold, application_name="pinned-one") as a, connect(poold) as b:
        a.execute("SELECT 1")
        for sql in statements:
            a.execute(sql)
        pid = one(a, "SELECT pg_backend_pid()")
        for _ in range(3):
            assert one(b, probe) == 0  # the other server connection: none of it
            assert one(a, probe) == 1  # its own, kept
            assert one(a, "SELECT pg_backend_pid()") == pid
        clients = json.loads(poold.poolctl("--json", "clients").stdout)
        assert sorted(c["pinned"] for c in clients) == ["", reason]
        status, metrics = poold.http("/metrics")
        assert f'poold_client_pins_total{{pool="app.app",reason="{reason}"}} 1.0' in metrics
        assert 'poold_pinned_clients{pool="app.app"} 1.0' in metrics
        assert wait_until(lambda: '"client_pinned"' in poold.log_text())
    # gone: its server connection went back clean (DISCARD ALL); every client after finds nothing
    with connect(poold) as c, connect(poold) as d:
        for _ in range(3):
            assert one(c, probe) == 0
            assert one(d, probe) == 0


@pytest.mark.parametrize("reason", list(PINS))
def test_session_state_error(poold_factory: Callable[..., Poold], core: dict[str, str], reason: str) -> None:
    poold = poold_factory(max_size=1, min_size=1, environ=core, session_state="error")
    statements, probe = PINS[reason]
    with connect(poold) as a, connect(poold) as b:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match=f"poold: {reason}"):
            for sql in statements:
                a.execute(sql)
        a.execute("ROLLBACK")  # a block the error aborted, if any
        assert one(a, "SELECT 1") == 1  # the session goes on
        assert one(a, probe) == 0
        assert one(b, probe) == 0
        assert json.loads(poold.poolctl("--json", "clients").stdout)[0]["pinned"] == ""


# -- a raw client: startup parameters libpq has no keyword for ----------------------------------


def raw_session(port: int, params: dict[str, str], password: str, sqls: list[str]) -> list[str]:
    """Log in as app with these startup parameters, run each query; the first value of each."""
    body = struct.pack("!I", 196608) + b"user\0app\0database\0app\0"
    body += b"".join(f"{k}\0{v}\0".encode() for k, v in params.items()) + b"\0"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        reader = _Reader(sock)
        scram = scramp.ScramClient(["SCRAM-SHA-256"], "app", password)
        while True:
            t, data = reader.next()
            if t == b"R":
                code = struct.unpack_from("!I", data)[0]
                if code == 10:
                    first = scram.get_client_first().encode()
                    sock.sendall(_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
                elif code == 11:
                    scram.set_server_first(data[4:].decode())
                    sock.sendall(_msg(b"p", scram.get_client_final().encode()))
            elif t == b"E":
                raise AssertionError(f"refused: {data!r}")
            elif t == b"Z":
                break
        out = []
        for sql in sqls:
            sock.sendall(_msg(b"Q", sql.encode() + b"\0"))
            value = None
            while True:
                t, data = reader.next()
                if t == b"D" and value is None:
                    n = struct.unpack_from("!i", data, 2)[0]
                    value = data[6 : 6 + n].decode()
                elif t == b"E":
                    value = "error: " + data.decode(errors="replace")
                elif t == b"Z":
                    break
            out.append(str(value))
        sock.sendall(_msg(b"X", b""))
        return out


def test_direct_connection_premise(pg: pgcluster.Cluster) -> None:
    """The pool's defaults the tests above compare with are PostgreSQL's: work_mem 4MB, lock_timeout 0."""
    with psycopg.connect(direct_dsn(pg), autocommit=True) as conn:
        assert (show(conn, "work_mem"), show(conn, "lock_timeout")) == ("4MB", "0")


def _set_sent_in_two_reads(poold_factory: Callable[..., Poold], core: str, first: bytes, rest: bytes) -> None:
    """A raw client sends ``first``, then (read apart) ``rest``: two requests, the last
    ``SET work_mem = '3MB'``. The next client must not see it; its own client must."""
    environ = CORES.get(core, {"POOLD_RELAY_CORE": "python", "POOLD_FRAME_SCANNER": "python",
                               "POOLD_SOCKET_IO": "asyncio"})
    p = poold_factory(mode="transaction", max_size=1, min_size=1, auth_type="trust", environ=environ)
    a = RawClient(p.port)
    try:
        a.startup()
        while a.read_message()[0] != b"Z":
            pass
        a.sock.sendall(first)
        time.sleep(0.3)  # read apart
        a.sock.sendall(rest)
        replies = []
        while len([t for t in replies if t == b"Z"]) < 2:
            replies.append(a.read_message()[0])
        assert b"E" not in replies, replies
        with psycopg.connect(p.dsn(), autocommit=True) as b:
            assert b.execute("SHOW work_mem").fetchone() == ("4MB",)
        a.send(b"Q", b"SHOW work_mem\0")
        rows = []
        while (m := a.read_message())[0] != b"Z":
            if m[0] == b"D":
                rows.append(m[1][6:].decode())
        assert rows == ["3MB"]
    finally:
        a.close()


SETTING = _msg(b"Q", b"SET work_mem = '3MB'\0")


@pytest.mark.parametrize("core", [*CORES, "python-twins"])
def test_set_in_a_chunk_that_starts_with_sync_is_seen(poold_factory: Callable[..., Poold], core: str) -> None:
    """A SET that reaches poold behind a Sync in one read (the chunk starts with 'S') is
    looked at as one at the start of a chunk is: it does not stay on the connection."""
    _set_sent_in_two_reads(poold_factory, core,
                           _msg(b"P", b"\0SELECT 1\0\0\0") + _msg(b"B", b"\0\0\0\0\0\0\0\0") + _msg(b"E", b"\0\0\0\0\0"),
                           _msg(b"S", b"") + SETTING)


@pytest.mark.parametrize("cut", ["in-a-body", "in-a-header"])
@pytest.mark.parametrize("core", [*CORES, "python-twins"])
def test_set_in_a_chunk_that_starts_inside_a_message_is_seen(poold_factory: Callable[..., Poold], core: str,
                                                              cut: str) -> None:
    """A SET whose chunk begins inside an earlier message (the rest of a long Query's
    text, or the rest of the SET's own header) is looked at too."""
    long_query = _msg(b"Q", b"SELECT length('" + b"x" * 20_000 + b"')\0")
    first = long_query[:100] if cut == "in-a-body" else long_query + SETTING[:3]
    _set_sent_in_two_reads(poold_factory, core, first, (long_query + SETTING)[len(first):])

def test_reported_settings_are_reset_before_psycopg_pool_gets_the_connection_back(
        poold_factory: Callable[..., Poold], pg: pgcluster.Cluster, core: dict[str, str]) -> None:
    """A client's application_name (and the other reported settings) stays on its server
    connection between transactions, to be changed before the next client's first
    request if that client's differs; when the connection goes back to psycopg_pool
    (idle past hold_time: 0.5 s with idle_timeout 1 s) it goes back at the pool's defaults."""
    p = poold_factory(max_size=1, min_size=1, idle_timeout=1, environ=core)
    with psycopg.connect(direct_dsn(pg), autocommit=True) as direct:
        def server_names() -> list[str]:
            return [r[0] for r in direct.execute(
                "SELECT application_name FROM pg_stat_activity WHERE datname = 'app' AND usename = 'app'"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchall()]

        def one_server() -> list[str] | None:
            names = server_names()
            return names if len(names) == 1 else None

        # poold's one server connection (min_size: opened after start), and no other test's left
        default = wait_until(one_server, timeout=20)
        assert isinstance(default, list) and default[0] != "client_a"
        with connect(p, application_name="client_a") as a:
            a.execute("SET TimeZone = 'Asia/Tokyo'")
            assert show(a, "application_name") == "client_a"
            assert server_names() == ["client_a"]  # kept between transactions, as PgBouncer does

            def given_back() -> bool:
                rows = json.loads(p.poolctl("--json", "servers").stdout)
                return bool(rows) and all(r["state"] == "pool" for r in rows)

            wait_until(given_back, timeout=20)
            assert server_names() == default
            # and the client still has its own, on its next transaction
            assert (show(a, "application_name"), show(a, "TimeZone")) == ("client_a", "Asia/Tokyo")


@pytest.mark.parametrize("how", ["options", "set"])
def test_a_role_that_can_no_longer_be_set_ends_the_session(poold_factory: Callable[..., Poold],
                                                           pg: pgcluster.Cluster, core: dict[str, str],
                                                           how: str) -> None:
    """A client's role, applied on another server connection, fails there (the pool's user
    was removed from it since): the client's statement must not run as the pool's user.
    Its session ends with the server's reason; the other clients go on."""
    pg.psql("DO $$BEGIN CREATE ROLE settings_revoked NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    pg.psql("GRANT settings_revoked TO app")
    poold = poold_factory(max_size=1, min_size=1, environ=core)
    try:
        extra = {"options": "-c role=settings_revoked"} if how == "options" else {}
        with connect(poold, **extra) as a, connect(poold) as b:
            if how == "set":
                a.execute("SET ROLE settings_revoked")
            assert one(a, "SELECT current_user") == "settings_revoked"
            assert one(b, "SELECT current_user") == "app"  # the one server connection is b's now
            pg.psql("REVOKE settings_revoked FROM app")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="settings_revoked") as failed:
                one(a, "SELECT current_user")
            assert failed.value.sqlstate == "42501"
            assert a.closed or a.broken
            assert one(b, "SELECT current_user") == "app"
    finally:
        pg.psql("DROP ROLE IF EXISTS settings_revoked")


def test_a_failing_setting_beside_a_role_does_not_end_the_session(poold_factory: Callable[..., Poold],
                                                                  pg: pgcluster.Cluster) -> None:
    """A client with a role and a setting that fails on another server connection (its
    text search configuration dropped since): the role is set, the request runs, the
    session goes on; only a refused role ends it."""
    pg.psql("DO $$BEGIN CREATE ROLE settings_kept NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    pg.psql("GRANT settings_kept TO app")
    pg.psql("DROP TEXT SEARCH CONFIGURATION IF EXISTS settings_cfg; "
            "CREATE TEXT SEARCH CONFIGURATION settings_cfg (COPY = english)", dbname="app")
    poold = poold_factory(max_size=1, min_size=1)
    try:
        with (connect(poold, options="-c role=settings_kept -c default_text_search_config=settings_cfg") as a,
              connect(poold) as b):
            assert one(a, "SELECT current_user") == "settings_kept"
            assert one(b, "SELECT current_user") == "app"
            pg.psql("DROP TEXT SEARCH CONFIGURATION settings_cfg", dbname="app")
            assert one(a, "SELECT current_user") == "settings_kept"
            assert show(a, "default_text_search_config") == "pg_catalog.english"  # failed there: logged
    finally:
        pg.psql("DROP ROLE IF EXISTS settings_kept")
