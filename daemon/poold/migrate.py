"""The PgBouncer converter: a pgbouncer.ini in, an equivalent poold.toml and notes out.

Pure: ``convert(text, base_dir)`` reads no file and writes none (``poold migrate``
in __main__.py does the I/O). Every key of PgBouncer 1.25.2 lands in one of four
kinds, each reported as a ``Note``:

- ``carried``: the same setting under the same meaning (``listen_port`` ->
  ``listen.port``, ``default_pool_size`` -> ``pool.max_size``, ...);
- ``changed``: carried, but poold's meaning differs in a way worth knowing
  (``query_timeout``: PgBouncer closes the connection, poold cancels the query);
- ``unsupported``: PgBouncer has it and poold does not (``auth_dbname``,
  ``stats_period``, ``reserve_pool_size``...): nothing is
  written for it, so that poold never meets a key it would reject;
- ``not-applicable``: nothing to carry (``logfile``, ``pidfile``, ``user``:
  poold logs to stderr / journald and systemd picks its user).

The result reproduces PgBouncer's *effective* behaviour, not only the keys the
file sets: where PgBouncer's default differs from poold's (session pooling, 20
server connections, 100 clients, no statement_timeout, a 600 s idle timeout,
a 120 s wait, Unix socket only when ``listen_addr`` is unset) the default is
written out. Paths are made absolute against ``base_dir`` (the ini's
directory), as PgBouncer reads them relative to where it was started.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .pgbouncer_ini import IniError, int_value, parse_connstr, parse_ini, seconds

__all__ = ["CARRIED", "NOT_APPLICABLE", "UNSUPPORTED", "IniError", "Migration", "Note", "convert", "parse_connstr"]

#: PgBouncer's defaults for the keys poold carries (src/main.c, 1.25.2)
PGBOUNCER_DEFAULTS = {
    "listen_port": "6432",
    "unix_socket_dir": "/tmp",
    "unix_socket_mode": "0777",
    "listen_backlog": "128",
    "auth_type": "md5",
    "auth_query": "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid "
                  "WHERE rolname=$1 AND rolcanlogin",
    "pool_mode": "session",
    "default_pool_size": "20",
    "min_pool_size": "0",
    "max_client_conn": "100",
    "server_lifetime": "3600",
    "server_idle_timeout": "600",
    "query_timeout": "0",
    "query_wait_timeout": "120",
    "client_login_timeout": "60",
    "server_connect_timeout": "15",
    "max_prepared_statements": "200",
    "client_tls_sslmode": "disable",
}

_TCP = "poold sets TCP_NODELAY and leaves the other TCP options (keepalive, buffers) at the kernel's defaults"
_DNS = "poold resolves server host names through libpq at each connect, with the system resolver"
_LOG = "poold logs structured lines to stderr / journald (daemon.log_format, daemon.log_level)"
_TLS_OPT = "poold's client TLS takes a certificate and key only (Python ssl defaults for the rest)"
_SERVER_TLS = "libpq, which makes poold's server connections, has no cipher setting (OpenSSL's defaults apply)"

#: global keys poold has no counterpart for: key -> why
UNSUPPORTED: dict[str, str] = {
    "auth_ident_file": "poold has no ident maps",
    "auth_ldap_options": "poold has no LDAP authentication",
    "auth_dbname": "poold runs auth.query in the client's own database (PgBouncer's default); "
                   "there is no auth_dbname",
    "reserve_pool_size": "poold has no reserve pool; add it to max_size to have the headroom all the time",
    "reserve_pool_timeout": "poold has no reserve pool",
    "max_db_connections": "poold caps server connections per (database, user) pool only (max_size)",
    "max_user_connections": "poold caps server connections per (database, user) pool only (max_size)",
    "max_db_client_connections": "poold caps clients for the whole daemon only (clients.max_client_conn)",
    "max_user_client_connections": "poold caps clients for the whole daemon only (clients.max_client_conn)",
    "client_idle_timeout": "poold does not close idle clients",
    "idle_transaction_timeout": "poold does not close clients idle in a transaction "
                                "(PostgreSQL's idle_in_transaction_session_timeout can, in the DSN's options)",
    "transaction_timeout": "poold has no transaction timeout (PostgreSQL 17's transaction_timeout can, "
                           "in the DSN's options)",
    "cancel_wait_timeout": "poold sends a cancel to the server at once; it never queues one",
    "server_login_retry": "poold's circuit breaker paces reconnects instead (pool.breaker_failures, breaker_reset)",
    "autodb_idle_timeout": "poold has no idle timeout for pools made through the '*' entry",
    "suspend_timeout": "poold has no SUSPEND or online restart (-R)",
    "server_check_query": "poold notices a dead server connection by its socket closing; it runs no check query",
    "server_check_delay": "poold notices a dead server connection by its socket closing; it runs no check query",
    "server_reset_query_always": "poold resets server connections (DISCARD ALL) in session mode only",
    "server_fast_close": "after a reconnect or a DSN change, poold retires a session's server connection "
                         "when its client leaves; there is no switch to close it earlier",
    "server_round_robin": "poold reuses the most recently released server connection first (LIFO, "
                          "PgBouncer's default); there is no round-robin switch",
    "application_name_add_host": "poold passes application_name through unchanged",
    "disable_pqexec": "poold has no switch to refuse multi-statement queries",
    "scram_iterations": "poold answers SCRAM with the verifier's own iteration count (4096 for plain passwords)",
    "query_wait_notify": "poold sends no notice to a waiting client",
    "unix_socket_group": "poold's Unix socket keeps poold's group; set its mode with listen.unix_socket_mode",
    "peer_id": "poold has no peering; one process serves each listener",
    "so_reuseport": "poold runs one process per listener",
    "pkt_buf": "poold sizes its buffers itself",
    "sbuf_loopcnt": "poold sizes its buffers itself",
    "tcp_defer_accept": _TCP,
    "tcp_socket_buffer": _TCP,
    "tcp_keepalive": _TCP,
    "tcp_keepcnt": _TCP,
    "tcp_keepidle": _TCP,
    "tcp_keepintvl": _TCP,
    "tcp_user_timeout": _TCP,
    "dns_max_ttl": _DNS,
    "dns_nxdomain_ttl": _DNS,
    "dns_zone_check_period": _DNS,
    "resolv_conf": _DNS,
    "client_tls_ciphers": _TLS_OPT,
    "client_tls13_ciphers": _TLS_OPT,
    "client_tls_protocols": _TLS_OPT,
    "client_tls_dheparams": _TLS_OPT,
    "client_tls_ecdhcurve": _TLS_OPT,
    "server_tls_ciphers": _SERVER_TLS,
    "server_tls13_ciphers": _SERVER_TLS,
}

#: global keys with nothing to carry: key -> why
NOT_APPLICABLE: dict[str, str] = {
    "logfile": _LOG,
    "syslog": _LOG,
    "syslog_facility": _LOG,
    "syslog_ident": _LOG,
    "log_connections": _LOG,
    "log_disconnections": _LOG,
    "log_pooler_errors": _LOG,
    "log_stats": "poold exports its statistics on /metrics instead of logging them",
    "stats_period": "poold exports its statistics on /metrics, computed at scrape time",
    "pidfile": "poold runs under systemd (Type=notify), which tracks its pid",
    "user": "systemd's User= picks poold's user",
    "conffile": "poold reloads the file it was started with (-c)",
    "service_name": "a Windows service name",
    "job_name": "a Windows service name",
}

#: global keys the converter writes (or notes) itself
CARRIED = frozenset({
    "listen_addr", "listen_port", "unix_socket_dir", "unix_socket_mode", "listen_backlog", "auth_type",
    "auth_file", "auth_hba_file", "auth_user", "auth_query", "max_client_conn", "client_login_timeout",
    "max_packet_size", "client_tls_sslmode", "client_tls_key_file", "client_tls_cert_file", "client_tls_ca_file",
    "verbose", "pool_mode", "default_pool_size",
    "min_pool_size", "server_lifetime", "server_idle_timeout", "query_timeout", "query_wait_timeout",
    "server_connect_timeout", "server_tls_sslmode", "server_tls_ca_file", "server_tls_cert_file",
    "server_tls_key_file", "server_tls_protocols", "ignore_startup_parameters", "track_extra_parameters",
    "max_prepared_statements", "server_reset_query", "admin_users", "stats_users",
})

#: [databases] connection-string keys that go into the libpq DSN as they are
_DSN_KEYS = ("host", "port", "dbname", "user", "password", "client_encoding", "application_name")
#: [databases] keys that become a pool setting of the database: ini key -> poold key
_DB_POOL_KEYS = {"pool_size": "max_size", "min_pool_size": "min_size", "pool_mode": "mode",
                 "server_lifetime": "max_lifetime", "query_timeout": "query_timeout"}
#: [databases] keys poold has no counterpart for, besides the global ones of the same name
_DB_UNSUPPORTED = {
    "connect_query": "poold runs no query when it connects",
    "load_balance_hosts": "poold gives libpq the host list in order (no load balancing)",
    "reserve_pool": "poold has no reserve pool; add it to max_size to have the headroom all the time",
    "auth_user": "poold has one auth_user for every database ([auth] user, from the global auth_user); "
                 "a database's own is not carried",
    "auth_query": "poold has one auth_query for every database ([auth] query, from the global auth_query); "
                  "a database's own is not carried",
}


@dataclass(frozen=True)
class Note:
    """What became of one key: ``kind`` is carried, changed, unsupported or not-applicable."""

    key: str
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"{self.key}: {self.kind}: {self.reason}"


@dataclass(frozen=True)
class Migration:
    toml: str
    notes: tuple[Note, ...]

    @property
    def not_carried(self) -> list[Note]:
        """The keys a reader must look at: what was not carried, or carried with a difference."""
        return [n for n in self.notes if n.kind in ("unsupported", "changed")]


class FileMode(int):
    """An int written as a TOML octal literal (0o777), as file modes are read."""


def _toml_value(v: object) -> str:
    if isinstance(v, FileMode):
        return f"0o{v:o}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    return json.dumps(str(v), ensure_ascii=False)  # a JSON string is a TOML basic string


def _dsn_quote(v: str) -> str:
    if v and not re.search(r"[\s'\\]", v):
        return v
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Writer:
    """Collects the TOML tables and the notes while the keys are walked."""

    def __init__(self) -> None:
        self.tables: dict[str, list[tuple[str, object, str]]] = {}
        self.notes: list[Note] = []

    def set(self, table: str, key: str, value: object, origin: str) -> None:
        rows = self.tables.setdefault(table, [])
        rows[:] = [r for r in rows if r[0] != key]
        rows.append((key, value, origin))

    def note(self, key: str, kind: str, reason: str) -> None:
        self.notes.append(Note(key, kind, reason))

    def render(self, source: str) -> str:
        out = [f"# poold configuration converted from {source} by `poold migrate`.",
               "# Keys PgBouncer had and poold has not were printed by the converter, not written here;",
               "# every other poold key keeps its default (see config/poold.toml)."]
        for table, rows in self.tables.items():
            out.append("")
            out.append(f"[{table}]")
            width = max(len(f"{k} = {_toml_value(v)}") for k, v, _ in rows)
            for key, value, origin in rows:
                line = f"{key} = {_toml_value(value)}"
                out.append(f"{line.ljust(width)}  # {origin}" if origin else line)
        return "\n".join(out) + "\n"


def convert(text: str, base_dir: str = "", source: str = "pgbouncer.ini") -> Migration:
    """Convert a pgbouncer.ini; raise IniError for a file PgBouncer would refuse."""
    ini = parse_ini(text)
    w = _Writer()
    settings: dict[str, str] = {}
    for key, value, _ in ini.sections.get("pgbouncer", []):
        settings[key.lower()] = value  # PgBouncer: the last one wins
    for inc in ini.includes:
        w.note(f"%include {inc}", "unsupported", "merge the included file into this one and convert again")
    for name in ini.sections:
        if name not in ("pgbouncer", "databases", "users", "peers"):
            raise IniError(f"invalid section [{name}]")

    def get(key: str) -> str:
        return settings.get(key, PGBOUNCER_DEFAULTS.get(key, ""))

    def path(value: str) -> str:
        if not value or value.startswith("/") or not base_dir:
            return value
        return f"{base_dir.rstrip('/')}/{value}"

    _listen(w, settings, get)
    _auth(w, settings, get, path)
    _clients(w, settings, get)
    _tls(w, settings, get, path)
    _daemon(w, settings)
    _pool(w, settings, get)
    for key in settings:
        if key in CARRIED:
            continue
        if key in UNSUPPORTED:
            w.note(key, "unsupported", UNSUPPORTED[key])
        elif key in NOT_APPLICABLE:
            w.note(key, "not-applicable", NOT_APPLICABLE[key])
        else:
            w.note(key, "unsupported", "not a PgBouncer 1.25.2 setting")
    _databases(w, ini.sections.get("databases", []), get, _server_tls(w, settings, get, path))
    _prepared_statements(w, settings, get)
    for user, _, _ in ini.sections.get("users", []):
        w.note(f"users.{user}", "unsupported", "poold has no per-user pool settings; the [pool] and database "
               "settings apply to every user")
    for peer, _, _ in ini.sections.get("peers", []):
        w.note(f"peers.{peer}", "unsupported", UNSUPPORTED["peer_id"])
    return Migration(w.render(source), tuple(w.notes))


Get = Callable[[str], str]


def _listen(w: _Writer, settings: dict[str, str], get: Get) -> None:
    addr = settings.get("listen_addr", "")
    hosts = ",".join("0.0.0.0,::" if a.strip() == "*" else a.strip() for a in addr.split(",") if a.strip())
    w.set("listen", "host", hosts, "listen_addr" + ("" if addr else " unset: Unix socket only"))
    w.set("listen", "port", int_value(get("listen_port"), "listen_port"), "listen_port")
    sockdir = get("unix_socket_dir")
    if sockdir.startswith("@"):
        w.note("unix_socket_dir", "unsupported", "poold has no abstract-namespace Unix sockets; none written")
        sockdir = ""
    w.set("listen", "unix_socket_dir", sockdir, "unix_socket_dir")
    w.set("listen", "unix_socket_mode", FileMode(int_value(get("unix_socket_mode"), "unix_socket_mode")), "unix_socket_mode")
    w.set("listen", "backlog", max(1, int_value(get("listen_backlog"), "listen_backlog")), "listen_backlog")
    if not hosts and not sockdir:
        raise IniError("listen_addr and unix_socket_dir are both empty: nothing to listen on")


def _auth(w: _Writer, settings: dict[str, str], get: Get, path: Callable[[str], str]) -> None:
    auth_type = get("auth_type").lower()
    hba_file = settings.get("auth_hba_file", "")
    if auth_type in ("trust", "md5", "scram-sha-256"):
        w.set("auth", "type", auth_type, "auth_type")
        if auth_type == "trust":
            w.note("auth_type", "changed", "trust: PgBouncer still requires the user name to be in auth_file; "
                   "poold's trust lets any user name in")
    elif auth_type == "any":
        w.set("auth", "type", "trust", "auth_type = any")
        w.note("auth_type", "changed", "'any' became trust: no password, and the client's own user name "
               "is kept (PgBouncer's any forgets it)")
    elif auth_type == "hba":
        if not hba_file:
            # PgBouncer starts, but with no rules it refuses every login.
            raise IniError("auth_type = hba needs auth_hba_file: without it PgBouncer refuses every login")
        w.set("auth", "type", "hba", "auth_type")
        w.set("auth", "hba_file", path(hba_file), "auth_hba_file (pg_hba.conf format)")
        w.note("auth_hba_file", "changed", "poold reads the same pg_hba.conf format but refuses at load what it "
               "cannot honour (peer, ldap, pam, map= and other options, +group, samerole, host names, "
               "samehost/samenet): poold --check-config names each such line")
    else:
        w.set("auth", "type", "scram-sha-256", f"auth_type = {auth_type} is not supported")
        w.note("auth_type", "unsupported", f"poold has no {auth_type!r} authentication; wrote scram-sha-256 "
               "against auth.file (plain or SCRAM secrets; md5 hashes get md5)")
    if auth_type != "hba" and "auth_hba_file" in settings:
        w.note("auth_hba_file", "not-applicable", f"auth_type = {auth_type}: PgBouncer does not read it either")
    # PgBouncer without auth_file has no user list; poold's default would look for userlist.txt.
    w.set("auth", "file", path(settings.get("auth_file", "")), "auth_file (PgBouncer's userlist.txt format)")
    _auth_query(w, settings, get)
    for key in ("admin_users", "stats_users"):  # the admin console's (database pgbouncer, or poold)
        if key in settings:
            names = ",".join(n.strip() for n in settings[key].split(",") if n.strip())
            w.set("auth", key, names, key)


def _auth_query(w: _Writer, settings: dict[str, str], get: Get) -> None:
    """The global auth_user and auth_query: users auth_file lacks, looked up in the client's database."""
    user = settings.get("auth_user", "")
    if not user:
        if "auth_query" in settings:
            w.note("auth_query", "not-applicable", "no global auth_user: PgBouncer runs it only for databases "
                   "with their own auth_user, which poold does not carry")
        return
    query = get("auth_query")
    if "$1" not in query:
        raise IniError("auth_query: must take the user name as $1")
    w.set("auth", "user", user, "auth_user (its password: auth.file's plain one, or the DSN's naming it)")
    w.set("auth", "query", query, "auth_query" + ("" if "auth_query" in settings else " (PgBouncer's default)"))
    w.set("auth", "query_ttl", 0.0, "auth_query: PgBouncer asks at every login")


