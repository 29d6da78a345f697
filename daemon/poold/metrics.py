"""Prometheus metrics: a collector that reads live state at scrape time.

Registered in a private CollectorRegistry (no process-global metrics). The
relay only bumps plain counters (stats.py); this module turns them into metric
families when Prometheus asks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .settings import PIN_REASONS

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .pools import Pool
    from .reload import Reloader
    from .runtime import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class PooldCollector(Collector):
    def __init__(self, rt: Runtime, reloader: Reloader) -> None:
        self.rt = rt
        self.reloader = reloader

    def collect(self) -> Iterator[Metric]:
        rt = self.rt
        pools = list(rt.pools.pools.values())
        size = GaugeMetricFamily("db_pool_size", "Server connections per pool by state", labels=["pool", "state"])
        pressure = GaugeMetricFamily("poold_pool_pressure", "Active server connections / max_size", labels=["pool"])
        maximum = GaugeMetricFamily("poold_pool_max_size", "Configured max_size", labels=["pool"])
        xacts = CounterMetricFamily("poold_transactions", "Transactions completed", labels=["pool"])
        queries = CounterMetricFamily("poold_queries", "Queries and Syncs relayed", labels=["pool"])
        nbytes = CounterMetricFamily("poold_bytes", "Bytes relayed", labels=["pool", "direction"])
        wait = HistogramMetricFamily("poold_wait_seconds", "Time clients waited for a server connection", labels=["pool"])
        xact_time = HistogramMetricFamily("poold_transaction_seconds", "Transaction duration", labels=["pool"])
        errors = CounterMetricFamily("poold_errors", "Errors by SQLSTATE", labels=["sqlstate", "source"])
        connects = CounterMetricFamily("poold_server_connects", "Server connect attempts by result",
                                       labels=["pool", "result"])
        breaker = GaugeMetricFamily("poold_breaker_open", "1 while the pool's circuit breaker is open or half-open",
                                    labels=["pool"])
        pins = CounterMetricFamily("poold_client_pins", "Clients pinned to their server connection in transaction "
                                   "mode, by what pinned them", labels=["pool", "reason"])
        pinned = GaugeMetricFamily("poold_pinned_clients", "Clients pinned to their server connection now",
                                   labels=["pool"])
        pinned_now = Counter(c.pool.name for c in rt.clients if c.pinned is not None and c.pool is not None)
        server_errors: Counter[str] = Counter()
        for p in pools:
            snap = p.snapshot()
            for state in ("total", "idle", "active", "waiting"):
                size.add_metric([p.name, state], snap[state])
            pressure.add_metric([p.name], snap["pressure"])
            breaker.add_metric([p.name], int(snap["breaker"] != "closed"))
            connects.add_metric([p.name, "ok"], p.stats.connects_ok)
            connects.add_metric([p.name, "failed"], p.stats.connects_failed)
            maximum.add_metric([p.name], p.settings.max_size)
            s = p.stats
            xacts.add_metric([p.name], s.transactions)
            queries.add_metric([p.name], s.queries)
            nbytes.add_metric([p.name, "in"], s.bytes_in)
            nbytes.add_metric([p.name, "out"], s.bytes_out)
            wait.add_metric([p.name], s.wait.cumulative(), s.wait.sum)
            xact_time.add_metric([p.name], s.xact.cumulative(), s.xact.sum)
            server_errors.update(s.server_errors)
            for reason in PIN_REASONS:
                pins.add_metric([p.name, reason], s.pins[reason])
            pinned.add_metric([p.name], pinned_now[p.name])
        for code, n in sorted(rt.stats.errors.items()):
            errors.add_metric([code, "poold"], n)
        for code, n in sorted(server_errors.items()):
            errors.add_metric([code, "server"], n)
        yield from (size, pressure, maximum, xacts, queries, nbytes, wait, xact_time, errors, breaker, connects, pins,
                    pinned)

        clients = GaugeMetricFamily("poold_clients", "Client connections by state", labels=["state"])
        for state, n in sorted(Counter(c.state for c in rt.clients).items()):
            clients.add_metric([state], n)
        for state in ("login", "idle", "active", "waiting"):
            if not any(c.state == state for c in rt.clients):
                clients.add_metric([state], 0)
        yield clients
        servers = GaugeMetricFamily("poold_server_connections", "Server connections poold holds leased from "
                                    "psycopg_pool (db_pool_size's total counts all)", labels=["pool"])
        for p in pools:
            servers.add_metric([p.name], p.leased)
        yield servers
        reloads = CounterMetricFamily("poold_reloads", "Reloads by result", labels=["result"])
        for result in ("applied", "rejected", "rollback"):
            reloads.add_metric([result], rt.stats.reloads[result])
        yield reloads
        yield from _prepared_families(pools)
        yield GaugeMetricFamily("poold_config_generation", "Generation of the configuration in force",
                                value=self.reloader.generation)
        yield GaugeMetricFamily("poold_draining", "1 while draining or shutting down", value=int(rt.draining))


def _prepared_families(pools: list[Pool]) -> Iterator[Metric]:
    """The named-statement registries (prepared.py): sizes and counters per pool."""
    cached = GaugeMetricFamily("poold_prepared_statements", "Named prepared statements in the pool's registry",
                               labels=["pool"])
    on_servers = GaugeMetricFamily("poold_prepared_server_statements",
                                   "poold's statements prepared on the pool's server connections", labels=["pool"])
    counters = {key: CounterMetricFamily(f"poold_prepared_{key}", help_text, labels=["pool"]) for key, help_text in (
        ("hits", "Statement uses found prepared on the server connection"),
        ("misses", "Statement uses that prepared it on the server connection first"),
        ("evictions", "Statements closed on a server connection past max_prepared_statements"),
        ("reprepares", "Statements prepared again after their result type changed"))}
    for p in pools:
        snap = p.snapshot()["prepared"]
        cached.add_metric([p.name], snap["statements"])
        on_servers.add_metric([p.name], snap["server_statements"])
        for key, family in counters.items():
            family.add_metric([p.name], snap[key])
    yield cached
    yield on_servers
    yield from counters.values()


def make_registry(rt: Runtime, reloader: Reloader) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PooldCollector(rt, reloader))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
