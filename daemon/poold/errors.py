"""Errors poold raises itself; each carries the SQLSTATE the client is sent."""

from __future__ import annotations


class PooldError(Exception):
    """An error answered to a client as ErrorResponse with ``sqlstate``."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message



class ServerRefusal(PooldError):
    """A server's ErrorResponse that ends a client's login, sent on as the server worded it.

    PostgreSQL ends a login whose startup packet sets a value it refuses with a FATAL;
    poold learns of the refusal as an ERROR on a server connection, and answers the
    client with the same fields at FATAL (``response``), not with words of its own."""

    def __init__(self, sqlstate: str, message: str, response: bytes) -> None:
        super().__init__(sqlstate, message)
        self.response = response
