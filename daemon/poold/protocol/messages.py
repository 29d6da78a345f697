"""The few PostgreSQL v3 messages poold builds or reads itself (sans-IO).

Builders return ready-to-send bytes; parsers take a message body (without the
type byte and length) and raise ProtocolError on malformed input.
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .errors import FeatureNotSupported, ProtocolError

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

# Message types (as ints, the way the scanners report them).
AUTHENTICATION = ord("R")
BACKEND_KEY_DATA = ord("K")
ERROR_RESPONSE = ord("E")
NOTICE_RESPONSE = ord("N")
NOTIFICATION_RESPONSE = ord("A")
PARAMETER_STATUS = ord("S")
READY_FOR_QUERY = ord("Z")
QUERY = ord("Q")
PARSE = ord("P")
SYNC = ord("S")
FUNCTION_CALL = ord("F")
TERMINATE = ord("X")
PASSWORD = ord("p")

_I32 = struct.Struct("!i")
_II = struct.Struct("!ii")


# --- startup ---------------------------------------------------------------


@dataclass(frozen=True)
class SSLRequest:
    pass


@dataclass(frozen=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True)
class CancelRequest:
    pid: int
    secret: int


@dataclass(frozen=True)
class StartupMessage:
    params: dict[str, str]
    #: minor version the client asked for, and the _pq_ options it sent; poold
    #: answers NegotiateProtocolVersion when either is beyond 3.0.
    minor: int = 0
    protocol_options: tuple[str, ...] = field(default=())

    @property
    def user(self) -> str:
        return self.params["user"]

    @property
    def database(self) -> str:
        return self.params.get("database") or self.params["user"]


StartupRequest = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def parse_startup(payload: bytes) -> StartupRequest:
    """Parse the payload of an untyped startup-phase packet."""
    if len(payload) < 4:
        raise ProtocolError("startup packet too short")
    (code,) = _I32.unpack_from(payload)
    if code == SSL_REQUEST and len(payload) == 4:
        return SSLRequest()
    if code == GSSENC_REQUEST and len(payload) == 4:
        return GSSENCRequest()
    if code == CANCEL_REQUEST:
        if len(payload) != 12:
            raise ProtocolError("invalid CancelRequest length")
        pid, secret = _II.unpack_from(payload, 4)
        return CancelRequest(pid, secret)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise FeatureNotSupported(
            f"unsupported frontend protocol {major}.{minor}: poold supports 3.0"
        )
    params, options = _parse_params(payload[4:])
    if "user" not in params or not params["user"]:
        raise ProtocolError("no PostgreSQL user name specified in startup packet", "28000")
    if params.get("replication", "false").lower() not in ("false", "0", "off", "no"):
        raise FeatureNotSupported("poold does not support replication connections")
    return StartupMessage(params, minor, tuple(options))


def _parse_params(data: bytes) -> tuple[dict[str, str], list[str]]:
    # name\0value\0 ... \0: a list of NUL-terminated strings, then one more NUL.
    if not data.endswith(b"\0"):
        raise ProtocolError("invalid startup packet layout: expected terminator")
    strings = data[:-1]
    if strings and not strings.endswith(b"\0"):
        raise ProtocolError("invalid startup packet layout: expected terminator")
    parts = strings[:-1].split(b"\0") if strings else []
    if len(parts) % 2:
        raise ProtocolError("invalid startup packet layout: odd number of strings")
    params: dict[str, str] = {}
    options: list[str] = []
    for i in range(0, len(parts), 2):
        try:
            name, value = parts[i].decode(), parts[i + 1].decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError("startup packet is not valid UTF-8") from exc
        if not name:
            raise ProtocolError("invalid startup packet layout: empty parameter name")
        if name.startswith("_pq_."):
            options.append(name)
        else:
            params[name] = value
    return params, options


# --- builders ----------------------------------------------------------------


def _msg(t: bytes, body: bytes) -> bytes:
    return t + _I32.pack(len(body) + 4) + body


def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def error_response(
    sqlstate: str, message: str, *, severity: str = "FATAL", detail: str | None = None, hint: str | None = None
) -> bytes:
    body = b"S" + _cstr(severity) + b"V" + _cstr(severity) + b"C" + _cstr(sqlstate)
    body += b"M" + _cstr(message)
    if detail:
        body += b"D" + _cstr(detail)
    if hint:
        body += b"H" + _cstr(hint)
    return _msg(b"E", body + b"\0")


def as_fatal(error_body: bytes) -> bytes:
    """An ErrorResponse with the fields of another's body (a server's ERROR), at severity FATAL.

    The fields are kept as bytes, in their order: the client reads the server's words."""
    fields = [f[:1] + b"FATAL" if f[:1] in (b"S", b"V") else f for f in error_body.split(b"\0") if f]
    return _msg(b"E", b"\0".join(fields) + b"\0\0")


def auth_ok() -> bytes:
    return _msg(b"R", _I32.pack(0))


def auth_cleartext() -> bytes:
    return _msg(b"R", _I32.pack(3))


def auth_md5(salt: bytes) -> bytes:
    return _msg(b"R", _I32.pack(5) + salt)


def auth_sasl(mechanisms: list[str]) -> bytes:
    return _msg(b"R", _I32.pack(10) + b"".join(_cstr(m) for m in mechanisms) + b"\0")


def auth_sasl_continue(data: bytes) -> bytes:
    return _msg(b"R", _I32.pack(11) + data)


