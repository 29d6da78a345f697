"""Configuration: TOML plus environment overrides, validated into frozen dataclasses.

``load_config(path, environ)`` is the one place a configuration is built. It reads
the TOML file, then the env file (``daemon.env_file``), then applies environment
overrides, and validates everything at once. Every error names its key, e.g.
``pool.max_size: must be >= min_size (3)``. A reload builds a new snapshot; nothing
mutates one.

Environment overrides (later wins):
  1. the process environment, 2. the env file (re-read on every reload, so that
  editing it and reloading takes effect even when the process was started with
  the same variable set). The env file is the source of truth for what it held
  at start: under systemd, EnvironmentFile= copies it into the process
  environment, and a key later removed from the file must not live on from that
  copy (``without_env_file_copies``). Within each: short names first (``DB_POOL_MAX`` ...),
  then ``POOLD_<SECTION>__<KEY>`` (``POOLD_POOL__MAX_SIZE=12``,
  ``POOLD_DATABASES__APP__DSN=...``; names are lower-cased).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

POOL_MODES = ("session", "transaction")
SESSION_STATES = ("pin", "error")
AUTH_TYPES = ("trust", "md5", "scram-sha-256", "hba")
ENV_PREFIX = "POOLD_"

#: short names kept from the old deployment: name -> (key, scale to seconds)
SHORT_ENV_NAMES: Mapping[str, tuple[str, float]] = MappingProxyType(
    {
        "DB_POOL_MAX": ("max_size", 1),
        "DB_POOL_MIN": ("min_size", 1),
        "DB_ACQUIRE_TIMEOUT": ("acquire_timeout", 1),
        "DB_IDLE_TIMEOUT": ("idle_timeout", 1),
        "DB_STATEMENT_TIMEOUT": ("statement_timeout", 0.001),  # milliseconds
    }
)


class ConfigError(Exception):
    """A configuration that fails validation; ``errors`` lists every problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class ListenSettings:
    host: str = "127.0.0.1"  # comma-separated addresses; "" disables TCP
    port: int = 6432
    unix_socket_dir: str = "/tmp"  # "" disables the Unix socket
    unix_socket_mode: int = 0o777
    backlog: int = 1024


@dataclass(frozen=True)
class AuthSettings:
    type: str = "scram-sha-256"  # or "hba": per origin, database and user, from hba_file
    file: str = "userlist.txt"  # relative paths are relative to the TOML file
    hba_file: str = ""  # pg_hba.conf format; required by type = "hba"
    user: str = ""  # auth_user: looks up users the auth file lacks with ``query``; "" = off
    query: str = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"  # $1: the user name
    query_ttl: float = 30.0  # seconds an answer (found or not) is kept
    admin_users: str = ""  # comma-separated: may run every admin console command (PgBouncer's admin_users)
    stats_users: str = ""  # comma-separated: may run the admin console's SHOW commands (stats_users)


@dataclass(frozen=True)
class ClientSettings:
    max_client_conn: int = 1000
    login_timeout: float = 60.0
    max_message_size: int = 64 * 1024 * 1024  # client frames above this are refused
    max_login_conn: int = 1000  # logins in progress; a new one pushes out the oldest (loginguard)
    auth_failure_delay: float = 0.5  # seconds per failed authentication of a (user, address); 0 disables
    ignore_startup_parameters: str = ""  # comma-separated startup parameters dropped, as PgBouncer's list

    @property
    def ignored_startup_parameters(self) -> frozenset[str]:
        return frozenset(n.strip().lower() for n in self.ignore_startup_parameters.split(",") if n.strip())


@dataclass(frozen=True)
class DaemonSettings:
    env_file: str = "poold.env"
    shutdown_timeout: float = 30.0
    log_format: str = "auto"  # auto, json, console
    log_level: str = "info"


@dataclass(frozen=True)
class TlsSettings:
    cert_file: str = ""  # PEM certificate (chain) shown to clients; "" = no TLS
    key_file: str = ""  # its private key
    require: bool = False  # refuse clients that do not ask for TLS
    ca_file: str = ""  # CAs that sign client certificates (the hba file's cert method); "" = none asked for


