"""Logging: structlog configured once, stdlib logging (psycopg's) routed through it.

Three outputs, chosen at startup:
- journald fields when stderr is connected to the journal (JOURNAL_STREAM) and
  systemd-python is installed: each key becomes a POOLD_<KEY> field;
- JSON lines when stderr is not a terminal (journald without systemd-python,
  containers, log shippers);
- a readable console on a terminal.
psycopg_pool logs every connection check-in at INFO; that is turned down to WARNING.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import structlog

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
_SKIP = frozenset({"event", "timestamp", "level", "logger"})


def configure(fmt: str = "auto", level: str = "info", environ: Mapping[str, str] = os.environ) -> str:
    """Configure logging once; returns the output chosen (journald, json, console)."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        # filter_by_level first: a call below the level costs a level check, not
        # the timestamp and the rest of the chain.
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    send = _journal_send(environ) if fmt == "auto" else None
    handler: logging.Handler
    if send is not None:
        handler = JournaldHandler(send)
        chosen = "journald"
    else:
        if fmt == "auto":
            fmt = "console" if sys.stderr.isatty() else "json"
        renderer: structlog.types.Processor = (
            structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
        )
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=shared,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    renderer,
                ],
            )
        )
        chosen = fmt
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("psycopg.pool").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    return chosen


def _journal_send(environ: Mapping[str, str]) -> Callable[..., None] | None:
    """systemd.journal.send when stderr is the journal, else None."""
    stream = environ.get("JOURNAL_STREAM", "")
    if not stream:
        return None
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return None
    if stream != f"{st.st_dev}:{st.st_ino}":
        return None
    try:
        from systemd import journal  # type: ignore[import-not-found,attr-defined,unused-ignore]
    except ImportError:
        return None
    return journal.send  # type: ignore[no-any-return]


class JournaldHandler(logging.Handler):
    """Send each record to journald with its structlog keys as fields."""

    def __init__(self, send: Callable[..., None]) -> None:
        super().__init__()
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if isinstance(record.msg, dict):
                event = dict(record.msg)
                message = str(event.get("event", ""))
            else:
                event, message = {}, record.getMessage()
            fields = {f"POOLD_{k.upper()}": _field(v) for k, v in event.items() if k not in _SKIP}
            text = message + "".join(f" {k[6:].lower()}={v}" for k, v in fields.items())
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.send(text, PRIORITY=str(_PRIORITY.get(record.levelno, 6)), SYSLOG_IDENTIFIER="poold",
                      POOLD_EVENT=message, POOLD_LOGGER=record.name, **fields)
        except Exception:
            self.handleError(record)


def _field(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)
