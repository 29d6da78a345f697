"""Errors poold raises itself; each carries the SQLSTATE the client is sent."""

from __future__ import annotations


class PooldError(Exception):
    """An error answered to a client as ErrorResponse with ``sqlstate``."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message