def auth_sasl_final(data: bytes) -> bytes:
    return _msg(b"R", _I32.pack(12) + data)


def parameter_status(name: str, value: str) -> bytes:
    return _msg(b"S", _cstr(name) + _cstr(value))


#: backend_key_data(pid, secret): one per login, so a struct's pack, without a Python call around it
backend_key_data: Callable[[int, int], bytes] = functools.partial(struct.Struct("!cIii").pack, b"K", 12)


def ready_for_query(status: bytes = b"I") -> bytes:
    return _msg(b"Z", status)


def negotiate_protocol_version(minor: int, unsupported: tuple[str, ...]) -> bytes:
    body = _I32.pack(minor) + _I32.pack(len(unsupported))
    return _msg(b"v", body + b"".join(_cstr(o) for o in unsupported))


def query(sql: str) -> bytes:
    return _msg(b"Q", _cstr(sql))


def copy_fail(reason: str) -> bytes:
    return _msg(b"f", _cstr(reason))


#: a CopyFail for a client that sent Terminate during its COPY FROM STDIN
COPY_FAIL_TERMINATED = copy_fail("the client sent Terminate")


#: type OID and size of the column types a result set of poold's own has (RowDescription)
COLUMN_TYPES: Mapping[str, tuple[int, int]] = MappingProxyType(
    {"text": (25, -1), "int4": (23, 4), "int8": (20, 8), "numeric": (1700, -1), "bytea": (17, -1)}
)
_COLUMN = struct.Struct("!IhIhih")
_I16 = struct.Struct("!h")


def row_description(columns: Iterable[tuple[str, str]]) -> bytes:
    """RowDescription of (name, type) columns (a COLUMN_TYPES key), in text format."""
    cols = list(columns)
    body = b"".join(_cstr(name) + _COLUMN.pack(0, 0, *COLUMN_TYPES[kind], -1, 0) for name, kind in cols)
    return _msg(b"T", _I16.pack(len(cols)) + body)


def data_row(values: Iterable[object]) -> bytes:
    """DataRow of values in text format; None is NULL."""
    vals = list(values)
    out = [_I16.pack(len(vals))]
    for v in vals:
        if v is None:
            out.append(_I32.pack(-1))
        else:
            data = str(v).encode()
            out.append(_I32.pack(len(data)) + data)
    return _msg(b"D", b"".join(out))


def command_complete(tag: str) -> bytes:
    return _msg(b"C", _cstr(tag))


def notice_response(message: str, *, detail: str | None = None, sqlstate: str = "00000") -> bytes:
    body = b"SNOTICE\0VNOTICE\0C" + _cstr(sqlstate) + b"M" + _cstr(message)
    if detail:
        body += b"D" + _cstr(detail)
    return _msg(b"N", body + b"\0")


def terminate() -> bytes:
    return b"X\0\0\0\4"


# --- parsers -----------------------------------------------------------------


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    parts = body.split(b"\0")
    if len(parts) != 3 or parts[2]:
        raise ProtocolError("malformed ParameterStatus")
    return parts[0].decode(errors="replace"), parts[1].decode(errors="replace")


def parse_error_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body keyed by their code letter."""
    fields: dict[str, str] = {}
    for item in body.split(b"\0"):
        if item:
            fields[chr(item[0])] = item[1:].decode(errors="replace")
    return fields


def parse_password(body: bytes) -> bytes:
    """A PasswordMessage (cleartext or md5): the string without its terminator."""
    if not body.endswith(b"\0"):
        raise ProtocolError("malformed password packet", "28P01")
    return body[:-1]


def parse_sasl_initial(body: bytes) -> tuple[str, bytes]:
    """SASLInitialResponse: (mechanism, client-first-message)."""
    nul = body.find(b"\0")
    if nul < 0 or len(body) < nul + 5:
        raise ProtocolError("malformed SASLInitialResponse", "28000")
    mechanism = body[:nul].decode(errors="replace")
    (length,) = _I32.unpack_from(body, nul + 1)
    data = body[nul + 5 :]
    if length != len(data):
        raise ProtocolError("malformed SASLInitialResponse length", "28000")
    return mechanism, data


#: DROP DATABASE [IF EXISTS] x, CREATE DATABASE ... TEMPLATE [=] x: the x
_DATABASE_COMMAND = re.compile(
    rb"(?:\s|--[^\n]*|/\*.*?\*/)*(?:DROP\s+DATABASE\s+(?:IF\s+EXISTS\s+)?|CREATE\s+DATABASE\s+.*?\bTEMPLATE\s*=?\s*)"
    rb"(\"(?:[^\"]|\"\")+\"|'(?:[^']|'')+'|[^\s;,()'\"]+)",
    re.I | re.S,
)


def database_command(request: bytes) -> str | None:
    """The database a request's first message (Query or Parse) drops, or copies as
    a template; None for any other."""
    if len(request) < 6 or request[0] not in (QUERY, PARSE):
        return None
    body = request[5 : 1 + _I32.unpack_from(request, 1)[0]]
    if request[0] == PARSE:
        body = body[body.find(b"\0") + 1 :]
    found = _DATABASE_COMMAND.match(body.split(b"\0", 1)[0])
    if found is None:
        return None
    name = found.group(1).decode(errors="replace")
    if name[0] in "\"'":
        return name[1:-1].replace(name[0] * 2, name[0])
    return name.lower()
