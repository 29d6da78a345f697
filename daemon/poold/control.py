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
from typing import Any

import structlog

from .config import ControlSettings
from .runtime import Runtime

log = structlog.get_logger("poold.control")

PROTOCOL_VERSION = 1
MAX_REQUEST = 64 * 1024

Command = Callable[[Runtime, dict[str, Any]], Awaitable[Any]]


async def _status(rt: Runtime, args: dict[str, Any]) -> dict[str, Any]:
    from . import __version__

    return {
        "pid": os.getpid(),
        "version": __version__,
        "uptime": round(time.monotonic() - rt.started, 1),
        "config": rt.config.path,
        "clients": len(rt.clients),
        "pools": len(rt.pools.pools),
        "server_connections": sum(p.leased for p in rt.pools.pools.values()),
        "shutting_down": rt.shutting_down,
    }


async def _pools(rt: Runtime, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [p.snapshot() for p in rt.pools.pools.values()]


COMMANDS: dict[str, Command] = {"status": _status, "pools": _pools}


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    def __init__(self, rt: Runtime, settings: ControlSettings) -> None:
        self.rt = rt
        self.settings = settings
        self.allowed = {0, os.getuid()} | {int(u) for u in settings.allowed_uids.split(",") if u.strip().isdigit()}
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = self.settings.socket
        if not path:
            return
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            if os.path.exists(path):
                os.unlink(path)
            self._server = await asyncio.start_unix_server(self._serve, path, limit=MAX_REQUEST)
            os.chmod(path, self.settings.mode)
        except OSError as exc:
            # The pooler itself can serve without its control socket.
            log.error("control_socket_unavailable", path=path, error=str(exc))
            return
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
            result = await handler(self.rt, args)
        except Exception as exc:  # reported to poolctl, logged here
            log.exception("control_command_failed", command=command)
            return {"version": PROTOCOL_VERSION, "ok": False, "error": str(exc)}
        return {"version": PROTOCOL_VERSION, "ok": True, "result": result}
