"""The C sockets (_sockio.c) behave as the event loop's transports do.

Real loopback sockets, a real event loop (uvloop, as the daemon runs, and the
standard library's), a plain client on the other end. The daemon's own traffic
through them is the e2e tier's; here are the transport's edges: flow control,
close with bytes still queued, abort, a reset, pause_reading, a failing protocol,
and a server connection's duplicated socket (sockio.adopt).
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from poold import sockio
from poold.sockio import NativeServer, bind_tcp

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[Any]]], Any]:
    assert sockio.native is not None, "poold._sockio was not built (is a C compiler installed?)"

    def run(main: Callable[[], Awaitable[Any]]) -> Any:
        loop = LOOPS[request.param]()
        try:
            return loop.run_until_complete(asyncio.wait_for(main(), 20))
        finally:
            loop.close()

    return run


class Recorder(asyncio.Protocol):
    """Keeps what the transport did to it; ``on_data`` answers each chunk."""

    def __init__(self, on_data: Callable[[Recorder, bytes], None] | None = None) -> None:
        self.events: list[str] = []
        self.data = b""
        self.transport: Any = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.made = asyncio.Event()
        self.on_data = on_data

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append("made")
        self.made.set()

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self) -> bool:
        self.events.append("eof")
        return False

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


async def serve(protocols: list[Recorder], on_data: Callable[[Recorder, bytes], None] | None = None) -> NativeServer:
    def factory() -> Recorder:
        protocols.append(Recorder(on_data))
        return protocols[-1]

    return NativeServer(bind_tcp(["127.0.0.1"], 0, 16), factory)


async def connect(server: NativeServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*server.sockets[0].getsockname())


def test_accepts_reads_writes_and_closes(run: Callable[..., Any]) -> None:
    async def main() -> None:
        protocols: list[Recorder] = []
        server = await serve(protocols, lambda p, d: p.transport.write(d.upper()))
        reader, writer = await connect(server)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"HELLO"
        (p,) = protocols
        assert type(p.transport).__name__ == "SocketTransport"
        assert p.transport.get_extra_info("peername") == writer.get_extra_info("sockname")
        assert p.transport.get_extra_info("sockname") == server.sockets[0].getsockname()
        assert p.transport.get_extra_info("socket", "x") == "x"
        p.transport.close()
        assert p.transport.is_closing()
        assert await reader.read() == b""  # EOF
        assert await p.lost is None
        assert p.events == ["made", "lost"]
        p.transport.write(b"after")  # ignored, as asyncio does after the connection is lost
        writer.close()
        server.close()

    run(main)


def test_a_client_that_closes_is_lost_after_eof(run: Callable[..., Any]) -> None:
    async def main() -> None:
        protocols: list[Recorder] = []
        server = await serve(protocols)
        _, writer = await connect(server)
        writer.write(b"bye")
        writer.close()
        while not protocols:
            await asyncio.sleep(0.01)
        assert await protocols[0].lost is None
        assert protocols[0].data == b"bye"
        assert protocols[0].events == ["made", "eof", "lost"]
        server.close()

    run(main)


def test_flow_control_pauses_the_writer_and_close_flushes_first(run: Callable[..., Any]) -> None:
    payload = bytes(range(256)) * 131072  # 32 MiB: far more than loopback socket buffers take

    async def main() -> None:
        protocols: list[Recorder] = []
        server = await serve(protocols)
        reader, writer = await connect(server)
        (p,) = [await wait_made(protocols)]
        p.transport.write(payload)
        assert p.transport.get_write_buffer_size() > 64 * 1024
        assert p.events == ["made", "pause_writing"]
        p.transport.close()  # with megabytes still queued: they go out first
        assert p.transport.is_closing() and p.events == ["made", "pause_writing"]
        received = await reader.read()  # to EOF
        assert received == payload
        assert await p.lost is None
        assert p.events == ["made", "pause_writing", "resume_writing", "lost"]
        writer.close()
        server.close()

    run(main)


def test_abort_drops_what_is_queued(run: Callable[..., Any]) -> None:
    async def main() -> None:
        protocols: list[Recorder] = []
        server = await serve(protocols)
        reader, writer = await connect(server)
        p = await wait_made(protocols)
        p.transport.write(b"x" * (8 << 20))
        p.transport.abort()
        assert p.transport.get_write_buffer_size() == 0
        assert await p.lost is None
        received = 0
        try:
            while chunk := await reader.read(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < 8 << 20
        writer.close()
        server.close()

    run(main)


def test_a_reset_is_lost_with_its_error(run: Callable[..., Any]) -> None:
    async def main() -> None:
        protocols: list[Recorder] = []
        server = await serve(protocols)
        sock = socket.create_connection(server.sockets[0].getsockname())
        p = await wait_made(protocols)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
        assert isinstance(await p.lost, ConnectionResetError)
        server.close()

    run(main)


def test_pause_reading_holds_the_bytes_until_resumed(run: Callable[..., Any]) -> None:
    async def main() -> None:
        protocols: list[Recorder] = []
        server = await serve(protocols)
        _, writer = await connect(server)
        p = await wait_made(protocols)
        p.transport.pause_reading()
        assert not p.transport.is_reading()
        writer.write(b"held")
        await writer.drain()
        await asyncio.sleep(0.1)
        assert p.data == b""
        p.transport.resume_reading()
        for _ in range(100):
            if p.data:
                break
            await asyncio.sleep(0.01)
        assert p.data == b"held"
        writer.close()
        await p.lost
        server.close()

    run(main)


def test_a_failing_protocol_is_reported_and_its_connection_aborted(run: Callable[..., Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        protocols: list[Recorder] = []

        def fail(p: Recorder, data: bytes) -> None:
            raise ValueError("broken protocol")

        server = await serve(protocols, fail)
        reader, writer = await connect(server)
        writer.write(b"boom")
        assert await reader.read() == b""
        p = protocols[0]
        exc = await p.lost
        assert isinstance(exc, ValueError)
        assert [c["exception"] for c in reported] == [exc]
        assert reported[0]["protocol"] is p
        # the listener goes on accepting
        reader2, writer2 = await connect(server)
        assert (await wait_made(protocols, 2)).events == ["made"]
        writer.close()
        writer2.close()
        server.close()

    run(main)


def test_a_closed_server_accepts_no_more(run: Callable[..., Any]) -> None:
    async def main() -> None:
        protocols: list[Recorder] = []
        server = await serve(protocols)
        address = server.sockets[0].getsockname()
        server.close()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*address)
        assert protocols == []

    run(main)


async def wait_made(protocols: list[Recorder], count: int = 1) -> Recorder:
    for _ in range(500):
        if len(protocols) >= count:
            await protocols[count - 1].made.wait()
            return protocols[count - 1]
        await asyncio.sleep(0.01)
    raise AssertionError("no connection was accepted")


def test_an_adopted_duplicate_leaves_the_set_when_closed_and_the_original_stays(run: Callable[..., Any]) -> None:
    """A server connection's socket is a dup of psycopg's: closing the transport must
    take it out of the epoll set (closing the dup alone would not) and leave the
    original to its owner."""

    async def main() -> None:
        ours, peer = socket.socketpair()
        dup = socket.socket(fileno=os.dup(ours.fileno()))
        dup.setblocking(False)
        transport, p = sockio.adopt(dup, Recorder)
        assert dup.fileno() == -1 and p.events == ["made"]  # the transport owns the dup now
        peer.sendall(b"ping")
        for _ in range(100):
            if p.data:
                break
            await asyncio.sleep(0.01)
        assert p.data == b"ping"
        transport.write(b"pong")
        assert peer.recv(4) == b"pong"
        transport.close()
        assert await p.lost is None
        peer.sendall(b"more")
        await asyncio.sleep(0.1)  # the loop runs: nothing reads the original's bytes now
        assert p.data == b"ping"
        epoll_set = sockio._poller(asyncio.get_running_loop()).fileno()
        assert select.select([epoll_set], [], [], 0)[0] == []  # the set no longer watches it
        ours.settimeout(5)
        assert ours.recv(4) == b"more"
        ours.close()
        peer.close()

    run(main)


async def serve_event_loop(protocols: list[Recorder]) -> asyncio.Server:
    """The same on the event loop's own transports: the reference twin."""

    def factory() -> Recorder:
        protocols.append(Recorder())
        return protocols[-1]

    return await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)


