"""Protocol errors, each carrying the SQLSTATE poold answers with."""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer broke the protocol; answer FATAL with ``sqlstate`` and close."""

    sqlstate = "08P01"

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        if sqlstate is not None:
            self.sqlstate = sqlstate


class FeatureNotSupported(ProtocolError):
    """A valid request poold does not implement (0A000)."""

    sqlstate = "0A000"


class MessageTooLarge(ProtocolError):
    """A frame whose declared length exceeds the configured limit (54000)."""

    sqlstate = "54000"


class StartupLengthInvalid(ProtocolError):
    """A startup packet length below 8 or above the limit. PostgreSQL logs "invalid
    length of startup packet" and closes without a word: so does poold."""
