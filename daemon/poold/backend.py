"""Server connections: the only module that touches psycopg connection internals.

psycopg connects and authenticates; psycopg_pool owns the connection's life.
While poold leases a connection it relays bytes on a duplicate of libpq's socket
through an asyncio transport, so libpq never sees that traffic. That has
consequences this module hides from the rest:

- libpq's transaction status stays "idle" whatever the relayed traffic did, so
  poold tracks the status from ReadyForQuery itself and only hands back
  connections it knows are idle.
- libpq's cached ParameterStatus values go stale; they are read once, from a
  fresh connection, as the pool's defaults.
- the duplicate descriptor must be closed (which removes it from the event
  loop's poller) before libpq uses the socket again.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import re
import socket
from collections.abc import Callable, Generator, Mapping
from typing import Any, TypeVar

from psycopg import AsyncConnection, OperationalError, pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.errors import finish_pgconn
from psycopg.waiting import Wait

from . import servertls, sockio
from .errors import ServerRefusal

P = TypeVar("P", bound=asyncio.Protocol)

#: parameters PostgreSQL reports (GUC_REPORT) that a client sees at login
REPORTED_PARAMETERS = (
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "in_hot_standby",
    "integer_datetimes",
    "IntervalStyle",
    "is_superuser",
    "scram_iterations",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
)


#: libpq 18 takes a SCRAM ClientKey in place of a password (``scram_client_key``,
#: ``scram_server_key``): SCRAM pass-through. An older libpq refuses the parameters.
SCRAM_PASS_THROUGH = pq.version() >= 180000


def conninfo(info: Mapping[str, str], *, statement_timeout: float, credentials: Mapping[str, str]) -> str:
    """The libpq conninfo for a pool, with poold's per-connection settings. ``credentials``
    (a password, or SCRAM keys where libpq takes them) apply where the DSN names no
    password of its own."""
    params = dict(info)
    options = params.get("options", "")
    if statement_timeout > 0:
        options = f"{options} -c statement_timeout={int(statement_timeout * 1000)}".strip()
    if options:
        params["options"] = options
    if "password" not in params:
        params.update((k, v) for k, v in credentials.items() if SCRAM_PASS_THROUGH or not k.startswith("scram_"))
    return make_conninfo("", **params)


def connection_class(
    on_result: Callable[[BaseException | None, AsyncConnection[Any] | None], None],
) -> type[AsyncConnection[Any]]:
    """An AsyncConnection whose connect() reports each outcome, the error or the
    connection (for the breaker, and to know what the pool has).

    psycopg_pool connects in its own workers, with its own backoff; this is how
    poold sees every attempt, its own and psycopg_pool's.
    """

    class ReportingConnection(AsyncConnection[Any]):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Any:
            try:
                conn = await super().connect(*args, **kwargs)
            except OperationalError as exc:
                explained = await _explained(exc, args[0] if args else kwargs.get("conninfo", ""))
                on_result(explained, None)
                if explained is exc:
                    raise
                raise explained from None
            except BaseException as exc:
                on_result(exc, None)
                raise
            on_result(None, conn)
            return conn

        @classmethod
        def _connect_gen(cls, conninfo: str = "") -> Generator[Any, Any, Any]:
            pgconn = yield from _connect(conninfo)
            return cls(pgconn)

    return ReportingConnection


async def _explained(exc: OperationalError, conninfo: str) -> OperationalError:
    """A failed TLS verification with OpenSSL's reason, which libpq leaves out
    (servertls.explain_verify_failure), and a direct TLS handshake the server hung up
    on with what that means (servertls.explain_direct_failure); any other error as it is."""
    message = str(exc)
    if servertls.VERIFY_FAILED not in message and "SSL" not in message:
        return exc
    info = {k: str(v) for k, v in conninfo_to_dict(conninfo).items() if v is not None}
    explained = await servertls.explain_verify_failure(servertls.explain_direct_failure(message, info), info)
    return exc if explained == message else OperationalError(explained)


# -- what a failed connect says: libpq words a server's refusal as text alone
# ("FATAL:  database "x" does not exist") unless asked for verbose errors,
# which put the SQLSTATE in it ("FATAL:  3D000: database ..."). So poold's
# connects ask for them; the SQLSTATE tells a refusal from an outage.

#: SQLSTATEs (or classes) of a connect the server refuses however often it is
#: asked: invalid authorization (28: no such role, pg_hba.conf reject, wrong
#: password), no such database, no CONNECT privilege, datallowconn false
REFUSALS = ("28", "3D000", "42501", "55000")

_SERVER_ERROR = re.compile(r"(?:^|failed: )\S+:  ([0-9A-Z]{5}): (.*)$", re.M)
_DETAIL = re.compile(r"^DETAIL:  (.*)$", re.M)
_HINT = re.compile(r"^HINT:  (.*)$", re.M)
_LOCATION = re.compile(r"^LOCATION:  .*\n?", re.M)


def refusal(exc: BaseException) -> ServerRefusal | None:
    """The server's refusal a failed connect carries, if that is why it failed."""
    if not isinstance(exc, OperationalError):
        return None
    text = str(exc)
    found = _SERVER_ERROR.search(text)
    if found is None or not found.group(1).startswith(REFUSALS):
        return None
    detail, hint = _DETAIL.search(text), _HINT.search(text)
    return ServerRefusal(found.group(1), found.group(2), detail and detail.group(1), hint and hint.group(1))


