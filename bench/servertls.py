"""The server-TLS section of `make bench`: TLS on the poolers' server legs.

poold with TLS server legs (``sslmode=require``: the relay reads and writes
through libpq's OpenSSL session) against PgBouncer with ``server_tls_sslmode =
require``, both with plain-text clients and SCRAM client auth, and a second
poold with plain legs beside them ("poold-plain") for the cost of TLS itself.
In alternating rounds (the order rotated each round): pgbench select-only and
TPC-B-like, -M simple, at -c 16 and -c 200, and a 100k-row SELECT.

Each TLS run is checked to be TLS: pg_stat_ssl of the server connection a
pooler hands out says so, or the section stops.
"""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path
from typing import Any

from run import (
    Rig,
    Workload,
    fmt,
    med,
    pg_env,
    pgcluster,
    round_order,
    run_pgbench,
    time_bulk,
)

TARGETS = ("poold", "pgbouncer", "poold-plain")
TLS_OF_BACKEND = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def workloads() -> list[Workload]:
    return [Workload(f"tls {script} c{clients}", [*flag, "-M", "simple", "-c", str(clients)], clients)
            for script, flag in (("select-only", ["-S"]), ("tpcb", [])) for clients in (16, 200)]


def server_leg_is_tls(port: int) -> bool:
    out = subprocess.run([pgcluster.client_tool("psql"), "-X", "-At", "-c", TLS_OF_BACKEND], env=pg_env(port),
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    return out == "t"


def run_section(rig: Rig, rounds: int, seconds: float, logdir: Path) -> dict[str, Any]:
    """Every workload and the 100k-row SELECT, ``rounds`` alternating rounds; the
    samples by workload and target."""
    rig.server_tls = True
    rig.start_poolers()
    try:
        for target, tls in (("poold", True), ("pgbouncer", True), ("poold-plain", False)):
            if server_leg_is_tls(rig.ports[target]) is not tls:
                raise SystemExit(f"{target}: the server leg is {'not ' if tls else ''}TLS")
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for r in range(rounds):
            for w in workloads():
                for target in round_order(r, TARGETS):
                    s = run_pgbench(rig, target, w, seconds, logdir)
                    runs.setdefault(w.name, {}).setdefault(target, []).append(s.__dict__)
                    print(f"round {r + 1}/{rounds} {w.name:<22} {target:<11} tps={s.tps:>9.0f} "
                          f"cpu/tx={fmt(s.cpu_us_per_tx)}us failed={s.failed}", flush=True)
            for target in round_order(r, TARGETS):
                wall, cpu = time_bulk(rig, target, "SELECT * FROM bench_rows")
                runs.setdefault("tls 100k-row SELECT", {}).setdefault(target, []).append(
                    {"wall_s": wall, "cpu_s": cpu})
                print(f"round {r + 1}/{rounds} tls 100k-row SELECT   {target:<11} wall={wall * 1000:.0f}ms "
                      f"cpu={fmt(cpu * 1000 if cpu is not None else None)}ms", flush=True)
    finally:
        rig.server_tls = False
        rig.stop_poolers()
    return runs


def paired(per_target: dict[str, list[dict[str, Any]]], metric: str, a: str, b: str) -> float | None:
    """The median of a/b within each round (measured seconds apart, so that slow drifts
    in the machine's load cancel)."""
    ratios = [x[metric] / y[metric] for x, y in zip(per_target.get(a, []), per_target.get(b, []), strict=False)
              if x.get(metric) and y.get(metric)]
    return statistics.median(ratios) if ratios else None


def summary(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Medians per target; ratio = poold / PgBouncer, vs_plain = poold (TLS legs) /
    poold-plain, each of the medians and paired (the median of the per-round ratios);
    pgbouncer_vs_plain: PgBouncer with TLS legs / poold-plain, paired, the same cost
    of TLS (PostgreSQL's side of it included) seen through the other pooler."""
    rows = []
    for wname, per_target in runs.items():
        metrics = ("wall_s", "cpu_s") if "wall_s" in next(iter(per_target.values()))[0] else ("tps", "cpu_us_per_tx")
        for metric in metrics:
            row: dict[str, Any] = {"workload": wname, "metric": metric}
            for t in TARGETS:
                row[t] = med([s[metric] for s in per_target.get(t, [])])
            row["ratio"] = row["poold"] / row["pgbouncer"] if row["poold"] and row["pgbouncer"] else None
            row["paired"] = paired(per_target, metric, "poold", "pgbouncer")
            row["vs_plain"] = row["poold"] / row["poold-plain"] if row["poold"] and row["poold-plain"] else None
            row["paired_vs_plain"] = paired(per_target, metric, "poold", "poold-plain")
            # what TLS costs a pooler that is not poold, against the same plain baseline
            row["pgbouncer_vs_plain"] = paired(per_target, metric, "pgbouncer", "poold-plain")
            rows.append(row)
    return rows


COLUMNS = ["workload", "metric", *TARGETS, "ratio", "paired", "vs_plain", "paired_vs_plain", "pgbouncer_vs_plain"]
