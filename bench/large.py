"""Large requests and results: what one big message costs a pooler, and everyone else.

Part of `make bench` (bench/run.py); `bench/run.py --large` (`make bench-large`)
runs it alone, in a few minutes. Through poold, PgBouncer and direct, in
alternating rounds (order rotated each round), a raw protocol client (so that
the client's own cost is a sendall and a header scan, the same for every target)
sends:

  ``SELECT length($$<N MB of text>$$)`` as one simple Query, N = 8, 32, 60;
  the 60 MB text once more as the parameter of an extended-protocol
  Parse/Bind/Execute/Sync; and ``SELECT g, repeat('x', 200) FROM
  generate_series(1, 100000) g``, a ~22 MB result; and, last, ten clients
  sending the 60 MB Query at the same moment (one sample per batch).

Per case and target it records the wall time per query and the pooler's CPU
per query, in milliseconds (its threads' run time from
/proc/PID/task/*/schedstat, in nanoseconds; the JSON keeps utime+stime from
/proc/PID/stat beside it). Both poolers are started afresh for each case, so
their VmHWM is the case's peak, reported beside its growth over the idle
pooler's RSS and the RSS left once the clients have gone.

Last, interference: select-only pgbench with 16 clients, alone and while one
more client loops on 60 MB queries, through each target.

The poolers' client auth is trust here (login is not what is measured), and
poold's query and statement timeouts are off, as PgBouncer's are by default.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from run import (
    POOL_SIZE,
    USER,
    Rig,
    Workload,
    fmt,
    med,
    paired,
    proc_cpu,
    proc_mem,
    round_order,
    run_pgbench,
)

MB = 2**20
#: ReadyForQuery's type byte ends every reply the client waits for.
READY = ord("Z")
ERROR = ord("E")


# -- the protocol client ------------------------------------------------------------


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def simple_query(sql: bytes) -> bytes:
    return message(b"Q", sql + b"\0")


def extended_query(sql: bytes, param: bytes) -> bytes:
    """Parse/Bind/Execute/Sync of ``sql`` with one text parameter, unnamed statement and portal."""
    parse = message(b"P", b"\0" + sql + b"\0" + struct.pack("!H", 0))
    bind = message(b"B", b"\0\0" + struct.pack("!HHI", 0, 1, len(param)) + param + struct.pack("!H", 0))
    return parse + bind + message(b"E", b"\0" + struct.pack("!I", 0)) + message(b"S", b"")


class ProtocolError(RuntimeError):
    """The server (or pooler) answered with an ErrorResponse or closed the socket."""


class WireClient:
    """One client connection speaking the v3 protocol over a plain socket (trust auth).

    Replies are scanned for message headers only, through one reused receive
    buffer, so that a 22 MB result costs the client a few milliseconds and the
    pooler's cost is what differs between targets.
    """

    def __init__(self, port: int, user: str = USER, database: str = USER) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=300)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray(1 << 20)
        body = struct.pack("!I", 196608) + f"user\0{user}\0database\0{database}\0\0".encode()
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        self.wait_ready()

    def request(self, data: bytes) -> None:
        """Send one whole request and read its reply up to ReadyForQuery."""
        self.sock.sendall(data)
        self.wait_ready()

    def wait_ready(self) -> None:
        view = memoryview(self.buf)
        header = bytearray()
        kind = 0
        skip = 0  # body bytes of the current message still to come
        collected = bytearray()  # ErrorResponse and Authentication bodies
        error = b""
        while True:
            n = self.sock.recv_into(self.buf)
            if n == 0:
                raise ProtocolError(f"connection closed by the peer{': ' + error.decode(errors='replace') if error else ''}")
            pos = 0
            while pos < n:
                if skip:
                    take = min(skip, n - pos)
                    if kind in (ERROR, ord("R")):
                        collected += view[pos:pos + take]
                    pos += take
                    skip -= take
                    if skip:
                        continue
                    if kind == ERROR:
                        error = bytes(collected)
                    elif kind == ord("R") and collected[:4] != b"\0\0\0\0":
                        raise ProtocolError("the target asks for a password: this client speaks trust auth only")
                    elif kind == READY:
                        if error:
                            raise ProtocolError(error.replace(b"\0", b" ").decode(errors="replace"))
                        return
                    continue
                take = min(5 - len(header), n - pos)
                header += view[pos:pos + take]
                pos += take
                if len(header) == 5:
                    kind = header[0]
                    skip = struct.unpack_from("!I", header, 1)[0] - 4
                    header.clear()
                    collected.clear()

    def close(self) -> None:
        try:
            self.sock.sendall(message(b"X", b""))
        except OSError:
            pass
        self.sock.close()


# -- the cases ---------------------------------------------------------------------


@dataclass
class Case:
    name: str
    request: bytes
    #: queries per sample: /proc counts CPU in 10 ms ticks, so small cases repeat
    repeat: int = 1
    #: clients sending ``request`` at the same moment (the sample is the whole batch)
    clients: int = 1


def cases(sizes_mb: tuple[int, ...], together: int) -> list[Case]:
    out = []
    for n in sizes_mb:
        text = b"x" * (n * MB)
        out.append(Case(f"{n} MB Query", simple_query(b"SELECT length($$" + text + b"$$)"), max(1, min(8, 64 // n))))
    big = max(sizes_mb)
    big_query = simple_query(b"SELECT length($$" + b"x" * (big * MB) + b"$$)")
    out.append(Case(f"{big} MB Bind (extended)", extended_query(b"SELECT length($1)", b"x" * (big * MB))))
    out.append(Case("100k-row result (~22 MB)",
                    simple_query(b"SELECT g, repeat('x', 200) FROM generate_series(1, 100000) g"), 5))
    if together > 1:
        out.append(Case(f"{together} clients x {big} MB Query at once (batch, 1 round)", big_query, 1, together))
    return out


def cpu_ns(pid: int) -> int:
    """CPU time the process's threads have run, in nanoseconds (each thread's
    /proc/PID/task/TID/schedstat): what utime+stime count, without their 10 ms
    ticks, which at PgBouncer's 60-100 ms for a 60 MB query are a 10-15 % step.
    A thread that exits inside the window takes its time with it; neither
    pooler starts or ends threads here (trust auth, no PBKDF2)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def time_case(rig: Rig, target: str, case: Case) -> dict[str, float | None]:
    """Wall and pooler CPU milliseconds per query (per batch when several clients send at once)."""
    pid = rig.pid(target)
    clients = [WireClient(rig.ports[target]) for _ in range(case.clients)]
    errors: list[BaseException] = []

    def send(client: WireClient) -> None:
        try:
            for _ in range(case.repeat):
                client.request(case.request)
        except BaseException as exc:  # reported below, never lost in a thread
            errors.append(exc)

    try:
        cpu0, ns0 = (proc_cpu(pid), cpu_ns(pid)) if pid else (0.0, 0)
        t0 = time.perf_counter()
        if case.clients == 1:
            send(clients[0])
        else:
            threads = [threading.Thread(target=send, args=(c,)) for c in clients]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        wall = (time.perf_counter() - t0) / case.repeat
        ticks = (proc_cpu(pid) - cpu0) / case.repeat if pid else None
        cpu = (cpu_ns(pid) - ns0) / case.repeat / 1e9 if pid else None
    finally:
        for c in clients:
            c.close()
    if errors:
        raise SystemExit(f"{case.name} failed through {target}: {errors[0]}")
    return {"wall_ms": wall * 1000, "cpu_ms": cpu * 1000 if cpu is not None else None,
            "cpu_ms_stat": ticks * 1000 if ticks is not None else None}


