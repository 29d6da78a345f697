"""Errors poold raises itself; each carries the SQLSTATE the client is sent."""

from __future__ import annotations


class PooldError(Exception):
    """An error answered to a client as ErrorResponse with ``sqlstate``."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


class ServerRefusal(PooldError):
    """The server's own error, sent on as the server worded it: a connect it refused
    for good (an unknown database or role, a pg_hba.conf reject, a failed password,
    no CONNECT privilege), or a startup setting it refused. ``response``: the
    ErrorResponse the client is sent, at FATAL (PostgreSQL ends such a login)."""

    def __init__(self, sqlstate: str, message: str, detail: str | None = None, hint: str | None = None,
                 response: bytes | None = None) -> None:
        super().__init__(sqlstate, message)
        self.detail = detail
        self.hint = hint
        if response is None:
            from .protocol.messages import error_response

            response = error_response(sqlstate, message, detail=detail, hint=hint)
        self.response = response
