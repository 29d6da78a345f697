"""Startup and shutdown order, written out in one place.

Startup: runtime (configuration, auth file), control socket, HTTP, the client
listeners (or sockets passed by systemd), pools, janitor, watchdog, READY=1.
The client listeners come after the others, so that poold serves no client
unless it can also be steered and watched: a listener that cannot bind is
logged with its address and errno and poold exits 1 before serving anything.
A signal during start-up stops it there and exits 0.

Reload (SIGHUP, `systemctl reload`, `poolctl reload`): RELOADING=1, one
Reloader.reload, READY=1; a rejected configuration is logged and the old one
keeps serving.

Drain (`poolctl drain`) and shutdown (SIGTERM/SIGINT, `poolctl shutdown`) share
one path: stop accepting, close each client at its next transaction boundary
with 57P01. Shutdown then waits up to shutdown_timeout, closes what is left,
waits for the closed connections' lingering closes (sockio.linger, so that no
client meets a reset), closes the pools (no server connection stays behind) and
exits 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

import structlog
from aiohttp import web

from . import backend, relaycore, sockio
from .admin import Console
from .auth import AuthFiles
from .client import ClientSession
from .config import Config
from .control import ControlServer
from .listener import ListenFailed, Server, adopt_listeners, start_listeners, stop_listeners, systemd_sockets
from .protocol.framing import FrameScanner, PyFrameScanner
from .reload import Reloader, ReloadRejected
from .runtime import Runtime
from .sdnotify import Notifier
from .webapp import start_http

log = structlog.get_logger("poold.app")

JANITOR_INTERVAL = 1.0
STATUS_INTERVAL = 5.0
DRAIN_POLL = 0.1


class App:
    def __init__(self, config: Config, environ: Mapping[str, str], files: AuthFiles) -> None:
        self.environ = environ
        self.runtime = Runtime(config, files.users, files.hba)
        self.reloader = Reloader(self.runtime, environ)
        self.console = self.runtime.console = Console(self)  # the admin console (database pgbouncer or poold)
        self.notifier = Notifier(environ)
        self.refused: str | None = None  # why the last reload was refused, until one is applied
        self._stop = asyncio.Event()
        self._signals = 0
        self._servers: list[Server] = []
        self._http: web.AppRunner | None = None
        self._activated = False
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._reload_on_signal()))
        rt = self.runtime
        config = rt.config
        control = ControlServer(self, config.control)
        starting = asyncio.ensure_future(self._start(control))
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():  # a signal during start-up
                starting.cancel()
            await asyncio.wait((starting,))
            starting.result()
        except (ListenFailed, asyncio.CancelledError) as exc:
            if isinstance(exc, ListenFailed):
                log.error("listen_failed", listener=exc.listener, address=exc.address, errno=exc.errno, error=exc.reason)
                self.notifier.notify(f"STATUS=failed to start: {exc}")
            else:
                log.info("start_interrupted")
            await self._abandon_start(control)
            return 1 if isinstance(exc, ListenFailed) else 0
        finally:
            stopping.cancel()
        http = self._http
        for coro in (self._janitor(), self._watchdog(), self._status_line()):
            self._spawn(coro)

        self.notifier.notify("READY=1", self._status_text())
        native_scanner = FrameScanner is not PyFrameScanner
        log.info("ready", port=config.listen.port, pid=os.getpid(), socket_activated=self._activated,
                 generation=self.reloader.generation, frame_scanner="native" if native_scanner else "python",
                 relay_core=relaycore.NAME, socket_io=sockio.NAME, scanner_capi=native_scanner and relaycore.SCANNER_CAPI,
                 libpq=backend.libpq_path())
        await self._stop.wait()

        # -- shutdown, in order ------------------------------------------------
        self.notifier.notify("STOPPING=1", "STATUS=shutting down: draining clients")
        log.info("shutting_down", clients=len(rt.clients))
        await self.drain()
        await self._wait_clients(rt.config.daemon.shutdown_timeout)
        control.close()
        if http is not None:
            await http.cleanup()
        for task in self._tasks:
            task.cancel()
        await rt.pools.close()
        if rt.auth_query is not None:
            await rt.auth_query.close()
        self.notifier.close()
        log.info("stopped")
        return 0

    async def _start(self, control: ControlServer) -> None:
        """Bind the control socket, HTTP, then the client listeners; open the pools."""
        rt = self.runtime
        config = rt.config
        await control.start()
        self._http = await start_http(config.http, rt, self.reloader)
        factory = functools.partial(ClientSession, rt)
        passed = systemd_sockets(self.environ)
        if passed:
            self._activated = True
            self._servers = await adopt_listeners(passed, factory, config.listen.backlog)
        else:
            self._servers = await start_listeners(config.listen, factory)
        rt.listening = True
        await rt.pools.open_configured(config.databases, rt.server_credentials)

    async def _abandon_start(self, control: ControlServer) -> None:
        """Close what a failed or interrupted start-up opened."""
        rt = self.runtime
        rt.listening = False
        if self._servers:  # else the Unix socket there is not ours to unlink
            stop_listeners(self._servers, rt.config.listen, unlink=not self._activated)
        control.close()
        if self._http is not None:
            await self._http.cleanup()
        await rt.pools.close()
        self.notifier.close()

    # -- operations (also used by the control socket) ---------------------------

    async def reload(self, *, dry_run: bool = False) -> dict[str, Any]:
        """One reload; raises ReloadRejected (already logged) for a bad configuration."""
        if dry_run:
            return await self.reloader.reload(dry_run=True)
        self._notify_reloading()
        try:
            result = await self.reloader.reload()
            self.refused = None
            return result
        except ReloadRejected as exc:
            self.refused = str(exc)  # in STATUS= (systemctl status) until a reload is applied
            raise
        finally:
            self.notifier.notify("READY=1", self._status_text())

    async def rollback(self) -> dict[str, Any]:
        self._notify_reloading()
        try:
            return await self.reloader.rollback()
        finally:
            self.notifier.notify("READY=1", self._status_text())

    async def _reload_on_signal(self) -> None:
        try:
            await self.reload()
        except ReloadRejected:
            pass  # logged by the reloader; the old configuration keeps serving

    def _notify_reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    async def drain(self) -> None:
        """Stop accepting; close each client at its next transaction boundary."""
        rt = self.runtime
        if rt.draining:
            return
        rt.draining = True
        rt.listening = False
        stop_listeners(self._servers, rt.config.listen, unlink=not self._activated)
        log.info("draining", clients=len(rt.clients))
        self._spawn(self._close_at_boundaries())

    def request_shutdown(self) -> None:
        self._stop.set()

    # -- internals ------------------------------------------------------------------

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second_signal_exit_now", signal=signal.Signals(sig).name)
            os._exit(1)
        log.info("signal", signal=signal.Signals(sig).name)
        self._stop.set()

    async def _close_at_boundaries(self) -> None:
        clients = self.runtime.clients
        while True:
            for client in list(clients):
                client.terminate_at_boundary("57P01", "terminating connection: poold is draining")
            await asyncio.sleep(DRAIN_POLL)

    async def _wait_clients(self, timeout: float) -> None:
        clients = self.runtime.clients
        deadline = time.monotonic() + timeout
        while clients and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for client in list(clients):
            client.terminate_now("57P01", "terminating connection: poold shutdown_timeout reached")
        self.console.close()  # the admin console's sessions watched until now; they linger too
        # Each connection lingers until its client has read the error and closed, or
        # sockio.LINGER has passed: exiting sooner would reset it.
        lingering = self.runtime.lingering
        deadline = time.monotonic() + sockio.LINGER + 1.0
        while (clients or lingering) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def _janitor(self) -> None:
        while True:
            await asyncio.sleep(JANITOR_INTERVAL)
            try:
                now = time.monotonic()
                self.runtime.pools.maintain(now)
                self.runtime.expire_logins(now)
                self.runtime.guard.sweep(now)
                self.console.sample(now)
            except Exception:  # task boundary: the janitor must keep running
                log.exception("janitor_failed")

    async def _watchdog(self) -> None:
        """WATCHDOG=1 from the event loop itself, at half of WATCHDOG_USEC."""
        usec = self.environ.get("WATCHDOG_USEC", "")
        pid = self.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or (pid and pid != str(os.getpid())):
            return
        interval = int(usec) / 2e6
        while True:
            self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _status_line(self) -> None:
        if not self.notifier.enabled:
            return
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            self.notifier.notify(self._status_text())

    def _status_text(self) -> str:
        rt = self.runtime
        servers = rt.pools.server_connections()
        state = "draining" if rt.draining else "serving"
        text = (f"STATUS={state}: {len(rt.clients)} clients, {servers} server connections, "
                f"{len(rt.pools.pools)} pools, generation {self.reloader.generation}")
        if self.refused is not None:
            text += f"; last reload refused: {self.refused}"
        return text

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

