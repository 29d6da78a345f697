"""Live counters the relay bumps and the metrics collector reads at scrape time.

Plain attributes and a bisect histogram: the hot path pays an addition, never a
lock or a label lookup. Prometheus objects are built only in ``collect()``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import TYPE_CHECKING

from . import relaycore

#: seconds; the upper bounds of histogram buckets (the last one is +Inf)
WAIT_BUCKETS = (0.0, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
XACT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HistogramCorePy:
    """Bucket counts and their sum; ``_relaycore.HistogramCore`` in C."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class StatsCorePy:
    """The counters the per-transaction path bumps; ``_relaycore.StatsCore`` in C."""

    __slots__ = ("bytes_in", "bytes_out", "queries", "transactions", "wait", "xact")

    transactions: int
    queries: int
    bytes_in: int  # client -> server
    bytes_out: int  # server -> client
    wait: Histogram
    xact: Histogram


if TYPE_CHECKING:
    HistogramCore = HistogramCorePy
    StatsCore = StatsCorePy
else:
    HistogramCore = relaycore.pick("HistogramCore", HistogramCorePy)
    StatsCore = relaycore.pick("StatsCore", StatsCorePy)


class Histogram(HistogramCore):
    __slots__ = ()

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs as Prometheus wants them."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


class PoolStats(StatsCore):
    """Counters of one pool; they outlive a reload that keeps the pool."""

    __slots__ = ("connects_failed", "connects_ok", "pins", "server_errors")

    def __init__(self) -> None:
        self.transactions = 0
        self.queries = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.wait = Histogram(WAIT_BUCKETS)
        self.xact = Histogram(XACT_BUCKETS)
        self.server_errors: Counter[str] = Counter()  # SQLSTATE -> count
        self.connects_ok = 0  # server connects, poold's and psycopg_pool's
        self.connects_failed = 0
        self.pins: Counter[str] = Counter()  # clients pinned to their server connection, by reason (settings.py)


class DaemonStats:
    """Counters of the whole daemon."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()  # SQLSTATEs poold answered clients with
        self.reloads: Counter[str] = Counter()  # result -> count
