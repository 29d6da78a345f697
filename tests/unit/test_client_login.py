"""A ClientSession's login, driven in-process: the steps that wait for
something else (a pool being opened, a session-mode server connection), a client
that leaves meanwhile, and the login_timeout sweep. The wire-level logins are in tests/e2e."""

from __future__ import annotations

import asyncio
import struct
import types
from pathlib import Path
from typing import Any

from poold.client import ClientSession
from poold.config import build_config
from poold.protocol import messages
from poold.relay import ServerLink
from poold.runtime import Runtime
from poold.spellings import Spellings

from .fake_session import Transport, open_pool

DEFAULTS = {"server_version": "15.0", "client_encoding": "UTF8", "DateStyle": "ISO, MDY"}


def runtime() -> Runtime:
    raw = {"auth": {"type": "trust"}, "clients": {"login_timeout": 5.0}, "databases": {"app": {"dsn": "dbname=app"}}}
    return Runtime(build_config(raw, Path("/nonexistent/poold.toml")), {})


def startup_packet() -> bytes:
    body = struct.pack("!I", messages.PROTOCOL_3_0) + b"user\0app\0database\0app\0\0"
    return struct.pack("!I", len(body) + 4) + body


def types_of(data: bytes) -> list[bytes]:
    out = []
    while data:
        out.append(data[:1])
        data = data[1 + struct.unpack_from("!I", data, 1)[0]:]
    return out


async def login_waiting_for_its_pool() -> tuple[Runtime, ClientSession, Transport, Any, asyncio.Event]:
    rt = runtime()
    pool, opened = open_pool(DEFAULTS), asyncio.Event()

    async def get(db: object, user: str, users: object) -> Any:
        await opened.wait()  # the pool is being opened: the first login for it
        return pool

    rt.pools.get = get  # type: ignore[method-assign]
    client, transport = ClientSession(rt), Transport()
    client.connection_made(transport)  # type: ignore[arg-type]
    client.data_received(startup_packet())
    await asyncio.sleep(0)
    assert not client.relaying and client in rt.logins  # waiting for the pool
    return rt, client, transport, pool, opened


def test_login_resumes_when_its_pool_is_open() -> None:
    async def main() -> None:
        rt, client, transport, pool, opened = await login_waiting_for_its_pool()
        opened.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert client.relaying and client.pool is pool and pool.clients == 1
        kinds = types_of(transport.written)
        assert kinds[0] == b"R" and kinds[-2:] == [b"K", b"Z"] and kinds.count(b"S") == len(DEFAULTS)
        assert not rt.logins and list(rt.by_key.values()) == [client]

    asyncio.run(main())


def test_a_client_that_leaves_while_its_pool_opens_leaves_nothing_behind() -> None:
    async def main() -> None:
        rt, client, transport, pool, opened = await login_waiting_for_its_pool()
        transport.closed = True
        client.connection_lost(None)
        opened.set()  # the pool open finishes for the next login; this one is over
        for _ in range(5):
            await asyncio.sleep(0)
        assert not client.relaying and client.pool is None and pool.clients == 0
        assert transport.written == b"" and not rt.logins and not rt.by_key and client not in rt.clients

    asyncio.run(main())


def test_login_timeout_is_swept() -> None:
    async def main() -> None:
        rt, client, transport, pool, opened = await login_waiting_for_its_pool()
        rt.expire_logins(rt.logins[client] + 4.0)  # not yet: login_timeout is 5 s
        assert not transport.closed
        rt.expire_logins(rt.logins[client] + 5.0)
        assert transport.closed and b"C08P01\0" in transport.written and b"login timeout" in transport.written
        assert not rt.logins
        opened.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not client.relaying and pool.clients == 0  # the timed-out login did not go on

    asyncio.run(main())


class SessionPool:
    """A session-mode pool with no free server connection: a login queues for one."""

    def __init__(self) -> None:
        self.clients = 0
        self.settings = types.SimpleNamespace(mode="session")
        self.defaults = DEFAULTS
        self.status_messages = {k: messages.parameter_status(k, v) for k, v in DEFAULTS.items()}
        self.stats = types.SimpleNamespace(wait=types.SimpleNamespace(observe=lambda seconds: None))
        self.waiters: list[Any] = []
        self.released: list[ServerLink] = []
        self.spellings = Spellings()  # a login with no settings of its own asks nothing

    def acquire(self, waiter: Any) -> None:
        self.waiters.append(waiter)

    def cancel_wait(self, waiter: Any) -> None:
        self.waiters.remove(waiter)

    def release(self, link: ServerLink) -> None:
        self.released.append(link)


async def login_waiting_for_its_server() -> tuple[Runtime, ClientSession, Transport, SessionPool, ServerLink]:
    rt = runtime()
    pool = SessionPool()
    rt.pools.pools[("app", "app")] = pool  # type: ignore[assignment]
    client, transport = ClientSession(rt), Transport()
    client.connection_made(transport)  # type: ignore[arg-type]
    client.data_received(startup_packet())
    await asyncio.sleep(0)
    assert not client.relaying and len(pool.waiters) == 1 and not transport.written.endswith(b"Z\0\0\0\x05I")
    link = ServerLink(lambda link: None)
    link.pid = 4242
    return rt, client, transport, pool, link


def test_a_session_mode_login_holds_its_server_and_is_told_its_pid() -> None:
    async def main() -> None:
        rt, client, transport, pool, link = await login_waiting_for_its_server()
        pool.waiters[0].on_server(link)
        for _ in range(5):
            await asyncio.sleep(0)
        assert client.relaying and client.session_mode and client.server is link and link.owner is client
        assert types_of(transport.written)[-2:] == [b"K", b"Z"]
        pid, secret = struct.unpack("!ii", transport.written[-19:-6][5:])
        assert pid == 4242 and client.key == (pid, secret) and rt.by_key[pid, secret] is client

    asyncio.run(main())


def test_a_session_mode_login_that_ends_while_waiting_leaves_the_queue() -> None:
    async def main() -> None:
        rt, client, transport, pool, link = await login_waiting_for_its_server()
        transport.closed = True
        client.connection_lost(None)
        assert pool.waiters == [] and pool.released == [] and not rt.by_key and not rt.logins

    asyncio.run(main())


def test_a_server_that_comes_as_the_login_ends_goes_back() -> None:
    async def main() -> None:
        rt, client, transport, pool, link = await login_waiting_for_its_server()
        pool.waiters[0].on_server(link)  # the login resumes at the loop's next turn: too late
        transport.closed = True
        client.connection_lost(None)
        for _ in range(5):
            await asyncio.sleep(0)
        assert pool.released == [link] and not client.relaying and link.owner is None and not rt.by_key

    asyncio.run(main())
