"""One client connection: login, then relay to a leased server connection.

A ClientSession is the asyncio protocol on a client socket. Login (startup
packet, authentication, the server's parameters) is a generator driven from
``data_received``: it runs as far as the client's bytes allow and yields for
more, with no task or future per login; only a step that must wait for
something else (keys being derived, a pool opening, TLS) yields an awaitable and
is resumed when it is done. After login everything is callbacks, with no task or
await per transaction:

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

from . import auth, hba, relaycore, sockio
from .errors import PooldError, ServerRefusal
from .loginguard import Pause
from .pools import PoolRegistry
from .protocol import messages
from .protocol.errors import ProtocolError, StartupLengthInvalid
from .protocol.framing import FrameScanner, MessageReader, PyFrameScanner
from .relay import ServerLink, canonical_parameter

if TYPE_CHECKING:
    from .config import Config, DatabaseSettings
    from .pools import Pool
    from .runtime import Runtime

log = structlog.get_logger("poold.client")
_stdlog = logging.getLogger("poold.client")

_Q = messages.QUERY
_F = messages.FUNCTION_CALL
_SYNC = messages.SYNC
_X = messages.TERMINATE
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

#: startup parameters that are not settings
_STARTUP_KEYS = frozenset({"user", "database", "replication"})


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
    __slots__ = ("_login", "_login_wait", "_peer", "_plan", "_reader", "_self_paused", "_server_paused", "buffered",
                 "buffered_syncs", "closed", "connected_at", "database", "in_batch", "key", "native_login", "pool",
                 "relaying", "rt", "scanner", "server",
                 "session_mode", "terminating", "tls", "transactions", "transport", "user", "wait_start", "waiting",
                 "wanted", "xact_start")

    scanner_type: type[PyFrameScanner]  # the class's: ClientSession.scanner_type

    transport: asyncio.Transport | None
    scanner: PyFrameScanner
    pool: Pool | None
    server: ServerLink | None
    rt: Runtime
    buffered: list[bytes]
    buffered_syncs: int
    wanted: dict[str, str]  # tracked settings differing from defaults
    transactions: int
    xact_start: float  # when the current transaction's first request went out
    wait_start: float  # when the current wait for a server connection began
    relaying: bool
    waiting: bool
    terminating: bool
    closed: bool
    in_batch: bool  # messages sent since the last Sync
    session_mode: bool
    _server_paused: bool
    native_login: bool  # the C core reads the login (never here: see connection_made)
    tls: bool
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
        self.transport = self.pool = self.server = None
        self.buffered = []
        self.wanted = {}
        self.buffered_syncs = self.transactions = 0
        self.xact_start = self.wait_start = 0.0
        self.relaying = self.waiting = self.terminating = self.closed = self.in_batch = False
        self.session_mode = self._server_paused = self.native_login = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        rt = self.rt
        rt.clients.add(self)  # type: ignore[arg-type]
        rt.logins[self] = now = time.monotonic()  # type: ignore[index]  # login_timeout: see Runtime.expire_logins
        if len(rt.logins) > rt.config.clients.max_login_conn:
            rt.make_room_for_login(now)
        self._start_login()  # the C core sets native_login instead: its C login reads the bytes

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
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
            return
        now = time.monotonic()
        self.transactions += 1
        pool = self.pool
        stats = pool.stats  # type: ignore[union-attr]
        stats.transactions += 1
        stats.xact.observe(now - self.xact_start)
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
                pool.release(link, now)  # type: ignore[union-attr]

    def on_server(self, link: ServerLink) -> None:
        if self.wait_start:
            self.pool.stats.wait.observe(time.monotonic() - self.wait_start)  # type: ignore[union-attr]
            self.wait_start = 0.0
        if self.closed:
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

    def _start_login(self) -> None:
        raise NotImplementedError

    def _end_login(self) -> None:
        raise NotImplementedError

    def _hand_back(self, link: ServerLink, pool: Pool) -> None:
        raise NotImplementedError

    def _session_ended(self) -> None:
        raise NotImplementedError


if TYPE_CHECKING:
    ClientCore = ClientCorePy
else:
    ClientCore = relaycore.pick("ClientCore", ClientCorePy)

#: The C core runs the common login itself (_relaycore.c, client_login) and
#: calls the ``_native_login_...`` methods below; otherwise ``_login_steps`` does
#: (ClientCorePy.connection_made starts it).
NATIVE_LOGIN = ClientCore is not ClientCorePy


class ClientSession(ClientCore, asyncio.Protocol):
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

    @property
    def reader(self) -> MessageReader:
        """The Python login's buffer; made when first asked for (the C login keeps its own)."""
        if self._reader is None:
            self._reader = MessageReader()
        return self._reader

    def _start_login(self) -> None:
        """The Python login (where the C core does not read it): up to reading the startup packet."""
        self._login = self._login_steps()
        self._advance()

    def _login_data(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
        except ProtocolError as exc:
            self._fatal(exc.sqlstate, str(exc))
            return
        if self._login_wait is None:
            self._advance()

    def eof_received(self) -> bool | None:
        return False  # close; a client half-close ends the session

    def _session_ended(self) -> None:
        """A logged-in client is gone: its log line."""
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
        pool = self.pool
        stats = pool.stats  # type: ignore[union-attr]
        stats.bytes_in += len(data)
        stats.queries += syncs
        server = self.server
        if server is None:
            if data and not (self.waiting or self.terminating or self.buffered):
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
                server.transport.write(data)  # type: ignore[union-attr]
        if self.terminating:
            self._close()

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
        self.waiting = False
        self.server = link
        link.owner = self
        if link.params != self.wanted:
            link.sync_parameters(self.wanted)
        if syncs:
            link.pending = syncs
            link.busy_since = self.xact_start = time.monotonic()
        if data:
            link.transport.write(data)  # type: ignore[union-attr]

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
        if name is not None and self.pool is not None:
            closed = self.rt.pools.close_idle(name, self.pool)
            if closed:
                log.info("idle_server_connections_closed", peer=self.peer, database=name, closed=closed)

    def on_server_in_use(self, fields: dict[str, str]) -> None:
        """55006: a DROP DATABASE (or CREATE DATABASE ... TEMPLATE) that
        _before_database_command did not see coming found its database in use,
        perhaps by poold's own idle server connections. The client gets the error
        (a request is never sent twice); those connections are closed, so that its
        next try meets only what a direct client would."""
        found = _DATABASE_IN_USE.search(fields.get("M", "")) if fields.get("C") == "55006" else None
        if found is None or self.pool is None:
            return
        closed = self.rt.pools.close_idle(found.group(1), self.pool)
        if closed:
            log.info("idle_server_connections_closed", peer=self.peer, database=found.group(1), closed=closed)

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

    def terminate_now(self, sqlstate: str, message: str) -> None:
        self._fatal(sqlstate, message)

    def _hand_back(self, link: ServerLink, pool: Pool) -> None:
        """The client is gone: return its server connection only if clean."""
        link.owner = None
        self._unpause(link)
        if link.pending or link.swallow or self.in_batch or not self.scanner.at_boundary:
            log.info("server_discarded_mid_query", server_pid=link.pid, peer=self.peer)
            pool.discard(link, cancel=bool(link.pending))
        elif link.status != b"I":
            sqls = ["ROLLBACK", "DISCARD ALL"] if self.session_mode else ["ROLLBACK"]
            link.run_internal(sqls, pool.release_if_idle)
        elif self.session_mode:
            link.run_internal(["DISCARD ALL"], pool.release_if_idle)
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
        error is what it reads, and not a reset."""
        transport = self.transport
        if transport is None or transport.is_closing():
            self._close()
            return
        transport.write(response or messages.error_response(sqlstate, f"poold: {message}"))
        self.rt.stats.errors[sqlstate] += 1
        self.transport = sockio.linger(transport, self, self.rt.lingering)  # type: ignore[assignment]

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- login ------------------------------------------------------------------

    def _advance(self, value: Any = None, error: BaseException | None = None) -> None:
        """Run the login's steps until they want more bytes, wait for something, or end."""
        steps = self._login
        if steps is None:
            return
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
            if step is not None:  # wait for it, then resume with its result
                self._login_wait = fut = asyncio.ensure_future(step)
                fut.add_done_callback(self._resume)
            return
        except StopIteration:
            pass  # logged in
        except ConnectionError:
            self._close()
        except StartupLengthInvalid as exc:
            # As PostgreSQL: logged, and closed without a word (a client that sends
            # Terminate before any startup packet, as node-postgres' connect-then-end does).
            log.info("startup_packet_invalid", peer=self.peer, error=str(exc))
            self._close()
        except auth.AuthFailed as exc:
            self._refuse(exc.sqlstate, str(exc))  # logged in aggregate (loginguard)
        except ProtocolError as exc:
            self._fatal(exc.sqlstate, str(exc))
        except PooldError as exc:
            self._fail(exc)
        except Exception:  # one broken login must not hurt others
            log.exception("login_failed", peer=self.peer)
            self._fatal("XX000", "internal error during login")
        self._end_login()

    def _resume(self, fut: asyncio.Future[Any]) -> None:
        self._login_wait = None
        if self._login is None:  # the login was given up meanwhile (the client went away)
            if not fut.cancelled():
                fut.exception()  # its outcome is no one's: not an "exception was never retrieved"
            return
        if fut.cancelled():  # poold is stopping
            self._end_login()
            self._fatal("57P01", "terminating connection: poold is shutting down")
        elif (error := fut.exception()) is not None:
            self._advance(error=error)
        else:
            self._advance(fut.result())

    def _end_login(self) -> None:
        """The login is over: done, failed, timed out, or the client went away.

        What a step waited for is not cancelled (a pool being opened, keys being
        derived): it finishes for the next login. A pause of its own is.
        """
        steps, self._login = self._login, None
        if steps is not None:
            steps.close()
        if isinstance(self._login_wait, Pause):
            self._login_wait.cancel()
        self._login_wait = None
        self.native_login = False
        self._plan = None
        self.rt.logins.pop(self, None)

    def _read_untyped(self) -> auth.Steps[bytes]:
        while (payload := self.reader.next_untyped()) is None:
            yield None
        return payload

    def _read_typed(self) -> auth.Steps[tuple[int, bytes]]:
        while (msg := self.reader.next_typed()) is None:
            yield None
        return msg

    def login_timed_out(self) -> None:
        """login_timeout passed before the login was done (Runtime.expire_logins)."""
        if self.relaying or self.closed:
            return
        self._end_login()
        self._fatal("08P01", "login timeout: startup and authentication did not finish in time")

    def login_pushed_out(self) -> None:
        """A newer login needs this one's place (Runtime.make_room_for_login)."""
        if self.relaying or self.closed:
            return
        self._end_login()
        self._refuse("53300", "sorry, too many clients logging in already (max_login_conn)")

    def _login_steps(self, muted: int = 0, nonce: str | None = None, negotiated: int = 0) -> auth.Steps[None]:
        """The login, from the first byte. ``muted``, ``nonce`` and ``negotiated``: see _native_login_fallback."""
        startup = yield from self._negotiate(negotiated)
        if startup is None:
            return
        db, wanted = self._admit(startup)
        rt = self.rt
        method = self._auth_method()
        secret = rt.users.get(self.user)
        if secret is None and rt.auth_query is not None and method != "trust":
            secret = yield rt.auth_query.lookup(db, self.user)  # None: refused as a wrong password is
        send = self.transport.write if not muted else _Muted(self.transport.write, muted)  # type: ignore[union-attr]
        try:
            sasl_final = yield from auth.authenticate(method, self.user, secret, self._read_typed, send, rt.scram,
                                                      nonce, self._hold_proof)
        except auth.AuthFailed:
            yield from self._delay_failure()
            raise
        yield from self._enter_pool(startup, db, wanted, sasl_final)

    def _hold_proof(self) -> auth.Steps[None]:
        """Before a password or proof is checked: wait for this (user, address)'s turn (LoginGuard.hold)."""
        rt = self.rt
        limits = rt.config.clients
        wait = rt.guard.hold(self.user, self.host, time.monotonic(), limits.auth_failure_delay, limits.login_timeout)
        if wait > 0:
            yield Pause(wait)

    def _delay_failure(self) -> auth.Steps[None]:
        """A failed authentication is answered auth_failure_delay late, as PostgreSQL's auth_delay does."""
        rt = self.rt
        delay = rt.config.clients.auth_failure_delay
        rt.guard.failed(self.user, self.host, time.monotonic(), delay)
        if delay > 0:
            yield Pause(delay)

    def _admit(self, startup: messages.StartupMessage) -> tuple[DatabaseSettings, dict[str, str]]:
        """The startup packet's checks: room for a client, the database, the parameters."""
        rt = self.rt
        self.user, self.database = startup.user, startup.database
        if rt.logged_in() >= rt.config.clients.max_client_conn or rt.draining:
            if rt.draining:
                raise PooldError("57P01", "poold is shutting down")
            raise PooldError("53300", "sorry, too many clients already (max_client_conn)")
        return _database_and_settings(rt.config, startup)

    def _origin(self) -> hba.Origin:
        """Where this client comes from, as the hba file's rules see it."""
        transport = self.transport
        return hba.Origin.of(transport.get_extra_info("peername") if transport is not None else None, self.tls)

    def _auth_method(self) -> str:
        """The method this login gets: ``auth.type``, or the first matching hba rule's;
        PooldError 28000 where no rule admits it, in PostgreSQL's words. ``cert`` is
        checked here (the client's certificate, verified in the TLS handshake, must name
        the user) and then needs no exchange."""
        rt = self.rt
        method = rt.config.auth.type
        if method != "hba":
            return method
        origin = self._origin()
        rule = rt.hba.match(origin, self.database, self.user) if rt.hba is not None else None
        if rule is None or rule.method == "reject":
            raise PooldError("28000", hba.no_entry_message(origin, self.database, self.user, rule is not None))
        if rule.method == "cert":
            cert = self.transport.get_extra_info("peercert") if self.transport is not None else None
            if not cert:
                raise PooldError("28000", "connection requires a valid client certificate")
            if auth.certificate_user(cert) != self.user:
                raise PooldError("28000", f'certificate authentication failed for user "{self.user}"')
            return "trust"
        return rule.method

    def _enter_pool(self, startup: messages.StartupMessage, db: DatabaseSettings, wanted: dict[str, str],
                    sasl_final: bytes) -> auth.Steps[None]:
        """Authenticated: join the pool, send the welcome, start relaying."""
        rt = self.rt
        pool = rt.pools.find(db, self.user)
        if pool is None:
            pool = yield rt.pools.get(db, self.user, rt.server_credentials)
        self.pool = pool
        pool.clients += 1
        defaults = pool.defaults
        if defaults is None:
            defaults = yield pool.prepare()
        spelled = pool.spellings.spell(wanted, defaults)
        if spelled is None:  # a value the pool's server has not spelled yet: ask it (spellings.py)
            try:
                spelled = yield pool.spellings.ask(pool, wanted, startup.params)
            except ServerRefusal:
                # As PostgreSQL refuses a startup parameter: once authenticated.
                self.transport.write(_authenticated(startup, sasl_final) + _AUTH_OK)  # type: ignore[union-attr]
                raise
        link = None
        if pool.settings.mode == "session":
            link = yield from self._lease_for_session(pool)
        self._welcome(startup, pool, _greeting(pool, defaults, spelled), sasl_final, self.reader.take_rest(), link)

    def _lease_for_session(self, pool: Pool) -> auth.Steps[ServerLink]:
        """Session mode: the server connection this client holds for its life, leased
        before the welcome so that its BackendKeyData can carry that server's process id
        (pg_backend_pid() and a notification's sender are then what the driver knows)."""
        lease = _SessionLease(pool)
        link = pool.acquire(lease)
        if link is not None:
            return link
        try:
            link = yield lease.future  # a failure to lease is raised here, and refuses the login
        except GeneratorExit:  # the login ended first (the client left, login_timeout)
            lease.abandon()
            raise
        return link

    def _welcome(self, startup: messages.StartupMessage, pool: Pool, greeting: Greeting, sasl_final: bytes,
                 rest: bytes, link: ServerLink | None = None) -> None:
        """One write: SASL final (if any), AuthenticationOk, the settings, the key, ReadyForQuery.

        ``link``: a session-mode client's server connection, held from here on; the key
        carries its process id. Without one (transaction mode) the key is poold's own."""
        own, settings = greeting
        self.session_mode = link is not None
        if own:
            self.wanted = dict(own)  # the session's own copy: on_server_parameter changes it
        if link is not None:
            self._attach(link, b"", 0)  # the client's settings go first, if it has its own
        sasl_final = _authenticated(startup, sasl_final)
        key = self.rt.register(self, link.pid if link is not None else 0)
        self.transport.write(b"".join((sasl_final, settings, key, _READY_IDLE)))  # type: ignore[union-attr]
        self.relaying = True
        if rest:
            self._relay(rest)

    # -- the C login's calls (_relaycore.c, client_login) ---------------------

    def _native_login_plan(self, payload: bytes) -> auth.NativeKeys | None:
        """A protocol 3.0 startup packet (its payload): this login's SCRAM keys (StoredKey,
        ServerKey and ",s=<salt>,i=<iterations>") when it is the common case the C login
        runs: the checks of ``_admit`` pass, SCRAM against keys known without waiting.
        None leaves the whole login to ``_login_steps``, which gives the answer for
        everything else.

        What follows from the packet alone (the database, the settings, the keys) is
        decided once per packet and kept in ``Runtime.login_plans`` until the
        configuration or the auth file is replaced: a pooler's clients send the same
        few packets again and again.

        For a kept plan whose checks pass, the C login does this itself
        (_relaycore.c, login_kept_plan).

        An unknown user gets mock keys here, as in ``auth._scram``, and a pool is not
        looked for until the proof is checked, as there: so up to its refusal an unknown
        user's login runs the same code as a known user's, and costs the same."""
        rt = self.rt
        config = rt.config
        if rt.logged_in() >= config.clients.max_client_conn or rt.draining or (config.tls.require and not self.tls):
            return None  # _admit and _negotiate refuse these
        # Under an hba file the decision depends on where the client comes from too: its
        # plan is kept by packet and origin, a key the C login never looks up (it looks
        # up the packet alone, login_kept_plan), so each such login comes here.
        origin = self._origin() if config.auth.type == "hba" else None
        key = payload if origin is None else (payload, origin)
        plan = rt.login_plans.get(key)
        if plan is None:
            try:
                plan = _login_plan(rt, payload, origin)
            except Exception:  # as in _advance: one broken login must not hurt others
                log.exception("login_failed", peer=self.peer)
                return None
            if plan is None:
                return None
            if len(rt.login_plans) >= _LOGIN_PLANS_KEPT:
                del rt.login_plans[next(iter(rt.login_plans))]  # the oldest
            rt.login_plans[key] = plan
        self._plan = plan
        self.user, self.database = plan.user, plan.database
        return plan.keys

    def _native_login_done(self, sasl_final: bytes, rest: bytes) -> None:
        """The C login checked the proof: the rest of the login is ``_enter_pool``'s.

        The plan's welcome is made for the registry's open pool once the pool knows
        how its server spells the packet's settings (``Spellings.spell``); until
        then ``_enter_pool`` asks it. Once made, the C login does the first branch
        itself in transaction mode (_relaycore.c, client_welcome)."""
        plan, self._plan = self._plan, None
        assert plan is not None
        rt = self.rt
        pool = rt.pools.pools.get(plan.pool_key)  # rt.pools.find(plan.db, self.user)
        welcome = plan.welcome
        if (pool is not None and pool.defaults is not None and pool.settings.mode != "session"
                and (welcome is None or welcome[0] is not pool)):
            # this packet's greeting, kept for its pool once its settings are spelled the server's way
            spelled = pool.spellings.spell(plan.wanted, pool.defaults)
            if spelled is not None:
                own, settings = _greeting(pool, pool.defaults, spelled)
                plan.welcome = welcome = (pool, settings, own or None)
        if pool is not None and pool.settings.mode != "session" and welcome is not None and welcome[0] is pool:
            # _enter_pool with nothing to wait for (session mode leases a server first)
            self.pool = pool
            pool.clients += 1
            rt.logins.pop(self, None)  # the login is over: _end_login, with the C login's own state reset already
            self._welcome(plan.startup, pool, (welcome[2] or {}, welcome[1]), sasl_final, rest)
        else:
            self.reader.feed(rest)  # pipelined after the proof; within the limit: the C login's buffer is smaller
            self._login = self._enter_pool(plan.startup, plan.db, plan.wanted, sasl_final)
            self._advance()

    def _native_login_held(self) -> bool:
        """Whether this login's proof must wait for its turn (LoginGuard.held): then the
        C login leaves it to ``_login_steps``. Asked only while some pair is held."""
        return self.rt.guard.held(self.user, self.host, time.monotonic())

    def _native_login_fallback(self, transcript: bytes, sent: int, nonce: str | None, negotiated: int) -> None:
        """The C login met what it leaves to ``_login_steps``: replay the client's bytes
        through it. The first ``sent`` messages it sends are not sent again (the C login
        sent the same), and its SCRAM exchange uses the C login's server ``nonce`` once
        that went out, so the client sees what this login alone would have sent.
        ``negotiated``: the C login answered that many SSLRequests or GSSENCRequests 'N'
        before the startup packet, where the ``transcript`` begins."""
        self._plan = None
        self._login = self._login_steps(sent, nonce, negotiated)
        self._login_data(transcript)

    def _negotiate(self, negotiated: int = 0) -> auth.Steps[messages.StartupMessage | None]:
        """Answer SSLRequest ('S' and TLS when configured, else 'N') and GSSENCRequest
        ('N'); serve a CancelRequest. ``negotiated``: requests answered already."""
        for _ in range(3 - negotiated):
            request = messages.parse_startup((yield from self._read_untyped()))
            if isinstance(request, messages.StartupMessage):
                if self.rt.config.tls.require and not self.tls:
                    raise PooldError("28000", "TLS is required: connect with sslmode=require")
                return request
            if isinstance(request, messages.CancelRequest):
                delivered = self.rt.cancel(request.pid, request.secret)
                if delivered is not None:
                    yield delivered  # closed after the server closed its own cancel connection
                self._close()
                return None
            if self.reader.take_rest():
                # Bytes pipelined after SSLRequest would be read as TLS by a
                # server that said 'S': refuse, as PostgreSQL does.
                raise ProtocolError("received unencrypted data after SSL request")
            ctx = self.rt.ssl_context
            if isinstance(request, messages.SSLRequest) and ctx is not None and not self.tls:
                self.transport = yield sockio.start_tls(self.transport, self, ctx)  # type: ignore[arg-type]  # 'S', then TLS
                self.tls = True
            else:
                self.transport.write(b"N")  # type: ignore[union-attr]
        raise ProtocolError("too many encryption negotiation requests")


class _SessionLease:
    """A session-mode login waiting for its server connection (a pools.Waiter)."""

    __slots__ = ("future", "pool", "since")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.future: asyncio.Future[ServerLink] = asyncio.get_running_loop().create_future()
        self.since = time.monotonic()

    def on_server(self, link: ServerLink) -> None:
        if self.future.done():  # the login was given up
            self.pool.release(link)
            return
        self.pool.stats.wait.observe(time.monotonic() - self.since)
        self.future.set_result(link)

    def on_acquire_failed(self, error: PooldError) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def abandon(self) -> None:
        """The login ended before it took its server connection: give it back, or stop waiting."""
        if not self.future.done():
            self.future.cancel()
            self.pool.cancel_wait(self)
        elif not self.future.cancelled() and self.future.exception() is None:
            self.pool.release(self.future.result())


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


class LoginPlan:
    """What a startup packet decides for the C login, whoever sends it (see _native_login_plan).

    An unknown user's plan keeps its mock keys like any other: its ServerKey signs
    nothing, since no proof matches the mock StoredKey."""

    __slots__ = ("db", "database", "keys", "pool_key", "startup", "user", "wanted", "welcome")

    def __init__(self, startup: messages.StartupMessage, db: DatabaseSettings, wanted: dict[str, str],
                 keys: auth.NativeKeys) -> None:
        self.startup, self.db, self.wanted, self.keys = startup, db, wanted, keys  # wanted: read, never changed
        self.user, self.database = startup.user, startup.database
        self.pool_key = PoolRegistry.key(db, self.user)
        #: for the pool these logins last joined: (the pool, the AuthenticationOk and
        #: ParameterStatus bytes, the settings of the client's own or None), spelled
        #: as the pool's server spells them; see _greeting
        self.welcome: tuple[Pool, bytes, dict[str, str] | None] | None = None


#: the settings a client asked for that differ from its pool's, and the welcome's
#: AuthenticationOk and ParameterStatus messages (see _greeting)
Greeting = tuple[dict[str, str], bytes]


def _authenticated(startup: messages.StartupMessage, sasl_final: bytes) -> bytes:
    """What a client is sent before AuthenticationOk: NegotiateProtocolVersion if it asked
    for a newer protocol or for protocol options, and the SASL final message if any."""
    if startup.minor or startup.protocol_options:
        return messages.negotiate_protocol_version(0, startup.protocol_options) + sasl_final
    return sasl_final


def _greeting(pool: Pool, defaults: dict[str, str], wanted: dict[str, str]) -> Greeting:
    """AuthenticationOk and the settings a client is told: its pool's, and its own where it set one.

    ``wanted``: the client's settings spelled as the server reports them (Spellings.spell)."""
    own = {k: v for k, v in wanted.items() if defaults.get(k) != v}
    status = pool.status_messages
    out = [_AUTH_OK]
    for name in defaults:
        value = own.get(name)
        out.append(status[name] if value is None else messages.parameter_status(name, value))
    return own, b"".join(out)


#: startup packets whose LoginPlan is kept; beyond, the oldest is dropped
_LOGIN_PLANS_KEPT = 1000


def _login_plan(rt: Runtime, payload: bytes, origin: hba.Origin | None) -> LoginPlan | None:
    """The LoginPlan of a startup packet, or None where ``_login_steps`` must answer.
    ``origin``: where the client comes from, under an hba file (else None)."""
    try:
        startup = messages.parse_startup(payload)
        if not isinstance(startup, messages.StartupMessage) or startup.minor or startup.protocol_options:
            return None
        if "replication" in startup.params:
            return None
        db, wanted = _database_and_settings(rt.config, startup)
    except (ProtocolError, PooldError):
        return None
    user = startup.user
    method = rt.config.auth.type
    if origin is not None:  # only SCRAM and md5 rules may run the C login's SCRAM exchange
        rule = rt.hba.match(origin, startup.database, user) if rt.hba is not None else None
        if rule is None or rule.method not in ("scram-sha-256", "md5"):
            return None
        method = rule.method
    secret = rt.users.get(user)
    if secret is None and rt.auth_query is not None:
        return None  # looked up by auth_query, whose answers expire: the Python login's
    if ("user" not in db.conninfo and "password" not in db.conninfo and rt.pools.find(db, user) is None
            and auth.needs_client_key(secret, rt.scram)):
        return None  # the pool to open logs in with the client's SCRAM key: the Python login learns it
    keys = auth.native_scram_keys(method, user, secret, rt.scram)
    if keys is None:
        return None
    return LoginPlan(startup, db, wanted, keys)


def _database_and_settings(config: Config, startup: messages.StartupMessage) -> tuple[DatabaseSettings, dict[str, str]]:
    """The database a startup packet asks for, and the tracked settings it sets."""
    db = config.database(startup.database)
    if db is None:
        raise PooldError("3D000", f'database "{startup.database}" does not exist')
    wanted = {}
    for name, value in startup.params.items():
        canon = canonical_parameter(name)
        if canon is not None:
            wanted[canon] = value
        elif name not in _STARTUP_KEYS and not (name == "options" and not value.strip()):
            raise PooldError("08P01", f"unsupported startup parameter: {name}")
    return db, wanted


class _Muted:
    """A send that drops its first ``n`` messages: those the C login already sent."""

    __slots__ = ("_n", "_write")

    def __init__(self, write: auth.Send, n: int) -> None:
        self._write, self._n = write, n

    def __call__(self, data: bytes) -> None:
        if self._n:
            self._n -= 1
        else:
            self._write(data)
