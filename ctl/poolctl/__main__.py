"""poolctl: steer a running poold over its control socket (standard library only).

    poolctl status | pools | clients | servers
    poolctl config show | config diff
    poolctl reload [--dry-run] | rollback
    poolctl pause [POOL] | resume [POOL] | reconnect [POOL]
    poolctl drain | shutdown

Global options: --socket PATH (or $POOLCTL_SOCKET), or --config FILE (the control
socket that poold's configuration names), --json.
Exits 0 on success, 1 when the command fails, 2 when poold cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

from . import __version__

PROTOCOL_VERSION = 1
DEFAULT_SOCKET = "/run/poold/control.sock"

TABLES = {
    "pools": ["pool", "mode", "clients", "active", "idle", "waiting", "total", "min_size", "max_size", "paused",
              "breaker", "prepared.statements", "prepared.hits", "prepared.misses", "prepared.evictions",
              "prepared.reprepares", "last_error"],
    "clients": ["id", "peer", "database", "user", "state", "server_pid", "transactions", "age", "pinned"],
    "servers": ["pool", "pid", "state", "tx_status", "client", "age", "tls"],
}


class Unreachable(Exception):
    pass


class CommandFailed(Exception):
    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


def request(path: str, command: str, args: dict[str, Any] | None = None, timeout: float = 60) -> Any:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            line = {"version": PROTOCOL_VERSION, "command": command, "args": args or {}}
            s.sendall(json.dumps(line).encode() + b"\n")
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
    except OSError as exc:
        raise Unreachable(f"cannot talk to poold at {path}: {exc}") from None
    if not data:
        raise Unreachable(f"poold closed the control connection at {path} (is your uid allowed?)")
    reply = json.loads(data)
    if not reply.get("ok"):
        raise CommandFailed(reply.get("error", "command failed"), reply.get("errors"))
    return reply.get("result")


def _cell(row: dict[str, Any], column: str) -> str:
    """A row's value; "prepared.hits" reads a nested one (the pool's statement registry)."""
    value: Any = row
    for part in column.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return str(value)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_cell(r, c) for c in columns] for r in rows]
    heads = [c.replace("prepared.", "ps_").upper() for c in columns]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def render(command: str, result: Any) -> str:
    if command in TABLES:
        return table(result, TABLES[command])
    if isinstance(result, dict) and "plan" in result:
        return render_plan(result)
    if isinstance(result, dict):
        width = max((len(k) for k in result), default=0)
        if result and all(isinstance(v, dict) and set(v) == {"value", "source"} for v in result.values()):
            return "\n".join(f"{k.ljust(width)}  {_value(k, v['value'])}  ({v['source']})" for k, v in result.items())
        return "\n".join(f"{k.ljust(width)}  {_value(k, v)}" for k, v in result.items())
    return json.dumps(result, indent=2)


def render_plan(result: dict[str, Any]) -> str:
    plan = result["plan"]
    head = "dry run: would apply" if result.get("dry_run") else f"applied generation {result['generation']}"
    if "restored" in result:
        head += f" (restored generation {result['restored']})"
    lines = [head]
    for name in plan["added"]:
        lines.append(f"  + database {name}")
    for name in plan["removed"]:
        lines.append(f"  - database {name}")
    for name, changes in plan["changed"].items():
        lines += [f"  ~ database {name}: {c}" for c in changes]
    lines += [f"  ~ {c}" for c in plan["live"]]
    lines += [f"  ! needs restart: {c}" for c in plan["restart_required"]]
    if len(lines) == 1:
        lines.append("  (no changes)")
    return "\n".join(lines)


#: keys whose numbers are seconds (the configuration's durations, status's uptime)
_SECONDS = ("_timeout", "_lifetime", "_reset", "uptime")


def _value(key: str, v: Any) -> str:
    """A value as a person reads it: file modes in octal as written in poold.toml, durations with their unit."""
    name = key.rsplit(".", 1)[-1]
    if isinstance(v, int) and not isinstance(v, bool) and name.endswith("mode"):
        return f"0o{v:03o}"
    if isinstance(v, (int, float)) and not isinstance(v, bool) and name.endswith(_SECONDS):
        return f"{v:g} s"
    return _text(v)


def _text(v: Any) -> str:
    if isinstance(v, dict):
        return " ".join(f"{k}={_text(x)}" for k, x in v.items())
    return str(v)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="poolctl", description="control a running poold")
    parser.add_argument("--socket", default=os.environ.get("POOLCTL_SOCKET", DEFAULT_SOCKET))
    parser.add_argument("--config", metavar="FILE", help="poold's TOML: use the control socket it names ([control] socket)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON result")
    parser.add_argument("--version", action="version", version=f"poolctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("status", "pools", "clients", "servers", "rollback", "drain", "shutdown"):
        sub.add_parser(name)
    cfg = sub.add_parser("config")
    cfg.add_argument("action", choices=["show", "diff"], nargs="?", default="show")
    cfg.add_argument("--sources", action="store_true", help="show: where each value came from (file, env, default)")
    rl = sub.add_parser("reload")
    rl.add_argument("--dry-run", action="store_true", help="print the plan without applying it")
    for name in ("pause", "resume", "reconnect"):
        p = sub.add_parser(name)
        p.add_argument("pool", nargs="?", help='"db.user" or a database name; all pools when omitted')
    return parser.parse_args(argv)


def socket_from_config(path: str) -> str:
    """The control socket a poold configuration file names (its default when it names none)."""
    import tomllib

    with open(path, "rb") as f:
        control = tomllib.load(f).get("control", {})
    return str(control.get("socket", DEFAULT_SOCKET))  # as poold opens it


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.config:
        try:
            args.socket = socket_from_config(args.config)
        except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
            print(f"poolctl: cannot read the control socket from {args.config}: {exc}", file=sys.stderr)
            return 2
    params: dict[str, Any] = {}
    if args.command == "config":
        params["action"] = args.action
        params["sources"] = args.sources
    elif args.command == "reload":
        params["dry_run"] = args.dry_run
    elif args.command in ("pause", "resume", "reconnect") and args.pool:
        params["pool"] = args.pool
    try:
        result = request(args.socket, args.command, params)
    except Unreachable as exc:
        print(f"poolctl: {exc}", file=sys.stderr)
        return 2
    except CommandFailed as exc:
        detail = f": {'; '.join(exc.details)}" if exc.details else ""
        print(f"poolctl: {args.command} failed: {exc}{detail}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else render(args.command, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
