"""FrameScanner and MessageReader: byte fixtures fed whole, bytewise and in any split."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poold.protocol.errors import MessageTooLarge, ProtocolError, StartupLengthInvalid
from poold.protocol.framing import MessageReader, PyFrameScanner

Scanner = type[PyFrameScanner]


def msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


# A server reply to "SELECT 1 AS x" in the simple protocol, built by hand from
# the message formats (RowDescription, DataRow, CommandComplete, ReadyForQuery),
# with a ParameterStatus and an ErrorResponse of a later statement.
ROW_DESCRIPTION = msg(b"T", b"\x00\x01x\x00" + b"\x00" * 6 + b"\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00")
DATA_ROW = msg(b"D", b"\x00\x01\x00\x00\x00\x011")
SERVER_STREAM = (
    ROW_DESCRIPTION
    + DATA_ROW
    + msg(b"C", b"SELECT 1\x00")
    + msg(b"Z", b"I")
    + msg(b"S", b"TimeZone\x00Asia/Tokyo\x00")
    + msg(b"E", b"SERROR\x00C42601\x00Msyntax error\x00\x00")
    + msg(b"Z", b"E")
    + msg(b"D", b"x" * 70000)
    + msg(b"Z", b"T")
)
EXPECTED_WATCHED = [
    (ord("Z"), b"I"),
    (ord("S"), b"TimeZone\x00Asia/Tokyo\x00"),
    (ord("E"), b"SERROR\x00C42601\x00Msyntax error\x00\x00"),
    (ord("Z"), b"E"),
    (ord("Z"), b"T"),
]


def absolute(chunks: list[bytes], scanner: PyFrameScanner) -> list[tuple[int, int, int, bytes | None]]:
    """Feed chunks; return frames with offsets made absolute in the whole stream."""
    out = []
    pos = 0
    for chunk in chunks:
        for t, start, end, body in scanner.feed(chunk):
            out.append((t, pos + start, pos + end, body))
        pos += len(chunk)
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for p in points:
        chunks.append(data[last:p])
        last = p
    chunks.append(data[last:])
    return chunks


def test_watched_messages_whole(scanner: Scanner) -> None:
    frames = scanner(b"ZSE").feed(SERVER_STREAM)
    assert [(t, body) for t, _s, _e, body in frames] == EXPECTED_WATCHED
    # offsets point at the message in the chunk
    _t, start, end, _body = frames[0]
    assert SERVER_STREAM[start:end] == msg(b"Z", b"I")


def test_watched_messages_bytewise_equal_whole(scanner: Scanner) -> None:
    whole = absolute([SERVER_STREAM], scanner(b"ZSE"))
    bytewise = absolute([SERVER_STREAM[i : i + 1] for i in range(len(SERVER_STREAM))], scanner(b"ZSE"))
    assert bytewise == whole
    assert len(whole) == 5


def test_report_all_gives_every_message_with_exact_bounds(scanner: Scanner) -> None:
    frames = absolute([SERVER_STREAM[i : i + 7] for i in range(0, len(SERVER_STREAM), 7)], scanner(report_all=True))
    assert [chr(t) for t, *_ in frames] == list("TDCZSEZDZ")
    for t, start, end, _ in frames:
        assert SERVER_STREAM[start] == t
        assert struct.unpack_from("!I", SERVER_STREAM, start + 1)[0] + 1 == end - start


def test_at_boundary_tracks_partial_messages(scanner: Scanner) -> None:
    s = scanner(report_all=True)
    data = msg(b"Q", b"SELECT 1\x00")
    s.feed(data[:3])
    assert not s.at_boundary
    assert s.in_progress == (0, -1)  # a cut header (the relay never feeds one: settings.look)
    s.feed(data[3:8])
    assert not s.at_boundary
    assert s.in_progress == (len(data) - 8, ord("Q"))  # the body's bytes still to come, and its type
    s.feed(data[8:])
    assert s.at_boundary
    assert s.in_progress == (0, -1)


@given(st.lists(st.integers(min_value=0, max_value=len(SERVER_STREAM)), max_size=30))
@settings(max_examples=300, deadline=None)
def test_any_split_gives_the_same_frames(scanner: Scanner, cuts: list[int]) -> None:
    whole = absolute([SERVER_STREAM], scanner(b"ZSE", report_all=True))
    assert absolute(split_at(SERVER_STREAM, cuts), scanner(b"ZSE", report_all=True)) == whole


@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=200), max_size=10))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_never_crash_differently_when_split(scanner: Scanner, data: bytes, cuts: list[int]) -> None:
    def run(chunks: list[bytes]) -> object:
        s = scanner(b"Z", report_all=True, max_length=1000)
        try:
            return absolute(chunks, s)
        except ProtocolError as exc:
            return type(exc)

    assert run(split_at(data, cuts)) == run([data])


@pytest.mark.parametrize("length", [0, 3, -1 & 0xFFFFFFFF, 0x80000000])
def test_invalid_lengths_are_protocol_errors(scanner: Scanner, length: int) -> None:
    s = scanner(max_length=1 << 20)
    with pytest.raises(ProtocolError) as info:
        s.feed(b"Q" + struct.pack("!I", length) + b"xxxx")
    assert info.value.sqlstate in ("08P01", "54000")


def test_oversized_message_is_refused_before_its_body_arrives(scanner: Scanner) -> None:
    s = scanner(max_length=1024)
    with pytest.raises(MessageTooLarge) as info:
        s.feed(b"d" + struct.pack("!I", 5000))
    assert info.value.sqlstate == "54000"


def startup_packet(params: dict[str, str], version: int = 196608) -> bytes:
    body = struct.pack("!I", version) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def test_message_reader_startup_then_typed_bytewise() -> None:
    # What psql sends: SSLRequest, then (after 'N') its StartupMessage, then a
    # password message; fed one byte at a time.
    stream = struct.pack("!II", 8, 80877103) + startup_packet({"user": "app", "database": "app"}) + msg(b"p", b"secret\0")
    r = MessageReader()
    got: list[object] = []
    for i in range(len(stream)):
        r.feed(stream[i : i + 1])
        if len(got) < 2:
            p = r.next_untyped()
            if p is not None:
                got.append(p)
        else:
            m = r.next_typed()
            if m is not None:
                got.append(m)
    assert got[0] == struct.pack("!I", 80877103)
    assert got[1][:4] == struct.pack("!I", 196608)  # type: ignore[index]
    assert got[2] == (ord("p"), b"secret\0")


def test_message_reader_limits() -> None:
    r = MessageReader()
    r.feed(struct.pack("!I", 4))
    with pytest.raises(StartupLengthInvalid):
        r.next_untyped()
    r = MessageReader()
    r.feed(struct.pack("!I", 1_000_000))
    with pytest.raises(StartupLengthInvalid):  # PostgreSQL: "invalid length of startup packet", no answer
        r.next_untyped()
    r = MessageReader()
    r.feed(b"X\0\0\0\4")  # Terminate before any startup packet
    with pytest.raises(StartupLengthInvalid):
        r.next_untyped()
    r = MessageReader()
    with pytest.raises(MessageTooLarge):
        r.feed(b"\0" * 30_000)


def _typed_stream() -> st.SearchStrategy[bytes]:
    """Streams of well-formed messages (mostly) with a random byte here and there."""
    message = st.builds(
        lambda t, body: bytes([t]) + struct.pack("!I", len(body) + 4) + body,
        st.sampled_from(b"ZSEDTCQPBXd"),
        st.binary(max_size=40),
    )
    return st.lists(st.one_of(message, message, message, st.binary(max_size=6)), max_size=12).map(b"".join)


@given(_typed_stream(), st.lists(st.integers(min_value=0, max_value=400), max_size=12), st.sampled_from([b"", b"Z", b"ZSE"]), st.booleans())
@settings(max_examples=1500, deadline=None)
def test_native_scanner_matches_the_reference(data: bytes, cuts: list[int], watch: bytes, report_all: bool) -> None:
    """The C scanner gives the frames, boundary state and errors of the Python one, chunk by chunk."""
    from poold.protocol.framing import NativeFrameScanner

    assert NativeFrameScanner is not None, "poold.protocol._framing was not built"
    ref = PyFrameScanner(watch, report_all=report_all, max_length=60)
    nat = NativeFrameScanner(watch, report_all=report_all, max_length=60)
    for chunk in split_at(data, cuts):
        try:
            expected: object = ref.feed(chunk)
        except ProtocolError as exc:
            expected = (type(exc), str(exc), exc.sqlstate)
        try:
            got: object = nat.feed(chunk)
        except ProtocolError as exc:
            got = (type(exc), str(exc), exc.sqlstate)
        assert got == expected
        if isinstance(expected, tuple):
            return
        assert nat.at_boundary == ref.at_boundary
        assert nat.in_progress == ref.in_progress


def test_tally_counts_sync_points_and_stops_at_terminate(scanner: Scanner) -> None:
    batch = msg(b"P", b"s\x00SELECT 1\x00\x00\x00") + msg(b"B", b"\x00" * 8) + msg(b"E", b"\x00" * 5)
    stream = msg(b"Q", b"SELECT 1\x00") + batch + msg(b"S", b"") + batch + msg(b"X", b"") + msg(b"Q", b"x\x00")
    s = scanner(report_all=True)
    count, stop_at, last = s.tally(stream, b"QSF", ord("X"))
    assert count == 2  # Q and S; the Q after Terminate is not scanned
    assert stop_at is not None and stream[stop_at : stop_at + 1] == b"X"
    assert last == ord("E")  # a batch was left open before Terminate
    # Without a Terminate: the walk covers the chunk; a half message is carried.
    s = scanner(report_all=True)
    assert s.tally(stream[:20], b"QSF", ord("X")) == (1, None, ord("Q"))  # Parse not complete yet
    assert not s.at_boundary


@given(_typed_stream(), st.lists(st.integers(min_value=0, max_value=400), max_size=12))
@settings(max_examples=1000, deadline=None)
def test_native_tally_matches_the_reference(data: bytes, cuts: list[int]) -> None:
    from poold.protocol.framing import NativeFrameScanner

    assert NativeFrameScanner is not None, "poold.protocol._framing was not built"
    ref = PyFrameScanner(report_all=True, max_length=60)
    nat = NativeFrameScanner(report_all=True, max_length=60)
    for chunk in split_at(data, cuts):
        try:
            expected: object = ref.tally(chunk, b"QSF", ord("X"))
        except ProtocolError as exc:
            expected = (type(exc), str(exc))
        try:
            got: object = nat.tally(chunk, b"QSF", ord("X"))
        except ProtocolError as exc:
            got = (type(exc), str(exc))
        assert got == expected
        if not isinstance(expected, tuple) or len(expected) != 3 or expected[1] is not None:
            return  # an error, or Terminate: the stream ends here
        assert nat.at_boundary == ref.at_boundary
        assert nat.in_progress == ref.in_progress
