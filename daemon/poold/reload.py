"""Reload and rollback: read, validate, plan, apply; numbered generations.

``plan_reload(old, new)`` is pure: it compares two configurations key by key
and says what a reload would do (databases added, removed or changed, keys that
only a restart applies). ``Reloader`` runs one reload at a time: it reads the
file and the env file again, refuses an invalid configuration whole (the old one
keeps serving), applies the plan to the live pools, and records the result as a
new generation. ``rollback`` re-applies the previous good generation.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import structlog

from .auth import AuthFiles, load_auth_files
from .authquery import AuthQuery
from .config import Config, ConfigError, load_config, without_env_file_copies
from .tls import server_context

if TYPE_CHECKING:
    from .runtime import Runtime

log = structlog.get_logger("poold.reload")

#: keys read once at startup; a change is reported and waits for a restart
RESTART_KEYS = ("listen.", "control.", "http.", "daemon.log_format", "daemon.log_level")
MASK = "********"
KEEP_GENERATIONS = 20


def config_items(config: Config) -> dict[str, Any]:
    """The configuration as flat ``section.key`` items, with secrets masked."""
    items: dict[str, Any] = {}
    for section in ("listen", "auth", "clients", "daemon", "control", "http", "tls", "pool"):
        obj = getattr(config, section)
        for f in fields(obj):
            items[f"{section}.{f.name}"] = getattr(obj, f.name)
    for name, db in sorted(config.databases.items()):
        items[f"databases.{name}.dsn"] = mask_conninfo(db.conninfo)
        for f in fields(db.pool):
            items[f"databases.{name}.{f.name}"] = getattr(db.pool, f.name)
    return items


#: conninfo keys whose values are secrets: a password, or SCRAM keys (libpq 18)
SECRET_KEYS = frozenset({"password", "scram_client_key", "scram_server_key"})


def mask_conninfo(info: Mapping[str, str]) -> str:
    return " ".join(f"{k}={MASK if k in SECRET_KEYS else v}" for k, v in info.items())


@dataclass(frozen=True)
class Plan:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # database -> what
    live: tuple[str, ...] = ()  # other keys applied at once
    restart_required: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.live or self.restart_required)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": {k: list(v) for k, v in self.changed.items()},
            "live": list(self.live),
            "restart_required": list(self.restart_required),
        }


def config_sources(config: Config) -> dict[str, str]:
    """Where each of ``config_items``' values came from: the environment variable and
    the env file or environment that set it, the TOML file, or the default; a
    database's pool key not set for it is inherited from [pool]'s."""
    def source(key: str) -> str:
        if key in config.overrides:
            return config.overrides[key]
        if key in config.file_keys:
            return config.path
        return "default"

    sources = {}
    for key in config_items(config):
        if key.startswith("databases.") and key not in config.overrides and key not in config.file_keys:
            pool_key = "pool." + key.rsplit(".", 1)[1]
            inherited = source(pool_key)
            sources[key] = "default" if inherited == "default" else f"{pool_key} ({inherited})"
        else:
            sources[key] = source(key)
    return sources


def diff_items(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    a, b = config_items(old), config_items(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def plan_reload(old: Config, new: Config) -> Plan:
    diff = diff_items(old, new)
    added = tuple(sorted(set(new.databases) - set(old.databases)))
    removed = tuple(sorted(set(old.databases) - set(new.databases)))
    changed: dict[str, list[str]] = {}
    live, restart = [], []
    for key, (before, after) in diff.items():
        if key.startswith("databases."):
            name, _, sub = key[len("databases.") :].rpartition(".")
            if name in added or name in removed:
                continue
            changed.setdefault(name, []).append(
                "dsn changed: reconnect at transaction boundaries" if sub == "dsn" else f"{sub}: {before} -> {after}"
            )
        elif key.startswith(RESTART_KEYS):
            restart.append(f"{key}: {before} -> {after}")
        elif not key.startswith("pool."):  # [pool] reaches the pools through databases.*
            live.append(f"{key}: {before} -> {after}")
    return Plan(added, removed, {k: tuple(v) for k, v in changed.items()}, tuple(live), tuple(restart))


class ReloadRejected(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class Reloader:
    def __init__(self, rt: Runtime, environ: Mapping[str, str] = os.environ) -> None:
        self.rt = rt
        self.environ = without_env_file_copies(environ, rt.config.env_file)
        self.generation = 1
        #: what poold started with: keys that need a restart stay in force from it
        self.started = rt.config
        self.generations: list[tuple[int, Config]] = [(1, rt.config)]
        self._lock = asyncio.Lock()

    def read(self) -> tuple[Config, AuthFiles]:
        """The configuration on disk now (file, env file, environment), validated."""
        try:
            config = load_config(self.rt.config.path, self.environ)
            return config, load_auth_files(config)
        except ConfigError as exc:
            raise ReloadRejected(exc.errors) from exc

    async def reload(self, *, dry_run: bool = False) -> dict[str, Any]:
        async with self._lock:
            try:
                config, files = self.read()
            except ReloadRejected as exc:
                if not dry_run:
                    self.rt.stats.reloads["rejected"] += 1
                    log.error("reload_rejected", errors=exc.errors, generation=self.generation)
                raise
            plan = plan_reload(self.rt.config, config)
            if dry_run:
                return {"dry_run": True, "generation": self.generation, "plan": plan.as_dict()}
            await self._apply(config, files, plan)
            self.rt.stats.reloads["applied"] += 1
            log.info("reload_applied", generation=self.generation, plan=plan.as_dict())
            return {"generation": self.generation, "plan": plan.as_dict()}

    async def rollback(self) -> dict[str, Any]:
        async with self._lock:
            if len(self.generations) < 2:
                raise ReloadRejected(["no previous generation to roll back to"])
            source, config = self.generations[-2]
            try:
                files = load_auth_files(config)
            except ConfigError as exc:
                raise ReloadRejected(exc.errors) from exc
            plan = plan_reload(self.rt.config, config)
            await self._apply(config, files, plan)
            self.rt.stats.reloads["rollback"] += 1
            log.info("rollback_applied", generation=self.generation, restored=source, plan=plan.as_dict())
            return {"generation": self.generation, "restored": source, "plan": plan.as_dict()}

    def diff(self) -> dict[str, Any]:
        """What differs between the running configuration and the one on disk."""
        config, _files = self.read()
        return {k: {"running": a, "on_disk": b} for k, (a, b) in diff_items(self.rt.config, config).items()}

    async def _apply(self, config: Config, files: AuthFiles, plan: Plan) -> None:
        rt = self.rt
        users = files.users
        rt.config = config
        rt.users = users
        rt.hba = files.hba
        old_query, rt.auth_query = rt.auth_query, AuthQuery(config.auth, users) if config.auth.user else None
        if old_query is not None:
            await old_query.close()
        rt.ssl_context = server_context(config.tls)
        for pool in list(rt.pools.pools.values()):
            db = config.database(pool.db.name)
            if db is None:
                rt.pools.retire(pool)  # new logins get 3D000; its clients finish
                continue
            await pool.reconfigure(db, rt.server_credentials(db, pool.user))
        await rt.pools.open_configured(config.databases, rt.server_credentials)
        self.generation += 1
        self.generations.append((self.generation, config))
        del self.generations[:-KEEP_GENERATIONS]
