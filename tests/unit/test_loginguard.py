"""LoginGuard's bookkeeping, with the clock as an argument: turns per (user, address),
forgetting, and the aggregate log lines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog

from poold.config import build_config
from poold.loginguard import LOG_INTERVAL, LoginGuard, Pause
from poold.runtime import Runtime


def test_proofs_of_a_failing_pair_are_checked_one_per_delay() -> None:
    guard = LoginGuard()
    assert guard.hold("app", "10.0.0.1", 100.0, 0.5, 60) == 0  # nothing failed yet: checked at once
    guard.failed("app", "10.0.0.1", 100.0, 0.5)
    # three proofs at once: each takes the next turn
    assert [guard.hold("app", "10.0.0.1", 100.1, 0.5, 60) for _ in range(3)] == pytest.approx([0.4, 0.9, 1.4])
    assert guard.held("app", "10.0.0.1", 100.1)
    # another user, another address: not held
    assert guard.hold("bob", "10.0.0.1", 100.1, 0.5, 60) == 0
    assert guard.hold("app", "10.0.0.2", 100.1, 0.5, 60) == 0


def test_turns_are_not_handed_out_past_the_horizon() -> None:
    guard = LoginGuard()
    guard.failed("app", "h", 0.0, 1.0)
    waits = [guard.hold("app", "h", 0.0, 1.0, 5.0) for _ in range(10)]
    assert max(waits) <= 5.0


def test_failures_are_logged_once_then_counted_and_pairs_forgotten() -> None:
    guard = LoginGuard()
    with structlog.testing.capture_logs() as logs:
        for i in range(50):
            guard.failed("app", "h", 10.0 + i * 0.01, 0.5)
        guard.sweep(10.9)  # the pair's turn is not due yet (10.99): nothing more
        assert [e["event"] for e in logs] == ["auth_failed"]
        guard.sweep(12.0)  # its delay passed: the count, then forgotten
    assert [(e["event"], e.get("count")) for e in logs] == [("auth_failed", None), ("auth_failures", 49)]
    assert guard.pairs == {}


def test_a_long_run_is_logged_every_interval() -> None:
    guard = LoginGuard()
    with structlog.testing.capture_logs() as logs:
        t = 0.0
        while t < 3 * LOG_INTERVAL:
            guard.failed("app", "h", t, 0.5)
            guard.sweep(t)
            t += 0.25
    counts = [e["count"] for e in logs if e["event"] == "auth_failures"]
    assert len(counts) == 2 and sum(counts) < 3 * LOG_INTERVAL / 0.25


class Login:
    """A login in progress, as make_room_for_login sees one."""

    def __init__(self, rt: Runtime) -> None:
        self.rt, self.pushed = rt, False

    def login_pushed_out(self) -> None:
        self.pushed = True


def test_the_oldest_login_makes_room_for_a_new_one() -> None:
    rt = Runtime(build_config({"clients": {"max_login_conn": 3}, "databases": {"db": {"dsn": "dbname=db"}}},
                              Path("/nonexistent/poold.toml")), {})
    logins = [Login(rt) for _ in range(5)]
    for n, login in enumerate(logins):
        rt.logins[login] = float(n)  # type: ignore[index]
        rt.make_room_for_login(float(n))
    assert [login.pushed for login in logins] == [True, True, False, False, False]
    assert list(rt.logins) == logins[2:] and rt.guard.pushed_out == 2


def test_a_pause_is_done_after_its_time_and_a_cancelled_one_leaves_no_timer() -> None:
    async def main() -> tuple[bool, bool]:
        done = Pause(0.01)
        await done
        dropped = Pause(3600)
        dropped.cancel()
        return done.done() and not done.cancelled(), dropped._timer.cancelled()

    assert asyncio.run(main()) == (True, True)
