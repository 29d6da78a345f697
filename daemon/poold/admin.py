"""The admin console: PgBouncer's SHOW and control commands on the databases
``pgbouncer`` and ``poold``, over the client listeners, so that PgBouncer's tools
and habits work unchanged (``psql -p 6432 -U admin pgbouncer``, SHOW POOLS,
PAUSE, RESUME ...).

A client that asks for one of these databases logs in as any client does (the
auth file, hba rules, login_timeout), and is then handed over (``Console.enter``)
to a ``ConsoleSession``: a protocol of its own on the same transport, which
leases no server connection. Only ``auth.admin_users`` may run every command and
``auth.stats_users`` the SHOW commands; anyone else is refused at login, as
PgBouncer does. As in PgBouncer, the user ``pgbouncer`` connecting over the Unix
socket from poold's own OS user is an admin without a password.

The console speaks the simple query protocol only, as PgBouncer's does; a
command is a word and an optional argument, in any case, with an optional ``;``.
Its commands run poold's own operations (operations.py), as poolctl's do:

- PAUSE [db]: no new leases; answered once the clients hold no server
  connection (each finishes its transaction). RESUME [db] undoes it.
- RECONNECT [db]: new server connections; each old one closes when released.
- KILL [db]: pause, and end the clients and server connections at once.
  KILL_CLIENT id: end one client (the ``id`` of SHOW CLIENTS, poolctl's).
- DISABLE db / ENABLE db: refuse new clients of the database, or admit them.
- RELOAD: ``poolctl reload``. SHUTDOWN: poold's shutdown (drain, then exit).
- WAIT_CLOSE [db]: answered once the server connections a RECONNECT or a
  reload replaced are closed.

Errors carry a SQLSTATE of PostgreSQL's for what they mean (42501 where
PgBouncer says "admin access needed"), with PgBouncer's words.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from . import adminviews, operations, sockio
from .errors import PooldError
from .protocol import messages
from .protocol.errors import ProtocolError
from .protocol.framing import MessageReader
from .reload import ReloadRejected

if TYPE_CHECKING:
    from .client import ClientSession
    from .operations import Operations
    from .pools import Pool
    from .runtime import Runtime

log = structlog.get_logger("poold.admin")

#: the database names that reach the console
CONSOLE_DATABASES = frozenset({"pgbouncer", "poold"})
#: the user that is an admin without a password over the Unix socket from poold's own OS user
ADMIN_USER = "pgbouncer"
#: seconds between the samples SHOW STATS' averages are computed against (PgBouncer's stats_period)
STATS_PERIOD = 60.0
#: the largest query the console reads (its commands are a few words)
MAX_QUERY = 64 * 1024

#: what the console tells a client at login (PgBouncer's admin welcome)
_WELCOME = b"".join(messages.parameter_status(k, v) for k, v in (
    ("server_version", f"{adminviews.PGBOUNCER_VERSION}/bouncer"), ("client_encoding", "UTF8"),
    ("server_encoding", "UTF8"), ("DateStyle", "ISO"), ("TimeZone", "GMT"), ("standard_conforming_strings", "on"),
    ("is_superuser", "on")))
_READY = messages.ready_for_query()

_WORD = r'("(?:[^"]|"")+"|[0-9a-z_]+)'
_COMMAND = re.compile(rf"^\s*{_WORD}(?:\s+{_WORD})?\s*(?:;\s*)?$", re.IGNORECASE)
_SET = re.compile(rf"^\s*set\s+{_WORD}\s*(?:=|to)\s*({_WORD[1:-1]}|'(?:[^']|'')*')\s*(?:;\s*)?$", re.IGNORECASE)
#: settings SHOW and SET answer for, as PgBouncer fakes them for drivers that ask
_FAKE_SETTINGS = {"client_encoding": "UTF-8", "default_transaction_isolation": "read committed",
                  "standard_conforming_strings": "on", "datestyle": "ISO", "timezone": "GMT"}


class ConsoleError(Exception):
    """A command's ErrorResponse: ERROR, ``sqlstate``, PgBouncer's words."""

    def __init__(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate, self.message, self.detail = sqlstate, message, detail


def _unquote(word: str | None) -> str:
    if not word:
        return ""
    if word.startswith('"'):
        return word[1:-1].replace('""', '"')
    return word  # as typed: a database name keeps its case, as in PgBouncer


class Console:
    """The console's state: its sessions and the stats sample."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self.sessions: set[ConsoleSession] = set()
        #: (monotonic time, per database totals) SHOW STATS' averages are computed since
        self.older_stats: tuple[float, dict[str, dict[str, int]]] = (time.monotonic(), {})

    @property
    def rt(self) -> Runtime:
        return self.ops.runtime

    @property
    def paused(self) -> bool:
        """PAUSE without a database (or poolctl pause), until RESUME: SHOW STATE's."""
        return self.rt.pools.paused

    def role(self, user: str) -> str | None:
        """"admin", "stats" or None: what ``user`` may do here (auth.admin_users, auth.stats_users)."""
        auth = self.rt.config.auth
        if user in _names(auth.admin_users):
            return "admin"
        if user in _names(auth.stats_users):
            return "stats"
        return None

    def own_user(self, client: ClientSession) -> bool:
        """PgBouncer's rule: the user ``pgbouncer`` over the Unix socket from poold's own
        OS user (SO_PEERCRED) is an admin, without a password."""
        if client.user != ADMIN_USER or client.transport is None:
            return False
        sock = client.transport.get_extra_info("socket")
        if sock is None or sock.family != socket.AF_UNIX:
            return False
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return bool(struct.unpack("3i", creds)[1] == os.getuid())

    def auth_method(self, client: ClientSession) -> str:
        """How a client of a console database authenticates: as any client does (the
        auth type, or the hba rules for its database), but see ``own_user``."""
        return "trust" if self.own_user(client) else client._auth_method()

    def enter(self, client: ClientSession, startup: messages.StartupMessage, authenticated: bytes) -> None:
        """A client of a console database has authenticated: welcome it, and hand its
        connection over to a ConsoleSession. ``authenticated``: what goes before
        AuthenticationOk (the SASL final message, NegotiateProtocolVersion)."""
        role = self.role(client.user) or ("admin" if self.own_user(client) else None)
        if role is None:
            raise PooldError("28000", f'not allowed: "{client.user}" is in neither admin_users nor stats_users')
        transport = client.transport
        assert transport is not None
        session = ConsoleSession(self, transport, client.user, role)
        key = self.rt.register(session)  # type: ignore[arg-type]  # its cancel key: a CancelRequest reaches on_cancel
        transport.write(authenticated + messages.auth_ok() + _WELCOME + key + _READY)
        rest = client.reader.take_rest()
        # As sockio.linger hands a connection over: the client session ends here, the console's begins.
        client.transport = sockio.Ended(transport.get_extra_info("peername"))  # type: ignore[assignment]
        transport.set_protocol(session)
        asyncio.get_running_loop().call_soon(client.connection_lost, None)
        log.info("console_login", peer=client.peer, user=client.user, role=role, database=startup.database)
        if rest:
            session.data_received(rest)

    def sample(self, now: float) -> None:
        """Every STATS_PERIOD, the totals SHOW STATS' averages are computed against (the janitor calls this)."""
        if now - self.older_stats[0] >= STATS_PERIOD:
            self.older_stats = (now, adminviews.stat_totals(self.rt))

    def close(self) -> None:
        """poold is stopping: end every console session."""
        for session in list(self.sessions):
            session.fail("57P01", "terminating connection: poold is shutting down", fatal=True)

    # -- commands ---------------------------------------------------------------

    async def execute(self, session: ConsoleSession, sql: str) -> bytes:
        """The reply to one query: a result set or a command tag, then ReadyForQuery."""
        try:
            return await self._execute(session, sql) + _READY
        except ConsoleError as exc:
            log.info("console_error", user=session.user, command=sql[:200], sqlstate=exc.sqlstate, error=exc.message)
            return messages.error_response(exc.sqlstate, exc.message, severity="ERROR", detail=exc.detail) + _READY

    async def _execute(self, session: ConsoleSession, sql: str) -> bytes:
        found = _COMMAND.match(sql)
        if found is None:
            setting = _SET.match(sql)
            if setting is not None:
                return self._set(session, _unquote(setting.group(1)))
            if not sql.strip().rstrip(";").strip():
                return _EMPTY_QUERY
            raise ConsoleError("42601", f"invalid command '{sql}', use SHOW HELP;")
        word, arg = found.group(1).lower(), _unquote(found.group(2))
        if word in ("show", "select"):
            return self._show(session, arg.lower(), sql)
        command = _COMMANDS.get(word)
        if command is None:
            raise ConsoleError("42601", f"invalid command '{sql}', use SHOW HELP;")
        if session.role != "admin":
            raise ConsoleError("42501", "admin access needed")
        log.info("console_command", user=session.user, command=word.upper(), argument=arg)
        tag = await command(self, arg)
        return messages.command_complete(tag)

    def _show(self, session: ConsoleSession, what: str, sql: str) -> bytes:
        if what in _FAKE_SETTINGS:
            return _result(adminviews.columns("s", what), [[_FAKE_SETTINGS[what]]])
        if what == "help":
            return messages.notice_response("Console usage", detail=_HELP) + messages.command_complete("SHOW")
        if what == "fds":
            if session.role != "admin":
                raise ConsoleError("42501", "admin access needed")
            raise ConsoleError("0A000", "SHOW FDS is not supported: poold's online restart is systemd's "
                               "socket activation, not a hand-over of file descriptors")
        view = _VIEWS.get(what)
        if view is not None:
            return _result(*view(self))
        if what in adminviews.EMPTY:
            return _result(adminviews.EMPTY[what], [])
        raise ConsoleError("42601", f"invalid command '{sql}', use SHOW HELP;")

    def _set(self, session: ConsoleSession, key: str) -> bytes:
        if key.lower() in _FAKE_SETTINGS:
            return messages.notice_response("SET ignored") + messages.command_complete("SET")
        if session.role != "admin":
            raise ConsoleError("42501", "admin access needed")
        raise ConsoleError("0A000", f"SET {key} is not supported: poold's settings change in its configuration "
                           "file, then RELOAD")

    def known(self, name: str) -> list[Pool]:
        """The pools of database ``name``; ConsoleError 3D000 where poold knows no such database."""
        if name in CONSOLE_DATABASES:
            raise ConsoleError("55000", f"cannot do this to the admin db: {name}")
        pools = [p for p in self.rt.pools.pools.values() if p.db.name == name]
        if not pools and name not in self.rt.config.databases:
            raise ConsoleError("3D000", f"no such database: {name}")
        return pools

    def selected(self, name: str) -> list[Pool]:
        return self.known(name) if name else list(self.rt.pools.pools.values())


