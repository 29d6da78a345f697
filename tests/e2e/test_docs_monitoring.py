"""docs/monitoring.md and docs/grafana-dashboard.json against a live scrape of the real daemon.

Every metric name a dashboard panel, the dashboard's variables or an alert rule
uses must be a series in the scrape (histograms' _bucket/_sum/_count and
counters' _total as exported); every family in the scrape must be in the
documentation's table with its type and its labels, and nothing else may be.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, Poold

DOC = ROOT / "docs" / "monitoring.md"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"

#: PromQL words that are not metric names (aggregations and functions are followed by "(")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    m = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][\w:]*)\s*(?:\{[^}]*\})?\s*,\s*\w+\s*\)\s*", expr)
    if m:
        return {m.group(1)}
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, may hold anything
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = set()
    for token in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\b(?!\s*\()", text):
        if token.group(1).lower() not in _KEYWORDS:
            names.add(token.group(1))
    return names


def test_metric_names_are_found_in_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (pool, le) (rate(poold_wait_seconds_bucket{pool=~"$pool"}[5m])))'
            ' / on (pool) group_left max(poold_pool_max_size) > bool 0.5 and up{job="x y"} offset 5m')
    assert metric_names(expr) == {"poold_wait_seconds_bucket", "poold_pool_max_size", "up"}
    assert metric_names("label_values(db_pool_size, pool)") == {"db_pool_size"}


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every panel target, rows' nested panels included, and every query variable."""
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard["panels"]):
        for t in p.get("targets", []):
            yield f"panel {p['title']!r} target {t['refId']}", t["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            yield f"variable {var['name']}", query["query"] if isinstance(query, dict) else query


def alert_exprs(doc: str) -> list[str]:
    rules = re.search(r"```yaml\n(.*?)```", doc, re.S)
    assert rules, "monitoring.md has no alert rules"
    return re.findall(r"^\s*expr:\s*(.+)$", rules.group(1), re.M)


def documented_families(doc: str) -> dict[str, tuple[str, set[str]]]:
    """Each row of the metrics table: exposed name -> (type, labels)."""
    rows = {}
    for m in re.finditer(r"^\| `([a-z_:]+)` \| (\w+) \|([^|]*)\|", doc, re.M):
        rows[m.group(1)] = (m.group(2), set(re.findall(r"`(\w+)`", m.group(3))))
    return rows


@pytest.fixture
def scrape_text(poold_factory: Callable[..., Poold]) -> str:
    """A scrape after some traffic: transactions, a server error and a poold error."""
    p = poold_factory(mode="transaction", max_size=3, min_size=1)
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        for _ in range(5):
            conn.execute("SELECT 1")
        with conn.transaction():
            conn.execute("SELECT pg_sleep(0.01)")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")  # an ErrorResponse from the server
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(p.dsn(dbname="nosuchdb"))  # one from poold: 3D000
    status, text = p.http("/metrics")
    assert status == 200
    return text


def test_dashboard_and_alerts_use_only_metrics_poold_exports(scrape_text: str) -> None:
    series = {s.name for f in text_string_to_metric_families(scrape_text) for s in f.samples}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(dashboard_exprs(dashboard))
    exprs += [(f"alert {i}", e) for i, e in enumerate(alert_exprs(DOC.read_text()))]
    assert len(exprs) > 20
    missing = []
    for where, expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        missing += [f"{where}: {n}" for n in names - series if n != "up"]  # up: Prometheus's own series
    assert missing == []
    # and every family poold exports has a panel or an alert
    used = {n for _, e in exprs for n in metric_names(e)}
    families = {f.name for f in text_string_to_metric_families(scrape_text)}
    assert {f for f in families if not any(u == f or u.startswith(f + "_") for u in used)} == set()


def test_every_exported_family_is_documented_with_its_type_and_labels(scrape_text: str) -> None:
    documented = documented_families(DOC.read_text())
    exported = {}
    for family in text_string_to_metric_families(scrape_text):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        exported[name] = (family.type, labels)
    assert set(documented) == set(exported)
    for name, (kind, labels) in exported.items():
        assert documented[name] == (kind, labels), name


def test_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "pool"}

