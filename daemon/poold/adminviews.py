"""The admin console's SHOW result sets: PgBouncer 1.25.2's columns (names, types
and order, from its src/admin.c and src/stats.c) filled from poold's live state.

The rows come from the same functions poolctl's come from (operations.py), so
both show the same numbers: SHOW SERVERS lists the rows of ``poolctl servers``
(state ``pool``, idle in psycopg_pool, is PgBouncer's ``idle``; ``held``, kept
back until a cancel for it is delivered, is its ``being_canceled``), SHOW POOLS
counts what ``poolctl pools`` counts.

Where PgBouncer has a concept poold lacks, the column is there with the value
PgBouncer shows when it is not in use (0, NULL or ''): reserve pools, peers,
DNS, prepared statement counts. The console itself appears as PgBouncer's does:
a database, user and pool named ``pgbouncer``, and its sessions as clients.

Two columns of older PgBouncers follow 1.25's, for the tools that still read them
(Debian's prometheus-pgbouncer-exporter 1.7 reads PgBouncer 1.7's): SHOW STATS
ends with ``total_requests``, ``total_received`` and ``total_sent`` (1.7's names),
and SHOW DATABASES with ``reserve_pool`` (its name before 1.24). A reader by
position reads 1.25's columns where 1.25 has them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

from . import config as config_module
from . import operations
from .reload import RESTART_KEYS

if TYPE_CHECKING:
    from .admin import Console
    from .pools import Pool
    from .runtime import Runtime

Columns = list[tuple[str, str]]
Table = tuple[Columns, list[list[Any]]]

#: PgBouncer's tuple descriptor letters (pktbuf_write_RowDescription): 'T' is a time, sent as text
_TYPES = {"s": "text", "T": "text", "i": "int4", "q": "int8", "N": "numeric", "b": "bytea"}

#: the console's own database, user and pool, as PgBouncer names them in its listings
ADMIN_NAME = "pgbouncer"
PGBOUNCER_VERSION = "1.25.2"


def columns(spec: str, *names: str) -> Columns:
    """(name, type) pairs from a PgBouncer tuple descriptor and its column names."""
    return [(name, _TYPES[c]) for c, name in zip(spec, names, strict=True)]


SOCKET = columns("ssssssisiTTiiississii", "type", "user", "database", "replication", "state", "addr", "port",
                 "local_addr", "local_port", "connect_time", "request_time", "wait", "wait_us", "close_needed",
                 "ptr", "link", "remote_pid", "tls", "application_name", "prepared_statements", "id")
SOCKET_DEBUG = SOCKET + columns("iiiiiii", "recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain",
                                "pkt_avail", "send_avail")
POOLS = columns("ssiiiiiiiiiiiiiss", "database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
                "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used",
                "sv_tested", "sv_login", "maxwait", "maxwait_us", "pool_mode", "load_balance_hosts")
DATABASES = columns("ssissiiiissiiiiii", "name", "host", "port", "database", "force_user", "pool_size",
                    "min_pool_size", "reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts",
                    "max_connections", "current_connections", "max_client_connections",
                    "current_client_connections", "paused", "disabled")
DATABASES_LEGACY = columns("i", "reserve_pool")
USERS = columns("ssssiiii", "name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
                "current_connections", "max_user_client_connections", "current_client_connections")
_STAT_KEYS = ("server_assignment_count", "xact_count", "query_count", "received", "sent", "xact_time",
              "query_time", "wait_time", "client_parse_count", "server_parse_count", "bind_count")
STATS = columns("s" + "N" * 22, "database", "total_server_assignment_count", "total_xact_count",
                "total_query_count", "total_received", "total_sent", "total_xact_time", "total_query_time",
                "total_wait_time", "total_client_parse_count", "total_server_parse_count", "total_bind_count",
                "avg_server_assignment_count", "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent",
                "avg_xact_time", "avg_query_time", "avg_wait_time", "avg_client_parse_count",
                "avg_server_parse_count", "avg_bind_count")
STATS_LEGACY = columns("NNN", "total_requests", "total_received", "total_sent")
STATS_TOTALS = columns("s" + "N" * 11, "database", "server_assignment_count", "xact_count", "query_count",
                       "bytes_received", "bytes_sent", "xact_time", "query_time", "wait_time", "client_parse_count",
                       "server_parse_count", "bind_count")
STATS_AVERAGES = columns("s" + "N" * 11, "database", "server_assignment_count", "xact_count", "query_count",
                         "bytes_received", "bytes_sent", "xact_time", "query_time", "wait_time",
                         "avg_client_parse_count", "avg_server_parse_count", "avg_bind_count")
#: the result sets with nothing of poold's to list: PgBouncer's columns, no rows
EMPTY = {
    "mem": columns("siiii", "name", "size", "used", "free", "memtotal"),
    "dns_hosts": columns("sqs", "hostname", "ttl", "addrs"),
    "dns_zones": columns("sqi", "zonename", "serial", "count"),
    "peers": columns("isii", "peer_id", "host", "port", "pool_size"),
    "peer_pools": columns("iiiii", "peer_id", "cl_active_cancel_req", "cl_waiting_cancel_req", "sv_active_cancel",
                          "sv_login"),
    "sockets": SOCKET_DEBUG,
    "active_sockets": SOCKET_DEBUG,
}

#: poolctl's server states as PgBouncer names them
_SERVER_STATES = {"active": "active", "idle": "idle", "pool": "idle", "held": "being_canceled"}


def timestamp(wall: float) -> str:
    """A time as PgBouncer prints one (format_time_s): local time with the zone's abbreviation."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(wall))


