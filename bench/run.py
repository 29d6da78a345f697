"""`make bench`: poold against PgBouncer and direct PostgreSQL, same machine, same run.

Starts a throwaway PostgreSQL, PgBouncer and poold. PgBouncer is the newest
release, built once from the reference source into .bench/ when the reference
(shared/reference/ beside the checkout, or $POOLD_REFERENCE_DIR) is present,
else Debian's package (installed with apt-get when missing and we are root);
the output and the JSON name the version compared against. Both poolers run
in transaction mode with 10 server connections and SCRAM client auth. Then, in alternating
rounds (poold, PgBouncer, direct, the order rotated each round so that no
target always runs in the same place, e.g. always right after direct's heavier
load; 5 rounds, --rounds to change), runs pgbench -n:

  select-only (-S) and TPC-B-like, each at -c 16 and -c 200, -M simple,
  -M extended and -M prepared (named statements carried across server
  connections: PgBouncer 1.21+ with max_prepared_statements, or the row has no
  PgBouncer figure); and select-only -C (a new connection, with SCRAM, per
  transaction), once for a user whose SCRAM verifier is in the auth files and
  once ("-C plain") for one whose plain-text password is, so that the pooler
  derives the SCRAM keys itself;

and times a 100k-row SELECT and a 100k-row COPY TO STDOUT through each. For
every run it records TPS, average and p99 latency (pgbench's per-transaction
log, sampled), and the pooler's CPU time per transaction (/proc/PID/stat);
peak RSS (VmHWM) per pooler. Then the large-request section (bench/large.py:
8, 32 and 60 MB queries and a ~22 MB result, and select-only TPS beside a client
looping on 60 MB queries; --large runs it alone, in a few minutes). Last, it
opens 10,000 idle client connections to each pooler and reports RSS per client
connection.

Prints one table of medians with poold/PgBouncer ratios (and one for the
large-request section), and writes bench/results/bench-<time>.json and .png.
Loopback only; bounded in time: about 11 minutes by default, --quick about 2,
plus the large-request section (a few minutes where large requests stream;
about 10 where they cost the pooler quadratic time).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import glob
import json
import os
import re
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: what the harness builds and keeps between runs (the reference PgBouncer)
BENCH_CACHE = ROOT / ".bench"
sys.path.insert(0, str(ROOT / "scripts"))
import pgcluster  # noqa: E402

POOL_SIZE = 10
USER = "bench"
PASSWORD = "bench-pw"
#: a second client user whose password the auth files hold in plain text (as
#: PgBouncer needs it to log in to a SCRAM server with it): the pooler derives
#: the SCRAM keys itself, PBKDF2 at 4096 iterations. Both poolers' server
#: connections are the DSN's user, USER, for either client user.
PLAIN_USER = "bench_plain"
TARGETS = ("poold", "pgbouncer", "direct")
CLK_TCK = os.sysconf("SC_CLK_TCK")
BULK_REPEAT = 5


def round_order(r: int, targets: tuple[str, ...] = TARGETS) -> tuple[str, ...]:
    """The targets in round ``r``: rotated, so each takes each place in turn."""
    k = r % len(targets)
    return targets[k:] + targets[:k]


@dataclass
class Workload:
    name: str
    args: list[str]
    clients: int
    user: str = USER


def workloads() -> list[Workload]:
    out = []
    for script, flag in (("select-only", ["-S"]), ("tpcb", [])):
        for clients in (16, 200):
            for mode in ("simple", "extended", "prepared"):
                # -M prepared: a thread per client. pgbench prepares with a synchronous
                # PQprepare, which blocks its thread's other clients; one of them may hold
                # (inside BEGIN ... END) the pooled server connection that Parse waits for,
                # and both PgBouncer 1.25.2 and poold then wait out their timeouts.
                threads = ["-j", str(clients)] if mode == "prepared" else []
                out.append(Workload(f"{script} c{clients} {mode}",
                                    [*flag, "-M", mode, "-c", str(clients), *threads], clients))
    out.append(Workload("select-only c16 -C", ["-S", "-C", "-c", "16"], 16))
    out.append(Workload("select-only c16 -C plain", ["-S", "-C", "-c", "16"], 16, PLAIN_USER))
    return out


# -- processes ---------------------------------------------------------------


def reference_dir() -> Path | None:
    """The shared reference material (the newest PgBouncer's source and its build
    script), when present: $POOLD_REFERENCE_DIR, else ``shared/reference`` beside
    this checkout or beside one of its parents (a worktree's)."""
    env = os.environ.get("POOLD_REFERENCE_DIR")
    candidates = [Path(env)] if env else [d / "shared" / "reference" for d in ROOT.parents]
    for d in candidates:
        if (d / "build-pgbouncer.sh").is_file() and list(d.glob("pgbouncer-*.tar.gz")):
            return d
    return None


def reference_pgbouncer() -> str | None:
    """The reference PgBouncer, built once into .bench/pgbouncer-<version> with the
    reference's build script; None (with a warning) when the reference is absent or
    the build fails, so that the run falls back to Debian's package."""
    ref = reference_dir()
    if ref is None:
        return None
    tarball = sorted(ref.glob("pgbouncer-*.tar.gz"))[-1]
    version = tarball.name.removeprefix("pgbouncer-").removesuffix(".tar.gz")
    prefix = BENCH_CACHE / f"pgbouncer-{version}"
    binary = prefix / "bin" / "pgbouncer"
    if not os.access(binary, os.X_OK):
        print(f"building PgBouncer {version} from {tarball} into {prefix} (once, about a minute) ...", flush=True)
        BENCH_CACHE.mkdir(exist_ok=True)
        r = subprocess.run(["bash", str(ref / "build-pgbouncer.sh"), str(prefix)], capture_output=True, text=True)
        if r.returncode != 0 or not os.access(binary, os.X_OK):
            print(f"warning: building PgBouncer {version} failed, falling back to Debian's: "
                  f"{(r.stderr or r.stdout).strip()[-500:]}", file=sys.stderr, flush=True)
            return None
    return str(binary)


def debian_pgbouncer() -> str:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing pgbouncer (apt-get) ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "pgbouncer"], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        return shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    raise SystemExit("pgbouncer is not installed: apt-get install pgbouncer (as root)")


