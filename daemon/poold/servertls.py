"""TLS on a server leg: the relay reads and writes through libpq's own TLS session.

libpq makes the TLS connection (every sslmode, client certificates, CRLs, its
verification) and keeps the session (an OpenSSL ``SSL*``, ``PQsslStruct``) for
the connection's life. While poold relays a leased connection, its bytes must be
encrypted and decrypted by that same session, or libpq's record sequence numbers
and keys would no longer match the server's. So the relay calls ``SSL_read`` and
``SSL_write`` of the OpenSSL libpq was linked with (psycopg's binary wheel brings
its own libpq and libssl, beside the system's and Python's own) on libpq's
``SSL*``, and libpq's own BIO does the socket I/O underneath. Between two leases
libpq uses the session again (psycopg_pool's checks, close): the session's state
is whole at every record boundary, and a connection is handed back only at
ReadyForQuery with nothing unread or unsent.

Two things make a TLS transport differ from a socket's:

- decrypted bytes can sit inside OpenSSL (``SSL_pending``) while the socket
  says "nothing to read": a read runs ``SSL_read`` until it wants the socket
  (WANT_READ), and resuming a paused read looks at what OpenSSL holds first;
- ``SSL_read`` may need to write (a TLS 1.3 KeyUpdate answer) and ``SSL_write``
  to read: either waits for the socket condition OpenSSL names.

While the transport has the session, partial writes and a moving write buffer are
allowed on it (``SSL_MODE_ENABLE_PARTIAL_WRITE``, ``SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER``),
so a write behaves like ``send``; the modes libpq had are restored at close.

``TlsTransport`` is the Python reference (ctypes, the event loop's reader and
writer callbacks); ``_sockio.SocketTransport`` with a session does the same in C
(``_servertls.c``), where it was built.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import re
import socket
import ssl
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: OpenSSL's SSL_get_error codes
SSL_ERROR_SSL, SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE, SSL_ERROR_SYSCALL, SSL_ERROR_ZERO_RETURN = 1, 2, 3, 5, 6
#: SSL_ctrl commands and the modes the transport turns on while it has the session
SSL_CTRL_MODE, SSL_CTRL_CLEAR_MODE = 33, 78
SSL_MODE_ENABLE_PARTIAL_WRITE, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER = 0x1, 0x2
RELAY_MODES = SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER

READ_SIZE = 256 * 1024
HIGH_WATER = 64 * 1024  # asyncio's default write buffer limits


#: libpq's sslmode values
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
#: libpq's sslnegotiation values (libpq 17+): direct starts the TLS handshake at once,
#: without the SSLRequest round trip (PostgreSQL 17+ servers), and needs one of DIRECT_SSLMODES
SSLNEGOTIATIONS = ("postgres", "direct")
DIRECT_SSLMODES = ("require", "verify-ca", "verify-full")
#: DSN keys naming files libpq reads for TLS
TLS_FILES = ("sslrootcert", "sslcert", "sslkey", "sslcrl")


def dsn_problems(info: dict[str, str]) -> list[str]:
    """What libpq would refuse in a DSN's TLS settings, said at config check
    rather than at every connect: an unknown sslmode or sslnegotiation, direct
    negotiation (the DSN's, else PGSSLNEGOTIATION's) under a weaker sslmode than
    require (the DSN's, else PGSSLMODE's, else libpq's default: verify-full with
    sslrootcert=system, prefer otherwise), a file that is not there, and a private key
    others may read (libpq's rule: 0600 or less when poold's user owns it, 0640 or
    less when root does)."""
    problems = []
    mode = info.get("sslmode")
    if mode is not None and mode not in SSLMODES:
        problems.append(f"invalid sslmode value: \"{mode}\" (one of {', '.join(SSLMODES)})")
    negotiation = info.get("sslnegotiation") or os.environ.get("PGSSLNEGOTIATION")
    if negotiation is not None and negotiation not in SSLNEGOTIATIONS:
        problems.append(f"invalid sslnegotiation value: \"{negotiation}\" (one of {', '.join(SSLNEGOTIATIONS)})")
    # libpq's default sslmode: verify-full with sslrootcert=system, else prefer
    rootcert = info.get("sslrootcert") or os.environ.get("PGSSLROOTCERT")
    effective_mode = mode or os.environ.get("PGSSLMODE") or ("verify-full" if rootcert == "system" else "prefer")
    if negotiation == "direct" and effective_mode in SSLMODES and effective_mode not in DIRECT_SSLMODES:
        problems.append(f"weak sslmode \"{effective_mode}\" may not be used with sslnegotiation=direct "
                        "(use \"require\", \"verify-ca\", or \"verify-full\")")  # libpq's words
    for key in TLS_FILES:
        path = info.get(key)
        if not path or (key == "sslrootcert" and path == "system"):
            continue
        try:
            st = os.stat(path)
        except OSError as exc:
            problems.append(f"{key}: cannot read \"{path}\": {exc.strerror}")
            continue
        mine, roots = st.st_uid == os.geteuid() and st.st_mode & 0o077, st.st_uid == 0 and st.st_mode & 0o037
        if key == "sslkey" and (mine or roots):  # libpq's check, word for word
            problems.append(f"{key}: private key file \"{path}\" has group or world access; file must have "
                            "permissions u=rw (0600) or less if owned by the current user, or permissions "
                            "u=rw,g=r (0640) or less if owned by root")
    return problems


#: DSN keys of TLS that an older libpq does not know, with the libpq major version that brought them
NEWER_KEYS = {"sslnegotiation": 17}


def older_libpq_hint(message: str) -> str:
    """What to add to libpq's ``invalid connection option "sslnegotiation"`` when the
    libpq in use predates the key (the system's libpq under PSYCOPG_IMPL=python can);
    empty for any other message."""
    from psycopg import pq

    for key, major in NEWER_KEYS.items():
        if f'invalid connection option "{key}"' in message:
            return f" ({key} needs libpq {major} or later; poold runs with libpq {pq.version() // 10000})"
    return ""


#: libpq's words for a server that hung up during the TLS handshake (OpenSSL 3's, 1.1's)
_HUNG_UP = re.compile(r"SSL error: unexpected eof while reading|SSL SYSCALL error: EOF detected")


def explain_direct_failure(message: str, info: Mapping[str, str]) -> str:
    """libpq's words when a server hangs up on a direct TLS handshake, with what they
    mean: a server before PostgreSQL 17 reads the handshake as a startup packet and
    refuses it, and a 17+ without ssl refuses it too. Any other message comes back as it was."""
    found = _HUNG_UP.search(message) if info.get("sslnegotiation") == "direct" else None
    if found is None:
        return message
    meaning = ("sslnegotiation=direct: the server closed the connection at the TLS handshake; "
               "direct needs PostgreSQL 17 or later, with ssl = on")
    return f"{message[:found.end()]} ({meaning}){message[found.end():]}"


#: libpq's words for a failed verification, and where it says which server
VERIFY_FAILED = "certificate verify failed"
_FAILED_AT = re.compile(r'connection to server at "([^"]+)"(?: \(([^)]+)\))?, port (\d+) failed: SSL error: '
                        + VERIFY_FAILED)
#: how long the probe that asks OpenSSL why may take
PROBE_TIMEOUT = 3.0


async def explain_verify_failure(message: str, info: Mapping[str, str]) -> str:
    """libpq's "certificate verify failed" with OpenSSL's reason added ("certificate
    has expired", "unable to get local issuer certificate", a host name mismatch),
    which libpq does not pass on: one handshake of poold's own with the DSN's CA file,
    CRL and sslmode, to the server libpq names. Any other message comes back as it was."""
    found = _FAILED_AT.search(message)
    if found is None:
        return message
    host, address, port = found.group(1), found.group(2) or found.group(1), int(found.group(3))
    try:
        reason = await asyncio.wait_for(asyncio.to_thread(_verify_reason, host, address, port, dict(info)),
                                        PROBE_TIMEOUT + 1)
    except (OSError, TimeoutError, ssl.SSLError):
        return message
    if not reason:
        return message
    return message.replace(VERIFY_FAILED, f"{VERIFY_FAILED}: {reason}", 1)


def _verify_reason(host: str, address: str, port: int, info: dict[str, str]) -> str | None:
    """OpenSSL's verify result for the server at ``address``:``port``, as libpq would
    verify it with ``info``'s settings; None when the handshake verifies."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = info.get("sslmode") == "verify-full"
    root = info.get("sslrootcert") or os.path.expanduser("~/.postgresql/root.crt")
    if root == "system":
        ctx.load_default_certs()
    else:
        ctx.load_verify_locations(cafile=root)
    if info.get("sslcrl"):
        ctx.load_verify_locations(cafile=info["sslcrl"])
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    with socket.create_connection((address, port), timeout=PROBE_TIMEOUT) as sock:
        if info.get("sslnegotiation") != "direct":
            sock.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
            if sock.recv(1) != b"S":
                return None
        try:
            with ctx.wrap_socket(sock, server_hostname=host if ctx.check_hostname else None):
                return None
        except ssl.SSLCertVerificationError as exc:
            return str(exc.verify_message)


class TlsError(ConnectionError):
    """OpenSSL failed a read or write on a server leg (a bad record, a reset)."""


@dataclass(frozen=True)
class OpenSsl:
    """The OpenSSL functions of one libpq (``functions(libpq_path)``), as ctypes
    callables and as addresses for the C transport."""

    SSL_read: Any
    SSL_write: Any
    SSL_get_error: Any
    SSL_pending: Any
    SSL_ctrl: Any
    ERR_clear_error: Any
    ERR_get_error: Any
    ERR_error_string_n: Any
    SSL_has_pending: Any
    SSL_get_read_ahead: Any
    SSL_set_read_ahead: Any

    def addresses(self) -> tuple[int, ...]:
        """The functions' addresses, in the order ``_servertls.c``'s ``bind`` takes them."""
        return tuple(ctypes.cast(getattr(self, f), ctypes.c_void_p).value or 0 for f in (
            "SSL_read", "SSL_write", "SSL_get_error", "SSL_pending", "SSL_ctrl", "ERR_clear_error",
            "ERR_get_error", "ERR_error_string_n", "SSL_has_pending", "SSL_get_read_ahead", "SSL_set_read_ahead"))

    def error_text(self, otherwise: str = "TLS error") -> str:
        """OpenSSL's queued error, as text (and the queue cleared); ``otherwise`` when none is."""
        code = self.ERR_get_error()
        self.ERR_clear_error()
        if not code:
            return otherwise
        buf = ctypes.create_string_buffer(256)
        self.ERR_error_string_n(code, buf, len(buf))
        return buf.value.decode(errors="replace")


@functools.cache
def functions(libpq_path: str) -> OpenSsl:
    """OpenSSL's functions as libpq at ``libpq_path`` sees them.

    dlsym on libpq's handle searches libpq and then the libraries it was linked
    with, in load order: so these are the libssl and libcrypto that made libpq's
    sessions, not Python's ``ssl`` module's nor any other in the process.
    """
    lib = ctypes.CDLL(libpq_path)
    p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    signatures: dict[str, tuple[tuple[Any, ...], Any]] = {
        "SSL_read": ((p, p, i), i),
        "SSL_write": ((p, p, i), i),
        "SSL_get_error": ((p, i), i),
        "SSL_pending": ((p,), i),
        "SSL_ctrl": ((p, i, ctypes.c_long, p), ctypes.c_long),
        "ERR_clear_error": ((), None),
        "ERR_get_error": ((), ctypes.c_ulong),
        "ERR_error_string_n": ((ctypes.c_ulong, p, s), None),
        "SSL_has_pending": ((p,), i),
        "SSL_get_read_ahead": ((p,), i),
        "SSL_set_read_ahead": ((p, i), None),
    }
    found = {}
    for name, (argtypes, restype) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
        found[name] = fn
    return OpenSsl(**found)


class TlsTransport(asyncio.Transport):
    """An asyncio transport for a server leg whose bytes go through libpq's TLS
    session ``ssl`` (an ``SSL*``); ``sock`` is poold's duplicate of libpq's socket,
    watched for readiness and closed at the end (the session stays libpq's)."""

    def __init__(self, sock: socket.socket, ssl: int, lib: OpenSsl, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._sock, self._fd, self._ssl, self._lib = sock, sock.fileno(), ctypes.c_void_p(ssl), lib
        self._protocol = protocol
        self._wbuf = bytearray()
        self._buffer = ctypes.create_string_buffer(READ_SIZE)
        self._reading = True
        self._closing = self._closed = self._writing_paused = False
        self._read_wants_write = self._write_wants_read = False
        self._high, self._low = HIGH_WATER, HIGH_WATER // 4
        self._peer = sock.getpeername() if sock.family in (socket.AF_INET, socket.AF_INET6) else ""
        self._added_modes = RELAY_MODES & ~lib.SSL_ctrl(self._ssl, SSL_CTRL_MODE, 0, None)
        lib.SSL_ctrl(self._ssl, SSL_CTRL_MODE, RELAY_MODES, None)
        # the function, not SSL_ctrl: from OpenSSL 3.2 only it reaches the record layer in use
        self._read_ahead = lib.SSL_get_read_ahead(self._ssl)
        lib.SSL_set_read_ahead(self._ssl, 1)
        self._watching_read = self._watching_write = False
        protocol.connection_made(self)  # before adopt returns, as connect_accepted_socket's
        self._rewatch()

    # -- readiness: what the socket must become for OpenSSL to go on

    def _rewatch(self) -> None:
        if self._closed:
            return
        want_read = (self._reading and not self._closing) or self._write_wants_read
        want_write = bool(self._wbuf) or self._read_wants_write
        if want_read != self._watching_read:
            if want_read:
                self._loop.add_reader(self._fd, self._on_readable)
            else:
                self._loop.remove_reader(self._fd)
            self._watching_read = want_read
        if want_write != self._watching_write:
            if want_write:
                self._loop.add_writer(self._fd, self._on_writable)
            else:
                self._loop.remove_writer(self._fd)
            self._watching_write = want_write

    def _on_readable(self) -> None:
        if self._write_wants_read:
            self._write_wants_read = False
            self._flush()
        if self._reading and not self._closing and not self._closed:
            self._read()
        self._rewatch()

    def _on_writable(self) -> None:
        if self._read_wants_write:
            self._read_wants_write = False
            if self._reading and not self._closing:
                self._read()
        if self._wbuf and not self._closed:
            self._flush()
        self._rewatch()

    # -- reading

    def _read(self) -> None:
        """SSL_read while OpenSSL holds bytes (decrypted, or read ahead and not yet
        decrypted): nothing stays behind in it while the socket has nothing more to
        say, and no read is spent to learn that the socket is empty. Each full
        buffer goes to the protocol at once, which may pause reading."""
        lib, buf, ssl = self._lib, self._buffer, self._ssl
        while self._reading and not self._closing and not self._closed:
            got, err = 0, 0
            while got < READ_SIZE:
                lib.ERR_clear_error()
                n = lib.SSL_read(ssl, ctypes.byref(buf, got), READ_SIZE - got)
                if n <= 0:
                    err = lib.SSL_get_error(ssl, n)
                    break
                got += n
                if not lib.SSL_has_pending(ssl):
                    break  # the socket announces what comes next
            if got:
                self._protocol.data_received(buf.raw[:got])
            if not err:
                if got == READ_SIZE and lib.SSL_has_pending(ssl):
                    continue  # the buffer was full, and OpenSSL holds more
                return
            if err == SSL_ERROR_WANT_READ:
                return
            if err == SSL_ERROR_WANT_WRITE:
                self._read_wants_write = True
                return
            if self._closed:
                return
            if err == SSL_ERROR_ZERO_RETURN or (err == SSL_ERROR_SYSCALL and lib.ERR_get_error() == 0):
                self._eof()  # close_notify, or the peer closed the socket
                return
            self._fail(TlsError(lib.error_text()))
            return

    def _eof(self) -> None:
        self._reading = False
        if not self._protocol.eof_received():
            self.close()

    # -- writing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or not data:
            return
        self._wbuf += data
        if len(self._wbuf) == len(data) and not self._write_wants_read:
            self._flush()
        if self._closed:
            return
        self._rewatch()
        if not self._writing_paused and len(self._wbuf) > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _flush(self) -> None:
        lib = self._lib
        while self._wbuf:
            chunk = bytes(self._wbuf[:READ_SIZE])
            lib.ERR_clear_error()
            n = lib.SSL_write(self._ssl, chunk, len(chunk))
            if n > 0:
                del self._wbuf[:n]
                continue
            err = lib.SSL_get_error(self._ssl, n)
            if err == SSL_ERROR_WANT_WRITE:
                break
            if err == SSL_ERROR_WANT_READ:
                self._write_wants_read = True
                break
            self._fail(TlsError(lib.error_text("TLS error" if err == SSL_ERROR_SSL else "server connection lost while writing")))
            return
        if self._writing_paused and len(self._wbuf) <= self._low:
            self._writing_paused = False
            self._protocol.resume_writing()
        if not self._wbuf and self._closing:
            self._finish(None)

    # -- the rest of asyncio.Transport

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def can_write_eof(self) -> bool:
        return False  # TLS has no half close that libpq would survive

    def pause_reading(self) -> None:
        self._reading = False
        self._rewatch()

    def resume_reading(self) -> None:
        if self._reading or self._closed:
            return
        self._reading = True
        self._rewatch()
        if self._lib.SSL_has_pending(self._ssl):  # read already: the socket will not say so again
            self._loop.call_soon(self._read_held)

    def _read_held(self) -> None:
        if self._reading and not self._closing and not self._closed:
            self._read()
            self._rewatch()

    def is_reading(self) -> bool:
        return self._reading and not self._closing and not self._closed

    def is_closing(self) -> bool:
        return self._closing or self._closed

    def close(self) -> None:
        if self._closing or self._closed:
            return
        self._closing = True
        if not self._wbuf:
            self._finish(None)
        else:
            self._rewatch()

    def abort(self) -> None:
        self._finish(None)

    def get_write_buffer_size(self) -> int:
        return len(self._wbuf)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        if name == "socket":
            return self._sock
        return default

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    # -- the end: the duplicate descriptor goes, the session stays libpq's

    def _fail(self, exc: Exception) -> None:
        self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = self._closing = True
        if self._watching_read:
            self._loop.remove_reader(self._fd)
        if self._watching_write:
            self._loop.remove_writer(self._fd)
        self._watching_read = self._watching_write = False
        self._wbuf.clear()
        self._lib.SSL_ctrl(self._ssl, SSL_CTRL_CLEAR_MODE, self._added_modes, None)
        self._lib.SSL_set_read_ahead(self._ssl, self._read_ahead)
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)


def adopt(
    sock: socket.socket, ssl: int, lib: OpenSsl, protocol_factory: Callable[[], asyncio.Protocol]
) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """The Python reference: a TlsTransport on ``sock`` through the session ``ssl``."""
    protocol = protocol_factory()
    return TlsTransport(sock, ssl, lib, protocol), protocol
