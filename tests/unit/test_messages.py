"""Startup parsing and the messages poold builds."""

from __future__ import annotations

import struct

import pytest

from poold.protocol import messages
from poold.protocol.errors import FeatureNotSupported, ProtocolError


def payload(version: int, params: dict[str, str]) -> bytes:
    return struct.pack("!I", version) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"


def test_startup_message() -> None:
    req = messages.parse_startup(payload(196608, {"user": "app", "database": "db", "application_name": "psql"}))
    assert isinstance(req, messages.StartupMessage)
    assert (req.user, req.database, req.params["application_name"]) == ("app", "db", "psql")


def test_database_defaults_to_user() -> None:
    req = messages.parse_startup(payload(196608, {"user": "app"}))
    assert isinstance(req, messages.StartupMessage) and req.database == "app"


def test_ssl_gss_and_cancel_requests() -> None:
    assert isinstance(messages.parse_startup(struct.pack("!I", 80877103)), messages.SSLRequest)
    assert isinstance(messages.parse_startup(struct.pack("!I", 80877104)), messages.GSSENCRequest)
    cancel = messages.parse_startup(struct.pack("!III", 80877102, 42, 99))
    assert cancel == messages.CancelRequest(42, 99)


def test_newer_minor_version_and_protocol_options_are_negotiated() -> None:
    req = messages.parse_startup(payload(196608 + 2, {"user": "u", "_pq_.foo": "1"}))
    assert isinstance(req, messages.StartupMessage)
    assert req.minor == 2 and req.protocol_options == ("_pq_.foo",)


@pytest.mark.parametrize(
    ("data", "sqlstate"),
    [
        (payload(2 << 16, {"user": "u"}), "0A000"),  # protocol 2.0
        (payload(196608, {"database": "d"}), "28000"),  # no user
        (payload(196608, {"user": "u", "replication": "true"}), "0A000"),
        (struct.pack("!I", 196608) + b"user\0u\0", "08P01"),  # no terminator
        (struct.pack("!I", 196608) + b"user\0\0", "08P01"),  # odd strings
        (struct.pack("!III", 80877102, 1, 2) + b"x", "08P01"),  # long cancel
        (b"\0\0", "08P01"),
    ],
)
def test_bad_startup_packets(data: bytes, sqlstate: str) -> None:
    with pytest.raises(ProtocolError) as info:
        messages.parse_startup(data)
    assert info.value.sqlstate == sqlstate


def test_error_response_round_trip() -> None:
    raw = messages.error_response("57P03", "poold: down", detail="retry")
    assert raw[:1] == b"E"
    (length,) = struct.unpack_from("!I", raw, 1)
    assert length + 1 == len(raw)
    fields = messages.parse_error_fields(raw[5:])
    assert fields == {"S": "FATAL", "V": "FATAL", "C": "57P03", "M": "poold: down", "D": "retry"}


def test_as_fatal_keeps_a_server_error_but_its_severity() -> None:
    # an ERROR as PostgreSQL 15 sent it for SET LOCAL "IntervalStyle" TO 'bogus'
    body = (b'SERROR\0VERROR\0C22023\0Minvalid value for parameter "IntervalStyle": "bogus"\0'
            b"HAvailable values: postgres, postgres_verbose, sql_standard, iso_8601.\0Fguc.c\0L7528\0"
            b"Rparse_and_validate_value\0\0")
    raw = messages.as_fatal(body)
    assert raw[:1] == b"E" and struct.unpack_from("!I", raw, 1)[0] + 1 == len(raw)
    assert raw[5:] == body.replace(b"SERROR\0VERROR", b"SFATAL\0VFATAL")


def test_parameter_status_round_trip() -> None:
    raw = messages.parameter_status("TimeZone", "UTC")
    assert messages.parse_parameter_status(raw[5:]) == ("TimeZone", "UTC")
    with pytest.raises(ProtocolError):
        messages.parse_parameter_status(b"x\0")


def test_sasl_initial_response() -> None:
    body = b"SCRAM-SHA-256\0" + struct.pack("!i", 5) + b"hello"
    assert messages.parse_sasl_initial(body) == ("SCRAM-SHA-256", b"hello")
    with pytest.raises(ProtocolError):
        messages.parse_sasl_initial(b"SCRAM-SHA-256\0" + struct.pack("!i", 9) + b"hello")


def test_unsupported_is_0a000() -> None:
    assert FeatureNotSupported("x").sqlstate == "0A000"


@pytest.mark.parametrize(
    ("sql", "name"),
    [
        ("DROP DATABASE scratch", "scratch"),
        ("drop database if exists Scratch with (force)", "scratch"),
        ('DROP DATABASE "My""Db"', 'My"Db'),
        ("CREATE DATABASE copy TEMPLATE scratch", "scratch"),
        ("create database copy with owner app template = 'Src' encoding 'UTF8'", "Src"),
        ("CREATE DATABASE copy", None),
        ("DROP TABLE scratch", None),
        ("SELECT 'DROP DATABASE x'", None),
        ("/* late */ DROP DATABASE scratch", "scratch"),
        ("-- why\n  /* a */ /* b */\tcreate database c template scratch", "scratch"),
        ("/* DROP DATABASE x */ SELECT 1", None),
    ],
)
def test_database_command(sql: str, name: str | None) -> None:
    assert messages.database_command(messages.query(sql)) == name
    parse = messages._msg(b"P", b"stmt\0" + sql.encode() + b"\0\0\0")  # the extended protocol's Parse
    assert messages.database_command(parse) == name
