"""Startup and shutdown order, written out in one place.

Startup: configuration and auth file, runtime, listeners, janitor, READY=1.
Shutdown (SIGTERM/SIGINT, first signal): stop accepting, STOPPING=1, close each
client at its next transaction boundary with 57P01 (up to shutdown_timeout),
then close the pools so no server connection is left behind, exit 0. A second
signal exits at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Mapping

import structlog

from .auth import load_userlist
from .client import ClientSession
from .config import Config
from .control import ControlServer
from .listener import start_listeners, stop_listeners
from .runtime import Runtime
from .sdnotify import Notifier

log = structlog.get_logger("poold.app")

JANITOR_INTERVAL = 1.0


class App:
    def __init__(self, config: Config, environ: Mapping[str, str]) -> None:
        self.config = config
        self.environ = environ
        self.runtime = Runtime(config, load_userlist(config.auth.file))
        self.notifier = Notifier(environ)
        self._stop = asyncio.Event()
        self._signals = 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        # SIGHUP must never kill the daemon; live reload is not implemented yet.
        loop.add_signal_handler(signal.SIGHUP, lambda: log.warning("reload_not_supported", hint="restart poold to apply configuration changes"))
        rt = self.runtime
        servers = await start_listeners(self.config.listen, lambda: ClientSession(rt))
        control = ControlServer(rt, self.config.control)
        await control.start()
        janitor = loop.create_task(self._janitor())
        self.notifier.notify("READY=1", f"STATUS=listening on port {self.config.listen.port}")
        log.info("ready", port=self.config.listen.port, pid=os.getpid())
        await self._stop.wait()

        # -- shutdown, in order ------------------------------------------------
        self.notifier.notify("STOPPING=1", "STATUS=draining clients")
        log.info("shutting_down", clients=len(rt.clients))
        stop_listeners(servers, self.config.listen)
        rt.shutting_down = True
        await self._drain_clients(self.config.daemon.shutdown_timeout)
        janitor.cancel()
        control.close()
        await rt.pools.close()
        self.notifier.close()
        log.info("stopped")
        return 0

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second_signal_exit_now", signal=signal.Signals(sig).name)
            os._exit(1)
        log.info("signal", signal=signal.Signals(sig).name)
        self._stop.set()

    async def _drain_clients(self, timeout: float) -> None:
        """Close every client at its next transaction boundary, then any left."""
        deadline = time.monotonic() + timeout
        clients = self.runtime.clients
        while clients and time.monotonic() < deadline:
            for client in list(clients):
                client.terminate_at_boundary("57P01", "terminating connection: poold is shutting down")
            await asyncio.sleep(0.02)
        for client in list(clients):
            client._fatal("57P01", "terminating connection: poold shutdown_timeout reached")
        await asyncio.sleep(0)  # let connection_lost callbacks run

    async def _janitor(self) -> None:
        while True:
            await asyncio.sleep(JANITOR_INTERVAL)
            try:
                self.runtime.pools.maintain(time.monotonic())
            except Exception:  # task boundary: the janitor must keep running
                log.exception("janitor_failed")