def address(name: Any) -> tuple[str, int]:
    """(address, port) of a socket name; ("unix", 0) for a Unix socket's."""
    if isinstance(name, tuple) and len(name) >= 2:
        return str(name[0]), int(name[1])
    return "unix", 0


def clients(console: Console) -> Table:
    rt = console.rt
    now = time.monotonic()
    rows = []
    for c in operations.logged_in(rt):
        transport = c.transport
        addr, port = address(transport.get_extra_info("peername") if transport is not None else None)
        local, local_port = address(transport.get_extra_info("sockname") if transport is not None else None)
        wait = now - c.wait_start if c.waiting and c.wait_start else 0.0
        rows.append(["C", c.user, c.database, "none", c.state, addr, port, local, local_port,
                     timestamp(c.connected_at), timestamp(c.connected_at), int(wait), int(wait % 1 * 1e6), 0,
                     f"{id(c):#x}", f"{c.server.pid:#x}" if c.server is not None else "", 0, "TLS" if c.tls else "",
                     c.wanted.get("application_name", ""), 0, c.key[0]])
    for s in console.sessions:
        rows.append(["C", s.user, ADMIN_NAME, "none", "active", *s.address, *s.local, timestamp(s.connected_at),
                     timestamp(s.connected_at), 0, 0, 0, f"{id(s):#x}", "", 0, "", "", 0, s.id])
    return SOCKET, rows


def servers(rt: Runtime) -> Table:
    """Every open server connection (``poolctl servers``' rows): its state, age, backend pid
    and TLS protocol (empty for a plain leg, as PgBouncer's)."""
    now, wall = time.monotonic(), time.time()
    owners = {c.key[0]: c for c in rt.clients}
    rows = []
    for p in rt.pools.pools.values():
        info = p.db.conninfo
        host = info.get("host") or "unix"
        addr = "unix" if host.startswith("/") else host
        port = int(info.get("port") or 5432) if str(info.get("port") or "5432").isdigit() else 0
        for r in p.servers(now):
            born = timestamp(wall - r["age"])
            owner = owners.get(r["client"]) if r["client"] != "" else None
            rows.append(["S", p.user, p.db.name, "none", _SERVER_STATES.get(r["state"], r["state"]), addr, port,
                         "", 0, born, born, 0, 0, 0, f"{r['pid']:#x}", f"{id(owner):#x}" if owner is not None else "",
                         r["pid"], r["tls"] if r["tls"] != "no" else "", "", 0, r["pid"]])
    return SOCKET, rows


def _max_wait(p: Pool) -> float:
    """How long the pool's oldest waiter has waited (its deadline less acquire_timeout)."""
    if not p.waiters:
        return 0.0
    started = min(deadline for _, deadline in p.waiters) - p.settings.acquire_timeout
    return max(0.0, asyncio.get_running_loop().time() - started)


def pools(console: Console) -> Table:
    rt = console.rt
    now = time.monotonic()
    rows = []
    for p in rt.pools.pools.values():
        snap = p.snapshot()
        states = Counter(r["state"] for r in p.servers(now))
        wait = _max_wait(p)
        rows.append([p.db.name, p.user, max(0, snap["clients"] - snap["waiting"]), snap["waiting"], 0, 0,
                     states["active"], 0, states["held"], states["idle"] + states["pool"], 0, 0, 0,
                     int(wait), int(wait % 1 * 1e6), snap["mode"], None])
    rows.append([ADMIN_NAME, ADMIN_NAME, len(console.sessions), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "statement",
                 None])
    return POOLS, rows


