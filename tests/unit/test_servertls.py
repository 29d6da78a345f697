"""A TLS server leg's transport, both twins, against a real TLS peer.

The session is made the way libpq makes its own: an ``SSL*`` of the libssl that
psycopg's libpq was linked with (``servertls.functions``), on one end of a socket
pair, its handshake done before the transport takes it; the transport watches a
duplicate of the descriptor, as poold does with libpq's. The other end is a TLS
server of Python's ``ssl`` module, in a thread. What is checked: bytes arrive
whole and in order when the protocol pauses reading after every chunk (so
records wait inside OpenSSL, read ahead, while the socket is quiet), when the
transport writes more than the socket takes (partial writes, WANT_WRITE), the
peer's close, and that libpq gets its session back with the modes and the
read-ahead it had.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import random
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg  # noqa: F401  # loads the libpq (and libssl) poold uses
import pytest
import trustme
import uvloop

from poold import backend, servertls, sockio

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
TWINS = ("c", "python")


class ClientSsl:
    """A client SSL* of libpq's libssl on ``fd``, handshaken, as libpq leaves one."""

    sock: socket.socket

    def __init__(self, fd: int) -> None:
        path = backend.libpq_path()
        assert path is not None, "the libpq psycopg uses was not found"
        self.lib = servertls.functions(path)
        raw = ctypes.CDLL(path)
        p = ctypes.c_void_p
        for name, argtypes, restype in (("TLS_client_method", (), p), ("SSL_CTX_new", (p,), p),
                                        ("SSL_new", (p,), p), ("SSL_set_fd", (p, ctypes.c_int), ctypes.c_int),
                                        ("SSL_connect", (p,), ctypes.c_int), ("SSL_free", (p,), None),
                                        ("SSL_CTX_free", (p,), None)):
            fn = getattr(raw, name)
            fn.argtypes, fn.restype = argtypes, restype
        self.raw = raw
        self.ctx = raw.SSL_CTX_new(raw.TLS_client_method())
        self.ssl = raw.SSL_new(self.ctx)
        assert raw.SSL_set_fd(self.ssl, fd) == 1
        while True:
            self.lib.ERR_clear_error()
            rc = raw.SSL_connect(self.ssl)
            if rc == 1:
                break
            err = self.lib.SSL_get_error(self.ssl, rc)
            assert err in (servertls.SSL_ERROR_WANT_READ, servertls.SSL_ERROR_WANT_WRITE), self.lib.error_text()
            select.select([fd] if err == servertls.SSL_ERROR_WANT_READ else [], [fd] if err != 2 else [], [], 5)

    def state(self) -> tuple[int, int]:
        """(mode, read_ahead), as libpq would find them."""
        return self.lib.SSL_ctrl(self.ssl, servertls.SSL_CTRL_MODE, 0, None), self.lib.SSL_get_read_ahead(self.ssl)

    def free(self) -> None:
        self.raw.SSL_free(self.ssl)
        self.raw.SSL_CTX_free(self.ctx)


@pytest.fixture(scope="module")
def server_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    ca = trustme.CA()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(ctx)
    return ctx


