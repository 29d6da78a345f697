"""A bounded fuzz of the protocol layer: any input gives frames or a ProtocolError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from poold.protocol import messages
from poold.protocol.errors import ProtocolError
from poold.protocol.framing import MessageReader, PyFrameScanner


@given(st.binary(max_size=400))
@settings(max_examples=1500, deadline=None)
def test_parse_startup_never_fails_otherwise(data: bytes) -> None:
    try:
        messages.parse_startup(data)
    except ProtocolError as exc:
        assert len(exc.sqlstate) == 5


@given(st.lists(st.binary(max_size=64), max_size=20))
@settings(max_examples=1000, deadline=None)
def test_message_reader_never_fails_otherwise(chunks: list[bytes]) -> None:
    r = MessageReader(max_length=1000)
    try:
        for c in chunks:
            r.feed(c)
            while r.next_untyped() is not None:
                pass
    except ProtocolError as exc:
        assert len(exc.sqlstate) == 5


@given(st.lists(st.binary(max_size=64), max_size=20))
@settings(max_examples=1000, deadline=None)
def test_scanner_frames_are_in_bounds(scanner: type[PyFrameScanner], chunks: list[bytes]) -> None:
    s = scanner(b"ZSE", report_all=True, max_length=1 << 16)
    try:
        for c in chunks:
            for t, start, end, body in s.feed(c):
                assert 0 <= t <= 255
                assert end <= len(c) and start < end
                assert body is None or len(body) == end - start - 5
    except ProtocolError as exc:
        assert len(exc.sqlstate) == 5


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_field_parsers_never_crash(body: bytes) -> None:
    messages.parse_error_fields(body)
    for parse in (messages.parse_parameter_status, messages.parse_password, messages.parse_sasl_initial):
        try:
            parse(body)
        except ProtocolError:
            pass
