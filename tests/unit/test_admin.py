"""The admin console's parsing, privileges and result-set messages, without a socket:
queries go into Console.execute, the reply's messages come out (admin.py, adminviews.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from poold import adminviews
from poold.admin import Console
from poold.config import build_config
from poold.protocol import messages
from poold.protocol.framing import MessageReader
from poold.runtime import Runtime


def replies(data: bytes) -> list[tuple[str, bytes]]:
    reader = MessageReader()
    reader.feed(data)
    out = []
    while (msg := reader.next_typed()) is not None:
        out.append((chr(msg[0]), msg[1]))
    return out


def console(**auth: str) -> Console:
    raw: dict[str, Any] = {"auth": dict(auth), "databases": {"app": {"dsn": "host=127.0.0.1 dbname=app user=app"}}}
    rt = Runtime(build_config(raw, Path("/nonexistent/poold.toml")), {})
    return Console(SimpleNamespace(runtime=rt, reloader=None))  # type: ignore[arg-type]  # what the views read


def execute(c: Console, sql: str, role: str = "admin") -> list[tuple[str, bytes]]:
    session = SimpleNamespace(user="ops", role=role)
    return replies(asyncio.run(c.execute(session, sql)))  # type: ignore[arg-type]


def error(reply: list[tuple[str, bytes]]) -> dict[str, str]:
    (kind, body), ready = reply
    assert kind == "E" and ready == ("Z", b"I")
    return messages.parse_error_fields(body)


def test_row_description_and_data_row_are_postgresqls_bytes() -> None:
    # name, table OID 0, column 0, type OID, size, typmod -1, text format
    assert messages.row_description([("database", "text"), ("cl_active", "int4")]) == (
        b"T\x00\x00\x00\x3d\x00\x02"
        b"database\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00"
        b"cl_active\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00")
    assert messages.data_row(["app", None, 3]) == b"D\x00\x00\x00\x16\x00\x03\x00\x00\x00\x03app\xff\xff\xff\xff" \
        b"\x00\x00\x00\x013"
    assert messages.command_complete("SHOW") == b"C\x00\x00\x00\x09SHOW\x00"


def test_commands_in_any_case_with_or_without_a_semicolon() -> None:
    c = console()
    for sql in ("SHOW VERSION", "show version;", "  Show  Version ; ", 'SHOW "version"', "select version"):
        reply = execute(c, sql)
        assert [k for k, _ in reply] == ["T", "D", "C", "Z"], sql
        assert reply[1][1].endswith(b"(PgBouncer 1.25.2 compatible)")
    assert execute(c, "")[0] == ("I", b"")  # EmptyQueryResponse, as a server answers an empty query


def test_every_view_has_a_value_for_each_column() -> None:
    c = console()
    for name in ("pools", "clients", "databases", "users", "stats", "stats_totals", "stats_averages", "totals",
                 "lists", "state"):
        columns, rows = getattr(adminviews, name)(c)
        assert (rows or name == "clients") and all(len(r) == len(columns) for r in rows), name
    columns, rows = adminviews.version()
    assert len(rows[0]) == len(columns) == 1


def test_stats_users_may_only_show_and_errors_carry_pgbouncers_words() -> None:
    c = console(admin_users="ops, root", stats_users="grafana")
    assert (c.role("ops"), c.role("root"), c.role("grafana"), c.role("app")) == ("admin", "admin", "stats", None)
    for sql in ("PAUSE", "RESUME app", "RELOAD", "KILL_CLIENT 3", "SET max_client_conn = 10", "SHOW FDS"):
        assert {"C": "42501", "M": "admin access needed"}.items() <= error(execute(c, sql, role="stats")).items(), sql
    assert [k for k, _ in execute(c, "SHOW POOLS", role="stats")] == ["T", "D", "C", "Z"]
    fields = error(execute(c, "SHOW NOSUCH"))
    assert (fields["C"], fields["M"]) == ("42601", "invalid command 'SHOW NOSUCH', use SHOW HELP;")
    assert error(execute(c, "PAUSE one two three"))["C"] == "42601"
    assert error(execute(c, "KILL_CLIENT abc"))["M"] == "invalid client pointer supplied"
    assert error(execute(c, "RESUME"))["M"] == "pooler is not paused/suspended"
    assert error(execute(c, "DISABLE nosuch"))["M"] == "no such database: nosuch"
    assert error(execute(c, "DISABLE"))["M"] == "a database is required"
    notice, done, ready = execute(c, "SET client_encoding = 'UTF8'")  # a driver's habit: ignored, as PgBouncer does
    assert (notice[0], done, ready) == ("N", ("C", b"SET\x00"), ("Z", b"I"))
