"""The control socket: newline-delimited JSON commands from poolctl.

Request:  {"version": 1, "command": "pools", "args": {}}
Reply:    {"version": 1, "ok": true, "result": ...} or {"version": 1, "ok": false, "error": "..."}

Only peers whose uid (SO_PEERCRED) is root, poold's own, or listed in
control.allowed_uids are served; others are closed without a reply.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from .config import ControlSettings
from .listener import listening_as
from .reload import RESTART_KEYS, ReloadRejected, config_items, config_sources

if TYPE_CHECKING:
    from .pools import Pool
    from .reload import Reloader
    from .runtime import Runtime

log = structlog.get_logger("poold.control")

PROTOCOL_VERSION = 1
MAX_REQUEST = 64 * 1024

Command = Callable[["Operations", dict[str, Any]], Awaitable[Any]]


class Operations(Protocol):
    """What control commands act on (the App)."""

    runtime: Runtime
    reloader: Reloader

    async def reload(self, *, dry_run: bool = False) -> dict[str, Any]: ...
    async def rollback(self) -> dict[str, Any]: ...
    async def drain(self) -> None: ...
    def request_shutdown(self) -> None: ...


async def _status(ops: Operations, args: dict[str, Any]) -> dict[str, Any]:
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


async def _pools(ops: Operations, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [p.snapshot() for p in ops.runtime.pools.pools.values()]


async def _clients(ops: Operations, args: dict[str, Any]) -> list[dict[str, Any]]:
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
        for c in sorted(ops.runtime.clients, key=lambda c: c.connected_at)
    ]


async def _servers(ops: Operations, args: dict[str, Any]) -> list[dict[str, Any]]:
    now = time.monotonic()
    return [row for p in ops.runtime.pools.pools.values() for row in p.servers(now)]


async def _config(ops: Operations, args: dict[str, Any]) -> Any:
    action = args.get("action", "show")
    if action == "show":
        # Keys that need a restart show what is in force, and the value waiting for it.
        items, started = config_items(ops.runtime.config), config_items(ops.reloader.started)
        pending = {k: v for k, v in items.items() if k.startswith(RESTART_KEYS) and started.get(k) != v}
        items |= {k: started.get(k) for k in pending}
        if args.get("sources"):
            sources = config_sources(ops.runtime.config)
            for key in pending:
                sources[key] = f"in force since start; {sources[key]} has {pending[key]!r}, pending a restart"
            return {k: {"value": v, "source": sources.get(k, "")} for k, v in items.items()}
        return items | {"generation": ops.reloader.generation, "pending_restart": pending}
    if action == "diff":
        return ops.reloader.diff()
    raise ValueError(f"unknown config action {action!r} (show, diff)")


async def _reload(ops: Operations, args: dict[str, Any]) -> Any:
    return await ops.reload(dry_run=bool(args.get("dry_run")))


async def _rollback(ops: Operations, args: dict[str, Any]) -> Any:
    return await ops.rollback()


def _select(ops: Operations, args: dict[str, Any]) -> list[Pool]:
    name = args.get("pool")
    pools = ops.runtime.pools.select(name)
    if name and not pools:
        raise ValueError(f"no pool named {name!r}")
    return pools


async def _pause(ops: Operations, args: dict[str, Any]) -> Any:
    pools = _select(ops, args)
    for p in pools:
        p.pause()
    deadline = time.monotonic() + float(args.get("timeout", 30))
    while any(p.active for p in pools) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return {"paused": [p.name for p in pools], "still_active": sum(len(p.active) for p in pools)}


async def _resume(ops: Operations, args: dict[str, Any]) -> Any:
    pools = _select(ops, args)
    for p in pools:
        p.resume()
    return {"resumed": [p.name for p in pools]}


async def _reconnect(ops: Operations, args: dict[str, Any]) -> Any:
    pools = _select(ops, args)
    for p in pools:
        await p.reconnect()
    return {"reconnecting": [p.name for p in pools]}


async def _drain(ops: Operations, args: dict[str, Any]) -> Any:
    await ops.drain()
    return {"draining": True, "clients": len(ops.runtime.clients)}


async def _shutdown(ops: Operations, args: dict[str, Any]) -> Any:
    ops.request_shutdown()
    return {"shutting_down": True}


COMMANDS: dict[str, Command] = {
    "status": _status,
    "pools": _pools,
    "clients": _clients,
    "servers": _servers,
    "config": _config,
    "reload": _reload,
    "rollback": _rollback,
    "pause": _pause,
    "resume": _resume,
    "reconnect": _reconnect,
    "drain": _drain,
    "shutdown": _shutdown,
}


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    def __init__(self, ops: Operations, settings: ControlSettings) -> None:
        self.ops = ops
        self.settings = settings
        self.allowed = {0, os.getuid()} | {int(u) for u in settings.allowed_uids.split(",") if u.strip().isdigit()}
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = self.settings.socket
        if not path:
            return
        with listening_as("control", path):  # poold does not start without it: ListenFailed
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            if os.path.exists(path):
                os.unlink(path)
            self._server = await asyncio.start_unix_server(self._serve, path, limit=MAX_REQUEST)
            os.chmod(path, self.settings.mode)
        log.info("control_listening", path=path)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                os.unlink(self.settings.socket)
            except OSError:
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid = peer_uid(writer.get_extra_info("socket"))
            if uid not in self.allowed:
                log.warning("control_peer_refused", uid=uid)
                return
            while line := await asyncio.wait_for(reader.readline(), timeout=300):
                reply = await self._handle(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.LimitOverrunError, ValueError):
            pass
        except Exception:  # task boundary: one bad request must not hurt the daemon
            log.exception("control_failed")
        finally:
            writer.close()

    async def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            command = request["command"]
            args = request.get("args") or {}
            if request.get("version") != PROTOCOL_VERSION:
                raise ValueError(f"unsupported protocol version {request.get('version')!r}")
        except (ValueError, KeyError, TypeError) as exc:
            return {"version": PROTOCOL_VERSION, "ok": False, "error": f"bad request: {exc}"}
        handler = COMMANDS.get(command)
        if handler is None:
            return {"version": PROTOCOL_VERSION, "ok": False, "error": f"unknown command {command!r}"}
        try:
            result = await handler(self.ops, args)
        except ReloadRejected as exc:
            return {"version": PROTOCOL_VERSION, "ok": False, "error": "configuration rejected", "errors": exc.errors}
        except ValueError as exc:
            return {"version": PROTOCOL_VERSION, "ok": False, "error": str(exc)}
        except Exception as exc:  # reported to poolctl, logged here
            log.exception("control_command_failed", command=command)
            return {"version": PROTOCOL_VERSION, "ok": False, "error": str(exc)}
        return {"version": PROTOCOL_VERSION, "ok": True, "result": result}
