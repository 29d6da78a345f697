"""The server side of the relay: one ServerLink per leased server connection.

A ServerLink is the asyncio protocol on a server connection's socket. While a
client holds it, bytes from the server are written to the client as they come;
the scanner reads only message headers, plus the bodies of ReadyForQuery
(transaction status), ParameterStatus (tracked settings) and ErrorResponse.

Internal queries (the SET that gives a client its own settings at hand-off,
ROLLBACK and DISCARD ALL at release) are written ahead of client traffic; their
replies, up to their ReadyForQuery, are consumed here and never reach a client
(``swallow`` counts them). One that fails (a cancel may have hit it) leaves the
link ``dirty``: it is discarded at its release, never reused.

While no client holds the link (it sits in the pool's free list) poold keeps
reading: a NotificationResponse or ParameterStatus arriving then is dropped
rather than delivered to the next client, and EOF retires the link at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from . import prepared, relaycore
from .protocol import messages
from .protocol.errors import ProtocolError
from .protocol.framing import FrameScanner, PyFrameScanner
from .stats import PoolStats

if TYPE_CHECKING:
    from psycopg import AsyncConnection

log = structlog.get_logger("poold.relay")

_Z = messages.READY_FOR_QUERY
_S = messages.PARAMETER_STATUS
_E = messages.ERROR_RESPONSE

#: settings a client gets back at every hand-off, as PgBouncer's varcache does
TRACKED_PARAMETERS = frozenset(
    {
        "application_name",
        "client_encoding",
        "DateStyle",
        "extra_float_digits",
        "IntervalStyle",
        "search_path",
        "standard_conforming_strings",
        "TimeZone",
    }
)
_TRACKED_BY_LOWER = {p.lower(): p for p in TRACKED_PARAMETERS}


def carries_settings(params: dict[str, str]) -> bool:
    """Whether a link's settings hold one that is not reported (ParameterStatus): such a
    link is reset before it goes back to the pool (ClientSession._release_settings).
    Reported ones may stay: every client learns them, and its next lease corrects them."""
    return any(name not in TRACKED_PARAMETERS for name in params)


def canonical_parameter(name: str) -> str | None:
    """The tracked parameter's canonical spelling, or None if not tracked."""
    return _TRACKED_BY_LOWER.get(name.lower())


class ServerOwner(Protocol):
    """What a link needs from whoever holds it (a client session)."""

    def on_server_data(self, data: bytes) -> None: ...
    def on_server_ready(self, status: bytes) -> None: ...
    def on_server_parameter(self, name: str, value: str) -> None: ...
    def on_server_lost(self, sqlstate: str | None = "08006", message: str = "server connection lost") -> None: ...
    def on_server_in_use(self, fields: dict[str, str]) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class ServerCorePy:
    """A server connection's per-transaction state and path; ``_relaycore.ServerCore`` in C.

    ``data_received`` scans the chunk and hands it to ``_on_frames``. The C
    version writes the common chunk (a reply for a client whose only watched
    messages are ReadyForQuery, no internal query in flight) to the client
    itself and hands only the others to ``_on_frames``.
    """

    __slots__ = ("busy_since", "cancel_at", "cancels", "carries", "closed", "dirty", "epoch", "expecting", "expires_at",
                 "idle_since", "owner", "params", "pending", "scanner", "stats", "status", "swallow", "transport")

    owner: ServerOwner | None
    transport: asyncio.Transport | None
    scanner: PyFrameScanner
    status: bytes
    stats: PoolStats
    params: dict[str, str]
    pending: int
    swallow: int
    busy_since: float
    cancel_at: float
    cancels: int  # CancelRequests for this server in flight: it goes to no other client until they are delivered
    dirty: bool  # an internal query failed: the link is discarded at its release
    carries: bool  # params hold a setting beyond the reported ones: reset before the link goes back to the pool
    expecting: bool  # poold's own requests in flight, or held (prepared.LinkStatements.busy): no fast path
    expires_at: float
    idle_since: float
    epoch: int
    closed: bool

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.scanner.feed(data)
        except ProtocolError:
            self._stream_corrupt()
            return
        self._on_frames(data, frames)

    def _on_frames(self, data: bytes, frames: list[Any]) -> None:
        raise NotImplementedError

    def _stream_corrupt(self) -> None:
        raise NotImplementedError