class Peer:
    """The TLS server at the other end, in a thread: ``script(tls_socket)`` runs there."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, script: Callable[[ssl.SSLSocket], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                with ctx.wrap_socket(sock, server_side=True) as tls:
                    self.result = script(tls)
            except BaseException as exc:  # handed to the test
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> Any:
        self.thread.join(20)
        assert not self.thread.is_alive(), "the TLS peer did not finish"
        if self.error is not None:
            raise self.error
        return self.result


class Collector(asyncio.Protocol):
    """Pauses reading after every chunk and resumes on the next loop turn: whatever
    OpenSSL holds then must still arrive."""

    def __init__(self, expected: int, pause: bool) -> None:
        self.data = bytearray()
        self.expected, self.pause = expected, pause
        self.transport: Any = None
        self.done = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.writing_paused = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.expected and not self.done.done():
            self.done.set_result(None)
        if self.pause:
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self.transport.resume_reading)

    def pause_writing(self) -> None:
        self.writing_paused += 1

    def resume_writing(self) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.fixture(params=[(twin, loop) for twin in TWINS for loop in sorted(LOOPS)], ids=lambda p: "-".join(p))
def leg(request: pytest.FixtureRequest, server_context: ssl.SSLContext) -> Iterator[Callable[..., Any]]:
    """``leg(script, main)``: a handshaken client session, its peer running ``script``,
    and ``main(adopt, session)`` on a fresh loop, where ``adopt(factory)`` puts the
    twin's transport on a duplicate of the session's descriptor."""
    twin, loop_name = request.param
    if twin == "c":
        assert sockio.native is not None, "poold._sockio was not built"
    sessions: list[ClientSsl] = []
    socks: list[socket.socket] = []

    def run(script: Callable[[ssl.SSLSocket], Any], main: Callable[..., Any], buffers: int = 16 * 1024) -> Any:
        mine, theirs = socket.socketpair()
        socks.extend((mine, theirs))
        for s in (mine, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
        peer = Peer(theirs, server_context, script)
        mine.setblocking(False)
        session = ClientSsl(mine.fileno())
        session.sock = mine
        sessions.append(session)

        def adopt(factory: Callable[[], asyncio.Protocol]) -> tuple[Any, Any]:
            dup = socket.socket(fileno=os.dup(mine.fileno()))
            dup.setblocking(False)
            ssl_ptr = int(session.ssl)
            if twin == "c":
                return sockio.adopt(dup, factory, tls=(ssl_ptr, session.lib.addresses()))
            return servertls.adopt(dup, ssl_ptr, session.lib, factory)

        loop = LOOPS[loop_name]()
        try:
            result = loop.run_until_complete(asyncio.wait_for(main(adopt, session), 20))
        finally:
            loop.close()
        return result, peer.join()

    yield run
    for session in sessions:
        session.free()
    for s in socks:
        s.close()


def payload(n: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    return rnd.randbytes(n)


def test_bytes_arrive_whole_while_reading_pauses_after_every_chunk(leg: Callable[..., Any]) -> None:
    data = payload(3 * 1024 * 1024 + 17, 1)

    def script(tls: ssl.SSLSocket) -> None:
        rnd = random.Random(2)
        i = 0
        while i < len(data):  # records of every size, 1 byte to 16 KB
            n = rnd.choice((1, 5, 100, 4000, 16384, 20000))
            tls.sendall(data[i:i + n])
            i += n
        tls.recv(1)  # until the client has it all

    async def main(adopt: Callable[..., Any], session: ClientSsl) -> bytes:
        before = session.state()
        transport, protocol = adopt(lambda: Collector(len(data), pause=True))
        await protocol.done
        transport.write(b"k")
        transport.close()
        await protocol.lost
        assert session.state() == before  # libpq's modes and read-ahead, given back
        return bytes(protocol.data)

    got, _ = leg(script, main)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_records_read_ahead_arrive_when_reading_pauses_after_every_chunk(leg: Callable[..., Any]) -> None:
    """Everything already in the socket, in records of 1,000 bytes that OpenSSL reads
    many at a time (read-ahead), the protocol pausing after each chunk: every byte
    arrives, once the socket has nothing more to announce too. (Bytes OpenSSL still
    holds at a pause are read at resume_reading, SSL_has_pending; with OpenSSL 3.5's
    read-ahead, which ends a read on a record boundary, a read stops before the
    256 KiB buffer fills, so no test here reaches that case.)"""
    data = payload(servertls.READ_SIZE + 1000, 4)

    def script(tls: ssl.SSLSocket) -> None:
        for i in range(0, len(data), 1000):  # records that straddle read-ahead buffers: reading chains on
            tls.sendall(data[i:i + 1000])
        tls.recv(1)

    async def main(adopt: Callable[..., Any], session: ClientSsl) -> bytes:
        def arrived() -> int:
            try:
                return len(session.sock.recv(1 << 21, socket.MSG_PEEK))
            except BlockingIOError:
                return 0

        while arrived() < len(data) + (len(data) + 999) // 1000 * 22:  # all of it, sealed (22 bytes a record)
            await asyncio.sleep(0.01)
        transport, protocol = adopt(lambda: Collector(len(data), pause=True))
        await protocol.done
        transport.write(b"k")
        transport.close()
        await protocol.lost
        return bytes(protocol.data)

    got, _ = leg(script, main, buffers=4 * 1024 * 1024)
    assert got == data


def test_writes_larger_than_the_socket_takes(leg: Callable[..., Any]) -> None:
    data = payload(4 * 1024 * 1024 + 3, 3)

    def script(tls: ssl.SSLSocket) -> bytes:
        got = bytearray()
        while len(got) < len(data):
            chunk = tls.recv(65536)
            if not chunk:
                break
            got += chunk
        tls.sendall(b"done")
        return bytes(got)

    async def main(adopt: Callable[..., Any], session: ClientSsl) -> int:
        transport, protocol = adopt(lambda: Collector(4, pause=False))
        for i in range(0, len(data), 300_000):  # more than the socket buffer each time
            transport.write(data[i:i + 300_000])
        assert transport.get_write_buffer_size() > 0  # the socket did not take it all at once
        await protocol.done
        assert bytes(protocol.data) == b"done"
        transport.close()
        await protocol.lost
        return int(protocol.writing_paused)

    paused, sent = leg(script, main)
    assert paused >= 1  # flow control told the protocol
    assert hashlib.sha256(sent).digest() == hashlib.sha256(data).digest()


def test_the_peers_close_ends_the_connection(leg: Callable[..., Any]) -> None:
    def script(tls: ssl.SSLSocket) -> None:
        tls.sendall(b"last words")
        tls.settimeout(1)
        try:
            tls.unwrap()  # close_notify; then it waits for one in answer, which poold leaves to libpq
        except (TimeoutError, OSError):
            pass

    async def main(adopt: Callable[..., Any], session: ClientSsl) -> tuple[bytes, Exception | None]:
        transport, protocol = adopt(lambda: Collector(10, pause=False))
        exc = await protocol.lost
        assert transport.is_closing()
        return bytes(protocol.data), exc

    (data, exc), _ = leg(script, main)
    assert data == b"last words" and exc is None


def test_addresses_are_the_same_functions_for_both_twins() -> None:
    path = backend.libpq_path()
    assert path is not None and Path(path).exists()
    lib = servertls.functions(path)
    addresses = lib.addresses()
    assert len(addresses) == 11 and all(addresses)
    # the libssl libpq was linked with: psycopg's wheel brings its own, apart from Python's ssl module's
    if "psycopg_binary" in path:
        with open("/proc/self/maps") as maps:
            libssl = {line.split()[-1] for line in maps if "libssl" in line}
        ours = next(p for p in libssl if "psycopg_binary" in p)
        base = min(int(line.split("-")[0], 16) for line in open("/proc/self/maps") if line.rstrip().endswith(ours))
        assert all(a > base for a in addresses[:5])


def test_a_direct_handshake_the_server_hung_up_on_is_explained() -> None:
    """libpq's words for a server that closed the connection at the handshake get what
    they mean under sslnegotiation=direct (OpenSSL 3's and 1.1's wording), and only there."""
    direct = {"sslnegotiation": "direct", "sslmode": "require"}
    meaning = ("(sslnegotiation=direct: the server closed the connection at the TLS handshake; "
               "direct needs PostgreSQL 17 or later, with ssl = on)")
    for words in ("SSL error: unexpected eof while reading", "SSL SYSCALL error: EOF detected"):
        message = f'connection to server at "127.0.0.1", port 5432 failed: {words}\n'
        assert servertls.explain_direct_failure(message, direct) == message.replace(words, f"{words} {meaning}")
        assert servertls.explain_direct_failure(message, {"sslmode": "require"}) == message
    refused = 'connection to server at "127.0.0.1", port 5432 failed: Connection refused'
    assert servertls.explain_direct_failure(refused, direct) == refused
