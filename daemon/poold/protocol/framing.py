"""Framing of PostgreSQL v3 byte streams, reading only what poold must.

Theory of operation
-------------------
After startup every message on either stream is ``type:u8 length:i32 body``,
where ``length`` counts itself but not the type byte. The relay forwards chunks
as they arrive and never copies a body it does not need: :class:`FrameScanner`
walks a chunk header by header, skipping bodies (across chunk boundaries when a
body is longer than the chunk), and reports only the messages it was asked to
watch. A header split across two chunks is carried over and completed by the
next ``feed``.

The login phase is different: messages there are small and must be read whole
(the untyped startup packet, then password/SASL messages), so
:class:`MessageReader` buffers and returns complete messages.

Both refuse a length below 4 or above the configured limit with a
:class:`~poold.protocol.errors.ProtocolError` carrying its SQLSTATE.
"""

from __future__ import annotations

import os
import struct

from .errors import MessageTooLarge, ProtocolError, StartupLengthInvalid

_HEADER = struct.Struct("!Bi")  # lengths are signed int32, as PostgreSQL reads them
_UNTYPED = struct.Struct("!i")

#: PostgreSQL's own cap on a startup packet (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_LENGTH = 10_000
#: PostgreSQL's cap on any message (MaxAllocSize, 1 GiB - 1).
MAX_MESSAGE_LENGTH = 0x3FFFFFFF


#: One message found in a chunk: (type, start, end, body). ``start`` and ``end``
#: are offsets into the chunk just fed; ``start`` is negative when the message
#: began in an earlier chunk. ``body`` is the body for watched types and None
#: otherwise. A plain tuple: the relay makes a few per transaction.
Frame = tuple[int, int, int, bytes | None]


class PyFrameScanner:
    """Finds message boundaries in a typed-message stream (sans-IO).

    The reference implementation; ``_framing.c`` is the same walk in C and is
    what :data:`FrameScanner` names when it was built.

    ``watch``: message types whose bodies are returned (keep them small: 'Z',
    'S', 'E'). ``report_all``: also report every other message, without body.
    """

    __slots__ = ("_carry", "_max", "_pending", "_report_all", "_skip", "_watch")

    def __init__(
        self,
        watch: bytes = b"",
        report_all: bool = False,
        max_length: int = MAX_MESSAGE_LENGTH,
    ) -> None:
        self._watch = frozenset(watch)
        self._report_all = report_all
        self._max = max_length
        self._carry = b""  # an incomplete header, or a watched message in progress
        self._skip = 0  # body bytes of an unwatched message still to pass over
        # (type, start offset relative to the carried bytes) of an unwatched,
        # reported message whose body continues into later chunks.
        self._pending: tuple[int, int] | None = None

    @property
    def at_boundary(self) -> bool:
        """True when the stream so far ends exactly at a message boundary."""
        return not self._skip and not self._carry

    @property
    def max_length(self) -> int:
        """The longest message this scanner takes (a longer one raises)."""
        return self._max

    @property
    def in_progress(self) -> tuple[int, int]:
        """The message the stream is inside: (its bytes still to come, its type, or -1
        where the scanner does not report every message); (0, -1) at a boundary, or
        after a cut header (the relay's client side never feeds one)."""
        if self._carry:
            return 0, -1
        return self._skip, self._pending[0] if self._pending is not None else -1

    def feed(self, data: bytes) -> list[Frame]:
        return self._walk(data, -1)

    def _walk(self, data: bytes, stop: int) -> list[Frame]:
        """The header walk; it ends after a reported message of type ``stop``."""
        frames: list[Frame] = []
        n = len(data)
        pos = 0
        if self._skip:
            if self._skip > n:
                self._skip -= n
                if self._pending is not None:
                    t, s = self._pending
                    self._pending = (t, s - n)
                return frames
            pos = self._skip
            self._skip = 0
            if self._pending is not None:
                t, s = self._pending
                self._pending = None
                frames.append((t, s, pos, None))
                if t == stop:
                    return frames
        base = 0
        if self._carry:
            # Rare path: glue the carried bytes in front and shift offsets back.
            # (_carry and _skip are never both set, so pos is 0 here.)
            base = len(self._carry)
            data = self._carry + data
            self._carry = b""
            n = len(data)
        watch = self._watch
        report_all = self._report_all
        unpack = _HEADER.unpack_from
        while n - pos >= 5:
            t, length = unpack(data, pos)
            if length < 4 or length > self._max:
                raise _bad_length(t, length, self._max)
            end = pos + 1 + length
            if t in watch:
                if end > n:
                    self._carry = data[pos:]
                    return frames
                frames.append((t, pos - base, end - base, data[pos + 5 : end]))
                if t == stop:
                    return frames
            elif end > n:
                self._skip = end - n
                if report_all:
                    # The start, re-expressed relative to the next chunk.
                    self._pending = (t, pos - n)
                return frames
            elif report_all:
                frames.append((t, pos - base, end - base, None))
                if t == stop:
                    return frames
            pos = end
        if pos < n:
            self._carry = data[pos:]
        return frames

    def tally(self, data: bytes, counted: bytes, stop: int) -> tuple[int, int | None, int]:
        """Walk like :meth:`feed` (``report_all`` scanners), without building frames.

        Returns (how many messages of a ``counted`` type, the start of the first
        ``stop`` message or None, the type of the last message before it or -1).
        The walk ends at a ``stop`` message: what follows it is not scanned.
        The client relay uses this: sync points, Terminate, and whether a batch
        is left open.
        """
        n, last = 0, -1
        for t, start, _end, _body in self._walk(data, stop):
            if t == stop:
                return n, start, last
            if t in counted:
                n += 1
            last = t
        return n, None, last

