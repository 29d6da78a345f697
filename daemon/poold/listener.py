"""Listening sockets: TCP addresses and the Unix socket ``.s.PGSQL.<port>``."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Callable, Iterator, Mapping

import structlog

from . import sockio
from .config import ListenSettings
from .fdreserve import FdReserve
from .sockio import ACCEPT_RETRY_DELAY, NativeServer, bind_tcp

log = structlog.get_logger("poold.listener")

#: connections accepted per readiness event of a listening socket, at most
ACCEPT_BATCH = 100


def unix_socket_path(listen: ListenSettings) -> str:
    return os.path.join(listen.unix_socket_dir, f".s.PGSQL.{listen.port}")


class LoopServer:
    """Listening sockets whose connections the event loop's transports serve: the
    Unix socket, and TCP where the C transports do not run. Accepted here rather
    than by ``loop.create_server``, whose accept loop can only pause at the
    descriptor limit: here the client gets FATAL 53300 (FdReserve), as the C
    transports' clients do. Closed like an asyncio.Server (``close``, ``sockets``)."""

    def __init__(self, socks: list[socket.socket], factory: Callable[[], asyncio.Protocol]) -> None:
        self._loop = asyncio.get_running_loop()
        self.sockets = socks
        self._factory = factory
        self._reserve = FdReserve()
        self._retry: asyncio.TimerHandle | None = None
        self._starting: set[asyncio.Task[None]] = set()
        for sock in socks:
            sock.setblocking(False)
        self._resume()

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except (ConnectionAbortedError, ConnectionResetError):
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self._reserve.refuse(sock):
                    continue
                self._accept_failed(exc)
                return
            task = self._loop.create_task(self._serve(conn))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _serve(self, conn: socket.socket) -> None:
        """The event loop's transport and a protocol on an accepted socket (what
        asyncio's own accept does, one task per connection)."""
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except Exception as exc:  # one connection's failure: log it, keep accepting
            log.error("accept_failed", error=str(exc))
            conn.close()

    def _accept_failed(self, exc: OSError) -> None:
        """Out of memory, or descriptors with no reserve: as asyncio, log and pause for a second."""
        log.error("accept_failed_out_of_resources", error=str(exc), retry_in=ACCEPT_RETRY_DELAY)
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
        if self._retry is None:
            self._retry = self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume)

    def _resume(self) -> None:
        self._retry = None
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for sock in self.sockets:
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
                sock.close()
        self._reserve.close()


def bind_unix(path: str, backlog: int) -> socket.socket:
    """The listening Unix socket at ``path`` (a stale one from an unclean exit is replaced)."""
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


#: a listener: LoopServer, or sockio.NativeServer for TCP where the C transports run
Server = LoopServer | NativeServer


class ListenFailed(Exception):
    """A listener could not be set up: poold does not start (app.App.run logs it and exits)."""

    def __init__(self, listener: str, address: str, exc: OSError) -> None:
        self.listener, self.address = listener, address
        self.errno = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self.reason = exc.strerror or str(exc)
        super().__init__(f"{listener} on {address}: {self.reason} ({self.errno})")


@contextlib.contextmanager
def listening_as(listener: str, address: str) -> Iterator[None]:
    """An OSError while binding ``listener`` becomes ListenFailed, naming it and its address."""
    try:
        yield
    except OSError as exc:
        raise ListenFailed(listener, address, exc) from exc


async def start_listeners(listen: ListenSettings, factory: Callable[[], asyncio.Protocol]) -> list[Server]:
    servers: list[Server] = []
    try:
        hosts = [h.strip() for h in listen.host.split(",") if h.strip()]
        with listening_as("postgres", f"{listen.host}:{listen.port}"):
            if hosts and sockio.native is not None:
                servers.append(NativeServer(bind_tcp(hosts, listen.port, listen.backlog), factory))
            elif hosts:
                servers.append(LoopServer(bind_tcp(hosts, listen.port, listen.backlog), factory))
        if listen.unix_socket_dir:
            path = unix_socket_path(listen)
            with listening_as("postgres_unix", path):
                server = LoopServer([bind_unix(path, listen.backlog)], factory)
                os.chmod(path, listen.unix_socket_mode)
            servers.append(server)
    except BaseException:
        for s in servers:
            s.close()
        raise
    for s in servers:
        for sock in s.sockets:
            log.info("listening", address=str(sock.getsockname()))
    return servers


def stop_listeners(servers: list[Server], listen: ListenSettings, unlink: bool = True) -> None:
    for s in servers:
        s.close()
    if unlink and listen.unix_socket_dir:
        try:
            os.unlink(unix_socket_path(listen))
        except OSError:
            pass


SD_LISTEN_FDS_START = 3


def systemd_sockets(environ: Mapping[str, str]) -> list[socket.socket]:
    """Sockets passed by systemd socket activation (LISTEN_FDS/LISTEN_PID)."""
    pid, count = environ.get("LISTEN_PID", ""), environ.get("LISTEN_FDS", "")
    if not count.isdigit() or pid != str(os.getpid()):
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    return [socket.socket(fileno=fd) for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count))]


async def adopt_listeners(
    socks: list[socket.socket], factory: Callable[[], asyncio.Protocol], backlog: int
) -> list[Server]:
    servers: list[Server] = []
    for sock in socks:
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX and sockio.native is not None:
            servers.append(NativeServer([sock], factory))
        else:
            sock.listen(backlog)  # as loop.create_server does with a socket passed to it
            servers.append(LoopServer([sock], factory))
        log.info("listening", address=str(sock.getsockname()), socket_activated=True)
    return servers
