"""Hostile input on the client port: each gets a FATAL with a SQLSTATE or a closed
socket, while a healthy client alongside keeps working and the daemon lives.

Loopback only; every loop here is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import Poold, RawClient, wait_until


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def answer(port: int, payload: bytes, timeout: float = 5) -> bytes:
    """Send payload, then read until poold closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            return b""
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            out += chunk
        return out


def sqlstate(reply: bytes) -> str | None:
    if reply[:1] != b"E":
        return None
    fields = {f[:1]: f[1:] for f in reply[5:].split(b"\0") if f}
    return fields.get(b"C", b"").decode()


def startup(params: bytes, version: int = 196608) -> bytes:
    body = struct.pack("!I", version) + params
    return struct.pack("!I", len(body) + 4) + body


CASES = {
    # an invalid startup packet length: closed without a word, as PostgreSQL does
    "negative startup length": (struct.pack("!i", -1) + b"\0" * 8, None),
    "tiny startup length": (struct.pack("!I", 3) + b"\0" * 8, None),
    "huge startup length": (struct.pack("!I", 0x7FFFFFFF) + b"\0" * 8, None),
    "protocol 2.0": (startup(b"user\0app\0\0", version=2 << 16), "0A000"),
    "protocol 9.9": (startup(b"user\0app\0\0", version=(9 << 16) | 9), "0A000"),
    "no user": (startup(b"database\0app\0\0"), "28000"),
    "odd strings": (startup(b"user\0\0"), "08P01"),
    "no terminator": (startup(b"user\0app"), "08P01"),
    "replication": (startup(b"user\0app\0replication\0true\0\0"), "0A000"),
    "bad utf-8": (startup(b"user\0\xff\xfe\0\0"), "08P01"),
    "options postgres cannot read": (startup(b"user\0app\0database\0app\0options\0-x\0\0"), "42601"),
    "long cancel request": (struct.pack("!III", 20, 80877102, 1) + b"\0" * 8, "08P01"),
}


@pytest.fixture
def poold(poold_factory: Callable[..., Poold]) -> Poold:
    return poold_factory(mode="transaction", max_size=2, min_size=1, login_timeout=2, auth_type="md5")


def test_malformed_startup_packets_get_a_fatal_with_sqlstate(poold: Poold) -> None:
    for name, (payload, expected) in CASES.items():
        reply = answer(poold.port, payload)
        assert sqlstate(reply) == expected, (name, reply[:80])
        assert (b"FATAL" in reply) == (expected is not None), name
    assert poold.proc.poll() is None  # type: ignore[union-attr]


def test_bad_frames_after_login(poold: Poold) -> None:
    def logged_in() -> RawClient:
        raw = RawClient(poold.port)
        raw.startup()
        t, body = raw.read_message()
        assert t == b"R"
        import hashlib

        inner = hashlib.md5(b"app-secret-pwapp").hexdigest()
        raw.send(b"p", b"md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest().encode() + b"\0")
        while raw.read_message()[0] != b"Z":
            pass
        return raw

    for frame, expected in (
        (b"Q" + struct.pack("!I", 2), "08P01"),  # length below 4
        (b"Q" + struct.pack("!I", 0x7FFFFFF0), "54000"),  # over max_message_size
        (b"d" + struct.pack("!i", -5), "08P01"),  # negative length
    ):
        raw = logged_in()
        raw.sock.sendall(frame)
        err = raw.read_error()
        assert (err["S"], err["C"]) == ("FATAL", expected), frame
        raw.close()
    # a truncated frame, then the client goes away: nothing is leaked to the next client
    raw = logged_in()
    raw.sock.sendall(b"Q" + struct.pack("!I", 100) + b"SELECT")
    raw.close()
    with psycopg.connect(poold.dsn(), prepare_threshold=None, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_clients_that_never_finish_startup_are_closed_by_login_timeout(poold: Poold) -> None:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", poold.port), timeout=10) as s:
        s.sendall(struct.pack("!I", 100))  # a startup length, and then nothing
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert sqlstate(data) == "08P01" and b"login timeout" in data
    assert 1.5 < time.monotonic() - start < 6


def test_random_bytes_flood_and_a_healthy_client_alongside(poold: Poold) -> None:
    rng = random.Random(1234)
    pid = poold.proc.pid  # type: ignore[union-attr]
    healthy = psycopg.connect(poold.dsn(), prepare_threshold=None, autocommit=True)
    rss_start = rss_kib(pid)
    answers = {"fatal": 0, "closed": 0}
    for i in range(300):  # bounded: 300 garbage connections
        payload = rng.randbytes(rng.randint(1, 300))
        reply = answer(poold.port, payload, timeout=3)
        answers["fatal" if sqlstate(reply) else "closed"] += 1
        if i % 50 == 0:
            assert healthy.execute("SELECT %s::int", (i,)).fetchone() == (i,)

    async def flood(n: int) -> int:
        async def one() -> None:
            try:
                _r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", poold.port), 10)
                w.close()
            except (TimeoutError, OSError):
                pass

        sem = asyncio.Semaphore(200)

        async def bounded() -> None:
            async with sem:
                await one()

        await asyncio.gather(*(bounded() for _ in range(n)))
        return n

    assert asyncio.run(flood(2000)) == 2000  # 2,000 connects, opened and dropped
    assert healthy.execute("SELECT 'still here'").fetchone() == ("still here",)
    wait_until(lambda: poold.poolctl("--json", "status").returncode == 0)
    assert poold.proc.poll() is None  # type: ignore[union-attr]
    growth = rss_kib(pid) - rss_start
    print(f"hostile input: {answers}, RSS growth {growth} KiB after 300 garbage + 2000 connects")
    assert growth < 50 * 1024  # bounded: well under 50 MiB
    healthy.close()
    assert os.path.exists(f"/proc/{pid}")