def _clients(w: _Writer, settings: dict[str, str], get: Get) -> None:
    w.set("clients", "max_client_conn", max(1, int_value(get("max_client_conn"), "max_client_conn")), "max_client_conn")
    login = seconds(get("client_login_timeout"), "client_login_timeout")
    if login > 0:
        w.set("clients", "login_timeout", login, "client_login_timeout")
    else:
        w.note("client_login_timeout", "unsupported", "0 (no limit) is not supported: poold's login_timeout "
               "must be > 0; its default 60 s applies")
    if "max_packet_size" in settings:
        w.set("clients", "max_message_size", max(1024, int_value(settings["max_packet_size"], "max_packet_size")),
              "max_packet_size")


def _tls(w: _Writer, settings: dict[str, str], get: Get, path: Callable[[str], str]) -> None:
    mode = get("client_tls_sslmode").lower()
    cert, key = settings.get("client_tls_cert_file", ""), settings.get("client_tls_key_file", "")
    if mode == "disable":
        if "client_tls_sslmode" in settings:
            w.note("client_tls_sslmode", "carried", "disable: no [tls] table, poold answers SSLRequest with 'N'")
        for k in ("client_tls_cert_file", "client_tls_key_file", "client_tls_ca_file"):
            if k in settings:
                w.note(k, "not-applicable", "client_tls_sslmode = disable: PgBouncer does not use it either")
    elif not (cert and key):
        w.note("client_tls_sslmode", "unsupported", f"{mode} needs client_tls_cert_file and client_tls_key_file")
    else:
        w.set("tls", "cert_file", path(cert), "client_tls_cert_file")
        w.set("tls", "key_file", path(key), "client_tls_key_file")
        w.set("tls", "require", mode in ("require", "verify-ca", "verify-full"), f"client_tls_sslmode = {mode}")
        ca = settings.get("client_tls_ca_file", "")
        if ca:
            w.set("tls", "ca_file", path(ca), "client_tls_ca_file (client certificates: asked for, verified "
                  "when given)")
        if mode in ("verify-ca", "verify-full"):
            w.note("client_tls_sslmode", "changed", f"{mode} became require: poold verifies a client certificate "
                   "against tls.ca_file when one is given, but requires one only where an hba cert rule does")


