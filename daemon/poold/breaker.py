"""The circuit breaker of one pool: fail fast while the database is down.

States: closed (connect freely) -> open after ``failures`` consecutive failed
server connects (every client that needs a new server connection is failed at
once with 57P03, instead of waiting out acquire_timeout) -> half-open once
``reset`` seconds have passed (one probe connect is let through) -> closed on
the probe's success, or open again for another ``reset`` on its failure.

Pure: the clock is an argument, so tests need no sleeping.
"""

from __future__ import annotations

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class Breaker:
    __slots__ = ("failures", "reset", "consecutive", "opened_at", "probing", "probe_at", "open", "last_error")

    def __init__(self, failures: int, reset: float) -> None:
        self.failures = failures
        self.reset = reset
        self.consecutive = 0
        self.opened_at = 0.0
        self.probing = False
        self.probe_at = 0.0
        self.open = False  # open or half-open; a slot, so that the C relay core reads it cheaply
        self.last_error = ""

    @property
    def closed(self) -> bool:
        """Closed: connect freely (no clock needed to tell)."""
        return not self.open

    def state(self, now: float) -> str:
        if not self.open:
            return CLOSED
        return HALF_OPEN if now - self.opened_at >= self.reset else OPEN

    def record_success(self) -> None:
        self.consecutive = 0
        self.open = False
        self.probing = False
        self.last_error = ""

    def record_failure(self, now: float, error: str = "") -> bool:
        """Count a failed connect; True when this failure opened the breaker."""
        self.consecutive += 1
        self.last_error = error or self.last_error
        was_probing, self.probing = self.probing, False
        if self.open and (was_probing or self.state(now) == HALF_OPEN):
            self.opened_at = now  # the probe failed: open for another period
            return False
        if not self.open and self.consecutive >= self.failures:
            self.open = True
            self.opened_at = now
            return True
        return False

    def allow(self, now: float) -> bool:
        """May a client try for a new server connection now?

        Closed: yes. Open: no. Half-open: exactly one caller (the probe) until
        its outcome is recorded, or until it is ``reset`` seconds old (a probe
        whose outcome never came must not keep the breaker half-open forever).
        """
        state = self.state(now)
        if state == CLOSED:
            return True
        if state == HALF_OPEN and (not self.probing or now - self.probe_at >= self.reset):
            self.probing = True
            self.probe_at = now
            return True
        return False

    def retry_in(self, now: float) -> float:
        """Seconds until the next probe may run (0 when closed)."""
        if not self.open:
            return 0.0
        return max(0.0, self.reset - (now - self.opened_at))