@functools.cache
def libpq_path() -> str | None:
    """The file of the libpq psycopg uses (from /proc/self/maps); None where it cannot be told."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if os.path.basename(line.split()[-1]).startswith("libpq")}
    except OSError:
        return None
    if len(paths) > 1 and pq.__impl__ == "binary":  # psycopg_binary brings its own libpq
        paths = {p for p in paths if "psycopg_binary" in p}
    return paths.pop() if len(paths) == 1 else None


@functools.cache
def _libpq_function(name: str, argtypes: tuple[Any, ...], restype: Any) -> Any:
    """A function of the libpq psycopg uses; None where it cannot be told."""
    path = libpq_path()
    if path is None:
        return None
    fn = getattr(ctypes.CDLL(path), name)
    fn.argtypes, fn.restype = argtypes, restype
    return fn


def _set_error_verbosity() -> Callable[[int, int], int] | None:
    """libpq's PQsetErrorVerbosity, from the libpq psycopg uses; None where it cannot be told."""
    return _libpq_function("PQsetErrorVerbosity", (ctypes.c_void_p, ctypes.c_int), ctypes.c_int)  # type: ignore[no-any-return]


def _connect(conninfo: str) -> Generator[tuple[int, Wait], Any, pq.abc.PGconn]:
    """psycopg's connect generator (psycopg.generators._connect), with verbose errors
    while connecting, their LOCATION lines left out."""
    conn = pq.PGconn.connect_start(conninfo.encode())
    set_verbosity = _set_error_verbosity()
    if set_verbosity is not None:
        set_verbosity(conn.pgconn_ptr, 2)  # type: ignore[attr-defined]  # PQERRORS_VERBOSE
    while True:
        if conn.status == pq.ConnStatus.BAD:
            raise OperationalError(f"connection is bad: {_error_message(conn)}", pgconn=conn)
        status = conn.connect_poll()
        if status == pq.PollingStatus.READING or status == pq.PollingStatus.WRITING:
            wait = Wait.R if status == pq.PollingStatus.READING else Wait.W
            while not (yield conn.socket, wait):
                pass
        elif status == pq.PollingStatus.OK:
            break
        else:
            message = _error_message(conn)
            raise OperationalError(f"connection failed: {message}", pgconn=finish_pgconn(conn))
    if set_verbosity is not None:
        set_verbosity(conn.pgconn_ptr, 1)  # type: ignore[attr-defined]  # PQERRORS_DEFAULT, after
    conn.nonblocking = 1
    return conn


def _error_message(conn: pq.abc.PGconn) -> str:
    return _LOCATION.sub("", conn.get_error_message())


def connection_kwargs() -> dict[str, Any]:
    # autocommit: psycopg must never open a transaction of its own on a
    # connection poold relays for clients.
    return {"autocommit": True, "prepare_threshold": None}


