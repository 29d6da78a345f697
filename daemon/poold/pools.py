"""Pools: one per (database, user), psycopg_pool underneath, a free list on top.

psycopg_pool owns each server connection's life: it connects (with backoff),
keeps ``min_size`` warm, reaps idle ones, ages them out at ``max_lifetime`` and
never lets the total pass ``max_size``. Going through its getconn/putconn on
every transaction costs more than the transaction itself, so poold leases
connections from it and keeps the leased ones in a small LIFO free list for the
per-transaction hand-off. A link that sits in the free list longer than
``hold_time`` goes back to psycopg_pool (at the pool's defaults: RESET ALL first
when a client's reported settings stayed on it), which then applies its lifetime rule
and health check, when the pool is within ``min_size``; above it, poold keeps
it until ``idle_timeout`` and closes it then (psycopg_pool would close one per
idle_timeout period: 8 down to 2 took 76 s). A link past its lifetime, or from
before a reconnect (an older ``epoch``), goes back at its next release.

A connect that fails because the server is down or full counts towards the
pool's circuit breaker; one the server refuses for good (an unknown database
or role, a pg_hba.conf reject: ``backend.REFUSALS``) does not: the clients
waiting for that pool get the server's own error at once, and for
``REFUSAL_KEPT`` seconds later ones get it without another connect, as
PgBouncer's ``server_login_retry``. Neither fails a waiting client while the
pool still has server connections that work: those are released to it.

A reload reconfigures a pool in place (``reconfigure``): sizes and timeouts
apply at once, a shrink retires connections as they are released, and a new
DSN drains the old connections at transaction boundaries.

Nothing here knows client sockets: a waiter is anything with ``on_server`` and
``on_acquire_failed``.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from psycopg import AsyncConnection, OperationalError
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from . import backend, prepared, relaycore
from .breaker import CLOSED, Breaker
from .config import DatabaseSettings, PoolSettings
from .errors import PooldError, ServerRefusal
from .protocol import messages
from .relay import ServerLink
from .spellings import Spellings
from .stats import PoolStats

log = structlog.get_logger("poold.pools")

#: seconds a cancelled query may take to stop before poold drops its connection
CANCEL_GRACE = 2.0
#: seconds between two pool_pressure warnings while the pressure lasts
PRESSURE_LOG_INTERVAL = 10.0
#: the longest psycopg_pool keeps retrying one failed connect on its own
RECONNECT_TIMEOUT = 2.0
#: seconds poold's own queries on a link (a reset, a client's settings) may take before the link is dropped
INTERNAL_QUERY_TIMEOUT = 30.0
#: seconds a server's refusal is answered from memory, without connecting again
REFUSAL_KEPT = 5.0
#: after close_idle (a DROP DATABASE waits for the database's sessions to go, up to 5 s):
#: connections on their way back to psycopg_pool in this window are closed, not pooled
IDLE_CLOSED_WINDOW = 6.0


class Waiter(Protocol):
    def on_server(self, link: ServerLink) -> None: ...
    def on_acquire_failed(self, error: PooldError) -> None: ...


def pool_conninfo(db: DatabaseSettings, user: str, credentials: Mapping[str, str]) -> str:
    info = dict(db.conninfo)
    info.setdefault("user", user)
    return backend.conninfo(info, statement_timeout=db.pool.statement_timeout, credentials=credentials)


#: a server user's credentials on a database, as libpq conninfo parameters
#: (Runtime.server_credentials)
Credentials = Callable[["DatabaseSettings", str], Mapping[str, str]]


class PoolCorePy:
    """A pool's free list and per-transaction hand-off; ``_relaycore.PoolCore`` in C.

    ``acquire`` takes a free link when there is one, else ``_acquire_wait``
    queues the waiter; ``release`` hands a link to the longest waiter or puts
    it back on the free list, and leaves the rare cases (a link to give back
    or retire) to ``Pool``.
    """

    __slots__ = ("_closed", "active", "epoch", "free", "leased", "paused", "settings", "stats", "waiters")

    free: list[ServerLink]  # idle leased links, LIFO: the most recently used is the warmest
    active: set[ServerLink]
    # Clients waiting for a server connection, with their acquire_timeout deadline.
    waiters: deque[tuple[Waiter, float]]
    stats: PoolStats
    settings: PoolSettings
    leased: int  # links poold holds (free + active)
    epoch: int  # bumped by reconnect: older links are not reused
    paused: bool
    _closed: bool

    def acquire(self, waiter: Waiter) -> ServerLink | None:
        """A free link now, or None and ``waiter`` is called back later."""
        free = self.free
        if not self.paused:
            while free:
                link = free.pop()
                if not link.closed:
                    self.active.add(link)
                    self.stats.wait.observe(0.0)  # no wait
                    return link
        self._acquire_wait(waiter)
        return None

    def release(self, link: ServerLink, now: float = 0.0) -> None:
        """Take back an idle link (ReadyForQuery 'I', nothing pending)."""
        link.owner = None
        if link.cancels or link.dirty:
            self._set_aside(link)
            return
        self.active.discard(link)
        if link.closed:
            return
        now = now or time.monotonic()
        if self._closed or link.epoch != self.epoch or link.expires_at <= now:
            self._give_back(link)
            return
        if self.leased > self.settings.max_size:
            self._retire(link)  # shrinking after a reload
            return
        if self.waiters and not self.paused:
            self._serve_waiter(link)
            return
        link.idle_since = now
        self.free.append(link)

    def _acquire_wait(self, waiter: Waiter) -> None:
        raise NotImplementedError

    def _give_back(self, link: ServerLink) -> None:
        raise NotImplementedError

    def _retire(self, link: ServerLink) -> None:
        raise NotImplementedError

    def _set_aside(self, link: ServerLink) -> None:
        raise NotImplementedError

    def _serve_waiter(self, link: ServerLink) -> None:
        """Hand ``link`` to the longest-waiting client."""
        waiter, _deadline = self.waiters.popleft()
        self.active.add(link)
        waiter.on_server(link)


if TYPE_CHECKING:
    PoolCore = PoolCorePy
else:
    PoolCore = relaycore.pick("PoolCore", PoolCorePy)


class Pool(PoolCore):
    """Server connections for one (database, user)."""

    def __init__(self, db: DatabaseSettings, user: str, credentials: Mapping[str, str]) -> None:
        self.db = db
        self.user = user
        self.name = f"{db.name}.{user}"
        self.settings = db.pool
        self.conninfo = pool_conninfo(db, user, credentials)
        self.breaker = Breaker(db.pool.breaker_failures, db.pool.breaker_reset)
        self._pg: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            self.conninfo,
            connection_class=backend.connection_class(self._on_connect_result),
            # psycopg_pool retries a failed connect with exponential backoff and
            # jitter (1 s, 2 s, ...); it gives up after a few seconds, so that
            # while the database is down the breaker's probe, once per
            # breaker_reset, is what tries again: attempts stay bounded, and a
            # database that is back is found by the next probe.
            reconnect_timeout=min(db.pool.breaker_reset, RECONNECT_TIMEOUT),
            # Checked when taken from psycopg_pool, which poold does only for a
            # connection that sat idle past hold_time: not on every checkout.
            check=AsyncConnectionPool.check_connection,
            kwargs=backend.connection_kwargs(),
            min_size=db.pool.min_size,
            max_size=db.pool.max_size,
            timeout=db.pool.acquire_timeout,
            max_idle=db.pool.idle_timeout,
            max_lifetime=db.pool.max_lifetime,
            name=self.name,
            open=False,
        )
        self.free = []
        self.active = set()
        self.waiters = deque()
        # One timer per pool, armed for the earliest waiter's deadline (not one per wait).
        self._wait_timer: asyncio.TimerHandle | None = None
        self._wait_until = 0.0  # the deadline it is armed for (0: not armed)
        self.defaults: dict[str, str] | None = None
        # The defaults as ParameterStatus messages, encoded once for every login.
        self.status_messages: dict[str, bytes] = {}
        # Clients' settings as this pool's server spells them (for their ParameterStatus).
        self.spellings = Spellings()
        self.leased = 0  # links poold holds (free + active)
        self.connecting = 0  # getconn calls in flight
        self.epoch = 0  # bumped by reconnect: older links are not reused
        self.paused = False
        self.retired = False  # its database left the configuration
        self.kept = False  # opened from the configuration: kept even while the server refuses it
        self.refusal: ServerRefusal | None = None  # the server's last refusal, until a connect succeeds
        self.refused_at = 0.0  # monotonic time of that refusal
        self._stopped: PooldError | None = None  # why the last _stop_leasing stopped the getconn calls
        # Every connection psycopg made for this pool, while it lives: which of them still work.
        self._conns: weakref.WeakSet[AsyncConnection[Any]] = weakref.WeakSet()
        self._born: weakref.WeakKeyDictionary[AsyncConnection[Any], float] = weakref.WeakKeyDictionary()  # monotonic
        self.clients = 0
        self.last_error = ""
        self.pressure_since = 0.0  # monotonic start of the current pressure, 0 when none
        self._pressure_logged = -PRESSURE_LOG_INTERVAL  # monotonic time of the last warning
        self._pressure_warned = False  # a warning was logged for the current episode
        self.stats = PoolStats()
        # Named prepared statements its clients carry across server connections (transaction mode).
        self.statements = prepared.Registry(self._statement_limits)
        self._tasks: set[asyncio.Task[Any]] = set()
        # Released links kept from the next client until the cancels sent for them are delivered.
        self._held: set[ServerLink] = set()
        self._leasing: set[asyncio.Task[Any]] = set()  # getconn calls for waiters and logins
        self._closed = False
        # The event loop, from open(): asyncio.get_running_loop() costs a getpid()
        # system call on Python 3.11, too much for a path taken per waiting request.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_time: Callable[[], float] | None = None
        # Tracked settings a connection carried when it went back to
        # psycopg_pool (libpq never saw the relayed SETs), restored on re-lease.
        self._carried_params: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()
        self._idle_closed_until = 0.0  # close_idle: returns until then close instead
        # Likewise the named statements prepared on it (prepared.py): still there when it comes back.
        self._carried_statements: weakref.WeakKeyDictionary[Any, prepared.LinkStatements] = weakref.WeakKeyDictionary()

    def _statement_limits(self) -> tuple[int, int]:
        return self.settings.max_prepared_statements, self.settings.max_client_prepared_statements

    @property
    def hold_time(self) -> float:
        return min(self.settings.idle_timeout / 2, 5.0)

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_time = self._loop.time
        await self._pg.open(wait=False)
        log.info("pool_created", pool=self.name, mode=self.settings.mode,
                 min_size=self.settings.min_size, max_size=self.settings.max_size)

    async def prepare(self) -> Mapping[str, str]:
        """The server's reported parameters, connecting once if none is known."""
        if self.defaults is None:
            now = time.monotonic()
            if self.refusal is not None and self._refused(now):
                raise self.refusal.with_traceback(None)
            if not self.breaker.allow(now):
                raise self.unavailable()
            self.connecting += 1
            task = asyncio.get_running_loop().create_task(self._lease())
            self._leasing.add(task)  # so that a refusal or the breaker stops it (_stop_leasing)
            task.add_done_callback(self._leasing.discard)
            try:
                link = await task
            except asyncio.CancelledError:
                this = asyncio.current_task()
                if self._stopped is None or (this is not None and this.cancelling()):
                    raise  # the login itself was cancelled
                raise self._stopped.with_traceback(None) from None
            finally:
                self.connecting -= 1
            self.release(link)
        assert self.defaults is not None
        return self.defaults

    # -- hand-off (the hot path) -------------------------------------------

    def _acquire_wait(self, waiter: Waiter) -> None:
        """No free link: queue ``waiter``, or fail it at once when the server refuses
        the pool or its breaker is open, unless the pool has connections that work."""
        breaker = self.breaker
        closed = breaker.closed
        connect = True  # whether a new server connection may be tried for it
        if self.refusal is not None and time.monotonic() - self.refused_at < REFUSAL_KEPT:
            if not self.serving():
                waiter.on_acquire_failed(self.refusal.with_traceback(None))
                return
            connect = False
        if not closed and not breaker.allow(time.monotonic()):
            if not self.serving():
                waiter.on_acquire_failed(self.unavailable())
                return
            connect = False  # its connections are released to it
        loop = self._loop or asyncio.get_running_loop()
        deadline = loop.time() + self.settings.acquire_timeout  # the loop's clock, as call_at's
        self.waiters.append((waiter, deadline))
        if self._wait_timer is None or deadline < self._wait_timer.when():  # (earlier: acquire_timeout was reloaded)
            self._arm_wait_timer(loop, deadline)
        if not connect:
            return
        if not closed:
            self._start_lease()  # this caller is the breaker's probe: it connects now
        elif len(self.waiters) > self.connecting and self.leased + self.connecting < self.settings.max_size:
            self._grow()  # (checked here first: at saturation, the usual case, there is nothing to grow)

    def unavailable(self) -> PooldError:
        b = self.breaker
        retry = b.retry_in(time.monotonic())
        cause = backend.error_cause(b.last_error)
        reason = f": {cause}" if cause else ""
        return PooldError(
            "57P03",
            f"database {self.db.name!r} is unavailable (circuit breaker open after {b.consecutive} failed "
            f"connects{reason}); poold retries in {retry:.0f} s",
        )

    def release_if_idle(self, link: ServerLink) -> None:
        """After an internal ROLLBACK/DISCARD ALL: reuse if idle, else retire."""
        if link.status == b"I" and not link.pending:
            self.release(link)
        else:
            self.discard(link)

    def cancel_wait(self, waiter: Waiter) -> None:
        for i, (w, _deadline) in enumerate(self.waiters):
            if w is waiter:
                del self.waiters[i]
                return

    def discard(self, link: ServerLink, *, cancel: bool = False) -> None:
        """Retire a link that is dirty or broken; psycopg_pool replaces it.

        ``cancel``: the server is mid-query; cancel it first, since a closed
        socket alone goes unnoticed by a backend until it next writes.
        """
        link.owner = None
        self.active.discard(link)
        self._held.discard(link)
        if not link.closed:
            link.closed = True
            link.drop_statements()
            link.abort()
            self._forget(link, cancel=cancel)

    # -- operations: reload, pause, reconnect -----------------------------------

    async def reconfigure(self, db: DatabaseSettings, credentials: Mapping[str, str]) -> list[str]:
        """Apply a reloaded configuration in place; return what changed."""
        old, new = self.settings, db.pool
        changes: list[str] = []
        conninfo = pool_conninfo(db, self.user, credentials)
        self.db, self.settings = db, new
        if (old.min_size, old.max_size) != (new.min_size, new.max_size):
            await self._pg.resize(new.min_size, new.max_size)
            await backend.shrink(self._pg, new.max_size)
            while self.free and self.leased > new.max_size:
                self._retire(self.free.pop(0))
            changes.append(f"resized {old.min_size}..{old.max_size} -> {new.min_size}..{new.max_size}")
        if (old.acquire_timeout, old.idle_timeout, old.max_lifetime, old.query_timeout) != (
            new.acquire_timeout, new.idle_timeout, new.max_lifetime, new.query_timeout
        ):
            self._pg.timeout = new.acquire_timeout
            self._pg.max_idle = new.idle_timeout
            self._pg.max_lifetime = new.max_lifetime
            changes.append("timeouts")
        if (old.breaker_failures, old.breaker_reset) != (new.breaker_failures, new.breaker_reset):
            self.breaker.failures, self.breaker.reset = new.breaker_failures, new.breaker_reset
            self._pg.reconnect_timeout = min(new.breaker_reset, RECONNECT_TIMEOUT)
            changes.append("breaker")
        if old.mode != new.mode:
            changes.append(f"mode {old.mode} -> {new.mode} (new clients)")
        if (old.max_prepared_statements, old.max_client_prepared_statements) != (
            new.max_prepared_statements, new.max_client_prepared_statements
        ):  # read live by the registry; a smaller LRU shrinks at the next statement it prepares
            changes.append("prepared statement limits")
        if conninfo != self.conninfo:
            self.conninfo = conninfo
            self._pg.conninfo = conninfo
            await self.reconnect()
            changes.append("reconnect (server connection string changed)")
        self._grow()
        if changes:
            log.info("pool_reconfigured", pool=self.name, changes=changes)
        return changes

    async def reconnect(self) -> None:
        """Replace every server connection, each at its transaction boundary."""
        self.epoch += 1
        await self._pg.drain()
        while self.free:
            self._give_back(self.free.pop())
        log.info("pool_reconnect", pool=self.name, epoch=self.epoch)

    def close_idle(self) -> int:
        """Close the idle server connections, poold's and psycopg_pool's, without
        replacement (a DROP DATABASE is waiting for them to go); how many."""
        closed = len(self.free) + self._pg.get_stats().get("pool_available", 0)
        self._idle_closed_until = time.monotonic() + IDLE_CLOSED_WINDOW
        for link in self.active:  # in use, perhaps by a client just leaving: closed at release
            link.expires_at = 0.0  # (expired, it goes back to psycopg_pool: _return closes it)
        while self.free:
            self._retire(self.free.pop())
        self._spawn(backend.shrink(self._pg, 0))
        return closed

    def pause(self) -> None:
        self.paused = True
        log.info("pool_paused", pool=self.name)

    def resume(self) -> None:
        self.paused = False
        log.info("pool_resumed", pool=self.name)
        while self.waiters and self.free:
            self._serve_waiter(self.free.pop())
        self._grow()

    # -- maintenance ---------------------------------------------------------

    def maintain(self, now: float) -> None:
        """Return links idle past ``hold_time``, close those above min_size idle past
        idle_timeout; drop links whose internal queries are unanswered past
        INTERNAL_QUERY_TIMEOUT; cancel queries past query_timeout; report pressure."""
        self._watch_pressure(now)
        hold = self.hold_time
        excess = len(self.open_connections()) - self.settings.min_size if self.free else 0
        while self.free and now - self.free[0].idle_since > hold:  # oldest first
            if excess <= 0:
                self._reset_and_give_back(self.free.pop(0))
            elif now - self.free[0].idle_since >= self.settings.idle_timeout:
                self._retire(self.free.pop(0))
                excess -= 1
            else:
                break  # above min_size: kept until idle_timeout
        for link in [link for link in self.active if link.swallow and now - link.internal_since > INTERNAL_QUERY_TIMEOUT]:
            # poold's own query unanswered (a RESET, a client's settings): the server is stuck
            log.error("internal_query_timeout", pool=self.name, server_pid=link.pid, seconds=INTERNAL_QUERY_TIMEOUT)
            owner = link.owner
            self.discard(link, cancel=True)
            if owner is not None:
                owner.on_server_lost("08006", f"the server did not answer within {INTERNAL_QUERY_TIMEOUT:g} s")
        qt = self.settings.query_timeout
        if qt > 0:
            for link in list(self.active):
                if not link.pending or now - link.busy_since <= qt:
                    continue
                if not link.cancel_at:
                    link.cancel_at = now
                    log.warning("query_timeout", pool=self.name, server_pid=link.pid, seconds=qt)
                    self.cancel_query(link, link.owner)
                elif now - link.cancel_at > CANCEL_GRACE:
                    # The server did not answer the cancel either: give up on it.
                    log.error("query_timeout_server_unresponsive", pool=self.name, server_pid=link.pid)
                    owner = link.owner
                    self.discard(link)
                    if owner is not None:
                        owner.on_server_lost(
                            "57014", f"query_timeout ({qt:g} s) reached and the server did not answer the cancel"
                        )

    def _watch_pressure(self, now: float) -> None:
        """At most one pool_pressure warning per PRESSURE_LOG_INTERVAL, however often
        the pressure comes and goes; pool_pressure_cleared once it has ended."""
        utilisation = len(self.active) / self.settings.max_size
        pressed = utilisation >= self.settings.pressure_threshold or bool(self.waiters)
        if pressed:
            if not self.pressure_since:
                self.pressure_since = now
            if now - self._pressure_logged >= PRESSURE_LOG_INTERVAL:
                self._pressure_logged = now
                self._pressure_warned = True
                log.warning("pool_pressure", pool=self.name, utilisation=round(utilisation, 3),
                            waiting=len(self.waiters), threshold=self.settings.pressure_threshold,
                            seconds=round(now - self.pressure_since, 1))
        elif self.pressure_since:
            if self._pressure_warned:
                log.info("pool_pressure_cleared", pool=self.name, seconds=round(now - self.pressure_since, 1))
            self.pressure_since = 0.0
            self._pressure_warned = False

    def open_connections(self) -> list[AsyncConnection[Any]]:
        """Every server connection of this pool that is open, wherever it is: leased by
        poold, idle in psycopg_pool, or being checked by it (each connect ends in
        ``_on_connect_result``, which keeps them)."""
        return [conn for conn in list(self._conns) if not conn.closed]

    def servers(self, now: float) -> list[dict[str, Any]]:
        """``open_connections``, one row each: pid, age, and state: ``active`` (a client
        holds it, or poold's RESET ALL before it goes back to psycopg_pool runs), ``idle`` (poold's free list), ``held`` (kept back until a cancel for
        it is delivered) or ``pool`` (psycopg_pool's: idle there, or being checked); and
        ``tls``: the TLS protocol version of the server leg ("TLSv1.3"), or "no"."""
        leased = {link.conn: (link, state) for state, links in (("active", self.active), ("idle", self.free),
                                                                 ("held", self._held)) for link in links}
        rows = []
        for conn in self.open_connections():
            link, state = leased.get(conn, (None, "pool"))
            rows.append({
                "pool": self.name,
                "pid": backend.backend_pid(conn),
                "state": state,
                "tx_status": link.status.decode() if link is not None else "I",
                "client": getattr(link.owner, "key", ("",))[0] if link is not None else "",
                "age": round(now - self._born.get(conn, now), 1),
                "tls": backend.tls_state(conn) or "no",
            })
        return rows

    def snapshot(self) -> dict[str, Any]:
        total = len(self.open_connections())
        active = len(self.active)
        return {
            "pool": self.name,
            "database": self.db.name,
            "user": self.user,
            "mode": self.settings.mode,
            "max_size": self.settings.max_size,
            "min_size": self.settings.min_size,
            "active": active,
            "idle": total - active,
            "total": total,
            "waiting": len(self.waiters),
            "connecting": self.connecting,
            "clients": self.clients,
            "paused": self.paused,
            "pressure": round(active / self.settings.max_size, 3),
            "breaker": self.breaker.state(time.monotonic()),
            "refused": self.refusal is not None,
            "last_error": self.last_error,
            "prepared": self.statements.snapshot(
                sum(len(link.ps.lru) for link in (*self.free, *self.active) if link.ps is not None)),
        }

    def cancel_query(self, link: ServerLink, owner: object) -> asyncio.Task[None]:
        """Cancel what ``link`` runs for ``owner``; the task ends once the server has
        closed the cancel connection, that is, once the backend has been signalled.

        Until then the link goes to no other client (``release`` sets it aside), as
        PgBouncer keeps a server being cancelled out of its pool: a cancel that
        arrives as the query ends must find the link idle, not another client's query.
        """
        link.cancels += 1
        return self._spawn(self._cancel(link, owner))

    async def close(self) -> None:
        self._closed = True
        if self._wait_timer is not None:
            self._wait_timer.cancel()
            self._wait_timer, self._wait_until = None, 0.0
        self._fail_waiters(PooldError("57P01", "poold is shutting down"))
        while self.free:
            self._give_back(self.free.pop())
        for link in list(self.active):
            self.discard(link)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self._pg.close(timeout=5)
        log.info("pool_closed", pool=self.name)

    # -- internals -----------------------------------------------------------

    def _grow(self) -> None:
        """Start getconn calls for the waiters the pool can still open connections for."""
        if self.refusal is not None and time.monotonic() - self.refused_at < REFUSAL_KEPT:
            return  # the server refused a connect just now: not again so soon
        if not self.breaker.closed:
            if (len(self.waiters) > self.connecting and self.leased + self.connecting < self.settings.max_size
                    and not self._closed and not self.paused and self.breaker.allow(time.monotonic())):
                self._start_lease()  # the breaker's probe
            return
        while (
            len(self.waiters) > self.connecting
            and self.leased + self.connecting < self.settings.max_size
            and not self._closed
            and not self.paused
        ):
            self._start_lease()

    def _start_lease(self) -> None:
        self.connecting += 1
        task = asyncio.get_running_loop().create_task(self._lease_for_waiter())
        self._leasing.add(task)
        task.add_done_callback(self._leasing.discard)

    async def _lease_for_waiter(self) -> None:
        try:
            link = await self._lease()
        except PooldError as exc:
            if self.waiters and not self.serving():  # else its connections are released to them
                waiter, _deadline = self.waiters.popleft()
                waiter.on_acquire_failed(exc)
            return
        except asyncio.CancelledError:
            return  # the breaker opened: nobody waits for this one any more
        finally:
            self.connecting -= 1
        self.release(link)

    async def _lease(self) -> ServerLink:
        # While the breaker is not closed this is a probe: it waits no longer
        # than one breaker period, and its failure keeps the breaker open.
        probe = self.breaker.state(time.monotonic()) != CLOSED
        timeout = min(self.settings.acquire_timeout, self.settings.breaker_reset) if probe else None
        try:
            conn = await self._pg.getconn(timeout)
            for _ in range(self.settings.max_size + 1):
                if backend.made_with(conn, self.conninfo):
                    break
                await backend.close(conn)  # from before a reconnect: replaced by psycopg_pool
                await self._pg.putconn(conn)
                conn = await self._pg.getconn()
        except PoolTimeout as exc:
            self.last_error = self.last_error or str(exc)
            if probe:
                self.breaker.record_failure(time.monotonic(), self.last_error)
                raise self.unavailable() from exc
            raise self._timed_out() from exc
        except OperationalError as exc:
            self.last_error = str(exc)
            raise PooldError("08006", f"cannot connect to the database {self.db.name!r}: {exc}") from exc
        try:
            _, link = await backend.open_stream(conn, lambda: ServerLink(self._on_link_lost))
        except BaseException as exc:  # OSError, or cancelled: the connection goes back
            await backend.close(conn)
            await self._pg.putconn(conn)
            if isinstance(exc, OSError):
                raise PooldError("08006", f"server connection unusable: {exc}") from exc
            raise
        self.last_error = ""
        self.breaker.record_success()
        if self.defaults is None:
            self.defaults = backend.reported_parameters(conn)
            self.status_messages = {k: messages.parameter_status(k, v) for k, v in self.defaults.items()}
        link.conn = conn
        link.pid = backend.backend_pid(conn)
        link.defaults = self.defaults
        link.expires_at = backend.expires_at(conn)
        link.take_params(self._carried_params.pop(conn, {}))
        link.ps = self._carried_statements.pop(conn, None)
        link.epoch = self.epoch
        link.stats = self.stats
        self.leased += 1
        return link

    def _on_connect_result(self, exc: BaseException | None, conn: AsyncConnection[Any] | None) -> None:
        """Every server connect attempt, poold's or psycopg_pool's, ends here."""
        now = time.monotonic()
        b = self.breaker
        if exc is None:
            self._conns.add(conn)  # type: ignore[arg-type]
            self._born[conn] = now  # type: ignore[index]
            self.stats.connects_ok += 1
            if b.state(now) != CLOSED:
                log.info("breaker_closed", pool=self.name)
            b.record_success()
            self.refusal = None
            return
        if not isinstance(exc, Exception):
            return  # cancelled: says nothing about the database
        self.stats.connects_failed += 1
        refusal = backend.refusal(exc)
        if refusal is not None:
            # The server answered: not an outage, and asking again will not help.
            self.last_error = f"{refusal.sqlstate}: {refusal.message}"
            self.refusal, self.refused_at = refusal, now
            if b.state(now) != CLOSED:
                log.info("breaker_closed", pool=self.name)
            b.record_success()
            log.warning("server_refused", pool=self.name, sqlstate=refusal.sqlstate, error=refusal.message)
            self._stop_leasing(refusal)
            return
        self.last_error = str(exc).strip()
        if b.record_failure(now, self.last_error):
            log.error("breaker_open", pool=self.name, failures=b.consecutive, retry_in=b.reset, error=self.last_error)
            self._stop_leasing(self.unavailable())

    def serving(self) -> bool:
        """Whether the pool has server connections that work, wherever they are
        (leased, idle in psycopg_pool, or on their way between the two)."""
        return self.leased > 0 or any(not conn.closed for conn in self._conns)

    def _refused(self, now: float) -> bool:
        """The server refused this pool just now, and it has no connection that works."""
        return now - self.refused_at < REFUSAL_KEPT and not self.serving()

    def _stop_leasing(self, error: PooldError) -> None:
        """No connection can be had: fail the waiting clients with ``error`` (now,
        not at acquire_timeout) and stop the getconn calls in flight; unless the
        pool still has connections that work: those are released to the clients."""
        if self.serving():
            return
        self._fail_waiters(error)
        self._stopped = error
        for task in list(self._leasing):
            task.cancel()

    def _fail_waiters(self, error: PooldError) -> None:
        """Fail every waiting client with ``error``."""
        while self.waiters:
            waiter, _deadline = self.waiters.popleft()
            waiter.on_acquire_failed(error)

    def _expire_waiters(self) -> None:
        """The wait timer: fail the waiters past their deadline, re-arm for the next."""
        self._wait_timer, self._wait_until = None, 0.0
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time() + 0.001  # the loop's timers have millisecond resolution
        # Deadlines are in arrival order unless a reload changed acquire_timeout: look at all.
        expired = [w for w, deadline in self.waiters if deadline <= now]
        if expired:
            self.waiters = deque((w, d) for w, d in self.waiters if d > now)
            for waiter in expired:
                waiter.on_acquire_failed(self._timed_out())
        if self.waiters and self._wait_timer is None:
            self._arm_wait_timer(loop, min(d for _w, d in self.waiters))

    def _arm_wait_timer(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._wait_timer is not None:
            self._wait_timer.cancel()
        self._wait_timer, self._wait_until = loop.call_at(deadline, self._expire_waiters), deadline

    def _timed_out(self) -> PooldError:
        return PooldError(
            "53300", f"no server connection available within acquire_timeout ({self.settings.acquire_timeout:g} s)"
        )

    def _on_link_lost(self, link: ServerLink) -> None:
        """EOF or error on a link's socket: the server side is gone."""
        self.active.discard(link)
        try:
            self.free.remove(link)
        except ValueError:
            pass
        self._held.discard(link)
        log.info("server_connection_lost", pool=self.name, server_pid=link.pid)
        self._forget(link)

    def _forget(self, link: ServerLink, *, cancel: bool = False) -> None:
        conn, link.conn = link.conn, None
        if conn is None:
            return
        self.leased -= 1
        self._spawn(self._close_and_return(conn, cancel))

    def _give_back(self, link: ServerLink) -> None:
        """Hand an idle, clean link back to psycopg_pool."""
        statements, link.ps = link.ps, None  # before the close: it is not the connection's end
        conn = self._detach(link)
        if conn is None:
            if statements is not None:
                statements.close()
            return
        if link.params:
            self._carried_params[conn] = link.params
        if statements is not None:
            if statements.lru and not statements.busy:
                self._carried_statements[conn] = statements
                if not statements.carried:  # once per connection: the registry's entries go with it
                    statements.carried = True
                    weakref.finalize(conn, statements.clear)
            else:
                statements.close()
        self._spawn(self._return(conn))
        self._grow()

    def _reset_and_give_back(self, link: ServerLink) -> None:
        """An idle link past ``hold_time`` goes back to psycopg_pool at the pool's defaults:
        the reported settings its last client left (application_name, TimeZone, ...:
        kept between transactions, and changed before the next client's first request
        when that client's differ) are reset first (RESET ALL, one internal query)."""
        if not link.params:
            self._give_back(link)
            return
        self.active.add(link)  # busy meanwhile: close() and close_idle() see it
        link.run_internal(["RESET ALL"], self._reset_done)

    def _reset_done(self, link: ServerLink) -> None:
        self.active.discard(link)
        if link.closed:
            return
        if link.dirty or link.status != b"I" or link.params:
            self.discard(link)
        else:
            self._give_back(link)

    def _set_aside(self, link: ServerLink) -> None:
        """A released link that cannot serve the next client yet: one whose internal
        query failed is discarded; one with a cancel in flight is held (still active)
        until the cancel is delivered, then released again (``_cancel``)."""
        if link.dirty:
            log.info("server_discarded_internal_query_failed", pool=self.name, server_pid=link.pid)
            self.discard(link)
        else:
            self._held.add(link)

    def _retire(self, link: ServerLink) -> None:
        """Close an idle link for good: the pool is shrinking."""
        link.drop_statements()
        conn = self._detach(link)
        if conn is not None:
            self._spawn(backend.retire(self._pg, conn))

    def _detach(self, link: ServerLink) -> AsyncConnection[Any] | None:
        conn, link.conn = link.conn, None
        link.closed = True
        link.close()  # closes only poold's duplicate descriptor
        if conn is not None:
            self.leased -= 1
        return conn

    async def _return(self, conn: AsyncConnection[Any]) -> None:
        # A connection on its way back when close_idle ran (a DROP DATABASE waits for it)
        # must not land in psycopg_pool's idle ones after that close: closed instead.
        if time.monotonic() < self._idle_closed_until:
            await backend.retire(self._pg, conn)
            return
        await self._pg.putconn(conn)
        if time.monotonic() < self._idle_closed_until:  # close_idle ran while it went back
            await backend.shrink(self._pg, 0)

    async def _close_and_return(self, conn: AsyncConnection[Any], cancel: bool = False) -> None:
        if cancel:
            try:
                await backend.cancel(conn, timeout=2.0)
            except Exception as exc:  # best effort: the close below still happens
                log.info("cancel_before_discard_failed", pool=self.name, error=str(exc))
        await backend.close(conn)
        await self._pg.putconn(conn)  # psycopg_pool sees it closed and replaces it
        if self.waiters and not self.serving():
            # The last connection that worked is gone, and no new one may be tried now.
            if self.refusal is not None and self._refused(time.monotonic()):
                self._fail_waiters(self.refusal)
            elif not self.breaker.closed:
                self._fail_waiters(self.unavailable())
        self._grow()

    async def _cancel(self, link: ServerLink, owner: object) -> None:
        try:
            conn = link.conn
            # Checked now, as it goes out: a link that ``owner`` no longer holds runs
            # nothing of its (and is held, not reused, until this is over).
            if conn is not None and owner is not None and link.owner is owner:
                await backend.cancel(conn)
        except Exception as exc:  # task boundary: a failed cancel is logged, not fatal
            log.warning("cancel_failed", pool=self.name, server_pid=link.pid, error=str(exc))
        finally:
            link.cancels -= 1
            if not link.cancels and link in self._held:
                self._held.discard(link)
                self.release(link)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class PoolRegistry:
    """All pools, created on first login for a (database, user)."""

    def __init__(self) -> None:
        self.pools: dict[tuple[str, str], Pool] = {}
        self.retiring: list[Pool] = []  # databases removed by a reload, closed once unused
        self.paused = False  # every pool paused, those made from now on too (pause without a pool name)
        self._tasks: set[asyncio.Task[Any]] = set()

    @staticmethod
    def key(db: DatabaseSettings, user: str) -> tuple[str, str]:
        """One pool per (database, server user). A DSN that names its user serves
        every client with that one pool, as PgBouncer's forced user does;
        otherwise each client user has its own."""
        return db.name, db.conninfo.get("user") or user

    def find(self, db: DatabaseSettings, user: str) -> Pool | None:
        """The pool serving ``user`` on ``db`` if there is one already."""
        return self.pools.get(self.key(db, user))

    async def get(self, db: DatabaseSettings, user: str, credentials: Credentials) -> Pool:
        """The pool serving ``user`` on ``db``, created and opened on first use."""
        key = self.key(db, user)
        server_user = key[1]
        pool = self.pools.get(key)
        if pool is None:
            # Without a password in the DSN, the server user's own: the auth file's
            # plain password (PgBouncer does the same), or SCRAM pass-through.
            pool = Pool(db, server_user, credentials(db, server_user))
            if self.paused:
                pool.pause()
            self.pools[key] = pool
            await pool.open()
        return pool

    async def open_configured(self, databases: Mapping[str, DatabaseSettings], credentials: Credentials) -> None:
        """Open at once the pools whose DSN names a user, so min_size is warm."""
        for db in databases.values():
            if db.name != "*" and db.conninfo.get("user"):
                pool = await self.get(db, db.conninfo["user"], credentials)
                pool.kept = True

    def close_idle(self, dbname: str, near: Pool) -> int:
        """Close the idle server connections to database ``dbname`` of the server
        ``near`` connects to; how many (see ClientSession.on_server_in_use)."""
        server = (near.db.conninfo.get("host"), near.db.conninfo.get("port"))
        closed = 0
        for pool in self.pools.values():
            info = pool.db.conninfo
            if info.get("dbname") == dbname and (info.get("host"), info.get("port")) == server:
                closed += pool.close_idle()
        return closed

    def retire(self, pool: Pool) -> None:
        """Its database left the configuration: no new clients; close when unused."""
        pool.retired = True
        self.pools.pop((pool.db.name, pool.user), None)
        self.retiring.append(pool)
        log.info("pool_retired", pool=pool.name, clients=pool.clients)

    def select(self, name: str | None) -> list[Pool]:
        """Pools matching a name: "db.user", "db", or all for None."""
        if not name:
            return list(self.pools.values())
        return [p for p in self.pools.values() if name in (p.name, p.db.name)]

    def server_connections(self) -> int:
        """Open server connections of every pool (Pool.open_connections)."""
        return sum(len(p.open_connections()) for p in self.pools.values())

    def maintain(self, now: float) -> None:
        for pool in list(self.pools.values()) + self.retiring:
            pool.maintain(now)
        for key, pool in list(self.pools.items()):
            if pool.refusal is not None and not pool.kept and not pool.clients and not pool.serving():
                # Made only for a database or role the server does not have (a client's
                # typo through a "*" entry): not kept, so it neither lingers nor counts.
                del self.pools[key]
                self.retiring.append(pool)
                log.info("pool_dropped", pool=pool.name, error=pool.last_error)
        for pool in [p for p in self.retiring if p.clients == 0]:
            self.retiring.remove(pool)
            task = asyncio.get_running_loop().create_task(pool.close())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        pools = list(self.pools.values()) + self.retiring
        await asyncio.gather(*(p.close() for p in pools), *self._tasks, return_exceptions=True)