# -- interference ------------------------------------------------------------------


class QueryLoop(threading.Thread):
    """One client sending the same large request over and over until stopped."""

    def __init__(self, port: int, request: bytes) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.request = request
        self.stopping = threading.Event()
        self.started_one = threading.Event()
        self.done = 0
        self.error: BaseException | None = None
        self.client: WireClient | None = None

    def run(self) -> None:
        try:
            self.client = client = WireClient(self.port)
            try:
                while not self.stopping.is_set():
                    self.started_one.set()
                    client.request(self.request)
                    self.done += 1
            finally:
                client.close()
        except BaseException as exc:  # reported by the caller, never lost in the thread
            if not self.stopping.is_set() or self.error is None:
                self.error = exc
        finally:
            self.started_one.set()

    def stop(self, timeout: float = 120) -> None:
        """Let the request in flight finish (a cut one would cost the pooler a server
        connection and disturb what is measured next); cut it after ``timeout``."""
        self.stopping.set()
        self.join(timeout)
        if self.is_alive() and self.client is not None:
            self.error = TimeoutError(f"a large request still unanswered {timeout:g} s after the run")
            self.client.sock.shutdown(socket.SHUT_RDWR)
            self.join(30)


def interference(rig: Rig, target: str, request: bytes, seconds: int, logdir: Path, loaded: bool) -> dict[str, Any]:
    """select-only -c 16 TPS through ``target``, alone or beside a client looping on ``request``."""
    w = Workload("select-only c16", ["-S", "-M", "simple", "-c", "16"], 16)
    loop = QueryLoop(rig.ports[target], request) if loaded else None
    if loop is not None:
        loop.start()
        loop.started_one.wait(30)
        time.sleep(0.2)  # the first request on its way
    s = run_pgbench(rig, target, w, seconds, logdir)
    out: dict[str, Any] = {"tps": s.tps, "p99_ms": s.p99_ms}
    if loop is not None:
        loop.stop()
        if isinstance(loop.error, TimeoutError):  # recorded, and the run goes on
            print(f"warning: {target}: {loop.error}; cut", flush=True)
            out["large_cut"] = str(loop.error)
        elif loop.error is not None:
            raise SystemExit(f"the large-request loop failed on {target}: {loop.error}")
        out["large_queries"] = loop.done
    return out


