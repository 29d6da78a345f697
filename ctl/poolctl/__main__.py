"""poolctl: steer a running poold over its control socket (standard library only).

    poolctl [--socket PATH] [--json] status
    poolctl [--socket PATH] [--json] pools

Exits 0 on success, 1 when the command fails, 2 when poold cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_SOCKET = "/run/poold/control.sock"


class Unreachable(Exception):
    pass


class CommandFailed(Exception):
    pass


def request(path: str, command: str, args: dict[str, Any] | None = None, timeout: float = 30) -> Any:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(json.dumps({"version": PROTOCOL_VERSION, "command": command, "args": args or {}}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:
        raise Unreachable(f"poold is not running (no control socket at {path})") from None
    except ConnectionRefusedError:
        raise Unreachable(f"poold is not running (connection refused at {path})") from None
    except PermissionError:
        raise Unreachable(f"permission denied on {path}") from None
    except (TimeoutError, OSError) as exc:
        raise Unreachable(f"cannot talk to poold at {path}: {exc}") from None
    if not data:
        raise Unreachable(f"poold closed the control connection at {path} (is your uid allowed?)")
    reply = json.loads(data)
    if not reply.get("ok"):
        raise CommandFailed(reply.get("error", "command failed"))
    return reply.get("result")


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def render(command: str, result: Any) -> str:
    if command == "pools":
        return table(result, ["pool", "mode", "active", "idle", "waiting", "total", "min_size", "max_size", "last_error"])
    if isinstance(result, dict):
        width = max(len(k) for k in result) if result else 0
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in result.items())
    return json.dumps(result, indent=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poolctl", description="control a running poold")
    parser.add_argument("--socket", default=os.environ.get("POOLCTL_SOCKET", DEFAULT_SOCKET))
    parser.add_argument("--json", action="store_true", help="print the raw JSON result")
    parser.add_argument("command", choices=["status", "pools"])
    args = parser.parse_args(argv)
    try:
        result = request(args.socket, args.command)
    except Unreachable as exc:
        print(f"poolctl: {exc}", file=sys.stderr)
        return 2
    except CommandFailed as exc:
        print(f"poolctl: {args.command} failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else render(args.command, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
