"""The fuzz corpus (corpus/, see corpus/generate.py) through the C and the Python twins.

Each fixture is fed whole, one byte at a time, and in two pieces split at every
byte (in the few long ones, every byte near either end; see ``splits``): login fixtures to a ClientSession whose login the C core reads and to one
whose login the Python generator reads (as test_native_login.py drives them);
frame streams to the C frame scanner and the Python one. The twins must answer
alike each time. Under ``make test-sanitize`` this runs the C on malformed input
with AddressSanitizer and UBSan watching.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from poold.protocol.errors import ProtocolError
from poold.protocol.framing import NativeFrameScanner, PyFrameScanner
from poold.runtime import Runtime

from .corpus.generate import FRAME_MAX_LENGTH
from .fake_session import Transport
from .test_native_login import Session, runtime

CORPUS = Path(__file__).resolve().parent / "corpus"
LOGINS = sorted(CORPUS.glob("login/*.bin"))
FRAMES = sorted(CORPUS.glob("frames/*.bin"))

#: answers that differ between any two logins by design: the server nonce and
#: signature (SASLContinue, SASLFinal), the md5 salt; and the cancel key
_RANDOM_AUTH = {struct.pack("!I", code) for code in (5, 11, 12)}


#: fixtures the C login reads to their end without handing over to the Python one
C_LOGINS_OWN = {"startup_valid", "scram_first_valid", "scram_first_unknown_user"}

#: in a fixture longer than this, the cuts between its first and last EDGE bytes are
#: every STRIDE-th (the long ones are long to cross a limit: their ends are what matter)
EDGE, STRIDE = 384, 29


def splits(data: bytes) -> Iterator[list[bytes]]:
    """The fixture whole, one byte at a time, and in two pieces at every byte."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        if EDGE <= cut < len(data) - EDGE and cut % STRIDE:
            continue
        yield [data[:cut], data[cut:]]


def answers(written: bytes) -> list[tuple[bytes, bytes]]:
    """What a login sent, message by message, with its random parts left out."""
    out = []
    while written:
        if written[:1] == b"N" and (len(written) < 5 or written[1:2] != b"\0"):  # no to SSL or GSSENC
            out.append((b"N", b""))
            written = written[1:]
            continue
        kind, length = written[:1], struct.unpack_from("!I", written, 1)[0]
        body = written[5 : 1 + length]
        if kind == b"K" or (kind == b"R" and body[:4] in _RANDOM_AUTH):
            body = body[:4] if kind == b"R" else b""
        out.append((kind, body))
        written = written[1 + length :]
    return out


def login(rt: Runtime, native: bool, pieces: list[bytes]) -> tuple[list[tuple[bytes, bytes]], bool]:
    """One login read by the C login or (native=False) the Python one (test_native_login.connected),
    on a runtime kept across a fixture's logins, as the daemon's is."""
    rt.clients.clear()
    rt.logins.clear()
    session, transport = Session(rt), Transport()
    session.connection_made(transport)  # type: ignore[arg-type]
    if not native:  # as ClientCorePy.connection_made does
        session.native_login = False
        session._start_login()
    for piece in pieces:
        if transport.closed:
            break
        session.data_received(piece)
    return answers(transport.written), transport.closed


@pytest.mark.parametrize("path", LOGINS, ids=[p.stem for p in LOGINS])
def test_login_fixtures_end_alike_in_the_c_and_the_python_login(path: Path) -> None:
    data = path.read_bytes()
    Session.handed_over = []
    python_rt, native_rt = runtime(), runtime()
    for pieces in splits(data):
        expected = login(python_rt, False, pieces)
        got = login(native_rt, True, pieces)
        assert got == expected, f"{path.name} in {[len(p) for p in pieces][:8]}"
    if path.stem in C_LOGINS_OWN:  # the C login ran these itself, however split
        assert Session.handed_over == []


def scan(scanner: type[PyFrameScanner], pieces: list[bytes]) -> tuple[list[object], object]:
    """Frames (absolute offsets), tallies and the boundary after each piece, then the error if any."""
    s = scanner(b"ZQSX", report_all=True, max_length=FRAME_MAX_LENGTH)
    t = scanner(report_all=True, max_length=FRAME_MAX_LENGTH)
    seen: list[object] = []
    pos = 0
    stopped = False  # the relay reads no further than a Terminate
    for piece in pieces:
        try:
            for kind, start, end, body in s.feed(piece):
                seen.append((kind, pos + start, pos + end, body))
            if not stopped:
                tally = t.tally(piece, b"QSF", ord("X"))
                seen.append(tally)
                stopped = tally[1] is not None
        except ProtocolError as exc:
            return seen, (str(exc), exc.sqlstate)
        seen.append(s.at_boundary)
        pos += len(piece)
    return seen, None


@pytest.mark.parametrize("path", FRAMES, ids=[p.stem for p in FRAMES])
def test_frame_fixtures_scan_alike_in_the_c_and_the_python_scanner(path: Path) -> None:
    assert NativeFrameScanner is not None, "poold.protocol._framing was not built (is a C compiler installed?)"
    data = path.read_bytes()
    whole_frames, whole_error = scan(PyFrameScanner, [data])
    for pieces in splits(data):
        expected = scan(PyFrameScanner, pieces)
        assert scan(NativeFrameScanner, pieces) == expected, f"{path.name} in {[len(p) for p in pieces][:8]}"
        # and any split of the stream gives the frames and the error of the whole
        frames = [f for f in expected[0] if isinstance(f, tuple) and len(f) == 4]
        assert frames == [f for f in whole_frames if isinstance(f, tuple) and len(f) == 4] or expected[1] is not None
        assert expected[1] == whole_error


def test_the_corpus_is_there() -> None:
    assert len(LOGINS) >= 40 and len(FRAMES) >= 15, "tests/unit/corpus: run corpus/generate.py"
