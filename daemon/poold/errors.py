"""Errors poold raises itself; each carries the SQLSTATE the client is sent."""

from __future__ import annotations


class PooldError(Exception):
    """An error answered to a client as ErrorResponse with ``sqlstate``."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


class ServerRefusal(PooldError):
    """The server refused a connect for good (an unknown database or role, a
    pg_hba.conf reject, a failed password, no CONNECT privilege): the client
    is sent the server's own error, worded as the server worded it."""

    def __init__(self, sqlstate: str, message: str, detail: str | None = None, hint: str | None = None) -> None:
        super().__init__(sqlstate, message)
        self.detail = detail
        self.hint = hint
