"""Errors poold raises itself; each carries the SQLSTATE the client is sent."""

from __future__ import annotations


class PooldError(Exception):
    """An error answered to a client as ErrorResponse with ``sqlstate``."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


# SQLSTATEs poold answers with, by meaning.
TOO_MANY_CONNECTIONS = "53300"
PROTOCOL_VIOLATION = "08P01"
INVALID_PASSWORD = "28P01"
INVALID_AUTHORIZATION = "28000"
UNKNOWN_DATABASE = "3D000"
ADMIN_SHUTDOWN = "57P01"
CANNOT_CONNECT_NOW = "57P03"
CONNECTION_FAILURE = "08006"
QUERY_CANCELED = "57014"