def _database_names(rt: Runtime) -> list[str]:
    names = {n for n in rt.config.databases if n != "*"} | {p.db.name for p in rt.pools.pools.values()}
    return sorted(names)


def databases(console: Console) -> Table:
    rt = console.rt
    rows = []
    for name in _database_names(rt):
        db = rt.config.database(name)
        of_db = [p for p in rt.pools.pools.values() if p.db.name == name]
        if db is None:
            db = of_db[0].db
        info, ps = db.conninfo, db.pool
        port = str(info.get("port") or "5432")
        rows.append([name, info.get("host"), int(port) if port.isdigit() else 0, info.get("dbname") or name,
                     info.get("user"), ps.max_size, ps.min_size, 0, int(ps.max_lifetime), ps.mode, None, 0,
                     sum(len(p.open_connections()) for p in of_db), 0, sum(p.clients for p in of_db),
                     int(any(p.paused for p in of_db)), int(name in rt.disabled), 0])
    rows.append([ADMIN_NAME, None, rt.config.listen.port, ADMIN_NAME, ADMIN_NAME, 2, 0, 0, 3600, "statement",
                 None, 0, 0, 0, len(console.sessions), 0, 0, 0])
    return DATABASES + DATABASES_LEGACY, rows


def users(console: Console) -> Table:
    rt = console.rt
    names = set(rt.users) | {p.user for p in rt.pools.pools.values()} | {ADMIN_NAME}
    logged_in = Counter(c.user for c in operations.logged_in(rt)) + Counter(s.user for s in console.sessions)
    rows = []
    for name in sorted(names):
        servers = sum(len(p.open_connections()) for p in rt.pools.pools.values() if p.user == name)
        rows.append([name, "", "", None, 0, servers, 0, logged_in[name]])
    return USERS, rows


def stat_totals(rt: Runtime) -> dict[str, dict[str, int]]:
    """Per database, PgBouncer's counters (_STAT_KEYS) from the pools' (stats.PoolStats):
    a server assignment is a lease (each records its wait); times in microseconds.
    poold times transactions, not each query: query_time is the transactions' time."""
    out: dict[str, dict[str, int]] = {}
    for p in rt.pools.pools.values():
        s = p.stats
        row = out.setdefault(p.db.name, dict.fromkeys(_STAT_KEYS, 0))
        xact_us = int(s.xact.sum * 1e6)
        for key, value in (("server_assignment_count", sum(s.wait.counts)), ("xact_count", s.transactions),
                           ("query_count", s.queries), ("received", s.bytes_in), ("sent", s.bytes_out),
                           ("xact_time", xact_us), ("query_time", xact_us), ("wait_time", int(s.wait.sum * 1e6))):
            row[key] += value
    return out


def _averages(now: dict[str, int], old: dict[str, int], seconds: float) -> dict[str, int]:
    """PgBouncer's calc_average: rates per second, and times per transaction, query and assignment."""
    if seconds <= 0:
        return dict.fromkeys(_STAT_KEYS, 0)
    d = {k: now[k] - old.get(k, 0) for k in _STAT_KEYS}
    avg = {k: int(d[k] / seconds) for k in _STAT_KEYS}
    avg["xact_time"] = d["xact_time"] // d["xact_count"] if d["xact_count"] > 0 else 0
    avg["query_time"] = d["query_time"] // d["query_count"] if d["query_count"] > 0 else 0
    avg["wait_time"] = d["wait_time"] // d["server_assignment_count"] if d["server_assignment_count"] > 0 else 0
    return avg


def _stats_rows(console: Console) -> list[tuple[str, dict[str, int], dict[str, int]]]:
    totals = stat_totals(console.rt)
    totals[ADMIN_NAME] = dict.fromkeys(_STAT_KEYS, 0)
    old_at, old = console.older_stats
    seconds = time.monotonic() - old_at
    return [(db, t, _averages(t, old.get(db, {}), seconds)) for db, t in sorted(totals.items())]


def stats(console: Console) -> Table:
    rows = [[db, *(t[k] for k in _STAT_KEYS), *(a[k] for k in _STAT_KEYS), t["query_count"], t["received"], t["sent"]]
            for db, t, a in _stats_rows(console)]
    return STATS + STATS_LEGACY, rows


def stats_totals(console: Console) -> Table:
    return STATS_TOTALS, [[db, *(t[k] for k in _STAT_KEYS)] for db, t, _ in _stats_rows(console)]


def stats_averages(console: Console) -> Table:
    return STATS_AVERAGES, [[db, *(a[k] for k in _STAT_KEYS)] for db, _, a in _stats_rows(console)]