@dataclass(frozen=True)
class HttpSettings:
    host: str = "127.0.0.1"  # "" disables the HTTP endpoints
    port: int = 9127


@dataclass(frozen=True)
class ControlSettings:
    socket: str = "/run/poold/control.sock"  # "" disables the control socket
    mode: int = 0o660
    allowed_uids: str = ""  # comma-separated uids served besides root and poold's own


@dataclass(frozen=True)
class PoolSettings:
    mode: str = "transaction"
    db_cpu_count: int = 0  # 0: this machine's CPU count
    max_size: int = 0  # 0: db_cpu_count * 2 + 4
    min_size: int = -1  # -1: ceil(max_size * 0.25)
    acquire_timeout: float = 60.0
    idle_timeout: float = 10.0
    statement_timeout: float = 15.0  # 0 disables
    query_timeout: float = 15.0  # 0 disables
    max_lifetime: float = 3600.0
    breaker_failures: int = 5
    breaker_reset: float = 30.0
    pressure_threshold: float = 0.90
    session_state: str = "pin"  # transaction mode: what cannot follow a client (LISTEN, ...) pins or errors
    max_prepared_statements: int = 200  # per server connection, transaction mode; 0: names pass through
    max_client_prepared_statements: int = 1000  # open named statements per client; 0: no cap


@dataclass(frozen=True)
class DatabaseSettings:
    name: str
    dsn: str
    conninfo: Mapping[str, str]  # parsed dsn, with poold's forced keys
    pool: PoolSettings


@dataclass(frozen=True)
class Config:
    listen: ListenSettings
    auth: AuthSettings
    clients: ClientSettings
    daemon: DaemonSettings
    control: ControlSettings
    http: HttpSettings
    tls: TlsSettings
    pool: PoolSettings
    databases: Mapping[str, DatabaseSettings]
    path: str = ""
    env_file: str = ""  # resolved path of the env file that was read, if any
    overrides: Mapping[str, str] = field(default_factory=dict)  # key -> source
    file_keys: frozenset[str] = frozenset()  # "section.key" and "databases.NAME.key" the TOML file sets

    def database(self, name: str) -> DatabaseSettings | None:
        db = self.databases.get(name)
        if db is None and "*" in self.databases:
            wild = self.databases["*"]
            info = dict(wild.conninfo)
            info["dbname"] = name
            db = DatabaseSettings(name, wild.dsn, MappingProxyType(info), wild.pool)
        return db