# -- the section -------------------------------------------------------------------


def run_section(rig: Rig, rounds: int, seconds: int, logdir: Path,
                sizes_mb: tuple[int, ...] = (8, 32, 60), together: int = 10) -> dict[str, Any]:
    """Every case, then interference; returns the samples by case and target, and the memory."""
    rig.auth = "trust"
    rig.poold_pool_extra = "query_timeout = 0\nstatement_timeout = 0"
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    memory: dict[str, dict[str, dict[str, float]]] = {}
    for case in cases(sizes_mb, together):
        rig.start_poolers()
        idle = {t: proc_mem(pid, "VmRSS") for t in ("poold", "pgbouncer") if (pid := rig.pid(t))}
        # Several clients at once is about memory: one round (it takes a minute or more
        # through a pooler whose cost grows with the square of the message).
        for r in range(rounds if case.clients == 1 else 1):
            for target in round_order(r):
                s = time_case(rig, target, case)
                samples.setdefault(case.name, {}).setdefault(target, []).append(s)
                print(f"round {r + 1}/{rounds} {case.name:<26} {target:<10} wall={fmt(s['wall_ms'])}ms "
                      f"pooler cpu={fmt(s['cpu_ms'])}ms", flush=True)
        time.sleep(0.5)  # the last client's close reaches the poolers
        for t, before in idle.items():
            pid = rig.pid(t)
            assert pid is not None
            memory.setdefault(case.name, {})[t] = {
                "peak_rss_mb": proc_mem(pid, "VmHWM") / MB,
                "peak_over_idle_mb": (proc_mem(pid, "VmHWM") - before) / MB,
                "rss_after_mb": proc_mem(pid, "VmRSS") / MB,
            }
        print(f"{case.name}: " + ", ".join(f"{t} peak RSS {m['peak_rss_mb']:.0f} MB (+{m['peak_over_idle_mb']:.0f}), "
                                           f"{m['rss_after_mb']:.0f} MB after" for t, m in memory[case.name].items()),
              flush=True)
    big = max(sizes_mb)
    request = simple_query(b"SELECT length($$" + b"x" * (big * MB) + b"$$)")
    inter: dict[str, dict[str, list[dict[str, Any]]]] = {"alone": {}, "beside": {}}
    rig.start_poolers()
    for r in range(rounds):
        for target in round_order(r):
            for key, loaded in (("alone", False), ("beside", True)):
                s = interference(rig, target, request, seconds, logdir, loaded)
                inter[key].setdefault(target, []).append(s)
                extra = f" ({s['large_queries']} large queries done)" if loaded else ""
                print(f"round {r + 1}/{rounds} select-only c16 {key:<6} {target:<10} tps={s['tps']:>8.0f} "
                      f"p99={fmt(s['p99_ms'])}ms{extra}", flush=True)
    return {"meta": {"sizes_mb": list(sizes_mb), "rounds": rounds, "interference_seconds": seconds,
                     "pool_size": POOL_SIZE, "auth": "trust", "together": together},
            "samples": samples, "memory": memory, "interference": inter, "interference_mb": big}