def _names(users: str) -> set[str]:
    return {u.strip() for u in users.split(",") if u.strip()}


def _result(columns: adminviews.Columns, rows: list[list[Any]]) -> bytes:
    return b"".join((messages.row_description(columns), *(messages.data_row(r) for r in rows),
                     messages.command_complete("SHOW")))


_EMPTY_QUERY = b"I\0\0\0\4"  # EmptyQueryResponse
_CANCELED = messages.error_response("57014", "canceling statement due to user request", severity="ERROR") + _READY

_VIEWS: dict[str, Callable[[Console], adminviews.Table]] = {
    "pools": adminviews.pools,
    "clients": adminviews.clients,
    "servers": lambda c: adminviews.servers(c.rt),
    "databases": adminviews.databases,
    "users": adminviews.users,
    "stats": adminviews.stats,
    "stats_totals": adminviews.stats_totals,
    "stats_averages": adminviews.stats_averages,
    "totals": adminviews.totals,
    "lists": adminviews.lists,
    "config": adminviews.config,
    "state": adminviews.state,
    "version": lambda c: adminviews.version(),
}

_HELP = ("\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n\tSHOW PEERS|PEER_POOLS\n"
         "\tSHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE\n\tSHOW DNS_HOSTS|DNS_ZONES\n"
         "\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\tSET key = arg\n\tRELOAD\n\tPAUSE [<db>]\n"
         "\tRESUME [<db>]\n\tDISABLE <db>\n\tENABLE <db>\n\tRECONNECT [<db>]\n\tKILL [<db>]\n"
         "\tKILL_CLIENT <client_id>\n\tSHUTDOWN\n\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n\tWAIT_CLOSE [<db>]")


