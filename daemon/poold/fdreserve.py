"""A spare file descriptor, so that poold can tell a client why at the descriptor limit.

Past RLIMIT_NOFILE, accept() fails with EMFILE and the connection stays in the
listen backlog: its client hears nothing until it gives up, and poold can only
stop accepting for a while. With one descriptor kept in reserve (/dev/null),
poold closes it, accepts the connection, answers FATAL 53300 and closes it, then
takes the reserve again; libev and nginx users know the trick. Both kinds of
listener use it: the C transports' (``sockio.NativeServer``) and the event
loop's (``listener.LoopServer``).
"""

from __future__ import annotations

import os
import socket
import time

import structlog

from .protocol import messages

log = structlog.get_logger("poold.listener")

_TOO_MANY = messages.error_response("53300", "poold: sorry, too many clients already (out of file descriptors)")

#: seconds between log lines about clients refused for want of descriptors
LOG_INTERVAL = 10.0


class FdReserve:
    """One descriptor held back for refusing clients at the limit."""

    def __init__(self) -> None:
        self._fd = self._take()
        self.refused = 0  # clients refused since the last log line
        self._logged = 0.0

    @staticmethod
    def _take() -> int:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1

    def refuse(self, listening: socket.socket) -> bool:
        """accept() on ``listening`` failed for want of descriptors: answer the next
        waiting client FATAL 53300 and close it. False when that could not be done
        (no reserve: taken again for next time; or the system's table is full too);
        the caller then pauses accepting, as before."""
        if self._fd < 0:
            self._fd = self._take()
            return False
        os.close(self._fd)
        self._fd = -1
        try:
            try:
                conn, _ = listening.accept()
            except BlockingIOError:
                return True  # no one waits any more
            except OSError:
                return False
            with conn:
                try:
                    # Read what the client sent (its startup packet): closing with
                    # unread bytes would reset the connection, and the client
                    # could lose the answer.
                    conn.setblocking(False)
                    conn.recv(65536)
                except OSError:
                    pass
                try:
                    conn.send(_TOO_MANY)
                except OSError:
                    pass
        finally:
            self._fd = self._take()
        self._count()
        return True

    def _count(self) -> None:
        """One log line per LOG_INTERVAL, with the count, not one per client."""
        self.refused += 1
        now = time.monotonic()
        if now - self._logged >= LOG_INTERVAL:
            log.warning("clients_refused_out_of_descriptors", count=self.refused, sqlstate="53300")
            self.refused = 0
            self._logged = now

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
