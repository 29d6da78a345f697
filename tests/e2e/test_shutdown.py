"""Graceful shutdown under load: transactions finish, then 57P01, exit 0, nothing left behind.

Every client is told: it reads FATAL 57P01 and then poold's end of the connection
(EOF), never a reset, whatever it sends meanwhile (see sockio.linger).
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Poold, RawClient, pgcluster, server_backends, wait_until

#: the two twins of the socket layer and relay core: C, and the Python references
TWINS = {"c": {}, "python": {"POOLD_RELAY_CORE": "python", "POOLD_SOCKET_IO": "asyncio"}}

SCRIPT = """\\set id random(1, 2000000000)
BEGIN;
INSERT INTO shutdown_probe VALUES (:id, 1);
SELECT pg_sleep(0.005);
INSERT INTO shutdown_probe VALUES (:id, 2);
COMMIT;
"""
BEGIN_COMMAND = 1  # \\set is command 0


@pytest.mark.parametrize("twin", TWINS)
def test_sigterm_during_pgbench(poold_factory: Callable[..., Poold], pg: pgcluster.Cluster, tmp_path: Path,
                                twin: str) -> None:
    p = poold_factory(mode="transaction", max_size=5, min_size=2, environ=TWINS[twin])
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
    # every client read the FATAL (57P01's message; pgbench does not print the code),
    # none met a reset ("server closed the connection unexpectedly" is libpq's ECONNRESET)
    assert err.count("FATAL:  poold: terminating connection: poold is draining") == 16, err[-2000:]
    assert "server closed the connection unexpectedly" not in err and "reset" not in err, err[-2000:]
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


def _query(sql: str) -> bytes:
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!I", len(body) + 4) + body


def _login_trust(p: Poold) -> RawClient:
    client = RawClient(p.port)
    client.startup()
    while client.read_message()[0] != b"Z":
        pass
    return client


def _run(client: RawClient, sql: str) -> bytes:
    """Send one simple query; its ReadyForQuery status."""
    client.sock.sendall(_query(sql))
    while True:
        t, body = client.read_message()
        if t == b"Z":
            return body


def _told_then_ended(client: RawClient) -> dict[str, str]:
    """FATAL, then poold's EOF; what the client sends after it (as a client that has
    not read the error yet does) is read and dropped, not answered with a reset.

    A reset shows on the client's next send (EPIPE or ECONNRESET): a receive after
    EOF hides it."""
    error = client.read_error()
    assert client.buf == b"" and client.sock.recv(1) == b""  # the error, then EOF
    try:
        for _ in range(3):
            client.sock.sendall(_query("SELECT 1"))
            client.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # a reset is taken in here
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise AssertionError(f"poold reset the connection after its FATAL: {exc!r}") from None
    except BlockingIOError:
        raise AssertionError("poold sent more after its FATAL and EOF") from None
    return error


def _wait_draining(p: Poold) -> None:
    wait_until(lambda: '"draining"' in p.log_text(), timeout=10)


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("when", ["idle", "commit", "login", "shutdown_timeout"])
def test_sigterm_tells_then_closes_without_reset(poold_factory: Callable[..., Poold], twin: str, when: str) -> None:
    """A client idle between transactions, one whose transaction ends after the
    signal, one in the middle of its SCRAM login, and one whose transaction outlives
    shutdown_timeout: each reads FATAL 57P01 and an orderly end of the connection."""
    environ = dict(TWINS[twin], POOLD_DAEMON__SHUTDOWN_TIMEOUT="1")
    p = poold_factory(mode="transaction", max_size=2, min_size=1, environ=environ,
                      auth_type="scram-sha-256" if when == "login" else "trust")
    if when == "login":
        client = RawClient(p.port)
        client.startup()
        t, body = client.read_message()
        assert t == b"R" and body[:4] == struct.pack("!I", 10)  # AuthenticationSASL: the client's turn
    else:
        client = _login_trust(p)
        if when != "idle":
            assert _run(client, "BEGIN") == b"T"
    p.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    _wait_draining(p)
    if when == "commit":
        assert _run(client, "COMMIT") == b"I"  # the transaction ends, then the FATAL
    error = _told_then_ended(client)
    assert error["C"] == "57P01" and error["S"] == "FATAL", error
    client.close()
    assert p.proc.wait(timeout=15) == 0  # type: ignore[union-attr]
