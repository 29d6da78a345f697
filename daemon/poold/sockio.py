"""Which code reads and writes the relay's sockets: client TCP connections and server legs.

``_sockio.c`` does it in C where it was built: one small transport object per
connection in one epoll set, which the event loop watches as a single reader.
Otherwise, and for clients' Unix sockets and TLS, the event loop's own
transports do. The protocols on top (``client.ClientSession``,
``relay.ServerLink``) are the same asyncio protocols either way.
``POOLD_SOCKET_IO=asyncio`` picks the event loop's transports anyway, as a
diagnostic and so that the tests can run both.

A connection poold ends after telling the client why (an ErrorResponse) is not
closed at once but lingers (``linger``), on either kind of transport.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import socket
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import structlog

from .fdreserve import FdReserve

log = structlog.get_logger("poold.listener")

P = TypeVar("P", bound=asyncio.BaseProtocol)

#: after accept() failed for want of file descriptors or memory, wait this long
#: before accepting again (asyncio's constants.ACCEPT_RETRY_DELAY)
ACCEPT_RETRY_DELAY = 1.0

#: how long a connection ended after an error waits for the client's EOF (see linger)
LINGER = 1.0


def _load() -> ModuleType | None:
    if os.environ.get("POOLD_SOCKET_IO") == "asyncio":
        return None
    try:
        from . import _sockio  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _sockio


native = _load()
#: logged at startup
NAME = "c" if native is not None else "asyncio"

_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def _poller(loop: asyncio.AbstractEventLoop) -> Any:
    """The loop's epoll set of relayed sockets, watched by the loop as one reader."""
    poller = _pollers.get(loop)
    if poller is None:
        assert native is not None
        poller = _pollers[loop] = native.Poller(loop)
        loop.add_reader(poller.fileno(), poller.dispatch)
    return poller


