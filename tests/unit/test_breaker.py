"""Circuit breaker state machine, driven with an explicit clock."""

from __future__ import annotations

from poold.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


def test_opens_after_consecutive_failures_only() -> None:
    b = Breaker(failures=3, reset=30)
    assert not b.record_failure(0.0) and not b.record_failure(1.0)
    b.record_success()  # a success in between resets the count
    assert not b.record_failure(2.0) and not b.record_failure(3.0)
    assert b.state(3.0) == CLOSED and b.allow(3.0)
    assert b.record_failure(4.0, "connection refused")
    assert b.state(4.0) == OPEN and not b.allow(4.0) and b.last_error == "connection refused"
    assert b.retry_in(10.0) == 24.0


def test_half_open_lets_exactly_one_probe_through() -> None:
    b = Breaker(failures=1, reset=5)
    b.record_failure(0.0)
    assert not b.allow(4.9)
    assert b.state(5.0) == HALF_OPEN
    assert b.allow(5.0)  # the probe
    assert not b.allow(5.1)  # everyone else still fails fast
    b.record_success()
    assert b.state(5.2) == CLOSED and b.allow(5.2) and b.retry_in(5.2) == 0.0


def test_failed_probe_opens_for_another_period() -> None:
    b = Breaker(failures=1, reset=5)
    b.record_failure(0.0)
    assert b.allow(6.0)
    assert not b.record_failure(6.5)
    assert b.state(7.0) == OPEN and not b.allow(11.0)
    assert b.state(11.5) == HALF_OPEN and b.allow(11.5)


def test_background_failures_while_open_do_not_extend_it() -> None:
    b = Breaker(failures=2, reset=10)
    b.record_failure(0.0)
    b.record_failure(1.0)
    b.record_failure(3.0)  # psycopg_pool's own retries keep failing
    assert b.state(11.0) == HALF_OPEN


def test_a_probe_without_outcome_expires() -> None:
    b = Breaker(failures=1, reset=5)
    b.record_failure(0.0)
    assert b.allow(5.0)
    assert not b.allow(9.9)
    assert b.allow(10.0)  # the first probe never reported: another may go


def test_closed_property_follows_the_state() -> None:
    b = Breaker(failures=2, reset=5)
    assert b.closed
    b.record_failure(0.0)
    assert b.closed  # one failure of two
    b.record_failure(0.1)
    assert not b.closed and b.state(0.2) == "open"
    assert not b.closed and b.state(6.0) == "half-open"  # half-open is not closed either
    b.record_success()
    assert b.closed