def totals(console: Console) -> Table:
    """One name/value row per counter of all databases together (SHOW TOTALS)."""
    rows = _stats_rows(console)
    names = ("server_assignment_count", "xact_count", "query_count", "client_bytes", "server_bytes", "xact_time",
             "query_time", "wait_time", "ps_client_parse_count", "ps_server_parse_count", "ps_bind_count")
    out = [[f"total_{n}", sum(t[k] for _, t, _ in rows)] for n, k in zip(names, _STAT_KEYS, strict=True)]
    out += [[f"avg_{n}", sum(a[k] for _, _, a in rows)] for n, k in zip(names, _STAT_KEYS, strict=True)]
    return columns("sN", "name", "value"), out


def lists(console: Console) -> Table:
    rt = console.rt
    items = [("databases", len(_database_names(rt)) + 1),
             ("users", len(set(rt.users) | {p.user for p in rt.pools.pools.values()} | {ADMIN_NAME})),
             ("peers", 0), ("pools", len(rt.pools.pools) + 1), ("peer_pools", 0), ("free_clients", 0),
             ("used_clients", len(rt.clients) + len(console.sessions)), ("login_clients", len(rt.logins)),
             ("free_servers", 0), ("used_servers", rt.pools.server_connections()),
             ("dns_names", 0), ("dns_zones", 0), ("dns_queries", 0), ("dns_pending", 0)]
    return columns("si", "list", "items"), [list(i) for i in items]


def _defaults() -> dict[str, Any]:
    """Each setting's default, as ``config_items`` names it ("section.key")."""
    out = {}
    for section, cls in config_module._SECTIONS.items():
        for f in fields(cls):
            if f.default is not MISSING:
                out[f"{section}.{f.name}"] = f.default
    return out


def _text(value: Any) -> str:
    return "" if value is None else str(value)


#: PgBouncer's names of poold's settings (``poold migrate`` maps them the other way), for
#: the tools that read SHOW CONFIG by PgBouncer's key (e.g. max_client_conn)
_PGBOUNCER_KEYS = {
    "listen_addr": "listen.host", "listen_port": "listen.port", "unix_socket_dir": "listen.unix_socket_dir",
    "auth_type": "auth.type", "auth_file": "auth.file", "auth_hba_file": "auth.hba_file", "auth_user": "auth.user",
    "auth_query": "auth.query", "admin_users": "auth.admin_users", "stats_users": "auth.stats_users",
    "max_client_conn": "clients.max_client_conn", "client_login_timeout": "clients.login_timeout",
    "max_packet_size": "clients.max_message_size", "pool_mode": "pool.mode", "default_pool_size": "pool.max_size",
    "min_pool_size": "pool.min_size", "query_wait_timeout": "pool.acquire_timeout",
    "server_idle_timeout": "pool.idle_timeout", "server_lifetime": "pool.max_lifetime",
    "query_timeout": "pool.query_timeout",
}
#: PgBouncer's caps that poold does not have: 0, PgBouncer's "no limit"
_PGBOUNCER_UNLIMITED = ("max_db_connections", "max_user_connections", "max_db_client_connections",
                        "max_user_client_connections")


def _pgbouncer_text(value: Any) -> str:
    """A value as PgBouncer prints it: whole seconds and numbers without ".0"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _text(value)


def config(console: Console) -> Table:
    """poold's settings (``poolctl config show``'s, in force), with their defaults;
    changeable: "no" for those that need a restart. First, those that PgBouncer has,
    under PgBouncer's names."""
    items, _ = operations.config_in_force(console.ops)
    defaults = _defaults()

    def row(name: str, key: str) -> list[str]:
        text = _pgbouncer_text if name != key else _text
        return [name, text(items.get(key)), text(defaults.get(key, "")),
                "no" if key.startswith(RESTART_KEYS) else "yes"]

    rows = [row(name, key) for name, key in _PGBOUNCER_KEYS.items()]
    rows += [[name, "0", "0", "yes"] for name in _PGBOUNCER_UNLIMITED]
    rows += [row(key, key) for key in items]
    return columns("ssss", "key", "value", "default", "changeable"), rows


def state(console: Console) -> Table:
    paused = console.paused
    rows = [["active", "no" if paused else "yes"], ["paused", "yes" if paused else "no"], ["suspended", "no"]]
    return columns("ss", "key", "value"), rows


def version() -> Table:
    from . import __version__

    return columns("s", "version"), [[f"poold {__version__} (PgBouncer {PGBOUNCER_VERSION} compatible)"]]

