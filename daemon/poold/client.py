"""One client connection: login (login.py), then relay to a leased server connection.

A ClientSession is the asyncio protocol on a client socket. Its login's steps
are its base class ``login.LoginSteps``. After login everything is callbacks,
with no task or await per transaction:

- client bytes are scanned header by header (Sync, Query and FunctionCall each
  owe one ReadyForQuery; Terminate is not forwarded) and written to the held
  server connection, or buffered while one is acquired;
- the server side (relay.ServerLink) writes replies straight to this socket and
  calls ``on_server_ready`` at ReadyForQuery when nothing more is owed;
- in transaction mode the server connection goes back to the pool at
  ReadyForQuery 'I' with nothing owed and no half-sent batch; in session mode at
  the end of the session, after DISCARD ALL.

A client that vanishes mid-transaction has its server connection rolled back
(idle in transaction) or discarded (mid-query); it is never reused dirty.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import structlog

from . import auth, prepared, relaycore, settings, sockio
from .errors import PooldError, ServerRefusal
from .login import LoginPlan, LoginSteps
from .protocol import messages
from .protocol.errors import ProtocolError
from .protocol.framing import FrameScanner, MessageReader, PyFrameScanner
from .relay import ServerLink

if TYPE_CHECKING:
    from .pools import Pool
    from .runtime import Runtime

log = structlog.get_logger("poold.client")
_stdlog = logging.getLogger("poold.client")

_Q = messages.QUERY
_F = messages.FUNCTION_CALL
_SYNC = messages.SYNC
_X = messages.TERMINATE
#: what goes to the server where a Terminate was while replies are owed: a COPY FROM
#: STDIN the client left ends, as PostgreSQL ends it at a Terminate (elsewhere it is ignored)
_COPY_FAIL = messages.COPY_FAIL_TERMINATED
_SYNC_POINTS = bytes((_Q, _SYNC, _F))
#: chunks a client's bytes are read into while it waits for a server connection;
#: at this many, its reading pauses until it has one (a chunk is at most the
#: transport's read size, 256 KiB), so a large request waits in its own socket
BUFFERED_CHUNKS_MAX = 4
_AUTH_OK = messages.auth_ok()
_READY_IDLE = messages.ready_for_query()

_P = messages.PARSE
_Q_OR_P = frozenset((_Q, _P))
#: the first letters of CREATE and DROP, and of what may come before them (white space, a comment)
_DATABASE_COMMAND_FIRST = frozenset(b"CcDd-/ \t\r\n")
_DATABASE_COMMAND_LEAD = frozenset(b"-/ \t\r\n")
#: the first four letters of CREATE and DROP, in lower case
_DATABASE_COMMAND_START = frozenset((b"crea", b"drop"))

#: a 55006 of DROP DATABASE or CREATE DATABASE ... TEMPLATE (the database it names)
_DATABASE_IN_USE = re.compile(r'database "(.+)" is being accessed by other users')



class ClientCorePy:
    """A client session's per-transaction state and path; ``_relaycore.ClientCore`` in C.

    The C version does ``_relay`` itself for the common chunk (requests for the
    server connection held, or the first request of a transaction, leased at
    once or queued for), ``on_server`` and ``on_server_ready`` up to the
    release; it calls the methods below for everything else. It also starts
    and ends a connection (``__init__``, ``connection_made``, ``connection_lost``)
    and holds the whole session's state, so that a connection costs no Python
    until it does something unusual.
    """

    # Slots: one of these lives per client connection, idle ones included.
    __slots__ = ("_head", "_login", "_login_wait", "_peer", "_plan", "_reader", "_self_paused", "_server_paused",
                 "buffered", "buffered_syncs", "cancel_request", "closed", "connected_at", "database", "in_batch", "key",
                 "native_login", "pinned", "pool", "ps", "ps_mid", "relaying", "rt", "scanner", "server",
                 "session_mode", "settle", "startup", "terminating", "tls", "transactions", "transport", "user",
                 "wait_start", "waiting", "wanted", "xact_start")

    scanner_type: type[PyFrameScanner]  # the class's: ClientSession.scanner_type

    transport: asyncio.Transport | None
    scanner: PyFrameScanner
    pool: Pool | None
    server: ServerLink | None
    rt: Runtime
    buffered: list[bytes]
    buffered_syncs: int
    wanted: dict[str, str]  # the client's settings beyond its pool's defaults (settings.py)
    startup: dict[str, str] | None  # those its startup packet set (read, never changed)
    settle: bool  # a request may have changed a setting: learn them at the release (settings.Settle)
    pinned: str | None  # what pins its server connection to it in transaction mode (settings.classify)
    transactions: int
    xact_start: float  # when the current transaction's first request went out
    wait_start: float  # when the current wait for a server connection began
    relaying: bool
    waiting: bool
    terminating: bool
    closed: bool
    in_batch: bool  # messages sent since the last Sync
    session_mode: bool
    ps: prepared.ClientStatements | None  # its named statements (transaction mode), once it has used one
    ps_mid: bool  # ps holds part of a request: the next chunk continues it
    _server_paused: bool
    native_login: bool  # the C core reads the login (never here: see connection_made)
    tls: bool
    cancel_request: bool  # it brought a CancelRequest: nothing is written to it (see _refuse)
    key: tuple[int, int]  # the cancel key (pid, secret), (0, 0) until logged in
    user: str
    database: str
    connected_at: float  # time.time()
    _peer: str | None
    _reader: MessageReader | None
    _login: auth.Steps[None] | None  # the login's steps, until it is done
    _login_wait: asyncio.Future[Any] | None  # what a login step waits for
    _plan: LoginPlan | None  # the C login's plan (_native_login_plan), until its proof is checked
    _self_paused: bool

    def __init__(self, runtime: Runtime) -> None:
        # A new session's state; the C core starts from the same (_relaycore.c, Client_new, Client_init).
        self.rt = runtime
        # FrameScanner(report_all=True, max_length=...), by position: keywords cost a connection 0.25 us
        self.scanner = self.scanner_type(b"", True, runtime.config.clients.max_message_size)
        self._peer = self._reader = self._login = self._login_wait = self._plan = None
        self.tls = self._self_paused = False
        self.key = (0, 0)
        self.user = self.database = ""
        self.connected_at = time.time()
        self.transport = self.pool = self.server = self.ps = None
        self.ps_mid = False
        self.buffered = []
        self._head = b""  # a message's start too short to look at, kept for the next read (settings.look)
        self.wanted = {}
        self.startup = self.pinned = None
        self.settle = False
        self.buffered_syncs = self.transactions = 0
        self.xact_start = self.wait_start = 0.0
        self.relaying = self.waiting = self.terminating = self.closed = self.in_batch = False
        self.session_mode = self._server_paused = self.native_login = self.cancel_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        rt = self.rt
        rt.clients.add(self)  # type: ignore[arg-type]
        rt.logins[self] = now = time.monotonic()  # type: ignore[index]  # login_timeout: see Runtime.expire_logins
        if len(rt.logins) > rt.config.clients.max_login_conn:
            rt.make_room_for_login(now)
        self._start_login()  # the C core sets native_login instead: its C login reads the bytes

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed or (self.terminating and self._outlive_client()):
            return
        self.closed = True
        if not self.relaying:  # else the login ended already
            self._end_login()
        self.rt.unregister(self)  # type: ignore[arg-type]
        pool = self.pool
        if pool is not None:
            pool.clients -= 1
            if self.waiting:
                self.waiting = False
                pool.cancel_wait(self)  # type: ignore[arg-type]
            if self.server is not None:
                self._hand_back(self.server, pool)
                self.server = None
        if self.relaying:
            self._session_ended()

    def data_received(self, data: bytes) -> None:
        if self.relaying:
            self._relay(data)
        else:
            self._login_data(data)

    def on_server_ready(self, status: bytes) -> None:
        if status != b"I":
            if self.terminating:  # the requests sent before Terminate are answered
                self._end_after_requests()
            return
        now = time.monotonic()
        self.transactions += 1
        pool = self.pool
        stats = pool.stats  # type: ignore[union-attr]
        stats.transactions += 1
        stats.xact.observe(now - self.xact_start)
        if self.terminating:
            self._end_after_requests()
            return
        if self.in_batch or not self.scanner.at_boundary:
            return
        if self.rt.draining:
            self._fatal("57P01", "terminating connection: poold is draining")
            return
        if not self.session_mode:
            link, self.server = self.server, None
            if link is not None:
                if self._server_paused:
                    self._unpause(link)
                if self.settle:
                    self._settle(link)
                elif link.carries:
                    self._release_settings(link)
                else:
                    pool.release(link, now)  # type: ignore[union-attr]

    def on_server(self, link: ServerLink) -> None:
        if self.wait_start:
            self.pool.stats.wait.observe(time.monotonic() - self.wait_start)  # type: ignore[union-attr]
            self.wait_start = 0.0
        if self.closed or self.transport is None or self.transport.is_closing():  # ended meanwhile (_refuse)
            self.waiting = False
            assert self.pool is not None
            self.pool.release(link)
            return
        syncs, self.buffered_syncs = self.buffered_syncs, 0
        data = b"".join(self.buffered)
        self.buffered.clear()
        if self._self_paused:  # read again: before the write below, whose flow control may pause it anew
            self.resume_reading()
        self._attach(link, data, syncs)

    def _relay(self, data: bytes) -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    def _attach(self, link: ServerLink, data: bytes, syncs: int) -> None:
        raise NotImplementedError

    def _login_data(self, data: bytes) -> None:
        raise NotImplementedError

    def _fatal(self, sqlstate: str, message: str) -> None:
        raise NotImplementedError

    def _unpause(self, link: ServerLink) -> None:
        raise NotImplementedError

    def _settle(self, link: ServerLink) -> None:
        raise NotImplementedError

    def _release_settings(self, link: ServerLink) -> None:
        raise NotImplementedError

    def _session_statement(self, data: bytes, at: int = 0, tail: int = -1) -> bytes:
        raise NotImplementedError

    def _start_login(self) -> None:
        raise NotImplementedError

    def _end_login(self) -> None:
        raise NotImplementedError

    def _hand_back(self, link: ServerLink, pool: Pool) -> None:
        raise NotImplementedError

    def _session_ended(self) -> None:
        raise NotImplementedError

    def _end_after_requests(self) -> None:
        raise NotImplementedError

    def _outlive_client(self) -> bool:
        raise NotImplementedError


if TYPE_CHECKING:
    ClientCore = ClientCorePy
else:
    ClientCore = relaycore.pick("ClientCore", ClientCorePy)

#: The C core runs the common login itself (_relaycore.c, client_login) and
#: calls the ``_native_login_...`` methods below; otherwise ``_login_steps`` does
#: (ClientCorePy.connection_made starts it).
NATIVE_LOGIN = ClientCore is not ClientCorePy


class ClientSession(LoginSteps, ClientCore, asyncio.Protocol):
    # Its state is the core's (ClientCorePy.__slots__, or the C core's members).
    __slots__ = ()

    #: the frame scanner class a session reads its client with (__init__ makes one)
    scanner_type = FrameScanner

    @property
    def state(self) -> str:
        if not self.relaying:
            return "login"
        if self.waiting:
            return "waiting"
        return "active" if self.server is not None else "idle"

    # -- asyncio.Protocol -------------------------------------------------

    @property
    def peer(self) -> str:
        """The client's address, "host:port" or "unix"; read when asked for (transports keep it)."""
        if self._peer is None:
            peer = self.transport.get_extra_info("peername") if self.transport is not None else None
            self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        return self._peer

    @property
    def host(self) -> str:
        """The client's address without its port ("unix" on the Unix socket): what
        failed authentication is counted against, with the user (loginguard)."""
        return self.peer.rsplit(":", 1)[0]

    def eof_received(self) -> bool | None:
        # close; a client half-close ends the session, unless it sent Terminate behind
        # requests still owed replies: they are written to it, then it closes
        return self.terminating and self._owes_requests()

    def _session_ended(self) -> None:
        """A logged-in client is gone: its statements released, its log line."""
        if self.ps is not None:
            self.ps.clear()
        if _stdlog.isEnabledFor(logging.INFO):  # a filtered call still costs microseconds
            log.info(
                "client_session_end",
                peer=self.peer,
                db=self.database,
                user=self.user,
                seconds=round(time.time() - self.connected_at, 3),
                transactions=self.transactions,
            )

    def pause_writing(self) -> None:
        if self.server is not None and self.server.transport is not None:
            self.server.transport.pause_reading()
            self._server_paused = True

    def resume_writing(self) -> None:
        if self.server is not None and self.server.transport is not None and self._server_paused:
            self.server.transport.resume_reading()
        self._server_paused = False

    # -- relay: client -> server (hot path) ----------------------------------

    def _relay(self, data: bytes) -> None:
        if self.terminating:  # bytes after Terminate: PostgreSQL never reads them
            return
        # A Query or Parse in the chunk that may change the session's state (settings.look;
        # the C core's same walk), from the chunk's first whole message on, and the rest of
        # a Query or Parse begun in an earlier read. A message's start too short to look at
        # (a header, a Query's or Parse's first bytes) waits for the next read.
        if self._head:
            data, self._head = self._head + data, b""
        skip, tail = self.scanner.in_progress
        at = min(skip, len(data))
        look, cut = settings.look(data, at, tail, self.scanner.max_length)
        if cut < len(data):
            data, self._head = data[:cut], data[cut:]
            if not data:
                return
        try:
            # Query, Sync and FunctionCall each owe one ReadyForQuery; Terminate ends it.
            syncs, stop_at, last = self.scanner.tally(data, _SYNC_POINTS, _X)
        except ProtocolError as exc:
            self._relay_error(exc)
            return
        if last >= 0:
            self.in_batch = last not in _SYNC_POINTS  # messages sent since the last sync point
        if stop_at is not None:
            data = data[:stop_at] if stop_at > 0 else b""
            self.terminating = True
        if look and data:
            data = self._session_statement(data, at, tail)
        if self.terminating and (syncs or self.buffered_syncs or (self.server is not None and self.server.pending)):
            data += _COPY_FAIL  # in its stead: a COPY FROM STDIN ends (PostgreSQL ignores it elsewhere)
        pool = self.pool
        stats = pool.stats  # type: ignore[union-attr]
        stats.bytes_in += len(data)
        stats.queries += syncs
        server = self.server
        if server is None:
            if self.terminating and not (syncs or self.buffered_syncs):
                pass  # nothing to run: PostgreSQL rolls back an unsynced batch at Terminate
            elif data and not (self.waiting or self.buffered):
                self._lease_and_send(data, syncs)  # the first request of a transaction
            elif data:
                self._buffer(data, syncs)
        else:
            if syncs:
                if not server.pending:
                    server.busy_since = time.monotonic()
                    if server.status == b"I":
                        self.xact_start = server.busy_since
                server.pending += syncs
            if data:
                if self.ps is None and (self.session_mode or not self.pool.settings.max_prepared_statements):  # type: ignore[union-attr]
                    server.transport.write(data)  # type: ignore[union-attr]
                else:
                    self._forward(server, data, syncs)
        if self.terminating:
            self._end_after_requests()

    def _relay_error(self, exc: ProtocolError) -> None:
        self._fatal(exc.sqlstate, str(exc))

    def _lease_and_send(self, data: bytes, syncs: int) -> None:
        """Lease a server connection and send ``data``; or queue it until one is free."""
        assert self.pool is not None
        # (The first letter of a Query's text, or an unnamed Parse's, first: most stop there.)
        if len(data) > 6 and data[5 + (data[0] == _P)] in _DATABASE_COMMAND_FIRST and _may_be_database_command(data):
            self._before_database_command(data)
        self.waiting = True
        link = self.pool.acquire(self)  # the fast path records a zero wait itself
        if link is not None:
            self._attach(link, data, syncs)
        elif self.waiting:  # queued: on_server follows (else it failed, and we are closed)
            self.wait_start = time.monotonic()
            self._buffer(data, syncs)

    def _buffer(self, data: bytes, syncs: int) -> None:
        """Keep a request until a server connection is free; pause the client past BUFFERED_CHUNKS_MAX."""
        self.buffered.append(data)
        self.buffered_syncs += syncs
        if len(self.buffered) >= BUFFERED_CHUNKS_MAX:
            self.pause_reading()

    def _attach(self, link: ServerLink, data: bytes, syncs: int) -> None:
        """Take a freshly leased server connection and send it the first request."""
        if link.params != self.wanted and settings.identity_differs(link.params, self.wanted):
            self._buffer(data, syncs)  # the requests wait for the role (settings.SetIdentity)
            settings.SetIdentity(self).start(link)  # type: ignore[arg-type]  # self is a ClientSession
            return
        self.waiting = False
        self.server = link
        link.owner = self
        if link.params != self.wanted:
            link.sync_parameters(self.wanted)
        if syncs:
            link.pending = syncs
            link.busy_since = self.xact_start = time.monotonic()
        if data:
            if self.ps is None and (self.session_mode or not self.pool.settings.max_prepared_statements):  # type: ignore[union-attr]
                link.transport.write(data)  # type: ignore[union-attr]
            else:
                self._forward(link, data, syncs)

    # -- named prepared statements (prepared.py) ------------------------------

    def _forward(self, link: ServerLink, data: bytes, syncs: int) -> None:
        """Requests for ``link`` in transaction mode: as they are when clean, else
        _rewrite's (_relaycore.c, client_forward)."""
        if not self.ps_mid and not link.expecting and prepared.clean(data):
            link.transport.write(data)  # type: ignore[union-attr]
        else:
            self._rewrite(link, data, syncs)

    def _rewrite(self, link: ServerLink, data: bytes, syncs: int) -> None:
        """Requests that name statements, or follow poold's own in flight: renamed when
        ``link`` has every statement they use ready (prepared.ClientStatements.rename),
        else rewritten for ``link`` (prepared.ClientStatements.feed). Replies still owed for earlier
        requests (``link.pending`` less this chunk's ``syncs``) open the queue; while the
        server's stream is inside one of them the requests wait (held), so that poold
        reads replies from a message boundary."""
        assert self.pool is not None
        ps, lps = self.ps, link.ps
        if ps is not None and lps is not None and not self.ps_mid and not link.expecting:
            renamed = ps.rename(lps, data)  # statements the connection has ready: no queue
            if renamed is not None:
                link.transport.write(renamed)  # type: ignore[union-attr]
                return
        if ps is None:
            ps = self.ps = prepared.ClientStatements(self.pool.statements)
        if lps is None:
            lps = link.ps = prepared.LinkStatements(self.pool.statements)
        if lps.held or (not lps.queue and not link.scanner.at_boundary):
            lps.hold(data, syncs)
            link.expecting = True
            return
        lps.owed = link.pending - syncs
        lps.bound = []
        out = ps.feed(lps, data)
        lps.owed = 0
        self.ps_mid = ps.mid
        link.expecting = lps.busy
        reply = lps.ready()
        if reply:
            self.transport.write(reply)  # type: ignore[union-attr]
        if out:
            link.transport.write(out)  # type: ignore[union-attr]

    def on_server_caught_up(self, link: ServerLink) -> None:
        """The server's stream reached a boundary with nothing owed but what was held: send it."""
        lps = link.ps
        assert lps is not None
        syncs = lps.held_syncs
        self._rewrite(link, lps.take_held(), syncs)

    # -- pools.Waiter -------------------------------------------------------

    def on_acquire_failed(self, error: PooldError) -> None:
        self.waiting = False
        self._fail(error)

    # -- relay.ServerOwner --------------------------------------------------

    def on_server_data(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def on_server_parameter(self, name: str, value: str) -> None:
        if self.pool is not None and self.pool.defaults is not None and self.pool.defaults.get(name) == value:
            self.wanted.pop(name, None)
        else:
            self.wanted[name] = value

    def on_server_lost(self, sqlstate: str | None = "08006", message: str = "server connection lost") -> None:
        """The server connection this client holds is gone, mid-request or between them.

        Whatever was sent on it may have run, so it is never sent again elsewhere:
        the client's session ends, as it would with a direct connection, with
        poold's error ``sqlstate`` -- or none where ``sqlstate`` is None: the
        server's own FATAL (57P01 administrator command, shutdown, ...) reached the
        client already, and PostgreSQL sends nothing after it.
        """
        self.server = None
        if sqlstate is None:
            log.info("client_error", peer=self.peer, db=self.database, user=self.user, sqlstate="server_fatal",
                     error="the server ended the connection")
            self._close()
        else:
            self._fatal(sqlstate, message)

    def _before_database_command(self, data: bytes) -> None:
        """DROP DATABASE x, or CREATE DATABASE ... TEMPLATE x: close poold's idle server
        connections to x first, which a direct client would not have met (PostgreSQL
        waits up to 5 s for their backends to exit). A command this misses, however
        spelt, gets PostgreSQL's 55006 (after its 5 s), and on_server_in_use closes
        them then, so that the client's next try goes through."""
        name = messages.database_command(data)
        if name is not None:
            self._close_idle_to(name)

    def on_server_in_use(self, fields: dict[str, str]) -> None:
        """55006: a DROP DATABASE (or CREATE DATABASE ... TEMPLATE) that
        _before_database_command did not see coming found its database in use,
        perhaps by poold's own idle server connections. The client gets the error
        (a request is never sent twice); those connections are closed, so that its
        next try meets only what a direct client would."""
        found = _DATABASE_IN_USE.search(fields.get("M", ""))
        if found is not None:
            self._close_idle_to(found.group(1))

    def _close_idle_to(self, database: str) -> None:
        """Close poold's idle server connections to ``database`` (on this pool's server)."""
        if self.pool is not None and (closed := self.rt.pools.close_idle(database, self.pool)):
            log.info("idle_server_connections_closed", peer=self.peer, database=database, closed=closed)

    def pause_reading(self) -> None:
        if self.transport is not None and not self._self_paused:
            self.transport.pause_reading()
            self._self_paused = True

    def resume_reading(self) -> None:
        if self.transport is not None and self._self_paused:
            self.transport.resume_reading()
            self._self_paused = False

    # -- shutdown and errors ------------------------------------------------

    def terminate_at_boundary(self, sqlstate: str, message: str) -> bool:
        """Close now if no transaction is open; False if it must wait."""
        if self.cancel_request:
            return False  # it closes once its cancel is delivered (Runtime.cancel), as PostgreSQL's does
        if self.server is not None and (self.server.pending or self.server.status != b"I" or self.in_batch):
            return False
        if self.buffered:
            return False  # a request is waiting for a server connection: let it run
        self._fatal(sqlstate, message)
        return True

    def _unpause(self, link: ServerLink) -> None:
        """A server leaving this client must not stay paused by its flow control."""
        if self._server_paused and link.transport is not None:
            link.transport.resume_reading()
        self._server_paused = False

    def _session_statement(self, data: bytes, at: int = 0, tail: int = -1) -> bytes:
        """A request that may change the session's state (settings.look): note a setting to
        learn at the release, or pin, or refuse what cannot be carried. Returns what goes
        to the server. Its messages start at ``at``; before it is the rest of a message of
        type ``tail`` begun in an earlier read: what that makes that cannot be carried
        cannot be refused any more (it began on the server already), and pins."""
        if self.session_mode or self.pool is None:  # the server connection is the client's anyway
            return data
        touched, reason = settings.classify(data, at)
        rest_reason = None
        if at and settings.rest_may_carry(data[:at], tail):
            touched, rest_reason = settings.classify_rest(data[:at], tail)
        if touched:
            self.settle = True
        reason = rest_reason or reason
        if reason is not None:
            if (self.pool.settings.session_state == "error" and rest_reason is None
                    and (replaced := settings.refused(data, at)) is not None):
                log.info("session_state_refused", peer=self.peer, db=self.database, user=self.user, reason=reason)
                return replaced
            self.session_mode = True
            self.pinned = reason
            if self.ps is None and self.pool.settings.max_prepared_statements:
                # its requests stay checked: the connection it keeps may hold poold's
                # statements of other clients (prepared.SERVER_NAME_PREFIX)
                self.ps = prepared.ClientStatements(self.pool.statements)
            self.pool.stats.pins[reason] += 1
            log.warning("client_pinned", peer=self.peer, db=self.database, user=self.user, reason=reason,
                        server_pid=self.server.pid if self.server is not None else None)
        return data

    def _settle(self, link: ServerLink) -> None:
        """The release after requests that may have changed settings: learn them first."""
        self.settle = False
        settings.Settle(self).start(link)  # type: ignore[arg-type]  # self is a ClientSession

    def _release_settings(self, link: ServerLink) -> None:
        """The release of a link that carries the client's settings beyond the reported
        ones (link.carries): reset them first (_relaycore.c, on_server_ready, calls this)."""
        assert self.pool is not None
        settings.release_settings(link, self.pool.release_if_idle)

    def terminate_now(self, sqlstate: str, message: str) -> None:
        self._fatal(sqlstate, message)

    def _hand_back(self, link: ServerLink, pool: Pool) -> None:
        """The client is gone: return its server connection only if clean."""
        link.owner = None
        self._unpause(link)
        if link.pending or link.swallow or self.in_batch or not self.scanner.at_boundary or link.expecting:
            log.info("server_discarded_mid_query", server_pid=link.pid, peer=self.peer)
            pool.discard(link, cancel=bool(link.pending))
        elif self.session_mode:  # session mode, or pinned in transaction mode
            link.take_params({})
            if link.ps is not None:  # DISCARD ALL drops poold's statements there too
                link.ps.clear()
            link.run_internal((["ROLLBACK"] if link.status != b"I" else []) + ["DISCARD ALL"], pool.release_if_idle)
        elif self.settle or link.carries:  # its last requests may have changed settings: none stays on the link
            link.take_params({})
            link.run_internal((["ROLLBACK"] if link.status != b"I" else []) + [settings.RESET_SQL],
                              pool.release_if_idle)
        elif link.status != b"I":
            link.run_internal(["ROLLBACK"], pool.release_if_idle)
        else:
            pool.release(link)

    def _fail(self, error: PooldError) -> None:
        """End the session with ``error``: the server's own words for a server's refusal."""
        self._fatal(error.sqlstate, error.message, error.response if isinstance(error, ServerRefusal) else None)

    def _fatal(self, sqlstate: str, message: str, response: bytes | None = None) -> None:
        if sqlstate not in ("57P01",):
            log.info("client_error", peer=self.peer, db=self.database, user=self.user, sqlstate=sqlstate, error=message)
        self._refuse(sqlstate, message, response)

    def _refuse(self, sqlstate: str, message: str, response: bytes | None = None) -> None:
        """Tell the client why, then end its connection, with no log line of its own (the
        caller logs, or logs in aggregate): a lingering close (sockio.linger), so that the
        error is what it reads, and not a reset.

        A CancelRequest's connection is closed without a word, whatever ends it (drain,
        shutdown_timeout, login_timeout, max_login_conn, a failure): PostgreSQL never
        answers one, and libpq 17+ (PQcancelPoll) takes any byte for a failed cancel
        ("unexpected response from server")."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.cancel_request or self.terminating:
            self._close()  # (a client that sent Terminate reads no more)
            return
        transport.write(response or messages.error_response(sqlstate, f"poold: {message}"))
        self.rt.stats.errors[sqlstate] += 1
        self.transport = sockio.linger(transport, self, self.rt.lingering)  # type: ignore[assignment]

    def _close(self) -> None:
        self.terminating = False  # a deliberate end: connection_lost ends the session whatever is owed
        if self.transport is not None:
            self.transport.close()

    # -- Terminate: the requests sent before it still run ------------------

    def _owes_requests(self) -> bool:
        """Whether requests the client sent end with a sync point still unanswered:
        queued for a server connection, or sent on one."""
        server = self.server
        return bool((self.waiting and self.buffered_syncs) or (server is not None and server.pending))

    def _end_after_requests(self) -> None:
        """The client sent Terminate. PostgreSQL runs what it read before that, answers,
        then ends the session: so does poold, which ends it now when nothing is owed,
        else once the last reply is written (on_server_ready calls again). The client's
        server connection then goes back as at any client's end (_hand_back): rolled back,
        reset, or kept, and not cancelled or dropped for a reply still to come."""
        if not self._owes_requests():
            self._close()

    def _outlive_client(self) -> bool:
        """The client's socket closed after its Terminate. While its requests are owed
        replies the session stays for them (True): their replies go nowhere (a Departed
        transport, whose close ends the session), and its server connection, if the
        client's unread replies had paused it, reads again."""
        if not self._owes_requests():
            return False
        transport = self.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        self.transport = sockio.Departed(peer, self)  # type: ignore[assignment]  # as sockio.linger's Ended
        self.resume_writing()
        return True


def _may_be_database_command(data: bytes) -> bool:
    """Whether a request may be DROP DATABASE or CREATE DATABASE ... TEMPLATE: its
    Query's or Parse's text starts with "drop" or "crea" in any case, or with white
    space or a comment (messages.database_command reads past them). Cheap, for the
    first request of every transaction; _relaycore.c, may_be_database_command."""
    if len(data) < 6 or data[0] not in _Q_OR_P:
        return False
    start = 5 if data[0] == _Q else data.find(b"\0", 5) + 1
    if not 0 < start < len(data):
        return False
    return data[start] in _DATABASE_COMMAND_LEAD or data[start : start + 4].lower() in _DATABASE_COMMAND_START