# -- the control commands: (console, argument) -> command tag ------------------------

async def _pause(console: Console, arg: str) -> str:
    if console.paused:
        raise ConsoleError("55000", "already suspended/paused")
    if not arg or console.known(arg):
        try:
            await operations.pause(console.rt, arg or None, math.inf)  # answered once no client holds a server connection
        except asyncio.CancelledError:  # the admin's cancel (ConsoleSession.on_cancel), or it left: undone
            operations.resume(console.rt, arg or None)
            raise
    return "PAUSE"


async def _resume(console: Console, arg: str) -> str:
    if not arg:
        if not console.paused and not any(p.paused for p in console.rt.pools.pools.values()):
            raise ConsoleError("55000", "pooler is not paused/suspended")
    elif not any(p.paused for p in console.known(arg)):
        raise ConsoleError("55000", f"database {arg} is not paused")
    operations.resume(console.rt, arg or None)
    return "RESUME"


async def _reconnect(console: Console, arg: str) -> str:
    await operations.reconnect(console.selected(arg))
    return "RECONNECT"


async def _kill(console: Console, arg: str) -> str:
    if console.paused:
        raise ConsoleError("55000", "already suspended/paused")
    pools = console.selected(arg)
    for p in pools:
        p.pause()
    for client in [c for c in console.rt.clients if c.pool in pools]:
        client.terminate_now("57P01", "terminating connection due to administrator command (KILL)")
    await operations.reconnect(pools)
    return "KILL"