if TYPE_CHECKING:
    ServerCore = ServerCorePy
else:
    ServerCore = relaycore.pick("ServerCore", ServerCorePy)


class ServerLink(ServerCore, asyncio.Protocol):
    """Relay state of one leased server connection."""

    __slots__ = ("_on_internal_data", "_on_internal_done", "_on_internal_error", "_on_lost", "conn", "defaults",
                 "internal_since", "pid", "ps", "told")

    def __init__(self, on_lost: Callable[[ServerLink], None]) -> None:
        self.transport = None
        self.conn: AsyncConnection[Any] | None = None
        self.pid = 0
        self.owner = None
        self.scanner = FrameScanner(b"ZSE")
        self.pending = 0  # ReadyForQuery messages still owed to the owner
        self.swallow = 0  # ReadyForQuery messages owed to internal queries
        self.status = b"I"  # transaction status from the last ReadyForQuery
        self.params = {}  # settings beyond the pool's defaults (settings.py)
        self.carries = False  # one of them is not a reported setting (take_params)
        self.defaults: dict[str, str] = {}
        self.busy_since = 0.0  # monotonic time the oldest pending request began
        self.idle_since = 0.0
        self.expires_at = float("inf")
        self.cancel_at = 0.0  # when poold cancelled the running query (query_timeout)
        self.cancels = 0  # CancelRequests in flight (Pool.cancel_query)
        self.dirty = False  # an internal query failed (a cancel may have hit it)
        self.closed = False
        self.expecting = False
        self.ps: prepared.LinkStatements | None = None  # the statements prepared here, once a client named one
        self.told = False  # the server sent its owner a FATAL: the owner's session ends with it
        self.epoch = 0  # the pool's reconnect epoch when this link was leased
        self.stats = PoolStats()  # replaced by the pool's own at lease
        self._on_lost = on_lost
        self.internal_since = 0.0  # monotonic time the internal queries in flight began (Pool.maintain)
        self._on_internal_done: Callable[[ServerLink], None] | None = None
        self._on_internal_error: Callable[[bytes], None] | None = None
        self._on_internal_data: Callable[[bytes], None] | None = None

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _stream_corrupt(self) -> None:
        log.error("server_stream_corrupt", server_pid=self.pid)
        self.close()

    def _on_frames(self, data: bytes, frames: list[Any]) -> None:
        """A scanned chunk: client traffic, or (part of it) replies to internal queries."""
        if not self.swallow:
            self._deliver(data, frames)
            return
        # Part (or all) of this chunk answers internal queries.
        owner = self.owner
        if self._on_internal_data is not None:
            self._on_internal_data(data)
        for i, (t, _start, end, body) in enumerate(frames):
            if t == _S and body is not None:
                self._track(*messages.parse_parameter_status(body), owner)
            elif t == _E and body is not None:
                # Its work is not done (a cancel meant for the last client may have
                # hit it): the link must not serve another client.
                self.dirty = True
                if self._on_internal_error is not None:
                    self._on_internal_error(body)
                else:
                    fields = messages.parse_error_fields(body)
                    log.warning("internal_query_failed", server_pid=self.pid, sqlstate=fields.get("C"),
                                error=fields.get("M"))
            elif t == _Z and body is not None:
                self.status = body
                self.swallow -= 1
                if not self.swallow:
                    rest, later = data[end:], frames[i + 1 :]
                    done, self._on_internal_done = self._on_internal_done, None
                    self._on_internal_error = self._on_internal_data = None
                    if done is not None:
                        done(self)
                    self._deliver(rest, later)
                    return

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.drop_statements()
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.on_server_lost(None if self.told else "08006")
        self._on_lost(self)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.pause_reading()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.resume_reading()

    # -- used by client sessions and the pool ----------------------------

    def drop_statements(self) -> None:
        """The connection ends: its prepared statements' registry holds go (statements.py)."""
        if self.ps is not None:
            self.ps.close()
            self.ps = None
            self.expecting = False

    def take_params(self, params: dict[str, str]) -> None:
        """The settings this server connection now carries, and with them ``carries`` (the
        flag the C core's release reads, derived here only)."""
        self.params = params
        self.carries = carries_settings(params)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def run_internal(self, sqls: list[str], done: Callable[[ServerLink], None] | None = None,
                     refused: Callable[[bytes], None] | None = None,
                     capture: Callable[[bytes], None] | None = None) -> None:
        """Send internal queries; their replies are consumed, then ``done`` runs.

        An ErrorResponse among them is logged, or given to ``refused`` (its body)
        when the caller wants to know what the server refused. ``capture`` is given
        the raw chunks that carry their replies (those may go on with what follows)."""
        if not self.swallow:
            self.internal_since = time.monotonic()
        self.swallow += len(sqls)
        self._on_internal_done = done
        self._on_internal_error = refused
        self._on_internal_data = capture
        self.write(b"".join(messages.query(sql) for sql in sqls))

    def sync_parameters(self, wanted: dict[str, str]) -> None:
        """Give this server connection a client's settings before its traffic: one
        round trip, for the difference (settings.sync_sql)."""
        from .settings import sync_sql  # settings.py builds on this module

        sqls = sync_sql(self.params, wanted)
        if sqls:
            self.run_internal(sqls)
        self.take_params(dict(wanted))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- internals --------------------------------------------------------

    def _deliver(self, data: bytes, frames: list[Any]) -> None:
        """Client traffic: to the owner, or read as idle chatter when there is none."""
        owner = self.owner
        if owner is None:
            self._idle_frames(frames)
            return
        ps = self.ps
        if ps is not None and (ps.queue or ps.tail or ps.failed):  # replies to poold's own requests among them
            data, watched = ps.filter(data, getattr(owner, "ps", None))  # a client's statements (client.py)
            frames = [(t, 0, 0, body) for t, body in watched]
            # before the owner hears of them: its ReadyForQuery may hand the link to a waiting
            # client at once, whose requests may take the fast path only if nothing is owed
            self.expecting = ps.busy
        if data:
            owner.on_server_data(data)
            self.stats.bytes_out += len(data)
        for t, _start, _end, body in frames:
            self._frame_for_owner(owner, t, body)
        if ps is not None:
            if ps.held and self.scanner.at_boundary and self.owner is owner:
                owner.on_server_caught_up(self)  # type: ignore[attr-defined]  # only a client holds requests
            self.expecting = ps.busy

    def _frame_for_owner(self, owner: ServerOwner, t: int, body: bytes | None) -> None:
        if t == _Z:
            self.status = body or b"I"
            self.pending -= 1
            self.cancel_at = 0.0
            if self.pending <= 0:
                self.pending = 0
                owner.on_server_ready(self.status)
            else:  # pipelined requests: the next one's clock starts now
                self.busy_since = time.monotonic()
        elif t == _S and body is not None:
            name, value = messages.parse_parameter_status(body)
            self._track(name, value, owner)
        elif t == _E and body is not None:
            fields = messages.parse_error_fields(body)
            sqlstate = fields.get("C", "XX000")
            self.stats.server_errors[sqlstate] += 1
            if fields.get("V", fields.get("S")) in ("FATAL", "PANIC"):
                self.told = True
            elif sqlstate == "55006":  # object in use: perhaps by poold's own idle connections
                owner.on_server_in_use(fields)
            elif sqlstate == "0A000" and self.ps is not None:  # perhaps a cached plan's result type changed
                self.ps.mark_bound_stale()

    def _track(self, name: str, value: str, owner: ServerOwner | None) -> None:
        canon = canonical_parameter(name)
        if canon is None:
            return
        if self.defaults.get(canon) == value:
            self.params.pop(canon, None)
        else:
            self.params[canon] = value
        if owner is not None:
            owner.on_server_parameter(canon, value)

    def _idle_frames(self, frames: list[Any]) -> None:
        for t, _start, _end, body in frames:
            if t == _E and body is not None:
                fields = messages.parse_error_fields(body)
                log.info("idle_server_error", server_pid=self.pid, sqlstate=fields.get("C"), error=fields.get("M"))
                if fields.get("S") in ("FATAL", "PANIC") and not self.closed:
                    # Its EOF follows; retire it now so no client is handed it in between.
                    self.closed = True
                    self.drop_statements()
                    self.abort()
                    self._on_lost(self)
                    return
            elif t == _S and body is not None:
                self._track(*messages.parse_parameter_status(body), None)


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"

