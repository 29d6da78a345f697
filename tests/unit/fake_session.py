"""Stand-ins for what a ClientSession meets in-process: its transport and an open pool."""

from __future__ import annotations

import types
from typing import Any

from poold.protocol import messages
from poold.spellings import Spellings


class Transport:
    """Records what is written; refuses writes after close."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return False  # poold's lingering close closes it then (sockio.linger)

    def close(self) -> None:
        self.closed = True


def open_pool(defaults: dict[str, str]) -> Any:
    """A pool in transaction mode whose server reported ``defaults``: what a login reads of it."""
    status = {k: messages.parameter_status(k, v) for k, v in defaults.items()}
    return types.SimpleNamespace(clients=0, settings=types.SimpleNamespace(mode="transaction"), defaults=defaults,
                                 status_messages=status, spellings=Spellings())
