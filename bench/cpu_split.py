"""Where a pooler's CPU goes per transaction: user and kernel time, side by side.

    .venv/bin/python bench/cpu_split.py [--rounds 3] [--seconds 5] [pgbench args]

Runs pgbench -n (default: -S -c 16 -j 2) against poold, PgBouncer and a
*floor proxy*, alternating (the order rotated each round), and prints the
median user and system CPU microseconds each spent per transaction
(/proc/PID/stat) with the TPS. Beside them: the CPU microseconds per
transaction of PostgreSQL (the postmaster's children) and of pgbench (its
rusage), and of the whole machine (/proc/stat) with its idle share. On a
saturated machine TPS follows the whole machine's CPU per transaction, and a
pooler can change what PostgreSQL and pgbench spend, not only its own.

The floor proxy (``floor_proxy.py``) is the least any Python pooler on uvloop
can do: one server connection per client, bytes copied from one transport to
the other, no parsing, no pooling. What poold spends above it is poold's own
work; what the floor spends above PgBouncer is the interpreter and the event
loop. Same rig as ``make bench`` (bench/run.py): a throwaway PostgreSQL,
loopback only, bounded in time.

With ``--server-tls`` (``make bench-cpu-tls``) the targets are those of
``make bench``'s server-TLS section instead: poold and PgBouncer with TLS
server legs (sslmode=require) and poold with plain legs ("poold-plain"); and
below the table, what TLS adds per transaction to each part (against
poold-plain), and the TPS ratio poold's TLS legs would reach at best if they
cost poold nothing: the plain machine's CPU per transaction over that plus
what TLS adds to PostgreSQL and pgbench alone.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run as bench_run  # bench/run.py
from run import CLK_TCK, Rig, pg_env, proc_cpu, proc_cpu_split, wait_port

HERE = Path(__file__).resolve().parent


def postgres_cpu(datadir: Path) -> float:
    """CPU seconds of the postmaster's children (backends, background processes)."""
    postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    total = 0.0
    for pid in children:
        try:
            total += proc_cpu(int(pid))
        except OSError:
            pass  # exited meanwhile
    return total


def children_cpu() -> float:
    """CPU seconds of this process's finished children: pgbench, the one run at a time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_cpu() -> tuple[float, float]:
    """Busy and idle seconds of the whole machine so far (all CPUs)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / CLK_TCK, idle / CLK_TCK


def tls_costs(medians: dict[str, list[float]]) -> str:
    """What TLS legs add per transaction to each part, against poold-plain's, and
    the best TPS ratio poold's TLS legs could reach on this machine: that of a
    pooler whose TLS costs it nothing, so that the machine spends per transaction
    only what TLS adds to PostgreSQL and pgbench (TPS follows the machine's CPU
    per transaction while it has no idle share)."""
    plain = medians["poold-plain"]
    lines = ["TLS legs add, us per transaction, against poold-plain:",
             f"{'':11} {'pooler':>8} {'postgres':>9} {'pgbench':>8} {'machine':>8} {'tps ratio':>10}"]
    for target in ("poold", "pgbouncer"):
        m = medians[target]
        lines.append(f"{target:11} {m[1] + m[2] - plain[1] - plain[2]:8.1f} {m[3] - plain[3]:9.1f} "
                     f"{m[4] - plain[4]:8.1f} {m[5] - plain[5]:8.1f} {m[0] / plain[0]:10.2f}")
    # the same server side as poold's TLS run, at no cost to the pooler
    best = plain[5] / (plain[5] + medians["poold"][3] - plain[3] + medians["poold"][4] - plain[4])
    lines.append(f"a pooler whose TLS legs cost it nothing: tps ratio at most {best:.2f}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5, help="pgbench -T per run (whole seconds)")
    ap.add_argument("--server-tls", action="store_true",
                    help="TLS server legs: poold and PgBouncer with them, poold-plain without")
    args, pgbench_args = ap.parse_known_args()
    pgbench_args = pgbench_args or ["-S", "-c", "16", "-j", "2"]
    bench_run.ensure_pgbouncer()
    work = Path(tempfile.mkdtemp(prefix="poold-cpu-"))
    os.chmod(work, 0o755)
    rig = Rig(work, "scram-sha-256")
    floor = None
    try:
        rig.start_postgres()
        subprocess.run(["pgbench", "-i", "-q", "-s", "10"], env=pg_env(rig.ports["direct"]), check=True,
                       capture_output=True)
        rig.server_tls = args.server_tls
        rig.start_poolers()
        assert rig.pg is not None
        datadir = rig.pg.datadir
        if args.server_tls:
            names = ("poold", "pgbouncer", "poold-plain")
            ports = {t: rig.ports[t] for t in names}
            pids = {t: rig.pid(t) for t in names}
        else:
            floor_port = bench_run.pgcluster.free_port()
            floor = subprocess.Popen([sys.executable, str(HERE / "floor_proxy.py"), str(floor_port),
                                      str(rig.ports["direct"])])
            wait_port(floor_port)
            ports = {"poold": rig.ports["poold"], "pgbouncer": rig.ports["pgbouncer"], "floor": floor_port}
            pids = {"poold": rig.pid("poold"), "pgbouncer": rig.pid("pgbouncer"), "floor": floor.pid}
        results: dict[str, list[tuple[float, ...]]] = {t: [] for t in ports}
        for r in range(args.rounds):
            for target in bench_run.round_order(r, tuple(ports)):
                port, pid = ports[target], pids[target]
                assert pid is not None
                before, pg_before, machine_before = proc_cpu_split(pid), postgres_cpu(datadir), machine_cpu()
                client_before = children_cpu()
                out = subprocess.run(["pgbench", "-n", "-T", str(args.seconds), *pgbench_args], env=pg_env(port),
                                     capture_output=True, text=True, check=True).stdout
                client = children_cpu() - client_before
                after, pg_after, machine_after = proc_cpu_split(pid), postgres_cpu(datadir), machine_cpu()
                n = int(re.search(r"processed: (\d+)", out).group(1))  # type: ignore[union-attr]
                tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
                busy, idle = (b - a for a, b in zip(machine_before, machine_after, strict=True))
                per_tx = [x / n * 1e6 for x in (after[0] - before[0], after[1] - before[1], pg_after - pg_before,
                                                client, busy)]
                results[target].append((tps, *per_tx, idle / (busy + idle)))
                time.sleep(0.5)
        print(f"pgbench -n {' '.join(pgbench_args)}: medians of {args.rounds} alternating rounds of {args.seconds:g} s")
        print(f"{'':11} {'tps':>8} {'user us/tx':>11} {'sys us/tx':>10} {'total':>7}   "
              f"{'postgres':>8} {'pgbench':>8} {'machine':>8} {'idle':>6}")
        medians = {target: [statistics.median(r[i] for r in rows) for i in range(7)]
                   for target, rows in results.items()}
        for target, (tps, user, system, pg, client, machine, idle) in medians.items():
            print(f"{target:11} {tps:8.0f} {user:11.1f} {system:10.1f} {user + system:7.1f}   "
                  f"{pg:8.1f} {client:8.1f} {machine:8.1f} {idle:6.1%}")
        if args.server_tls:
            print(tls_costs(medians))
        return 0
    finally:
        if floor is not None:
            floor.kill()
        rig.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
