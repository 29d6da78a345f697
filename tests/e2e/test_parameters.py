"""ParameterStatus through poold is PostgreSQL's, spelled as PostgreSQL spells it.

PostgreSQL normalises a setting's value (client_encoding 'utf8' -> 'UTF8',
DateStyle 'iso' -> 'ISO, MDY', TimeZone 'utc' -> 'UTC') and reports the result;
drivers compare these strings. Each test asks PostgreSQL directly and through
poold with the same startup parameters and holds both to the same assertions:
in both pool modes, on the C core and the Python one, for the first login of a
startup packet (its values asked of the server), the second (answered from what
the pool learned, the C login's plan made) and the third (the C login's kept
plan, in C). A value PostgreSQL refuses ends the login with PostgreSQL's FATAL.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Iterator

import psycopg
import pytest
import scramp

from tests.conftest import APP_PASSWORD, Poold, pgcluster, server_backends

#: the settings PostgreSQL reports that a client's startup packet can change
REPORTED = ("application_name", "client_encoding", "DateStyle", "IntervalStyle", "standard_conforming_strings",
            "TimeZone")

#: (libpq connection keywords, libpq environment) asking for a setting, spelled as PostgreSQL would not report it
PSYCOPG_CASES = [
    ({"client_encoding": "utf8"}, {}),
    ({"client_encoding": "unicode"}, {}),
    ({"client_encoding": "latin1"}, {}),
    ({}, {"PGDATESTYLE": "iso"}),
    ({}, {"PGDATESTYLE": "sql, dmy"}),
    ({}, {"PGDATESTYLE": "German"}),
    ({}, {"PGTZ": "utc"}),
    ({}, {"PGTZ": "europe/paris"}),
    ({"application_name": "caf\u00e9 app"}, {}),
    ({"client_encoding": "unicode", "application_name": "two"}, {"PGTZ": "utc", "PGDATESTYLE": "iso, dmy"}),
]

#: startup packet parameters libpq has no keyword for, sent by a raw client
RAW_CASES = [
    {"IntervalStyle": "SQL_Standard"},
    {"intervalstyle": "ISO_8601", "datestyle": "postgres, ymd"},
    {"TimeZone": "UTC", "client_encoding": "UTF8"},  # already canonical
]

#: values PostgreSQL refuses at login
BAD_CASES = [
    {"TimeZone": "Mars/Base"},
    {"client_encoding": "nonsense"},
    {"IntervalStyle": "bogus"},  # with a HINT
    {"intervalstyle": "bogus"},  # the name as the client wrote it
    {"DateStyle": "nonsense"},  # with a DETAIL
    {"application_name": "fine", "extra_float_digits": "99"},
]

#: the logins of one startup packet (see the module's docstring)
LOGINS = ("first", "second", "third")

CORES = {"c": {}, "python": {"POOLD_RELAY_CORE": "python"}}


@pytest.fixture(params=[(mode, core) for mode in ("transaction", "session") for core in CORES],
                ids=lambda p: f"{p[0]}-{p[1]}")
def poold(request: pytest.FixtureRequest, poold_factory: Callable[..., Poold]) -> Poold:
    mode, core = request.param
    return poold_factory(mode=mode, environ=CORES[core])


def direct_dsn(pg: pgcluster.Cluster) -> str:
    return f"host={pg.host} port={pg.port} dbname=app user=app password={APP_PASSWORD}"


def reported(conn: psycopg.Connection[object]) -> dict[str, str | None]:
    return {name: conn.info.parameter_status(name) for name in REPORTED}


def shown(conn: psycopg.Connection[object]) -> dict[str, str]:
    """The settings as the server holds them now (SHOW), for the client's next transaction."""
    return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in REPORTED}  # type: ignore[index]


@pytest.fixture
def libpq_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, str]], None]]:
    """Set libpq's environment (PGTZ, PGDATESTYLE) for the connections that follow."""
    for name in ("PGTZ", "PGDATESTYLE", "PGCLIENTENCODING", "PGAPPNAME", "PGOPTIONS"):
        monkeypatch.delenv(name, raising=False)

    def use(env: dict[str, str]) -> None:
        for name in ("PGTZ", "PGDATESTYLE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    yield use


def test_login_reports_what_postgresql_reports(poold: Poold, pg: pgcluster.Cluster,
                                                libpq_env: Callable[[dict[str, str]], None]) -> None:
    for keywords, env in PSYCOPG_CASES:
        libpq_env(env)
        with psycopg.connect(direct_dsn(pg), autocommit=True, **keywords) as conn:  # type: ignore[arg-type]
            want, want_shown = reported(conn), shown(conn)
        for login in LOGINS:
            asked = questions(poold)
            with psycopg.connect(poold.dsn(), autocommit=True, prepare_threshold=None, **keywords) as conn:  # type: ignore[arg-type]
                case = f"{keywords} {env} ({login} login)"
                assert reported(conn) == want, case
                # every case has a value poold has not seen: the first login asks, once; the others not
                assert questions(poold) == asked + (login == "first"), case
                assert shown(conn) == want_shown, case
                assert reported(conn) == want, case  # the hand-off's SETs reported nothing to the client


def questions(poold: Poold) -> int:
    """How many times poold has asked a server how it spells a login's settings (spellings.py)."""
    return poold.log_text().count('"startup_settings_asked"')


def test_set_reports_what_postgresql_reports(poold: Poold, pg: pgcluster.Cluster,
                                             libpq_env: Callable[[dict[str, str]], None]) -> None:
    libpq_env({"PGTZ": "utc", "PGDATESTYLE": "iso"})
    statements = ["SET TimeZone TO 'europe/paris'", "SET DateStyle TO 'german'", "SET client_encoding TO 'unicode'",
                  "SET IntervalStyle TO 'SQL_STANDARD'", "SET TimeZone TO 'utc'", "SET DateStyle TO 'iso'",
                  "SET client_encoding TO 'latin1'", "SET application_name TO 'caf\u00e9'"]
    results = []
    for dsn in (direct_dsn(pg), poold.dsn()):
        seen = []
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=None, client_encoding="utf8") as conn:
            for sql in statements:
                conn.execute(sql)
                seen.append((sql, reported(conn)))
                conn.execute("SELECT 1")  # another transaction: in transaction mode, maybe another server connection
                seen.append((sql + " then SELECT 1", reported(conn)))
                seen.append((sql + " then SHOW", shown(conn)))
        results.append(seen)
    direct, pooled = results
    for want, got in zip(direct, pooled, strict=True):
        assert got == want


