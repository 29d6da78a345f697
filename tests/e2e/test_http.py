"""HTTP health and metrics of the real daemon, scrapes parsed by prometheus_client."""

from __future__ import annotations

import json
from collections.abc import Callable

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Poold, wait_until


def scrape(p: Poold) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = p.http("/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_health_endpoints(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(mode="transaction", max_size=3, min_size=1)
    assert p.http("/health/live") == (200, json.dumps({"status": "ok"}))
    status, body = p.http("/health/ready")
    assert status == 200 and json.loads(body)["status"] == "ready"
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        conn.execute("SELECT 1")
        status, body = p.http("/health")
        data = json.loads(body)
        assert status == 200 and data["status"] == "ok" and data["clients"] == 1
        (pool,) = data["pools"]
        assert pool["pool"] == "app.app" and pool["mode"] == "transaction" and pool["max_size"] == 3
        assert pool["breaker"] == "closed" and pool["state"] == "ok" and pool["last_error"] == ""
        assert {"idle", "active", "waiting", "total", "pressure"} <= set(pool)
        status, body = p.http("/health/database")
        assert status == 200 and json.loads(body)["pools"][0]["pool"] == "app.app"
    assert p.http("/nope")[0] == 404


def test_metrics_follow_what_clients_did(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(mode="transaction", max_size=3, min_size=1)
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        conn.execute("SELECT 1")
    before = scrape(p)
    n = 37
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        for i in range(n):
            conn.execute("SELECT %s::int", (i,))
        with conn.transaction():  # BEGIN ... COMMIT: one more transaction, three queries
            conn.execute("SELECT 1")
        idle_clients = value(scrape(p), "poold_clients", state="idle")
        try:
            conn.execute("SELECT 1/0")
        except psycopg.errors.DivisionByZero:
            pass
    after = scrape(p)
    pool = {"pool": "app.app"}
    assert value(after, "poold_transactions_total", **pool) - value(before, "poold_transactions_total", **pool) == n + 2
    assert value(after, "poold_queries_total", **pool) - value(before, "poold_queries_total", **pool) == n + 3 + 1
    assert value(after, "poold_bytes_total", direction="in", **pool) > value(before, "poold_bytes_total", direction="in", **pool)
    assert value(after, "poold_bytes_total", direction="out", **pool) > value(before, "poold_bytes_total", direction="out", **pool)
    assert value(after, "poold_transaction_seconds_count", **pool) - value(before, "poold_transaction_seconds_count", **pool) == n + 2
    assert value(after, "poold_wait_seconds_count", **pool) > value(before, "poold_wait_seconds_count", **pool)
    assert value(after, "poold_errors_total", sqlstate="22012", source="server") == 1
    assert idle_clients == 1
    assert value(after, "db_pool_size", state="active", **pool) == 0
    assert 1 <= value(after, "db_pool_size", state="total", **pool) <= 3
    assert value(after, "db_pool_size", state="waiting", **pool) == 0
    assert value(after, "poold_config_generation") == 1


def test_errors_by_sqlstate_count_poold_own_errors(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory()
    for _ in range(3):
        try:
            psycopg.connect(p.dsn(dbname="missing"))
        except psycopg.OperationalError:
            pass
    wait_until(lambda: value(scrape(p), "poold_errors_total", sqlstate="3D000", source="poold") == 3)
