"""What keeps logins from hurting others: failed authentication slowed per
(user, address), and the aggregate log of what the guard refused.

Logins in progress are capped apart from logged-in clients
(``clients.max_login_conn``; ``Runtime.make_room_for_login`` closes the oldest
to make room), so that connections that never finish a login cannot lock
real clients out: a real login takes milliseconds, and the oldest logins are
the ones that dawdle.

Failed authentication, as PostgreSQL's auth_delay does it, is answered
``clients.auth_failure_delay`` late. A guesser would only open more connections
at once, so the delay is also kept per (user, address): once a proof of a pair
fails, the next proof of that pair is not even checked before the delay has
passed, and each proof waiting for its turn takes the next one. However many
connections a guesser opens, one of its proofs per delay is checked, and none
of the waiting costs a task or a thread: the login's steps wait on a timer.
A pair is forgotten once its delay has passed and its count was logged.

A login waiting for its turn is still a login in progress: login_timeout
closes it, and a new client pushes it out like any other, so the waiting of a
guesser holds no slot a real client needs.

Failures are logged once per pair when they start (``auth_failed``), then as a
count every ``LOG_INTERVAL`` seconds while they go on (``auth_failures``): not a
line per attempt.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

log = structlog.get_logger("poold.loginguard")

#: seconds between the aggregate lines of one (user, address), and of the logins pushed out
LOG_INTERVAL = 10.0
#: (user, address) pairs remembered; past this the oldest is forgotten
MAX_PAIRS = 10_000


class Pause(asyncio.Future[None]):
    """A wait of the login's steps on a timer: done after ``seconds``. A login that
    ends first cancels it (``cancel``), timer included, so that a guesser's
    abandoned connections leave nothing behind them."""

    def __init__(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(loop=loop)
        self._timer = loop.call_later(seconds, self._expire)

    def _expire(self) -> None:
        if not self.done():
            self.set_result(None)

    def cancel(self, msg: Any | None = None) -> bool:
        self._timer.cancel()
        return super().cancel(msg)


class _Failures:
    """One (user, address)'s failed authentications."""

    __slots__ = ("count", "next", "since")

    def __init__(self, now: float) -> None:
        self.next = now  # the earliest time its next proof may be checked
        self.count = 0  # failures not logged yet
        self.since = now  # when the failures not logged yet began


class LoginGuard:
    """Per (user, address) failure state and the guard's counts; one per Runtime."""

    def __init__(self) -> None:
        #: (user, address) -> its failures; read by the C login (empty: no proof is held)
        self.pairs: dict[tuple[str, str], _Failures] = {}
        self.pushed_out = 0  # logins closed to make room, not logged yet
        self._pushed_since = 0.0

    def hold(self, user: str, address: str, now: float, delay: float, horizon: float) -> float:
        """Seconds before a proof of (user, address) may be checked; 0: now.

        A proof that must wait takes the next turn, so that proofs sent at once
        are checked one per ``delay``. Turns are not handed out past ``horizon``
        seconds (login_timeout: a login waiting that long is closed first), so
        that a guesser's abandoned connections cannot push a pair's turn out
        for longer than that."""
        pair = self.pairs.get((user, address))
        if pair is None or pair.next <= now:
            return 0.0
        wait = pair.next - now
        pair.next = min(pair.next + delay, now + horizon)
        return wait

    def held(self, user: str, address: str, now: float) -> bool:
        """Whether a proof of (user, address) must wait (the C login leaves it to Python then)."""
        pair = self.pairs.get((user, address))
        return pair is not None and pair.next > now

    def failed(self, user: str, address: str, now: float, delay: float) -> None:
        """A proof of (user, address) failed: its next proof waits ``delay``."""
        key = (user, address)
        pair = self.pairs.get(key)
        if pair is None:
            if len(self.pairs) >= MAX_PAIRS:
                self._forget(next(iter(self.pairs)), now)
            pair = self.pairs[key] = _Failures(now)
            log.info("auth_failed", user=user, address=address, delay=delay)
        else:
            if not pair.count:
                pair.since = now
            pair.count += 1
        pair.next = max(pair.next, now + delay)

    def pushed(self, now: float) -> None:
        """A login was closed to make room for a new one (counted, logged in aggregate)."""
        if not self.pushed_out:
            self._pushed_since = now
        self.pushed_out += 1

    def sweep(self, now: float) -> None:
        """The aggregate log lines that are due, and forgetting the pairs whose delay passed."""
        for key, pair in list(self.pairs.items()):
            if pair.count and (now - pair.since >= LOG_INTERVAL or pair.next <= now):
                self._log_count(key, pair, now)
            if not pair.count and pair.next <= now:
                del self.pairs[key]
        if self.pushed_out and now - self._pushed_since >= LOG_INTERVAL:
            log.warning("logins_pushed_out", count=self.pushed_out, seconds=round(now - self._pushed_since, 1),
                        reason="max_login_conn")
            self.pushed_out = 0

    def _forget(self, key: tuple[str, str], now: float) -> None:
        pair = self.pairs.pop(key)
        if pair.count:
            self._log_count(key, pair, now)

    @staticmethod
    def _log_count(key: tuple[str, str], pair: _Failures, now: float) -> None:
        log.warning("auth_failures", user=key[0], address=key[1], count=pair.count,
                    seconds=round(now - pair.since, 1))
        pair.count = 0
        pair.since = now