async def _kill_client(console: Console, arg: str) -> str:
    if not arg.isdigit():
        raise ConsoleError("22023", "invalid client pointer supplied")
    wanted = int(arg)
    for client in console.rt.clients:
        if client.relaying and client.key[0] == wanted:
            client.terminate_now("57P01", "terminating connection due to administrator command (KILL_CLIENT)")
            return "KILL_CLIENT"
    for session in console.sessions:
        if session.id == wanted:
            session.fail("57P01", "terminating connection due to administrator command (KILL_CLIENT)", fatal=True)
            return "KILL_CLIENT"
    raise ConsoleError("42704", "client not found")


async def _disable(console: Console, arg: str) -> str:
    if not arg:
        raise ConsoleError("42601", "a database is required")
    console.known(arg)
    console.rt.disabled.add(arg)
    console.rt.login_plans.clear()  # the C login keeps its decisions per startup packet
    return "DISABLE"


async def _enable(console: Console, arg: str) -> str:
    if not arg:
        raise ConsoleError("42601", "a database is required")
    console.known(arg)
    console.rt.disabled.discard(arg)
    return "ENABLE"


async def _reload(console: Console, arg: str) -> str:
    if arg:
        raise ConsoleError("42601", f"invalid command 'RELOAD {arg}', use SHOW HELP;")
    try:
        await console.ops.reload()
    except ReloadRejected as exc:
        raise ConsoleError("F0000", "RELOAD failed, see logs for additional details", str(exc)) from None
    return "RELOAD"


async def _shutdown(console: Console, arg: str) -> str:
    if arg.lower() not in ("", "wait_for_servers", "wait_for_clients"):
        raise ConsoleError("42601", f"invalid command 'SHUTDOWN {arg}', use SHOW HELP;")
    console.ops.request_shutdown()  # poold's shutdown: each client finishes its transaction first
    return "SHUTDOWN"


async def _wait_close(console: Console, arg: str) -> str:
    pools = console.selected(arg)
    while any(link.epoch != p.epoch for p in pools for link in p.active):
        await asyncio.sleep(0.05)
    return "WAIT_CLOSE"


async def _suspend(console: Console, arg: str) -> str:
    raise ConsoleError("0A000", "SUSPEND is not supported by poold: use PAUSE, or systemctl restart "
                       "(socket activation keeps the listening sockets)")