SERVE = {"c": serve, "event_loop": serve_event_loop}


@pytest.mark.parametrize("kind", sorted(SERVE))
def test_write_eof_sends_what_is_queued_then_eof_and_reading_goes_on(run: Callable[..., Any], kind: str) -> None:
    payload = bytes(range(256)) * 32768  # 8 MiB: queued in the transport, the EOF after it

    async def main() -> None:
        protocols: list[Recorder] = []
        server = await SERVE[kind](protocols)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        p = await wait_made(protocols)
        assert p.transport.can_write_eof()
        p.transport.write(payload)
        p.transport.write_eof()
        assert not p.transport.is_closing()
        with pytest.raises(RuntimeError):
            p.transport.write(b"more")
        assert await reader.read() == payload  # then EOF
        writer.write(b"still read")
        while p.data != b"still read":
            await asyncio.sleep(0.01)
        writer.close()
        assert await p.lost is None
        assert p.events[0] == "made" and p.events[-2:] == ["eof", "lost"]
        server.close()

    run(main)


@pytest.mark.parametrize("kind", sorted(SERVE))
@pytest.mark.parametrize("client_closes", [True, False])
def test_linger_drops_what_the_client_still_sends_and_never_resets(
    run: Callable[..., Any], kind: str, client_closes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sockio.linger: the client reads the error, then EOF; what it sends meanwhile is
    read and dropped (no reset), until its EOF or LINGER; the protocol is lost at once."""
    monkeypatch.setattr(sockio, "LINGER", 0.3)

    async def main() -> None:
        protocols: list[Recorder] = []
        server = await SERVE[kind](protocols)
        sock = socket.create_connection(server.sockets[0].getsockname())
        p = await wait_made(protocols)
        lingering: set[Any] = set()
        p.transport.write(b"the error")
        ended = sockio.linger(p.transport, p, lingering)
        assert ended.is_closing() and len(lingering) == 1
        ended.write(b"dropped")
        assert await p.lost is None  # soon, as after a close
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, sock.recv, 100) == b"the error"
        assert await loop.run_in_executor(None, sock.recv, 100) == b""  # EOF
        for _ in range(3):  # the requests of a client that has not read the error yet
            sock.sendall(b"Q" * 70000)  # more than a socket buffer: read here, or the send blocks
            await asyncio.sleep(0.02)
        assert p.data == b"" and lingering  # read by the lingering close, not the protocol
        if client_closes:
            sock.close()
        while lingering:  # the client's EOF, or LINGER
            await asyncio.sleep(0.01)
        if not client_closes:
            sock.sendall(b"Q")  # the first send after the close draws the reset, at the latest the second
            with pytest.raises((BrokenPipeError, ConnectionResetError)):
                await asyncio.sleep(0.05)
                sock.sendall(b"Q")
            sock.close()
        server.close()

    run(main)