#: PgBouncer's server_tls_protocols words -> libpq's ssl_min_protocol_version
_TLS_VERSIONS = {"tlsv1.0": "TLSv1", "tlsv1.1": "TLSv1.1", "tlsv1.2": "TLSv1.2", "tlsv1.3": "TLSv1.3",
                 "all": "TLSv1", "legacy": "TLSv1", "secure": "TLSv1.2", "default": "TLSv1.2"}


def _server_tls(w: _Writer, settings: dict[str, str], get: Get, path: Callable[[str], str]) -> dict[str, str]:
    """PgBouncer's server_tls_* settings as the libpq parameters every converted DSN
    carries: server_tls_sslmode -> sslmode (PgBouncer's default and libpq's are both
    prefer), the CA file -> sslrootcert (``system``, PgBouncer's system bundle, for
    verify-* without one), the certificate and key -> sslcert/sslkey, the lowest
    of server_tls_protocols -> ssl_min_protocol_version."""
    mode = get("server_tls_sslmode").lower() or "prefer"
    params = {"sslmode": mode} if "server_tls_sslmode" in settings else {}
    if mode not in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"):
        raise IniError(f"server_tls_sslmode: invalid value: {mode}")
    if "server_tls_sslmode" in settings:
        w.note("server_tls_sslmode", "carried", f"sslmode={mode} in each database's DSN")
    if mode == "disable":
        for k in ("server_tls_ca_file", "server_tls_cert_file", "server_tls_key_file", "server_tls_protocols"):
            if k in settings:
                w.note(k, "not-applicable", "server_tls_sslmode = disable: PgBouncer does not use it either")
        return params
    if mode in ("verify-ca", "verify-full"):
        params["sslrootcert"] = "system"  # PgBouncer's default CA file: the system's bundle
    for key, param in (("server_tls_ca_file", "sslrootcert"), ("server_tls_cert_file", "sslcert"),
                       ("server_tls_key_file", "sslkey")):
        if settings.get(key):
            params[param] = path(settings[key])
            w.note(key, "carried", f"{param} in each database's DSN")
        elif key in settings:
            w.note(key, "carried", f"empty: no {param} (PgBouncer's default)")
    words = [p.strip().lower() for p in settings.get("server_tls_protocols", "").replace(",", " ").split()]
    versions = [_TLS_VERSIONS[p] for p in words if p in _TLS_VERSIONS]
    if versions and min(versions) != "TLSv1.2":  # libpq's own minimum is TLSv1.2
        params["ssl_min_protocol_version"] = min(versions)
    if "server_tls_protocols" in settings:
        w.note("server_tls_protocols", "carried", f"ssl_min_protocol_version={min(versions, default='TLSv1.2')} "
               "(libpq's default when TLSv1.2) in each database's DSN")
    return params