_SECTIONS: dict[str, type] = {
    "listen": ListenSettings,
    "auth": AuthSettings,
    "clients": ClientSettings,
    "daemon": DaemonSettings,
    "control": ControlSettings,
    "http": HttpSettings,
    "tls": TlsSettings,
    "pool": PoolSettings,
}


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str]) -> Config:
    """Read, override and validate; raise ConfigError naming every bad key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from exc
    errors: list[str] = []
    file_keys = frozenset(
        f"{section}.{name}.{key}" if section == "databases" and isinstance(value, dict) else f"{section}.{name}"
        for section, table in raw.items() if isinstance(table, dict)
        for name, value in table.items()
        for key in (value if section == "databases" and isinstance(value, dict) else [None])
    )
    overrides: dict[str, str] = {}
    _apply_env(raw, environ, "environment", overrides, errors)
    env_path = _env_file_path(raw, path, environ)
    env_file = ""
    if env_path is not None and env_path.is_file():
        env_file = str(env_path)
        try:
            file_env = parse_env_file(env_path.read_text())
        except (OSError, ValueError) as exc:
            errors.append(f"daemon.env_file: {env_path}: {exc}")
        else:
            _apply_env(raw, file_env, str(env_path), overrides, errors)
    config = build_config(raw, path, errors)
    return replace(config, env_file=env_file, overrides=MappingProxyType(overrides), file_keys=file_keys)


def build_config(raw: dict[str, Any], path: Path, errors: list[str] | None = None) -> Config:
    errors = [] if errors is None else errors
    unknown = set(raw) - set(_SECTIONS) - {"databases"}
    errors += [f"{k}: unknown section" for k in sorted(unknown)]
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            errors.append(f"{name}: must be a table")
            table = {}
        if name == "pool":
            sections[name] = _build_pool(table, name, errors)
        else:
            sections[name] = _build(cls, table, name, errors)
    _validate_sections(sections, errors)
    databases = _build_databases(raw.get("databases", {}), raw.get("pool", {}), errors)
    auth: AuthSettings = sections["auth"]
    if auth.file and not os.path.isabs(auth.file):
        auth = replace(auth, file=str(path.parent / auth.file))
    if auth.hba_file and not os.path.isabs(auth.hba_file):
        auth = replace(auth, hba_file=str(path.parent / auth.hba_file))
    sections["auth"] = auth
    if errors:
        raise ConfigError(errors)
    return Config(databases=databases, path=str(path), **sections)


def _build(cls: type, table: Mapping[str, Any], prefix: str, errors: list[str]) -> Any:
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        f = known.get(key)
        if f is None:
            errors.append(f"{prefix}.{key}: unknown key")
            continue
        try:
            values[key] = _coerce(value, f.type)
        except ValueError as exc:
            errors.append(f"{prefix}.{key}: {exc}")
    return cls(**values)


def _coerce(value: Any, type_name: Any) -> Any:
    t = type_name if isinstance(type_name, str) else type_name.__name__
    if t == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ValueError(f"must be a boolean, got {value!r}")
    if t == "int":
        if isinstance(value, bool):
            raise ValueError(f"must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value, 0) if value.strip().startswith("0o") else int(value)
            except ValueError:
                pass
        raise ValueError(f"must be an integer, got {value!r}")
    if t == "float":
        if isinstance(value, bool):
            raise ValueError(f"must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            result = float(value)
        else:
            try:
                result = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"must be a number, got {value!r}") from None
        if not math.isfinite(result):
            raise ValueError(f"must be a finite number, got {value!r}")
        return result
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def _build_pool(table: Mapping[str, Any], prefix: str, errors: list[str]) -> PoolSettings:
    n_before = len(errors)
    pool: PoolSettings = _build(PoolSettings, table, prefix, errors)
    cpus = pool.db_cpu_count or os.cpu_count() or 1
    max_size = pool.max_size or cpus * 2 + 4
    min_size = pool.min_size if pool.min_size >= 0 else math.ceil(max_size * 0.25)
    pool = replace(pool, db_cpu_count=cpus, max_size=max_size, min_size=min_size)
    # Every error at once: the keys that did not parse are said once, the rest checked as given.
    unparsed = {e.split(":")[0] for e in errors[n_before:]}
    checks: list[str] = []
    _validate_pool(pool, table, prefix, checks)
    errors += [e for e in checks if e.split(":")[0] not in unparsed]
    return pool


def _validate_pool(p: PoolSettings, table: Mapping[str, Any], prefix: str, errors: list[str]) -> None:
    def bad(key: str, why: str) -> None:
        errors.append(f"{prefix}.{key}: {why}")

    if p.mode not in POOL_MODES:
        bad("mode", f"must be one of {', '.join(POOL_MODES)}, got {p.mode!r}")
    if p.session_state not in SESSION_STATES:
        bad("session_state", f"must be one of {', '.join(SESSION_STATES)}, got {p.session_state!r}")
    if p.db_cpu_count < 1:
        bad("db_cpu_count", "must be >= 1")
    if p.max_size < 1:
        bad("max_size", "must be >= 1")
    if p.min_size < 0:
        bad("min_size", "must be >= 0")
    elif p.min_size > p.max_size:
        key = "min_size" if "min_size" in table else "max_size"
        other = p.max_size if key == "min_size" else p.min_size
        rel = "<= max_size" if key == "min_size" else ">= min_size"
        bad(key, f"must be {rel} ({other})")
    for key in ("acquire_timeout", "idle_timeout", "max_lifetime", "breaker_reset"):
        if getattr(p, key) <= 0:
            bad(key, "must be > 0")
    for key in ("statement_timeout", "query_timeout"):
        if getattr(p, key) < 0:
            bad(key, "must be >= 0 (0 disables)")
    if p.breaker_failures < 1:
        bad("breaker_failures", "must be >= 1")
    if not 0 < p.pressure_threshold <= 1:
        bad("pressure_threshold", "must be in (0, 1]")
    for key in ("max_prepared_statements", "max_client_prepared_statements"):
        if getattr(p, key) < 0:
            bad(key, "must be >= 0 (0 turns it off)")


def _validate_sections(s: dict[str, Any], errors: list[str]) -> None:
    listen: ListenSettings = s["listen"]
    if not 0 < listen.port < 65536:
        errors.append(f"listen.port: must be in 1..65535, got {listen.port}")
    if not listen.host and not listen.unix_socket_dir:
        errors.append("listen.host: no TCP address and no unix_socket_dir: nothing to listen on")
    if not 0 <= listen.unix_socket_mode <= 0o777:
        errors.append("listen.unix_socket_mode: must be a file mode such as 0o777")
    if listen.backlog < 1:
        errors.append("listen.backlog: must be >= 1")
    auth: AuthSettings = s["auth"]
    if auth.type not in AUTH_TYPES:
        errors.append(f"auth.type: must be one of {', '.join(AUTH_TYPES)}, got {auth.type!r}")
    if auth.type == "hba" and not auth.hba_file:
        errors.append('auth.hba_file: required by auth.type = "hba"')
    if auth.query_ttl < 0:
        errors.append("auth.query_ttl: must be >= 0 (0: look up at every login)")
    if auth.user and "$1" not in auth.query:
        errors.append("auth.query: must take the user name as $1")
    clients: ClientSettings = s["clients"]
    if clients.max_client_conn < 1:
        errors.append("clients.max_client_conn: must be >= 1")
    if clients.login_timeout <= 0:
        errors.append("clients.login_timeout: must be > 0")
    if clients.max_message_size < 1024:
        errors.append("clients.max_message_size: must be >= 1024")
    if clients.max_login_conn < 1:
        errors.append("clients.max_login_conn: must be >= 1")
    if not 0 <= clients.auth_failure_delay <= clients.login_timeout:
        errors.append(f"clients.auth_failure_delay: must be in 0..login_timeout ({clients.login_timeout:g})")
    tls: TlsSettings = s["tls"]
    if bool(tls.cert_file) != bool(tls.key_file):
        errors.append("tls.cert_file: cert_file and key_file go together")
    if tls.ca_file and not tls.cert_file:
        errors.append("tls.ca_file: needs cert_file and key_file")
    for key in ("cert_file", "key_file", "ca_file"):
        path = getattr(tls, key)
        if path and not os.path.isfile(path):
            errors.append(f"tls.{key}: {path}: no such file")
    if tls.require and not tls.cert_file:
        errors.append("tls.require: needs cert_file and key_file")
    if tls.cert_file and tls.key_file and not errors:
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls.cert_file, tls.key_file)
        except (ssl.SSLError, OSError) as exc:
            errors.append(f"tls.cert_file: cannot load the certificate and key: {exc}")
    http: HttpSettings = s["http"]
    if not 0 < http.port < 65536:
        errors.append(f"http.port: must be in 1..65535, got {http.port}")
    control: ControlSettings = s["control"]
    if not 0 <= control.mode <= 0o777:
        errors.append("control.mode: must be a file mode such as 0o660")
    for uid in filter(None, (u.strip() for u in control.allowed_uids.split(","))):
        if not uid.isdigit():
            errors.append(f"control.allowed_uids: {uid!r} is not a numeric uid")
    daemon: DaemonSettings = s["daemon"]
    if daemon.shutdown_timeout < 0:
        errors.append("daemon.shutdown_timeout: must be >= 0")
    if daemon.log_format not in ("auto", "json", "console"):
        errors.append("daemon.log_format: must be one of auto, json, console")
    if daemon.log_level.lower() not in ("debug", "info", "warning", "error"):
        errors.append("daemon.log_level: must be one of debug, info, warning, error")


def _build_databases(
    raw: Any, pool_raw: Any, errors: list[str]
) -> Mapping[str, DatabaseSettings]:
    from psycopg.conninfo import conninfo_to_dict  # parses with libpq's own rules

    if not isinstance(raw, dict):
        errors.append("databases: must be a table of [databases.NAME] tables")
        return MappingProxyType({})
    if not isinstance(pool_raw, dict):
        pool_raw = {}
    result: dict[str, DatabaseSettings] = {}
    for name, table in raw.items():
        prefix = f"databases.{name}"
        if not isinstance(table, dict):
            errors.append(f"{prefix}: must be a table")
            continue
        dsn = table.get("dsn", "")
        if not isinstance(dsn, str):
            errors.append(f"{prefix}.dsn: must be a string")
            continue
        # Errors in inherited [pool] keys are reported once, under "pool.".
        db_errors: list[str] = []
        pool = _build_pool({**pool_raw, **{k: v for k, v in table.items() if k != "dsn"}}, prefix, db_errors)
        errors += [e for e in db_errors if e.split(":")[0].rsplit(".", 1)[1] in table]
        try:
            info = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
        except Exception as exc:  # psycopg.ProgrammingError: libpq's own message
            from .servertls import older_libpq_hint

            message = str(exc).strip()
            errors.append(f"{prefix}.dsn: invalid connection string: {message}{older_libpq_hint(message)}")
            continue
        from .servertls import dsn_problems

        tls_errors = [f"{prefix}.dsn: {problem}" for problem in dsn_problems(info)]
        if tls_errors:
            errors += tls_errors
            continue
        info["gssencmode"] = "disable"
        info.setdefault("dbname", name if name != "*" else "")
        result[name] = DatabaseSettings(name, dsn, MappingProxyType(info), pool)
    return MappingProxyType(result)


def _env_file_path(raw: dict[str, Any], path: Path, environ: Mapping[str, str]) -> Path | None:
    daemon = raw.get("daemon", {})
    name = daemon.get("env_file", DaemonSettings.env_file) if isinstance(daemon, dict) else None
    if not isinstance(name, str) or not name:
        return None
    p = Path(name)
    return p if p.is_absolute() else path.parent / p


def without_env_file_copies(environ: Mapping[str, str], env_file: str) -> dict[str, str]:
    """``environ`` less the variables that the env file holds with the same value now.

    Called once at start: those are the env file's own settings, put into the
    process environment by systemd's EnvironmentFile= (or a shell's ``set -a``).
    Reloads then read them from the file alone, so that deleting one from the
    file reverts it to the TOML value, as editing it changes it.
    """
    if not env_file:
        return dict(environ)
    try:
        file_env = parse_env_file(Path(env_file).read_text())
    except (OSError, ValueError):
        return dict(environ)  # load_config reports it
    return {k: v for k, v in environ.items() if file_env.get(k) != v}


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments, quotes)."""
    env: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key or not key.replace("_", "a").isalnum():
            raise ValueError(f"line {lineno}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def _apply_env(
    raw: dict[str, Any],
    env: Mapping[str, str],
    source: str,
    overrides: dict[str, str],
    errors: list[str],
) -> None:
    pool = raw.setdefault("pool", {})
    for name, (key, scale) in SHORT_ENV_NAMES.items():
        if name in env and isinstance(pool, dict):
            value = env[name]
            if scale != 1:
                try:
                    value = str(float(value) * scale)
                except ValueError:
                    errors.append(f"pool.{key}: {name}={value!r} from {source} is not a number")
                    continue
            pool[key] = value
            overrides[f"pool.{key}"] = f"{name} ({source})"
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if len(path) < 2 or not all(path):
            errors.append(f"{name}: expected POOLD_<SECTION>__<KEY>")
            continue
        table = raw
        for part in path[:-1]:
            nxt = table.setdefault(part, {})
            if not isinstance(nxt, dict):
                errors.append(f"{'.'.join(path)}: {name} overrides a value that is not a table")
                break
            table = nxt
        else:
            table[path[-1]] = value
            overrides[".".join(path)] = f"{name} ({source})"