def bind_tcp(hosts: list[str], port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets on every address of ``hosts``, as loop.create_server binds them."""
    infos = []
    for host in hosts:
        for info in socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE):
            if info not in infos:
                infos.append(info)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address {address!r}: "
                              f"{(exc.strerror or '').lower()}") from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class NativeServer:
    """Listening TCP sockets whose connections the C transports serve; closed
    like an asyncio.Server (``close``, ``sockets``)."""

    def __init__(self, socks: list[socket.socket], factory: Callable[[], asyncio.Protocol]) -> None:
        assert native is not None
        self._loop = asyncio.get_running_loop()
        self.sockets = socks
        self._reserve = FdReserve()
        poller = _poller(self._loop)
        self._listeners = []
        for sock in socks:
            sock.setblocking(False)
            listener = native.Listener(poller, sock.fileno(), factory, functools.partial(self._accept_failed, sock))
            listener.resume()
            self._listeners.append(listener)
        self._retry: asyncio.TimerHandle | None = None

    def _accept_failed(self, sock: socket.socket, exc: OSError) -> None:
        """Out of file descriptors: the next client gets FATAL 53300 (FdReserve), and the
        listener, level-triggered, comes back for the one after. Where even that fails,
        or memory ran out: as asyncio, log and pause accepting for a second."""
        if exc.errno in (errno.EMFILE, errno.ENFILE) and self._reserve.refuse(sock):
            return
        if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            log.error("accept_failed", error=str(exc))
        else:
            log.error("accept_failed_out_of_resources", error=str(exc), retry_in=ACCEPT_RETRY_DELAY)
        for listener in self._listeners:
            listener.pause()
        if self._retry is None:
            self._retry = self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume)

    def _resume(self) -> None:
        self._retry = None
        for listener in self._listeners:
            listener.resume()

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        for sock in self.sockets:
            sock.close()
        self._reserve.close()


def adopt(sock: socket.socket, factory: Callable[[], P], tls: Any = None) -> tuple[asyncio.Transport, P]:
    """A C transport on a connected socket that is a duplicate of another's (a
    server connection's, whose psycopg connection keeps the original); it owns the
    descriptor from here on. Where the C module is not built: the event loop's
    (``loop.connect_accepted_socket``). ``tls``: the server leg is TLS, read and
    written through libpq's session (``backend.tls_session``, ``servertls``)."""
    assert native is not None
    protocol = factory()
    transport = _poller(asyncio.get_running_loop()).adopt(sock.fileno(), protocol, tls)
    sock.detach()
    return transport, protocol


class _Handover(asyncio.Protocol):
    """A socket handed to the event loop for TLS, until start_tls gives it its
    protocol. The client sends nothing meanwhile: it waits for the 'S'."""


async def start_tls(transport: asyncio.BaseTransport, protocol: asyncio.Protocol, ctx: Any) -> asyncio.Transport:
    """Answer an SSLRequest 'S' and start TLS, server side, on either kind of
    transport: a C transport's socket is handed to the event loop first (TLS is
    the event loop's), before the 'S', so no byte of the handshake can reach the
    wrong reader."""
    loop = asyncio.get_running_loop()
    if native is not None and isinstance(transport, native.SocketTransport):
        sock = socket.socket(fileno=transport.detach())
        transport, _ = await loop.connect_accepted_socket(_Handover, sock)
    transport.write(b"S")  # type: ignore[attr-defined]
    tls = await loop.start_tls(transport, protocol, ctx, server_side=True)  # type: ignore[arg-type]
    assert tls is not None
    return tls


class Ended:
    """What a session writes to once its connection lingers: nothing reaches the
    client after the error it was told (see linger)."""

    __slots__ = ("_peer",)

    def __init__(self, peer: Any) -> None:
        self._peer = peer

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    abort = pause_reading = resume_reading = close

    def is_closing(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default


class Departed(Ended):
    """What a session writes to once its client has closed its socket after
    Terminate while requests it sent before still run (ClientSession._outlive_client):
    their replies are dropped, and closing it ends the session, as the socket's
    close would have (the protocol's ``connection_lost``)."""

    __slots__ = ("_protocol",)

    def __init__(self, peer: Any, protocol: asyncio.BaseProtocol) -> None:
        super().__init__(peer)
        self._protocol: asyncio.BaseProtocol | None = protocol

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.connection_lost(None)

    abort = close

    def pause_reading(self) -> None:
        pass

    resume_reading = pause_reading

    def is_closing(self) -> bool:
        return self._protocol is None


class _Lingering(asyncio.Protocol):
    """A connection's protocol once it lingers: what the client still sends is read
    and dropped until its EOF, then the socket is closed; after LINGER at the most it
    is closed anyway."""

    def __init__(self, transport: asyncio.Transport, lingering: set[Any]) -> None:
        self._transport = transport
        self._lingering = lingering
        self._timer = asyncio.get_running_loop().call_later(LINGER, transport.abort)
        lingering.add(self)

    def data_received(self, data: bytes) -> None:
        pass  # the client's requests, sent before it read the error

    def eof_received(self) -> bool:
        return False  # the client has read the error and closed: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self._lingering.discard(self)


def linger(transport: asyncio.Transport, protocol: asyncio.Protocol, lingering: set[Any]) -> Ended:
    """End a connection whose last message, the error that says why, is written:
    a lingering close, as PostgreSQL's clients expect to read that error.

    Closing at once would reset the connection (RST) if the client's next request
    is unread here or arrives after the close, and a reset can take the error with
    it. Instead the write side is shut (the client reads the error, then EOF) and
    what the client still sends is read and dropped until its EOF, for LINGER at
    the most (``lingering`` holds the connection meanwhile: shutdown waits for it).
    TLS ends with the event loop's close, which has its own closing handshake.

    The protocol's ``connection_lost`` runs soon, as after a close; the session
    writes to the ``Ended`` returned from here on."""
    ended = Ended(transport.get_extra_info("peername"))
    if not transport.can_write_eof():
        transport.close()
        return ended
    try:
        transport.write_eof()
    except OSError:  # the client is gone already
        transport.abort()
        return ended
    transport.set_protocol(_Lingering(transport, lingering))
    transport.resume_reading()  # were it paused by the session's flow control: read to the EOF
    asyncio.get_running_loop().call_soon(protocol.connection_lost, None)
    return ended