def _daemon(w: _Writer, settings: dict[str, str]) -> None:
    if "verbose" in settings:
        level = "debug" if int_value(settings["verbose"], "verbose") > 0 else "info"
        w.set("daemon", "log_level", level, "verbose")


def _pool(w: _Writer, settings: dict[str, str], get: Get) -> None:
    mode = get("pool_mode").lower()
    w.set("pool", "mode", _mode(w, "pool_mode", mode), "pool_mode")
    max_size = int_value(get("default_pool_size"), "default_pool_size")
    min_size = int_value(get("min_pool_size"), "min_pool_size")
    if max_size < 1:
        w.note("default_pool_size", "changed", f"{max_size} became 1: poold's max_size must be >= 1")
        max_size = 1
    if min_size > max_size:
        w.note("min_pool_size", "changed", f"{min_size} became {max_size}: poold's min_size must be <= max_size")
        min_size = max_size
    w.set("pool", "max_size", max_size, "default_pool_size")
    w.set("pool", "min_size", min_size, "min_pool_size")
    for ini_key, key, why in (
        ("query_wait_timeout", "acquire_timeout", "0 (wait for ever)"),
        ("server_idle_timeout", "idle_timeout", "0 (never close)"),
        ("server_lifetime", "max_lifetime", "0 (unlimited)"),
    ):
        value = seconds(get(ini_key), ini_key)
        if value > 0:
            w.set("pool", key, value, ini_key)
        else:
            w.note(ini_key, "unsupported", f"{why} is not supported: poold's {key} must be > 0; its default applies")
    query_timeout = seconds(get("query_timeout"), "query_timeout")
    w.set("pool", "query_timeout", query_timeout, "query_timeout")
    if query_timeout > 0:
        w.note("query_timeout", "changed", "PgBouncer closes the connection when a query runs longer; poold "
               "cancels the query and the client gets PostgreSQL's 57014")
    w.set("pool", "statement_timeout", 0.0, "PgBouncer sets no statement_timeout")
    reset = settings.get("server_reset_query")
    if reset is not None and reset.strip().rstrip(";").strip().upper() != "DISCARD ALL":
        w.note("server_reset_query", "unsupported", "poold always resets session-mode connections with DISCARD ALL")
    elif reset is not None:
        w.note("server_reset_query", "carried", "poold resets session-mode connections with DISCARD ALL")
    for key in ("ignore_startup_parameters", "track_extra_parameters"):
        _parameters(w, key, settings.get(key, ""))
    _server_connect_timeout(w, settings, get)


