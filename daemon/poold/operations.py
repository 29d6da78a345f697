"""What an operator sees of the running daemon and does to it: the rows of status,
pools, clients and servers, and pause, resume and reconnect.

Both operator interfaces call these, so that they show the same numbers and act
the same way: the control socket (control.py, for poolctl) and the admin console
(admin.py, PgBouncer's SHOW and control commands).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any, Protocol

from .reload import RESTART_KEYS, config_items

if TYPE_CHECKING:
    from .client import ClientSession
    from .pools import Pool
    from .reload import Reloader
    from .runtime import Runtime


class Operations(Protocol):
    """What operator commands act on (the App)."""

    runtime: Runtime
    reloader: Reloader

    async def reload(self, *, dry_run: bool = False) -> dict[str, Any]: ...
    async def rollback(self) -> dict[str, Any]: ...
    async def drain(self) -> None: ...
    def request_shutdown(self) -> None: ...


def status(ops: Operations) -> dict[str, Any]:
    """The daemon at a glance."""
    from . import __version__

    rt = ops.runtime
    return {
        "pid": os.getpid(),
        "version": __version__,
        "uptime": round(time.monotonic() - rt.started, 1),
        "config": rt.config.path,
        "generation": ops.reloader.generation,
        "clients": len(rt.clients),
        "pools": len(rt.pools.pools),
        "server_connections": rt.pools.server_connections(),
        "draining": rt.draining,
    }


def config_in_force(ops: Operations) -> tuple[dict[str, Any], dict[str, Any]]:
    """The configuration as flat items, and the values that wait for a restart: a key
    that needs one shows what is in force (the value at start), not what was reloaded."""
    items, started = config_items(ops.runtime.config), config_items(ops.reloader.started)
    pending = {k: v for k, v in items.items() if k.startswith(RESTART_KEYS) and started.get(k) != v}
    return items | {k: started.get(k) for k in pending}, pending


def pools(rt: Runtime) -> list[dict[str, Any]]:
    """One row per pool (Pool.snapshot)."""
    return [p.snapshot() for p in rt.pools.pools.values()]


def logged_in(rt: Runtime) -> list[ClientSession]:
    """The clients past their login, oldest first."""
    return sorted((c for c in rt.clients if c.relaying), key=lambda c: c.connected_at)


def clients(rt: Runtime) -> list[dict[str, Any]]:
    """One row per client connection, oldest first; ``id`` is what KILL_CLIENT takes."""
    now = time.time()
    return [
        {
            "id": c.key[0],
            "peer": c.peer,
            "database": c.database,
            "user": c.user,
            "state": c.state,
            "server_pid": c.server.pid if c.server is not None else "",
            "transactions": c.transactions,
            "age": round(now - c.connected_at, 1),
            "pinned": c.pinned or "",
        }
        for c in sorted(rt.clients, key=lambda c: c.connected_at)
    ]


def servers(rt: Runtime) -> list[dict[str, Any]]:
    """One row per open server connection of every pool (Pool.servers)."""
    now = time.monotonic()
    return [row for p in rt.pools.pools.values() for row in p.servers(now)]


def select(rt: Runtime, name: str | None) -> list[Pool]:
    """The pools ``name`` names ("db.user", "db"), or all; ValueError naming it if none."""
    found = rt.pools.select(name)
    if name and not found:
        raise ValueError(f"no pool named {name!r}")
    return found


async def pause(rt: Runtime, name: str | None, timeout: float) -> dict[str, Any]:
    """Pause the pools ``name`` names, or all (and those made later, until resume): no
    new leases; wait up to ``timeout`` for their clients to give back the server
    connections they hold (at the end of their transactions)."""
    selected = select(rt, name)
    if not name:
        rt.pools.paused = True
    for p in selected:
        p.pause()
    deadline = time.monotonic() + timeout
    while any(p.active for p in selected) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return {"paused": [p.name for p in selected], "still_active": sum(len(p.active) for p in selected)}


def resume(rt: Runtime, name: str | None) -> dict[str, Any]:
    selected = select(rt, name)
    if not name:
        rt.pools.paused = False
    for p in selected:
        p.resume()
    return {"resumed": [p.name for p in selected]}


async def reconnect(selected: list[Pool]) -> dict[str, Any]:
    """New server connections for the pools; the old ones close as their clients release them."""
    for p in selected:
        await p.reconnect()
    return {"reconnecting": [p.name for p in selected]}
