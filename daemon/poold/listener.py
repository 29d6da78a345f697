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
from .sockio import NativeServer, bind_tcp

log = structlog.get_logger("poold.listener")


def unix_socket_path(listen: ListenSettings) -> str:
    return os.path.join(listen.unix_socket_dir, f".s.PGSQL.{listen.port}")


#: a listener: asyncio.Server, or sockio.NativeServer for TCP where the C transports run
Server = asyncio.Server | NativeServer


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
    loop = asyncio.get_running_loop()
    servers: list[Server] = []
    try:
        hosts = [h.strip() for h in listen.host.split(",") if h.strip()]
        with listening_as("postgres", f"{listen.host}:{listen.port}"):
            if hosts and sockio.native is not None:
                servers.append(NativeServer(bind_tcp(hosts, listen.port, listen.backlog), factory))
            elif hosts:
                servers.append(
                    await loop.create_server(
                        factory, hosts, listen.port, backlog=listen.backlog, reuse_address=True
                    )
                )
        if listen.unix_socket_dir:
            path = unix_socket_path(listen)
            with listening_as("postgres_unix", path):
                if os.path.exists(path):
                    os.unlink(path)  # a stale socket from an unclean exit
                server = await loop.create_unix_server(factory, path, backlog=listen.backlog)
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
    loop = asyncio.get_running_loop()
    servers: list[Server] = []
    for sock in socks:
        sock.setblocking(False)
        if sock.family == socket.AF_UNIX:
            servers.append(await loop.create_unix_server(factory, sock=sock, backlog=backlog))
        elif sockio.native is not None:
            servers.append(NativeServer([sock], factory))
        else:
            servers.append(await loop.create_server(factory, sock=sock, backlog=backlog))
        log.info("listening", address=str(sock.getsockname()), socket_activated=True)
    return servers
