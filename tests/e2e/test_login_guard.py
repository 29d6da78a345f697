"""Logins that cannot hurt others: clients that never log in, password guessing,
clients that go away before their startup packet, and the file-descriptor limit.

Each runs against the real daemon on the C core and on the Python twins. Loopback
only; every loop here is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import struct
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
import scramp

from tests.conftest import Poold, RawClient, wait_until

TWINS = {
    "c": {},
    "python": {"POOLD_RELAY_CORE": "python", "POOLD_SOCKET_IO": "asyncio", "POOLD_FRAME_SCANNER": "python"},
}


@pytest.fixture(params=sorted(TWINS))
def twin(request: pytest.FixtureRequest) -> dict[str, str]:
    return dict(TWINS[request.param])


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for a thousand and more sockets in this test process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def log_events(poold: Poold) -> list[dict[str, object]]:
    events = []
    for line in poold.log_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"event": line})
    return events


def timed_login(poold: Poold, **extra: str) -> float:
    """Seconds for one whole psycopg login and a first query."""
    start = time.monotonic()
    with psycopg.connect(poold.dsn(**extra), prepare_threshold=None, autocommit=True, connect_timeout=10) as conn:
        elapsed = time.monotonic() - start
        assert conn.execute("SELECT 1").fetchone() == (1,)
    return elapsed


def read_to_close(sock: socket.socket, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        out += chunk
    return out


# -- clients that never log in -------------------------------------------------------


def open_slowloris(port: int, n: int) -> list[socket.socket]:
    """n connections that each send one byte of a startup packet and then nothing."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"\0")
        socks.append(s)
    return socks


def test_a_thousand_slowloris_connections_leave_a_real_client_a_login_within_a_second(
    poold_factory: Callable[..., Poold], twin: dict[str, str], many_files: None
) -> None:
    poold = poold_factory(max_client_conn=1000, environ=twin)
    established = psycopg.connect(poold.dsn(), prepare_threshold=None, autocommit=True)
    attackers = open_slowloris(poold.port, 1000)
    try:
        # poold has seen them all: the next connection is the 1,002nd
        wait_until(lambda: json.loads(poold.poolctl("--json", "status").stdout).get("clients", 0) >= 1001,
                   timeout=20)
        latencies = [timed_login(poold) for _ in range(5)]
        print(f"logins beside 1,000 slowloris connections: {[round(x * 1000, 1) for x in latencies]} ms")
        assert max(latencies) < 1.0, latencies
        assert established.execute("SELECT 2").fetchone() == (2,)
        # the attacker comes back with a thousand more: still no lock-out
        attackers += open_slowloris(poold.port, 1000)
        assert timed_login(poold) < 1.0
    finally:
        for s in attackers:
            s.close()
        established.close()
    assert poold.proc.poll() is None  # type: ignore[union-attr]


# -- password guessing ---------------------------------------------------------------------


async def scram_attempt(port: int, user: str, password: str, source: str) -> str:
    """One SCRAM login from ``source``; the SQLSTATE of the answer, or "ok"."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        body = struct.pack("!I", 196608) + f"user\0{user}\0database\0app\0\0".encode()
        writer.write(struct.pack("!I", len(body) + 4) + body)

        async def message() -> tuple[bytes, bytes]:
            head = await reader.readexactly(5)
            return head[:1], await reader.readexactly(struct.unpack("!I", head[1:])[0] - 4)

        t, body = await message()
        assert t == b"R" and body[:4] == struct.pack("!I", 10), (t, body)
        client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
        first = client.get_client_first().encode()
        writer.write(b"p" + struct.pack("!I", 4 + 14 + 4 + len(first)) + b"SCRAM-SHA-256\0"
                     + struct.pack("!I", len(first)) + first)
        t, body = await message()
        assert t == b"R" and body[:4] == struct.pack("!I", 11), (t, body)
        client.set_server_first(body[4:].decode())
        final = client.get_client_final().encode()
        writer.write(b"p" + struct.pack("!I", 4 + len(final)) + final)
        t, body = await message()
        if t == b"E":
            fields = {f[:1]: f[1:] for f in body.split(b"\0") if f}
            return fields[b"C"].decode()
        return "ok"
    finally:
        writer.close()


async def guessing_run(port: int, seconds: float, concurrency: int, source: str) -> dict[str, int]:
    """Wrong passwords for "app" from ``source``, ``concurrency`` at a time, for ``seconds``."""
    results: dict[str, int] = {}
    deadline = time.monotonic() + seconds

    async def guesser() -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                outcome = await asyncio.wait_for(scram_attempt(port, "app", f"guess-{n}", source),
                                                 deadline - time.monotonic())
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                outcome = "unanswered"
            results[outcome] = results.get(outcome, 0) + 1

    await asyncio.gather(*(guesser() for _ in range(concurrency)))
    return results


def test_password_guessing_is_slowed_per_user_and_address_and_logged_in_aggregate(
    poold_factory: Callable[..., Poold], twin: dict[str, str]
) -> None:
    delay = 0.5
    poold = poold_factory(environ=twin | {"POOLD_CLIENTS__AUTH_FAILURE_DELAY": str(delay)})
    # one wrong password: refused, no sooner than the delay after the proof
    start = time.monotonic()
    assert asyncio.run(scram_attempt(poold.port, "app", "wrong", "127.0.0.3")) == "28P01"
    assert time.monotonic() - start >= delay
    start = time.monotonic()  # and over md5 (md5user's secret is an md5 hash)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(poold.dsn(user="md5user", password="wrong"), connect_timeout=10)
    assert time.monotonic() - start >= delay
    # a guessing run, 20 connections at a time from one address
    seconds = 4.0
    results = asyncio.run(guessing_run(poold.port, seconds, 20, "127.0.0.2"))
    print(f"guessing run, {seconds} s, 20 at a time: {results}")
    refused = results.get("28P01", 0)
    assert results.get("ok", 0) == 0
    # one proof of (app, 127.0.0.2) checked per delay, however many connections ask
    assert 1 <= refused <= seconds / delay + 2, results
    # logged in aggregate, not a line per attempt
    wait_until(lambda: any(e.get("event") == "auth_failures" for e in log_events(poold)), timeout=15)
    lines = [e for e in log_events(poold) if "28P01" in json.dumps(e) or "auth_fail" in str(e.get("event"))]
    assert len(lines) <= 5, lines


def test_real_logins_stay_fast_during_a_guessing_run(
    poold_factory: Callable[..., Poold], twin: dict[str, str]
) -> None:
    poold = poold_factory(environ=twin | {"POOLD_CLIENTS__AUTH_FAILURE_DELAY": "0.5"})
    quiet = [timed_login(poold) for _ in range(10)]
    latencies: list[float] = []

    async def run() -> dict[str, int]:
        guessing = asyncio.ensure_future(guessing_run(poold.port, 4.0, 50, "127.0.0.2"))
        await asyncio.sleep(0.5)  # the run is under way
        for _ in range(10):
            latencies.append(await asyncio.to_thread(timed_login, poold))
        return await guessing

    results = asyncio.run(run())
    ms = [round(x * 1000, 1) for x in latencies]
    print(f"real logins: quiet {[round(x * 1000, 1) for x in quiet]} ms; during a guessing run {ms} ms; "
          f"the run: {results}")
    assert max(latencies) < 1.0, ms


# -- clients that go away before their startup packet -------------------------------------------


def test_terminate_before_the_startup_packet_is_closed_without_a_word(
    poold_factory: Callable[..., Poold], twin: dict[str, str]
) -> None:
    """node-postgres' connect-then-end: PostgreSQL reads "invalid length of startup
    packet", logs it, and closes without a word."""
    poold = poold_factory(environ=twin)
    for payload in (b"X\0\0\0\4", struct.pack("!I", 3) + b"\0" * 8, struct.pack("!i", -1) + b"\0" * 8):
        with socket.create_connection(("127.0.0.1", poold.port), timeout=5) as s:
            s.sendall(payload)
            assert read_to_close(s) == b"", payload
    assert timed_login(poold) < 10
    assert not [e for e in log_events(poold) if e.get("sqlstate") in ("54000", "08P01")]