@functools.cache
def ensure_pgbouncer() -> str:
    """The PgBouncer to compare against: the reference build (the newest release)
    when the reference is present, else Debian's package."""
    return reference_pgbouncer() or debian_pgbouncer()


def pgbouncer_version() -> str:
    """``pgbouncer --version``'s first line, e.g. "PgBouncer 1.25.2"."""
    out = subprocess.run([ensure_pgbouncer(), "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "PgBouncer (unknown version)"


def pgbouncer_prepares() -> bool:
    """Whether this PgBouncer carries named prepared statements (1.21 and newer)."""
    found = re.search(r"(\d+)\.(\d+)", pgbouncer_version())
    return found is not None and (int(found.group(1)), int(found.group(2))) >= (1, 21)


def targets_for(w: Workload) -> tuple[str, ...]:
    """Who runs a workload: ``-M prepared`` breaks a PgBouncer older than 1.21."""
    if "-M" in w.args and w.args[w.args.index("-M") + 1] == "prepared" and not pgbouncer_prepares():
        return tuple(t for t in TARGETS if t != "pgbouncer")
    return TARGETS


def raise_nofile() -> None:
    """Soft descriptor limit up to the hard one (10,000 idle clients need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 65536:
        hard_target = 65536
    else:
        hard_target = hard
    if soft < hard_target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard_target, hard))


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu(pid: int) -> float:
    return sum(proc_cpu_split(pid))


def proc_mem(pid: int, key: str) -> int:
    """VmRSS or VmHWM in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


class Rig:
    """PostgreSQL, PgBouncer and poold, for one benchmark run."""

    def __init__(self, work: Path, auth: str) -> None:
        self.work = work
        self.auth = auth
        #: extra lines for poold's [pool] section (the large-request section turns
        #: poold's query and statement timeouts off: PgBouncer's are off by default)
        self.poold_pool_extra = ""
        self.pg: pgcluster.Cluster | None = None
        self.poold: subprocess.Popen[bytes] | None = None
        self.pgbouncer: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        #: TLS on both poolers' server legs (poold: sslmode=require, PgBouncer:
        #: server_tls_sslmode=require), and a second poold with plain legs beside
        #: them, "poold-plain" (bench/servertls.py); plain legs otherwise
        self.server_tls = False
        self.poold_plain: subprocess.Popen[bytes] | None = None

    def start_postgres(self) -> None:
        self.pg = pgcluster.Cluster(base=str(self.work / "pg"))
        self.pg.init("max_connections = 400", *server_tls_conf(self.work / "tls", self.pg.os_user))
        self.pg.start()
        self.pg.create_role_and_db(USER, PASSWORD)
        self.ports["direct"] = self.pg.port
        verifier = self.pg.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{USER}'")
        self.pg.psql(f"CREATE ROLE {PLAIN_USER} LOGIN PASSWORD '{PASSWORD}'")
        (self.work / "userlist.txt").write_text(f'"{USER}" "{verifier}"\n"{PLAIN_USER}" "{PASSWORD}"\n')

    def start_poolers(self) -> None:
        assert self.pg is not None
        self.stop_poolers()
        pg = self.pg
        sslmode = "require" if self.server_tls else "disable"
        pport, bport = pgcluster.free_port(), pgcluster.free_port()
        self.ports["poold"], self.ports["pgbouncer"] = pport, bport
        self.poold = self.start_poold("poold", pport, sslmode)
        if self.server_tls:
            self.ports["poold-plain"] = pgcluster.free_port()
            self.poold_plain = self.start_poold("poold-plain", self.ports["poold-plain"], "disable")
        bdir = self.work / "pgbouncer"
        bdir.mkdir(exist_ok=True)
        shutil.copy(self.work / "userlist.txt", bdir / "userlist.txt")
        (bdir / "pgbouncer.ini").write_text(f"""
[databases]
{USER} = host=127.0.0.1 port={pg.port} dbname={USER} user={USER} password={PASSWORD}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {bport}
unix_socket_dir =
auth_type = {self.auth}
auth_file = {bdir}/userlist.txt
pool_mode = transaction
default_pool_size = {POOL_SIZE}
min_pool_size = {POOL_SIZE}
max_client_conn = 12000
logfile = {bdir}/pgbouncer.log
log_connections = 0
log_disconnections = 0
server_tls_sslmode = {sslmode}
{"max_prepared_statements = 200" if pgbouncer_prepares() else ""}
""")
        if pg.os_user:
            for p in [bdir, *bdir.iterdir()]:
                shutil.chown(p, pg.os_user, pg.os_user)
        self.pgbouncer = subprocess.Popen([ensure_pgbouncer(), "-q", str(bdir / "pgbouncer.ini")],
                                          user=pg.os_user, preexec_fn=raise_nofile)
        names = ["poold", "pgbouncer"] + (["poold-plain"] if self.server_tls else [])
        for name in names:
            wait_port(self.ports[name])
        # the pools warm before anything is measured
        for name in names:
            run_psql(self.ports[name], "SELECT 1")

    def start_poold(self, name: str, port: int, sslmode: str) -> subprocess.Popen[bytes]:
        assert self.pg is not None
        pg = self.pg
        dsn = f"host=127.0.0.1 port={pg.port} dbname={USER} user={USER} password={PASSWORD} sslmode={sslmode}"
        (self.work / f"{name}.toml").write_text(f"""
[listen]
port = {port}
unix_socket_dir = ""
[control]
socket = ""
[http]
host = ""
[auth]
type = "{self.auth}"
file = "userlist.txt"
[clients]
max_client_conn = 12000
[daemon]
log_level = "warning"
[pool]
mode = "transaction"
max_size = {POOL_SIZE}
min_size = {POOL_SIZE}
{self.poold_pool_extra}
[databases.{USER}]
dsn = "{dsn}"
""")
        # poold's log (pool_pressure warnings: the pools are saturated on purpose) goes to a
        # file, so that the bench's output stays the table.
        with open(self.work / f"{name}.log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "poold", "-c", str(self.work / f"{name}.toml")],
                                    preexec_fn=raise_nofile, stdout=subprocess.DEVNULL, stderr=log)

    def pid(self, target: str) -> int | None:
        proc = {"poold": self.poold, "pgbouncer": self.pgbouncer, "poold-plain": self.poold_plain}.get(target)
        return proc.pid if proc is not None else None

    def stop_poolers(self) -> None:
        for proc in (self.poold, self.pgbouncer, self.poold_plain):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT if proc is self.pgbouncer else signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.poold = self.pgbouncer = self.poold_plain = None

    def stop(self) -> None:
        self.stop_poolers()
        if self.pg is not None:
            self.pg.destroy()


def server_tls_conf(directory: Path, os_user: str | None) -> list[str]:
    """postgresql.conf lines for ssl=on with a certificate from a throwaway CA
    (trustme), its files owned by PostgreSQL's OS user. The plain rows' DSNs say
    sslmode=disable (PgBouncer: server_tls_sslmode = disable), so only the TLS
    section's legs are TLS."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    cert = trustme.CA().issue_cert("127.0.0.1", "localhost")
    crt, key = directory / "server.crt", directory / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    cert.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    if os_user:
        for path in (directory, crt, key):
            shutil.chown(path, os_user, os_user)
    return ["ssl = on", f"ssl_cert_file = '{crt}'", f"ssl_key_file = '{key}'"]


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on port {port}")


def pg_env(port: int, user: str = USER) -> dict[str, str]:
    return dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(port), PGUSER=user, PGDATABASE=USER,
                PGPASSWORD=PASSWORD, PGSSLMODE="disable")


def run_psql(port: int, sql: str, out: Any = subprocess.DEVNULL) -> None:
    subprocess.run([pgcluster.client_tool("psql"), "-X", "-q", "-c", sql], env=pg_env(port), check=True,
                   stdout=out, stderr=subprocess.PIPE, timeout=300)


# -- measurements --------------------------------------------------------------


@dataclass
class Sample:
    tps: float
    avg_ms: float | None  # None: no transaction logged
    p99_ms: float | None
    cpu_us_per_tx: float | None
    failed: int


def run_pgbench(rig: Rig, target: str, w: Workload, seconds: float, logdir: Path) -> Sample:
    for f in logdir.glob("tx*"):
        f.unlink()
    pid = rig.pid(target)
    cpu0 = proc_cpu(pid) if pid else 0.0
    cmd = [pgcluster.client_tool("pgbench"), "-n", "-j", "2", "-T", str(int(seconds)), *w.args,
           "-l", "--sampling-rate=0.2", f"--log-prefix={logdir}/tx"]
    r = subprocess.run(cmd, env=pg_env(rig.ports[target], w.user), capture_output=True, text=True,
                       timeout=seconds + 120)
    cpu1 = proc_cpu(pid) if pid else 0.0
    if r.returncode != 0:
        raise SystemExit(f"pgbench failed on {target} ({w.name}): {r.stderr.strip()[-500:]}")
    # pgbench prints no "tps =" line (nor latencies) for a run that processed no
    # transaction, e.g. a 1 s run whose 200 clients were still logging in.
    processed_m = re.search(r"transactions actually processed: (\d+)", r.stdout)
    tps_m = re.search(r"tps = ([\d.]+)", r.stdout)
    processed = int(processed_m.group(1)) if processed_m else 0
    tps = float(tps_m.group(1)) if tps_m else 0.0
    failed_m = re.search(r"number of failed transactions: (\d+)", r.stdout)
    latencies = []
    for log_name in glob.glob(f"{logdir}/tx*"):
        with open(log_name) as tx_log:
            for line in tx_log:
                parts = line.split()
                if len(parts) >= 3:
                    latencies.append(int(parts[2]))
    latencies.sort()
    avg = statistics.fmean(latencies) / 1000 if latencies else None
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] / 1000 if latencies else None
    cpu = (cpu1 - cpu0) / processed * 1e6 if pid and processed else None
    return Sample(tps, avg, p99, cpu, int(failed_m.group(1)) if failed_m else 0)


def time_bulk(rig: Rig, target: str, sql: str, repeat: int = BULK_REPEAT) -> tuple[float, float | None]:
    """Wall seconds and pooler CPU seconds per statement, over ``repeat`` runs in one psql.

    /proc counts CPU in 10 ms ticks; several statements per sample make the
    pooler's share measurable.
    """
    pid = rig.pid(target)
    cpu0 = proc_cpu(pid) if pid else 0.0
    t0 = time.perf_counter()
    run_psql(rig.ports[target], ";".join([sql] * repeat))
    wall = (time.perf_counter() - t0) / repeat
    cpu = (proc_cpu(pid) - cpu0) / repeat if pid else None
    return wall, cpu


async def open_idle_clients(port: int, n: int) -> list[asyncio.StreamWriter]:
    """n logged-in, idle client connections (trust auth), opened 200 at a time."""
    body = struct.pack("!I", 196608) + f"user\0{USER}\0database\0{USER}\0\0".encode()
    startup = struct.pack("!I", len(body) + 4) + body
    writers: list[asyncio.StreamWriter] = []
    sem = asyncio.Semaphore(200)

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(startup)
            buf = b""
            while not buf.endswith(b"Z\0\0\0\5I"):
                chunk = await asyncio.wait_for(reader.read(4096), 30)
                if not chunk:
                    raise ConnectionError(f"closed during login: {buf[-200:]!r}")
                buf += chunk
            writers.append(writer)

    await asyncio.gather(*(one() for _ in range(n)))
    return writers


def memory_per_client(rig: Rig, target: str, n: int) -> dict[str, float]:
    pid = rig.pid(target)
    assert pid is not None
    before = proc_mem(pid, "VmRSS")

    async def main() -> int:
        writers = await open_idle_clients(rig.ports[target], n)
        await asyncio.sleep(1.0)
        during = proc_mem(pid, "VmRSS")
        for w in writers:
            w.close()
        return during

    during = asyncio.run(main())
    return {"rss_before_mb": before / 2**20, "rss_with_clients_mb": during / 2**20,
            "kb_per_client": (during - before) / n / 1024}


# -- report ----------------------------------------------------------------------


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # workload -> target -> samples
    bulk: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def paired(per_target: dict[str, list[dict[str, Any]]], metric: str) -> dict[str, Any]:
    """poold/PgBouncer within each round (measured a few seconds apart, so slow
    drifts in the machine's load cancel): their median and their range."""
    ratios = [p[metric] / b[metric] for p, b in zip(per_target.get("poold", []), per_target.get("pgbouncer", []),
                                                                strict=False)  # a run that failed is left out
              if p.get(metric) and b.get(metric)]
    if not ratios:
        return {"paired": None, "rounds": None}
    return {"paired": statistics.median(ratios), "rounds": f"{min(ratios):.2f}-{max(ratios):.2f}"}


def summary(res: Results) -> list[dict[str, Any]]:
    rows = []
    row: dict[str, Any]
    for wname, per_target in res.runs.items():
        for metric in ("tps", "avg_ms", "p99_ms", "cpu_us_per_tx"):
            row = {"workload": wname, "metric": metric}
            for t in TARGETS:
                row[t] = med([s[metric] for s in per_target.get(t, [])])
            row["ratio"] = row["poold"] / row["pgbouncer"] if row["poold"] and row["pgbouncer"] else None
            rows.append(row | paired(per_target, metric))
    for bname, per_target in res.bulk.items():
        for metric in ("wall_s", "cpu_s"):
            row = {"workload": bname, "metric": metric}
            for t in TARGETS:
                row[t] = med([s[metric] for s in per_target.get(t, [])])
            row["ratio"] = row["poold"] / row["pgbouncer"] if row["poold"] and row["pgbouncer"] else None
            rows.append(row | paired(per_target, metric))
    row = {"workload": "whole run", "metric": "peak_rss_mb", "direct": None}
    row |= {t: res.peak_rss_mb.get(t) for t in ("poold", "pgbouncer")}
    row["ratio"] = row["poold"] / row["pgbouncer"] if row["poold"] and row["pgbouncer"] else None
    rows.append(row)
    if res.memory:
        row = {"workload": f"{res.meta.get('idle_clients')} idle clients", "metric": "kb_per_client", "direct": None}
        row |= {t: res.memory.get(t, {}).get("kb_per_client") for t in ("poold", "pgbouncer")}
        row["ratio"] = row["poold"] / row["pgbouncer"] if row["poold"] and row["pgbouncer"] else None
        rows.append(row)
    return rows


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)


def table(rows: list[dict[str, Any]], cols: list[str] | None = None) -> str:
    cols = cols or ["workload", "metric", "poold", "pgbouncer", "direct", "ratio", "paired", "rounds"]
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    head = "| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join([head, sep, *body])


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tps = [r for r in rows if r["metric"] == "tps"]
    cpu = [r for r in rows if r["metric"] == "cpu_us_per_tx"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    # Log scales: TPC-B beside select-only, and -C plain's PBKDF2 beside a relayed statement.
    for ax, data, title, targets in ((axes[0], tps, "TPS (median, log scale)", TARGETS),
                                     (axes[1], cpu, "pooler CPU per transaction, µs (median, log scale)",
                                      TARGETS[:2])):
        names = [r["workload"] for r in data]
        width = 0.8 / len(targets)
        for i, t in enumerate(targets):
            ax.bar([j + i * width for j in range(len(names))], [r[t] or 0 for r in data], width, label=t)
        ax.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(names))])
        ax.set_xticklabels(names, rotation=40, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# -- main --------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="about 2 minutes: 1 s runs, 1,000 idle clients")
    ap.add_argument("--large", action="store_true",
                    help="only the large-request section (bench/large.py), a few minutes")
    ap.add_argument("--large-mb", default=None,
                    help="query sizes of the large-request section, MB, comma-separated (the largest also "
                         "makes the extended-protocol case, the ten-at-once case and the interference loop; "
                         "default 8,32,60; 8,32 and no ten-at-once case with --quick)")
    ap.add_argument("--server-tls", action="store_true",
                    help="only the server-TLS section (bench/servertls.py): TLS server legs, a few minutes")
    ap.add_argument("--rounds", type=int, default=None,
                    help="alternating rounds (default 5; 3 with --quick); at least 3")
    ap.add_argument("--seconds", type=int, default=None, help="pgbench -T per run (whole seconds)")
    ap.add_argument("--idle-clients", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    seconds = args.seconds or (1 if args.quick else 4)
    idle = args.idle_clients or (1000 if args.quick else 10_000)
    # Five rounds by default: on a noisy 2-core machine a median of three moves
    # by about 0.05 in ratio between runs; five narrows that at 2.5 minutes more.
    rounds = max(3, args.rounds or (3 if args.quick else 5))
    # The large-request section: three rounds (a 60 MB query may take seconds per
    # target), interference runs long enough for several 60 MB queries.
    large_rounds = max(3, min(rounds, args.rounds or 3))
    large_seconds = args.seconds or (3 if args.quick else 8)
    large_mb = tuple(int(n) for n in (args.large_mb or ("8,32" if args.quick else "8,32,60")).split(","))
    together = 0 if args.quick else 10
    raise_nofile()
    ensure_pgbouncer()
    pgcluster.ensure_binaries()
    import large  # bench/large.py (imports this module as `run`)
    import servertls  # bench/servertls.py (likewise)

    work = Path(tempfile.mkdtemp(prefix="poold-bench-"))
    os.chmod(work, 0o755)
    logdir = work / "pgbench-log"
    logdir.mkdir()
    res = Results(meta={"seconds": seconds, "rounds": rounds, "order": "rotated each round",
                        "pool_size": POOL_SIZE, "idle_clients": idle, "cpus": os.cpu_count(),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    rig = Rig(work, "scram-sha-256")
    started = time.monotonic()
    section: dict[str, Any] = {}
    try:
        rig.start_postgres()
        assert rig.pg is not None
        res.meta["postgres"] = rig.pg.psql("SHOW server_version")
        res.meta["pgbouncer"] = pgbouncer_version()
        res.meta["pgbouncer_binary"] = ensure_pgbouncer()
        scale = "1" if args.large else "10"
        tls_runs: dict[str, Any] = {}
        print(f"pgbench -i -s {scale} ... (PostgreSQL {res.meta['postgres']}, compared against "
              f"{res.meta['pgbouncer']}: {res.meta['pgbouncer_binary']})", flush=True)
        subprocess.run([pgcluster.client_tool("pgbench"), "-i", "-q", "-s", scale], env=pg_env(rig.ports["direct"]),
                       check=True, capture_output=True)
        if not args.large:  # (the server-TLS section reads bench_rows too)
            run_psql(rig.ports["direct"],
                     "CREATE TABLE bench_rows AS SELECT g AS id, md5(g::text) AS a, now() AS b "
                     "FROM generate_series(1, 100000) g")
            run_psql(rig.ports["direct"], f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {PLAIN_USER}")  # direct -C
        if args.server_tls:
            tls_runs = servertls.run_section(rig, rounds, seconds, logdir)
        elif not args.large:
            rig.start_poolers()
            for r in range(rounds):
                for w in workloads():
                    for target in round_order(r, targets_for(w)):
                        s = run_pgbench(rig, target, w, seconds, logdir)
                        res.runs.setdefault(w.name, {}).setdefault(target, []).append(s.__dict__)
                        print(f"round {r + 1}/{rounds} {w.name:<24} {target:<10} tps={s.tps:>9.0f} "
                              f"avg={fmt(s.avg_ms)}ms p99={fmt(s.p99_ms)}ms cpu/tx={fmt(s.cpu_us_per_tx)}us "
                              f"failed={s.failed}", flush=True)
                for bname, sql in (("100k-row SELECT", "SELECT * FROM bench_rows"),
                                   ("100k-row COPY TO STDOUT", "COPY bench_rows TO STDOUT")):
                    for target in round_order(r):
                        wall, cpu = time_bulk(rig, target, sql)
                        res.bulk.setdefault(bname, {}).setdefault(target, []).append({"wall_s": wall, "cpu_s": cpu})
            for t in ("poold", "pgbouncer"):
                pid = rig.pid(t)
                res.peak_rss_mb[t] = proc_mem(pid, "VmHWM") / 2**20 if pid else 0.0
            tls_runs = servertls.run_section(rig, rounds, seconds, logdir)
        if not args.server_tls:
            section = large.run_section(rig, large_rounds, large_seconds, logdir, large_mb, together)
        if not args.large and not args.server_tls:
            # memory: idle clients, trust auth so the client side is not the bottleneck
            rig.auth = "trust"
            rig.start_poolers()
            for t in ("poold", "pgbouncer"):
                res.memory[t] = memory_per_client(rig, t, idle)
                print(f"{idle} idle clients on {t}: {res.memory[t]['kb_per_client']:.1f} KiB each", flush=True)
    finally:
        rig.stop()
        shutil.rmtree(work, ignore_errors=True)
    res.meta["elapsed_s"] = round(time.monotonic() - started, 1)
    rows = summary(res) if not args.large and not args.server_tls else []
    large_rows = large.summary(section) if section else []
    tls_rows = servertls.summary(tls_runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"bench-large-{stamp}" if args.large else f"bench-tls-{stamp}" if args.server_tls else f"bench-{stamp}"
    (out / f"{name}.json").write_text(json.dumps({"meta": res.meta, "summary": rows, "runs": res.runs,
                                                  "bulk": res.bulk, "memory": res.memory,
                                                  "large": section, "large_summary": large_rows,
                                                  "server_tls": tls_runs, "server_tls_summary": tls_rows}, indent=1))
    if rows:
        try:
            chart(rows, out / f"{name}.png")
        except ImportError:
            print("matplotlib missing: no chart (pip install matplotlib)", file=sys.stderr)
    against = f"compared against {res.meta['pgbouncer']} ({res.meta['pgbouncer_binary']})"
    if rows:
        print(f"\nMedians of {rounds} alternating rounds, {seconds:g} s each; ratio = poold / PgBouncer of the "
              f"medians; paired = median of the per-round ratios, rounds = their range; {against} "
              f"({res.meta['elapsed_s']} s in all)\n")
        print(table(rows))
    if tls_rows:
        print(f"\nTLS server legs: medians of {rounds} alternating rounds, {seconds:g} s each; poold and "
              f"PgBouncer (server_tls_sslmode = require) with TLS legs, poold-plain with plain ones; ratio = "
              f"poold / PgBouncer, vs_plain = poold / poold-plain; {against}\n")
        print(table(tls_rows, servertls.COLUMNS))
    if large_rows:
        print(f"\nLarge requests: medians of {large_rounds} alternating rounds; wall and pooler CPU in ms per query; "
              f"memory per case (fresh poolers), MB; interference {large_seconds} s runs; ratio = poold / PgBouncer; "
              f"{against} "
              f"({res.meta['elapsed_s']} s in all)\n")
        print(table(large_rows))
    print(f"\nresults: {out}/{name}.json" + (" and .png" if rows else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