def test_raw_startup_parameters(poold: Poold, pg: pgcluster.Cluster) -> None:
    for params in RAW_CASES:
        want = raw_login(pg.port, params)
        for login in LOGINS:
            got = raw_login(poold.port, params, APP_PASSWORD)
            assert got == want, f"{params} ({login} login)"


def test_refused_value_is_postgresql_fatal(poold: Poold, pg: pgcluster.Cluster) -> None:
    for params in BAD_CASES:
        want = raw_login(pg.port, params)
        assert want["severity"] == "FATAL" and want["C"] == "22023", want  # the premise: PostgreSQL refuses it
        for login in LOGINS:
            got = raw_login(poold.port, params, APP_PASSWORD)
            assert got == want, f"{params} ({login} login)"
    # The refused values left nothing behind on the pool's server connections.
    with psycopg.connect(direct_dsn(pg), autocommit=True) as conn:
        want_shown = shown(conn)
    for _ in range(3):
        with psycopg.connect(poold.dsn(), autocommit=True, prepare_threshold=None) as conn:
            assert shown(conn) == want_shown


def test_logins_at_once_share_the_question(poold: Poold, pg: pgcluster.Cluster,
                                          libpq_env: Callable[[dict[str, str]], None]) -> None:
    """Many logins with a value the pool has not seen, at once (more than the pool's
    server connections): each is told the server's spelling, and no server connection
    is left inside the question's transaction."""
    libpq_env({"PGTZ": "asia/tokyo", "PGDATESTYLE": "postgres, dmy"})
    with psycopg.connect(direct_dsn(pg), autocommit=True) as conn:
        want = reported(conn)

    async def one() -> dict[str, str | None]:
        async with await psycopg.AsyncConnection.connect(poold.dsn(), autocommit=True, prepare_threshold=None) as conn:
            await conn.execute("SELECT 1")
            return {name: conn.info.parameter_status(name) for name in REPORTED}

    async def main() -> list[dict[str, str | None]]:
        return await asyncio.gather(*(one() for _ in range(20)))

    assert asyncio.run(main()) == [want] * 20
    assert server_backends(pg, "state = 'idle in transaction'") == 0


# -- a raw client: any startup parameter, PostgreSQL's messages as sent ---------------


def _msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def next(self) -> tuple[bytes, bytes]:
        while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack_from("!I", self.buf, 1)[0]:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the login ended")
            self.buf += chunk
        n = struct.unpack_from("!I", self.buf, 1)[0]
        t, body, self.buf = self.buf[:1], self.buf[5 : 1 + n], self.buf[1 + n :]
        return t, body


def raw_login(port: int, params: dict[str, str], password: str | None = None) -> dict[str, str]:
    """Log in as app with these startup parameters; what came after AuthenticationOk.

    Logged in: {"status": "ready"} and each ParameterStatus the client was told
    (in its order). Refused: {"severity": ...} and the ErrorResponse's fields but
    the source location (F, L, R), and whether the connection was closed after it."""
    body = struct.pack("!I", 196608) + b"user\0app\0database\0app\0"
    body += b"".join(f"{k}\0{v}\0".encode() for k, v in params.items()) + b"\0"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        reader = _Reader(sock)
        scram: scramp.ScramClient | None = None
        out: dict[str, str] = {}
        while True:
            t, data = reader.next()
            if t == b"R":
                code = struct.unpack_from("!I", data)[0]
                if code == 10:
                    assert password is not None, "SCRAM asked of a trust login"
                    scram = scramp.ScramClient(["SCRAM-SHA-256"], "app", password)
                    first = scram.get_client_first().encode()
                    sock.sendall(_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
                elif code == 11:
                    assert scram is not None
                    scram.set_server_first(data[4:].decode())
                    sock.sendall(_msg(b"p", scram.get_client_final().encode()))
                elif code == 12:
                    assert scram is not None
                    scram.set_server_final(data[4:].decode())
                else:
                    assert code == 0 and not out, (code, out)
            elif t == b"S":
                name, value, _ = data.split(b"\0")
                out[name.decode()] = value.decode("latin1")  # the bytes, whatever the client encoding
            elif t == b"E":
                fields = {chr(f[0]): f[1:].decode() for f in data.split(b"\0") if f}
                result = {"severity": fields.pop("S")} | {k: v for k, v in fields.items() if k not in "FLR"}
                try:
                    result["closed"] = str(sock.recv(1) == b"")
                except ConnectionResetError:
                    result["closed"] = "True"
                return result
            elif t == b"Z":
                sock.sendall(_msg(b"X", b""))
                return out | {"status": "ready"}
            elif t != b"K":
                raise AssertionError(f"unexpected {t!r} during login")