async def open_stream(
    conn: AsyncConnection[Any], protocol_factory: Callable[[], P]
) -> tuple[asyncio.Transport, P]:
    """Attach a transport to a duplicate of the connection's socket: a C one
    (sockio.adopt) where it was built, else the event loop's."""
    session = tls_session(conn)
    fd = os.dup(conn.pgconn.socket)
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        raise
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if session is not None:  # through libpq's TLS session (servertls)
            return await servertls_adopt(sock, session, protocol_factory)
        if sockio.native is not None:  # read and written in C, as the client sockets
            return sockio.adopt(sock, protocol_factory)
        transport, protocol = await asyncio.get_running_loop().connect_accepted_socket(protocol_factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport, protocol


def tls_session(conn: AsyncConnection[Any]) -> int | None:
    """The address of libpq's OpenSSL session on ``conn`` (``PQsslStruct``), None when
    the connection is not TLS. A TLS connection whose session poold cannot reach
    (a libpq it cannot find, or not built on OpenSSL) is an error: its bytes
    cannot be relayed raw."""
    if not conn.pgconn.ssl_in_use:
        return None
    fn = _libpq_function("PQsslStruct", (ctypes.c_void_p, ctypes.c_char_p), ctypes.c_void_p)
    ssl = fn(conn.pgconn.pgconn_ptr, b"OpenSSL") if fn is not None else None  # type: ignore[attr-defined]
    if not ssl:
        raise OperationalError("poold cannot reach the TLS session of this server connection (libpq without OpenSSL?)")
    return int(ssl)


async def servertls_adopt(sock: socket.socket, ssl: int, protocol_factory: Callable[[], P]) -> tuple[asyncio.Transport, P]:
    """A transport through libpq's TLS session: C (sockio) where it was built, else the Python reference."""
    path = libpq_path()
    assert path is not None  # tls_session found the session through it
    lib = servertls.functions(path)
    if sockio.native is not None:
        return sockio.adopt(sock, protocol_factory, tls=(ssl, lib.addresses()))
    transport, protocol = servertls.adopt(sock, ssl, lib, protocol_factory)
    return transport, protocol  # type: ignore[return-value]


def tls_state(conn: AsyncConnection[Any]) -> str | None:
    """The TLS protocol version of ``conn`` ("TLSv1.3"), None when it is not TLS."""
    if not conn.pgconn.ssl_in_use:
        return None
    fn = _libpq_function("PQsslAttribute", (ctypes.c_void_p, ctypes.c_char_p), ctypes.c_char_p)
    version = fn(conn.pgconn.pgconn_ptr, b"protocol") if fn is not None else None  # type: ignore[attr-defined]
    return version.decode() if version else "TLS"


def made_with(conn: AsyncConnection[Any], conninfo: str) -> bool:
    """Whether ``conn`` was opened with ``conninfo`` (not an older one).

    psycopg_pool's drain() cannot catch a connection whose connect was already
    in flight when the conninfo changed; poold checks at lease time.
    """
    actual = {i.keyword.decode(): i.val.decode() for i in conn.pgconn.info if i.val is not None}
    return all(actual.get(k) == str(v) for k, v in conninfo_to_dict(conninfo).items())


def reported_parameters(conn: AsyncConnection[Any]) -> dict[str, str]:
    """Server parameters as reported at connect time (fresh connections only)."""
    result = {}
    for name in REPORTED_PARAMETERS:
        value = conn.pgconn.parameter_status(name.encode())
        if value is not None:
            result[name] = value.decode(errors="replace")
    return result


def backend_pid(conn: AsyncConnection[Any]) -> int:
    return int(conn.pgconn.backend_pid)


def expires_at(conn: AsyncConnection[Any]) -> float:
    """psycopg_pool's max_lifetime deadline (monotonic), with its jitter."""
    return float(getattr(conn, "_expire_at", float("inf")))


async def cancel(conn: AsyncConnection[Any], timeout: float = 5.0) -> None:
    """Send a CancelRequest for whatever the server is running on ``conn``."""
    await conn.cancel_safe(timeout=timeout)


async def close(conn: AsyncConnection[Any]) -> None:
    await conn.close()


# -- shrinking: psycopg_pool shrinks by one connection per max_idle period,
# which is too slow for a reload that lowers max_size. These two close
# connections without a replacement, keeping psycopg_pool's count right, the
# same way its own ShrinkPool task does.


async def shrink(pool: Any, max_size: int) -> None:
    """Close idle connections inside psycopg_pool beyond ``max_size``."""
    to_close = []
    async with pool._lock:
        while pool._nconns > max_size and pool._pool:
            to_close.append(pool._pool.popleft())
            pool._nconns -= 1
    for conn in to_close:
        await pool._close_connection(conn)


async def retire(pool: Any, conn: AsyncConnection[Any]) -> None:
    """Close a leased connection for good (no replacement)."""
    async with pool._lock:
        pool._nconns -= 1
    conn._pool = None
    await conn.close()


def error_cause(message: str) -> str:
    """The cause in a libpq connect error's text: its last line that is not one of
    libpq's indented hints ("\tIs the server running on that host ...?")."""
    lines = [line for line in message.strip().splitlines() if line and not line[0].isspace()]
    return lines[-1].strip() if lines else message.strip()