def ratio(p: float | None, b: float | None) -> float | None:
    return p / b if p and b else None


def summary(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows (run.py's columns): medians per case, memory per case, interference."""
    targets = ("poold", "pgbouncer", "direct")
    rows: list[dict[str, Any]] = []
    for name, per_target in section["samples"].items():
        for metric in ("wall_ms", "cpu_ms"):
            row: dict[str, Any] = {"workload": name, "metric": metric}
            row |= {t: med([s[metric] for s in per_target.get(t, [])]) for t in targets}
            row["ratio"] = ratio(row["poold"], row["pgbouncer"])
            rows.append(row | paired(per_target, metric))
        for metric in ("peak_rss_mb", "peak_over_idle_mb", "rss_after_mb"):
            mem = section["memory"].get(name, {})
            row = {"workload": name, "metric": metric, "direct": None}
            row |= {t: mem.get(t, {}).get(metric) for t in ("poold", "pgbouncer")}
            # growth over idle: PgBouncer's is about nothing, a ratio to it means nothing
            row["ratio"] = ratio(row["poold"], row["pgbouncer"]) if metric != "peak_over_idle_mb" else None
            rows.append(row)
    big = section["interference_mb"]
    inter = section["interference"]
    for key, label in (("alone", "select-only c16 alone"), ("beside", f"select-only c16 beside {big} MB loop")):
        for metric in ("tps", "p99_ms"):
            row = {"workload": label, "metric": metric}
            row |= {t: med([s[metric] for s in inter[key].get(t, [])]) for t in targets}
            row["ratio"] = ratio(row["poold"], row["pgbouncer"])
            rows.append(row | paired(inter[key], metric))
    row = {"workload": f"select-only c16 beside {big} MB loop", "metric": "tps kept (beside/alone)"}
    for t in targets:
        kept = [b["tps"] / a["tps"] for a, b in zip(inter["alone"].get(t, []), inter["beside"].get(t, []),
                                                      strict=False) if a["tps"]]
        row[t] = med(list(kept))
    row["ratio"] = ratio(row["poold"], row["pgbouncer"])
    rows.append(row)
    row = {"workload": f"select-only c16 beside {big} MB loop", "metric": "large queries done"}
    row |= {t: med([s.get("large_queries") for s in inter["beside"].get(t, [])]) for t in targets}
    row["ratio"] = ratio(row["poold"], row["pgbouncer"])
    rows.append(row)
    return rows
