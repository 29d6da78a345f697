"""The server side of one SCRAM-SHA-256 exchange (RFC 5802, RFC 7677), sans-IO.

PostgreSQL's flavour: the user name in client-first is ignored (the startup
packet names the user, and libpq sends ``n=``), channel binding is not offered
(only ``SCRAM-SHA-256`` is advertised, so a client may say ``n`` or ``y`` but
never ``p``), and no extensions are accepted.

    exchange = ScramExchange(stored_key, server_key, salt, iterations)
    server_first = exchange.server_first(client_first)   # AuthenticationSASLContinue
    server_final = exchange.server_final(client_final)   # AuthenticationSASLFinal

Either step raises :class:`ScramError` for a malformed message or a wrong proof;
the caller answers 28P01 without saying which. Key derivation from a plain
password (SASLprep, PBKDF2) is not done here: it is expensive and happens once
per user, in auth.py.

Why not scramp's ScramServer for the exchange: it costs about 100 us of Python
per login (it re-validates every attribute character by character); this is a
few HMACs and string splits. scramp stays the independent client in the tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from .errors import ProtocolError

NONCE_BYTES = 18

#: the c= attribute client-final must carry for each gs2 header poold accepts
_CBIND = {flag: base64.b64encode(f"{flag},,".encode()).decode() for flag in ("n", "y")}  # "biws", "eSws"


class ScramError(ProtocolError):
    """A malformed SCRAM message or a failed proof (answered as 28P01)."""

    sqlstate = "28P01"


class ScramExchange:
    __slots__ = ("_stored_key", "_server_key", "_salt", "_iterations", "_nonce", "_cbind_flag",
                 "_client_first_bare", "_server_first", "client_key")

    def __init__(self, stored_key: bytes, server_key: bytes, salt: bytes, iterations: int,
                 nonce: str | None = None) -> None:
        self._stored_key = stored_key
        self._server_key = server_key
        self._salt = salt
        self._iterations = iterations
        self._nonce = nonce if nonce is not None else base64.b64encode(os.urandom(NONCE_BYTES)).decode()
        self._cbind_flag = ""
        self._client_first_bare = ""
        self._server_first = ""
        #: the client's ClientKey, once its proof is verified: what a server login may
        #: authenticate with in its place (libpq's scram_client_key)
        self.client_key = b""

    def server_first(self, client_first: bytes) -> bytes:
        """Take client-first-message, return server-first-message."""
        text = _text(client_first)  # the (ignored) user name may be any UTF-8
        # gs2-header: cbind-flag "," [authzid] ","
        flag, sep, rest = text.partition(",")
        if not sep or flag not in ("n", "y"):
            raise ScramError("channel binding is not supported" if flag.startswith("p=") else "malformed gs2 header")
        authzid, sep, bare = rest.partition(",")
        if not sep or authzid:
            raise ScramError("authorization identity is not supported")
        attrs = bare.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise ScramError("malformed client-first-message")
        if len(attrs) > 2:
            raise ScramError("SCRAM extensions are not supported")
        client_nonce = attrs[1][2:]
        if not client_nonce or not _printable(client_nonce):
            raise ScramError("malformed client nonce")
        self._cbind_flag = flag
        self._client_first_bare = bare
        self._nonce = client_nonce + self._nonce
        salt = base64.b64encode(self._salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={self._iterations}"
        return self._server_first.encode()

    def server_final(self, client_final: bytes) -> bytes:
        """Take client-final-message, verify the proof, return server-final-message."""
        if not self._server_first:
            raise ScramError("client-final-message before client-first-message")
        text = _text(client_final)
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise ScramError("malformed client-final-message: no proof")
        attrs = without_proof.split(",")
        if len(attrs) != 2 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            raise ScramError("malformed client-final-message")
        if attrs[0][2:] != _CBIND[self._cbind_flag]:
            raise ScramError("channel binding data does not match")
        if attrs[1][2:] != self._nonce:
            raise ScramError("nonce does not match")
        try:
            proof = binascii.a2b_base64(proof_b64, strict_mode=True)
        except ValueError as exc:  # binascii.Error, or text that is not ASCII
            raise ScramError("malformed proof") from exc
        if len(proof) != len(self._stored_key):
            raise ScramError("malformed proof")
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        client_signature = hmac.digest(self._stored_key, auth_message, "sha256")
        client_key = (int.from_bytes(proof) ^ int.from_bytes(client_signature)).to_bytes(len(proof))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self._stored_key):
            raise ScramError("wrong password")
        self.client_key = client_key
        server_signature = hmac.digest(self._server_key, auth_message, "sha256")
        return b"v=" + base64.b64encode(server_signature)


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScramError("SCRAM messages must be UTF-8") from exc


def _printable(value: str) -> bool:
    """RFC 5802 printable: %x21-2B / %x2D-7E (no comma)."""
    return value.isascii() and value.isprintable() and " " not in value and "," not in value
