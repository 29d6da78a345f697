"""systemd notifications (READY=1, STOPPING=1, STATUS=...) over NOTIFY_SOCKET.

systemd-python's ``daemon.notify`` when importable, the plain datagram protocol
otherwise (it is one sendto). Without NOTIFY_SOCKET every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("poold.sdnotify")


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        addr = environ.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        self._addr = addr
        self._sock: socket.socket | None = None
        self._native = None
        self._failing = False  # logged once per run of failures
        if addr:
            try:
                from systemd import daemon  # type: ignore[import-not-found,attr-defined,unused-ignore]

                self._native = daemon.notify
            except ImportError:
                # Non-blocking: a notification is dropped rather than ever
                # stalling the event loop behind a full receiver.
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)

    @property
    def enabled(self) -> bool:
        return bool(self._addr)

    def notify(self, *lines: str) -> None:
        if not self._addr:
            return
        text = "\n".join(lines)
        try:
            if self._native is not None:
                self._native(text)
            elif self._sock is not None:
                self._sock.sendto(text.encode(), self._addr)
        except OSError as exc:
            # systemd cannot hear us (a socket hidden by sandboxing, a full queue):
            # a Type=notify unit will time out or kill us, so say why, once.
            if not self._failing:
                self._failing = True
                log.error("sd_notify_failed", socket=self._addr.replace("\0", "@"), error=str(exc),
                          message=text.split("\n", 1)[0])
        else:
            if self._failing:
                self._failing = False
                log.info("sd_notify_recovered", socket=self._addr.replace("\0", "@"))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