def _prepared_statements(w: _Writer, settings: dict[str, str], get: Get) -> None:
    """PgBouncer's max_prepared_statements is poold's, per server connection, in
    transaction mode; the same default (200), so only a value set is written."""
    if "max_prepared_statements" in settings:
        prepared = int_value(get("max_prepared_statements"), "max_prepared_statements")
        w.set("pool", "max_prepared_statements", prepared, "max_prepared_statements")


def _parameters(w: _Writer, key: str, value: str) -> None:
    names = [p for p in (p.strip() for p in value.split(",")) if p]
    if key == "ignore_startup_parameters" and names:
        w.set("clients", key, ", ".join(names), key)
    for name in names:
        if key == "ignore_startup_parameters":
            w.note(f"{key}: {name}", "carried", "poold drops it unread too; without the list poold would give "
                   "it to the client as a setting of its own")
        else:
            w.note(f"{key}: {name}", "carried", "poold keeps every setting per client")


def _mode(w: _Writer, key: str, mode: str) -> str:
    if mode in ("session", "transaction"):
        return mode
    if mode == "statement":
        w.note(key, "changed", "statement pooling became transaction pooling: poold has no statement mode, "
               "so multi-statement transactions are allowed")
        return "transaction"
    raise IniError(f"{key}: invalid pool mode {mode!r}")