_COMMANDS: dict[str, Callable[[Console, str], Any]] = {
    "pause": _pause, "resume": _resume, "reconnect": _reconnect, "kill": _kill, "kill_client": _kill_client,
    "disable": _disable, "enable": _enable, "reload": _reload, "shutdown": _shutdown, "wait_close": _wait_close,
    "suspend": _suspend,
}


class ConsoleSession(asyncio.Protocol):
    """One console connection after its login: queries in, one at a time, replies out."""

    #: what Runtime.cancel and unregister read of a client: no server connection to cancel
    server = pool = None

    def __init__(self, console: Console, transport: asyncio.Transport, user: str, role: str) -> None:
        self.console, self.transport, self.user, self.role = console, transport, user, role
        self.key = (0, 0)  # its cancel key, from Runtime.register
        self.connected_at = time.time()
        self.address = adminviews.address(transport.get_extra_info("peername"))  # (addr, port) for SHOW CLIENTS
        self.local = adminviews.address(transport.get_extra_info("sockname"))
        self._reader = MessageReader(MAX_QUERY)
        self._queries: deque[str] = deque()
        self._task: asyncio.Task[None] | None = None
        self._command: asyncio.Task[None] | None = None  # the query running now
        self.closed = False
        self._ending = False  # its last message, an error, is written (fail)
        console.sessions.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._reader.feed(data)
            while not self._ending and (msg := self._reader.next_typed()) is not None:
                self._message(*msg)
        except ProtocolError as exc:
            self.fail(exc.sqlstate, str(exc), fatal=True)

    def _message(self, kind: int, body: bytes) -> None:
        if kind == messages.QUERY:
            self._queries.append(body.rstrip(b"\0").decode(errors="replace"))
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._run())
        elif kind == messages.TERMINATE:
            self._ending = True
            self.transport.close()
        elif kind in (messages.PARSE, ord("B"), ord("E")):
            self.fail("08P01", "extended query protocol not supported by admin console")
        else:
            self.fail("08P01", f"unsupported packet type for admin console: {kind}")

    async def _run(self) -> None:
        """The queries, in order: a PAUSE answers only when it is done, as PgBouncer's."""
        try:
            while self._queries and not self._ending:
                command = self._command = asyncio.get_running_loop().create_task(
                    self._answer(self._queries.popleft()))
                try:
                    await command
                except asyncio.CancelledError:
                    if self.closed or not command.cancelled():
                        raise  # the connection is gone
                    if not self._ending:
                        self.transport.write(_CANCELED)
                finally:
                    self._command = None
        except Exception:  # task boundary: one broken command must not hurt the daemon
            log.exception("console_failed", user=self.user)
            self.fail("XX000", "internal error in the admin console")
        finally:
            self._task = None

    def fail(self, sqlstate: str, message: str, *, fatal: bool = False) -> None:
        """Tell the client why, then end its connection (PgBouncer ends it after these errors)."""
        if self._ending:
            return
        self._ending = True
        error = messages.error_response(sqlstate, f"poold: {message}", severity="FATAL" if fatal else "ERROR")
        # After an ERROR, ReadyForQuery as PgBouncer sends: libpq reports the error, then the close.
        self.transport.write(error if fatal else error + _READY)
        sockio.linger(self.transport, self, self.console.rt.lingering)

    async def _answer(self, sql: str) -> None:
        """Run one query and write its reply, in the same step as the command ends: a
        SHUTDOWN's answer goes out before the shutdown it starts can end this session."""
        reply = await self.console.execute(self, sql)
        if not self._ending:
            self.transport.write(reply)

    @property
    def id(self) -> int:
        """What SHOW CLIENTS and KILL_CLIENT call it: its cancel key's pid, as a client's."""
        return self.key[0]

    def on_cancel(self) -> None:
        """A CancelRequest with this session's key (Runtime.cancel): the running command
        ends with 57014, as a cancelled statement does (a waiting PAUSE is undone)."""
        if self._command is not None:
            self._command.cancel()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = self._ending = True
        self.console.sessions.discard(self)
        self.console.rt.unregister(self)  # type: ignore[arg-type]  # its cancel key
        if self._task is not None:
            self._task.cancel()