try:
    from ._framing import FrameScanner as NativeFrameScanner
except ImportError:  # built without a C compiler: the reference scanner serves
    NativeFrameScanner = None

#: The scanner the relay uses: native when built, else the reference one.
#: POOLD_FRAME_SCANNER=python picks the reference one anyway (a diagnostic, and
#: how the tests run the daemon as it runs where no C compiler was found).
FrameScanner: type[PyFrameScanner] = (
    NativeFrameScanner if NativeFrameScanner is not None and os.environ.get("POOLD_FRAME_SCANNER") != "python"
    else PyFrameScanner
)


def _bad_length(t: int, length: int, limit: int) -> ProtocolError:
    if length < 4:
        return ProtocolError(f"invalid message length {length} for message type {t!r}")
    return MessageTooLarge(f"message of {length} bytes exceeds the limit of {limit}")


class MessageReader:
    """Buffers the login phase and returns whole messages (sans-IO)."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_length: int = MAX_STARTUP_LENGTH) -> None:
        self._buf = bytearray()
        self._max = max_length

    def feed(self, data: bytes) -> None:
        self._buf += data
        # A client that streams bytes without ever completing a message is
        # bounded here rather than by memory.
        if len(self._buf) > 2 * self._max + 5:
            raise MessageTooLarge("login-phase data exceeds the limit")

    def take_rest(self) -> bytes:
        """Hand over whatever follows the last message read (pipelined data)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    def next_untyped(self) -> bytes | None:
        """The payload of a startup-style packet (length-prefixed, no type byte)."""
        if len(self._buf) < 4:
            return None
        (length,) = _UNTYPED.unpack_from(self._buf)
        if length < 8 or length > self._max:
            raise StartupLengthInvalid(f"invalid length of startup packet: {length} bytes")
        if len(self._buf) < length:
            return None
        payload = bytes(self._buf[4:length])
        del self._buf[:length]
        return payload

    def next_typed(self) -> tuple[int, bytes] | None:
        """The (type, body) of the next complete typed message, if any."""
        if len(self._buf) < 5:
            return None
        t, length = _HEADER.unpack_from(self._buf)
        if length < 4 or length > self._max:
            raise _bad_length(t, length, self._max)
        if len(self._buf) < 1 + length:
            return None
        body = bytes(self._buf[5 : 1 + length])
        del self._buf[: 1 + length]
        return t, body