def _server_connect_timeout(w: _Writer, settings: dict[str, str], get: Get) -> None:
    # Carried into each DSN as libpq's connect_timeout (whole seconds, at least 2) by _databases.
    timeout = seconds(get("server_connect_timeout"), "server_connect_timeout")
    libpq = max(2, math.ceil(timeout))
    if timeout and timeout != libpq:
        w.note("server_connect_timeout", "changed", f"{timeout:g} s became connect_timeout={libpq} in each "
               "DSN (libpq takes whole seconds, at least 2)")
    elif "server_connect_timeout" in settings:
        w.note("server_connect_timeout", "carried", f"connect_timeout={libpq} in each DSN" if timeout else
               "0: no connect_timeout in the DSNs")


def _databases(w: _Writer, entries: Iterable[tuple[str, str, int]], get: Get, tls: dict[str, str]) -> None:
    for name, connstr, lineno in entries:
        table = f"databases.{json.dumps(name)}"
        try:
            pairs = parse_connstr(connstr)
        except IniError as exc:
            raise IniError(f"line {lineno}: {name}: {exc}") from None
        w.tables.pop(table, None)  # PgBouncer: a name defined again is replaced whole
        _database(w, table, f"databases.{name}", pairs, get, tls)


def _database(w: _Writer, table: str, prefix: str, pairs: list[tuple[str, str]], get: Get,
              tls: dict[str, str]) -> None:
    """One [databases] entry: its libpq DSN (with the server TLS parameters), then its own pool settings."""
    dsn: dict[str, str] = {}
    options: list[str] = []
    pool: dict[str, tuple[object, str]] = {}
    for key, value in pairs:
        if key in _DSN_KEYS:
            dsn[key] = value
        elif key in ("datestyle", "timezone"):
            options.append(f"-c {'DateStyle' if key == 'datestyle' else 'TimeZone'}={value}")
        elif key == "pool_mode":
            pool["mode"] = (_mode(w, f"{prefix}.pool_mode", value.lower()), key)
        elif key in ("pool_size", "min_pool_size"):
            pool[_DB_POOL_KEYS[key]] = (int_value(value, f"{prefix}.{key}"), key)
        elif key in ("server_lifetime", "query_timeout"):
            duration = seconds(value, f"{prefix}.{key}")
            if key == "server_lifetime" and duration == 0:
                w.note(f"{prefix}.{key}", "unsupported", "0 (unlimited) is not supported: max_lifetime must be > 0")
            else:
                pool[_DB_POOL_KEYS[key]] = (duration, key)
        elif key in _DB_UNSUPPORTED or key in UNSUPPORTED:
            w.note(f"{prefix}.{key}", "unsupported", _DB_UNSUPPORTED.get(key) or UNSUPPORTED[key])
        else:
            raise IniError(f"{prefix}: unrecognized connection parameter: {key}")
    if "host" not in dsn and get("unix_socket_dir"):
        dsn["host"] = get("unix_socket_dir")  # PgBouncer connects through its own socket directory
    connect_timeout = seconds(get("server_connect_timeout"), "server_connect_timeout")
    if connect_timeout > 0:
        dsn["connect_timeout"] = str(max(2, math.ceil(connect_timeout)))
    if options:
        dsn["options"] = " ".join(options)
    dsn.update(tls)
    w.set(table, "dsn", " ".join(f"{k}={_dsn_quote(v)}" for k, v in dsn.items()), "connection string")
    max_size = int_value(get("default_pool_size"), "default_pool_size")
    min_size = int_value(get("min_pool_size"), "min_pool_size")
    if "max_size" in pool:
        max_size = int(str(pool["max_size"][0]))
        if max_size < 1:
            w.note(f"{prefix}.pool_size", "changed", f"{max_size} became 1: max_size must be >= 1")
            max_size = 1
            pool["max_size"] = (1, "pool_size")
    if "min_size" in pool:
        min_size = int(str(pool["min_size"][0]))
        if min_size > max_size:
            w.note(f"{prefix}.min_pool_size", "changed", f"{min_size} became {max_size}: min_size must be "
                   "<= max_size")
    if min_size > max_size:
        pool["min_size"] = (max_size, "min_pool_size, capped at pool_size")
    for setting, (chosen, origin) in pool.items():
        w.set(table, setting, chosen, origin)