def test_clients_that_send_nothing_or_part_of_a_startup_packet_cost_a_log_line_at_most(
    poold_factory: Callable[..., Poold], twin: dict[str, str]
) -> None:
    poold = poold_factory(environ=twin)
    timed_login(poold)
    before = len(log_events(poold))
    for _ in range(10):
        socket.create_connection(("127.0.0.1", poold.port), timeout=5).close()
    partial = []
    for _ in range(10):
        s = socket.create_connection(("127.0.0.1", poold.port), timeout=5)
        s.sendall(struct.pack("!I", 40) + struct.pack("!I", 196608) + b"user\0ap")
        partial.append(s)
    raw = RawClient(poold.port)  # a partial startup packet, then EOF, read for an answer
    raw.sock.sendall(struct.pack("!I", 40) + b"\0\3")
    raw.sock.shutdown(socket.SHUT_WR)
    assert read_to_close(raw.sock) == b""
    raw.close()
    for s in partial:
        s.close()
    wait_until(lambda: json.loads(poold.poolctl("--json", "status").stdout).get("clients") == 0)
    timed_login(poold)
    new = log_events(poold)[before:]
    noise = [e for e in new if e.get("event") not in ("client_session_end",)]
    assert len(noise) <= 11, noise  # at most a line per partial startup packet, none per empty connection
    assert not [e for e in new if "sqlstate" in e or "Traceback" in str(e) or e.get("level") == "error"], new


# -- the file-descriptor limit ---------------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_at_the_descriptor_limit_new_clients_get_53300(
    poold_factory: Callable[..., Poold], twin: dict[str, str]
) -> None:
    poold = poold_factory(environ=twin)
    pid = poold.proc.pid  # type: ignore[union-attr]
    established = psycopg.connect(poold.dsn(), prepare_threshold=None, autocommit=True)
    limit = open_fds(pid) + 5
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    held: list[RawClient] = []
    answers: list[str] = []
    try:
        for _ in range(12):  # bounded: more than the 5 descriptors left
            raw = RawClient(poold.port, timeout=3)
            held.append(raw)
            raw.startup()
            try:
                t, body = raw.read_message()
            except TimeoutError:
                answers.append("no answer")
                continue
            except ConnectionError:
                answers.append("closed")
                continue
            if t == b"E":
                fields = {chr(f[0]): f[1:].decode() for f in body.split(b"\0") if f}
                answers.append(fields["C"])
            else:
                answers.append(t.decode())
        print(f"past the descriptor limit ({limit}): {answers}")
        assert "no answer" not in answers and "closed" not in answers, answers
        assert answers.count("53300") >= 5, answers
        assert established.execute("SELECT 3").fetchone() == (3,)
    finally:
        for raw in held:
            raw.close()
        established.close()
    # the descriptors back: a client logs in again
    wait_until(lambda: open_fds(pid) < limit - 3)
    assert timed_login(poold) < 10
    assert poold.proc.poll() is None  # type: ignore[union-attr]


