"""Status that tells the truth: every server connection, wherever it is (leased by poold,
idle in psycopg_pool), is listed by `poolctl servers` with its state, age and backend pid,
and the totals of status, pools, servers, /metrics and PostgreSQL's pg_stat_activity agree."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import psycopg

from tests.conftest import Poold, pgcluster, wait_until
from tests.e2e.test_http import scrape


def backend_pids(pg: pgcluster.Cluster) -> set[int]:
    out = pg.psql("SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE usename = 'app' "
                  "AND backend_type = 'client backend'")
    return {int(x) for x in out.split(",")} if out else set()


def views(p: Poold) -> dict[str, object]:
    status = json.loads(p.poolctl("--json", "status").stdout)
    pools = json.loads(p.poolctl("--json", "pools").stdout)
    servers = json.loads(p.poolctl("--json", "servers").stdout)
    metric = sum(v for (name, labels), v in scrape(p).items()
                 if name == "db_pool_size" and ("state", "total") in labels)
    return {"status": status["server_connections"], "pools": sum(x["total"] for x in pools),
            "servers": len(servers), "metrics": int(metric), "rows": servers}


def test_every_server_connection_is_listed_and_the_totals_agree(poold_factory: Callable[..., Poold],
                                                                 pg: pgcluster.Cluster) -> None:
    # idle_timeout long: hold_time (5 s) hands idle links back to psycopg_pool, min_size keeps them
    p = poold_factory(mode="transaction", max_size=4, min_size=3, idle_timeout=12)
    wait_until(lambda: len(backend_pids(pg)) == 3, timeout=20)
    with psycopg.connect(p.dsn(), prepare_threshold=None) as held:
        held.execute("SELECT 1")  # in a transaction: one connection leased and active
        time.sleep(0.2)
        v = views(p)
        pids = backend_pids(pg)
        assert v["status"] == v["pools"] == v["servers"] == v["metrics"] == len(pids) == 3, v
        rows = v["rows"]
        assert {r["pid"] for r in rows} == pids  # type: ignore[union-attr]
        states = sorted(r["state"] for r in rows)  # type: ignore[union-attr]
        assert states.count("active") == 1 and len(states) == 3, rows
        assert all(r["age"] >= 0 for r in rows)  # type: ignore[union-attr]
        held.commit()
    # later, the links poold held go back to psycopg_pool: still listed, still the same totals
    time.sleep(6)
    v = views(p)
    pids = backend_pids(pg)
    assert v["status"] == v["pools"] == v["servers"] == v["metrics"] == len(pids) == 3, v
    assert {r["pid"] for r in v["rows"]} == pids  # type: ignore[union-attr]
    assert all(r["state"] in ("idle", "pool") for r in v["rows"]), v["rows"]  # type: ignore[union-attr]


def test_config_show_says_where_each_value_came_from_and_what_waits_for_a_restart(
        poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(mode="transaction", max_size=5, min_size=1, environ={"POOLD_POOL__MAX_SIZE": "4"})
    env_file = p.config_path.parent / "poold.env"
    env_file.write_text("DB_POOL_MIN=2\n")
    assert p.poolctl("reload").returncode == 0
    shown = json.loads(p.poolctl("--json", "config", "show", "--sources").stdout)
    assert shown["pool.max_size"] == {"value": 4, "source": "POOLD_POOL__MAX_SIZE (environment)"}
    assert shown["pool.min_size"] == {"value": 2, "source": f"DB_POOL_MIN ({env_file})"}
    assert shown["pool.mode"] == {"value": "transaction", "source": str(p.config_path)}
    assert shown["pool.breaker_failures"] == {"value": 5, "source": "default"}
    assert shown["listen.port"]["source"] == str(p.config_path)
    text = p.poolctl("config", "show", "--sources").stdout
    assert any(line.split()[:2] == ["pool.max_size", "4"] and "POOLD_POOL__MAX_SIZE" in line for line in text.splitlines())
    # A key that needs a restart: shown as in force until then, the new value as pending.
    old_port, new_port = p.port, pgcluster.free_port()
    p.config_path.write_text(p.config_path.read_text().replace(f"port = {old_port}", f"port = {new_port}"))
    reloaded = p.poolctl("reload")
    assert reloaded.returncode == 0 and "needs restart: listen.port" in reloaded.stdout, reloaded.stdout
    shown = json.loads(p.poolctl("--json", "config", "show").stdout)
    assert shown["listen.port"] == old_port and shown["pending_restart"] == {"listen.port": new_port}
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:  # still the old port
        assert conn.execute("SELECT 1").fetchone() == (1,)
