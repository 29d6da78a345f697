"""Named prepared statements carried across server connections (transaction mode).

Theory of operation
-------------------
In transaction mode a client's statements outlive the server connection it
prepared them on. Each pool keeps a :class:`Registry` of statements keyed on
their Parse text and parameter types (the bytes after the name), each under a
server-side name unique to poold (``poold_<n>``). A client's names map to
registry entries (:class:`ClientStatements`); each server connection keeps an
LRU of the entries prepared on it (:class:`LinkStatements`), bounded by the
pool's ``max_prepared_statements``.

Client -> server (``ClientStatements.feed``): Parse, Bind, Describe('S') and
Close('S') with a non-empty statement name are rewritten to the server name.
A Parse of what this server connection has already is not sent (ParseComplete
is synthesized); a Bind or Describe of what it lacks is preceded by poold's own
Parse (its ParseComplete swallowed), after Close of the least recently used
entries past the limit (their CloseComplete swallowed). A client's Close is
answered by poold. Everything else passes unchanged.

Server -> client (``statements.LinkStatements.filter``): while poold has
messages of its own in flight, every reply is matched to the request it
answers through a queue of expectations (see ``statements.py``); synthesized
replies land where PostgreSQL would have put them, and what an error makes the
server skip is undone, as PostgreSQL forgets it.

The relay keeps its fast path for the common chunk (``clean``): whole messages,
the last a sync point, none naming a statement, and nothing of poold's in
flight. Only what is not clean comes here.

What PgBouncer does not: a client reusing an open name gets PostgreSQL's own
42P05 and its batch is skipped by the server itself (poold sends a Parse that
fails, and answers its error with the client's); a Parse that fails leaves
nothing; a Bind failing with 0A000 (the result type changed under a cached
plan) marks the statement stale on that server connection, and its next use
there closes and prepares it again; a client naming one of poold's server names
that it has not prepared (Bind, Describe, SQL or unnamed-Parse DEALLOCATE) gets
PostgreSQL's 26000 for it, the same failing Parse (or Query) standing in, and
never reaches the statement of another client that the name is.
"""

from __future__ import annotations

import re

from .protocol import messages
from .statements import (
    ABSENT,
    BIND,
    DEALLOCATE,
    HEADER,
    OWN_PARSE,
    PARSE,
    REFUSE,
    REPLY,
    SYNC,
    SYNC_POINTS,
    Expect,
    frame,
)
from .statements import CLOSE_COMPLETE as CLOSE_COMPLETE
from .statements import PARSE_COMPLETE as PARSE_COMPLETE
from .statements import LinkStatements as LinkStatements
from .statements import Registry as Registry
from .statements import Statement as Statement

_P, _B, _D, _C, _Q = (ord(c) for c in "PBDCQ")
_STATEMENT_S = ord("S")
#: requests that may name a statement
_NAMING = frozenset(b"PBDC")
#: the first bytes of a command text that may drop statements (DEALLOCATE, DISCARD), or may hide one
_DROPPING = frozenset((b"deal", b"disc"))
_LEADING = frozenset(b" \t\r\n-/")
#: what may end a Query's text after its last statement
_TRAILING = frozenset(b"; \t\r\n\0")

#: poold's Parse that fails (column "poold_refused" does not exist, 42703), for an
#: error poold answers in the server's stead so that the server skips the batch
_FAILING_PARSE = frame(b"P", b"poold_refused\0SELECT poold_refused\0\0\0")

#: a Query that is only DEALLOCATE [PREPARE] name (unquoted names fold to lower case, as PostgreSQL's do)
_DEALLOCATE_NAME = re.compile(
    rb'\s*deallocate\s+(?:prepare\s+)?(?:"((?:[^"]|"")+)"|([a-z_][a-z0-9_$]*))\s*;?\s*\0', re.IGNORECASE)
#: what stands for a statement the connection lacks: prepared then deallocated, the first tag swallowed
_DEALLOCATE_ABSENT = b"PREPARE poold_deallocated AS SELECT; DEALLOCATE poold_deallocated"
#: the start of the server-side names poold gives statements (statements.Registry): a client
#: that names one it has not prepared itself is told it does not exist, as PostgreSQL would
#: tell it, rather than reach a statement of poold's (another client's) on the connection
SERVER_NAME_PREFIX = b"poold_"
#: poold's Query that fails (42703), for an error poold answers in the server's stead
_FAILING_QUERY = frame(b"Q", b"SELECT poold_refused\0")


def clean(data: bytes) -> bool:
    """Whether a client chunk may go to the server as it is: whole messages, the
    last one a sync point, none naming a statement, no command text that may be
    DEALLOCATE or DISCARD. Cheap: a header walk and a byte or two per message.
    ``_relaycore.c``, ps_clean, is the same walk."""
    n = len(data)
    pos = 0
    last = -1
    while pos < n:
        if n - pos < 5:
            return False
        t, length = HEADER.unpack_from(data, pos)
        end = pos + 1 + length
        if length < 4 or end > n:
            return False
        start = pos + 5
        if t in _NAMING:
            if _names_statement(data, t, start, end):
                return False
        elif t == _Q and _query_may_drop(data, start, end):
            return False
        last = t
        pos = end
    return last in SYNC_POINTS


def _names_statement(data: bytes, t: int, start: int, end: int) -> bool:
    """A Parse, Bind, Describe or Close naming a statement (or an unnamed Parse
    whose text may drop statements); True too for what is malformed."""
    if start >= end:
        return True
    if t == _P:
        return data[start] != 0 or _may_drop(data, start + 1, end)
    if t == _B:
        portal_end = data.find(b"\0", start, end)
        return portal_end < 0 or portal_end + 1 >= end or data[portal_end + 1] != 0
    # Describe, Close: 'S' or 'P', then the name
    return data[start] == _STATEMENT_S and (start + 1 >= end or data[start + 1] != 0)


def _may_drop(data: bytes | bytearray, start: int, end: int) -> bool:
    """A command text that starts with DEAL or DISC in any case, or with white space or a comment."""
    if start >= end:
        return False
    if data[start] in _LEADING:
        return True
    return bytes(data[start : min(start + 4, end)]).lower() in _DROPPING


def _query_may_drop(data: bytes | bytearray, start: int, end: int) -> bool:
    """A whole Query's text (``start`` to its NUL at ``end - 1``) that may be or hold
    DEALLOCATE or DISCARD: its first statement may (``_may_drop``), or it has more than
    one statement (a ';' with more than white space or ';' after it) and names either
    word in any case: then poold watches its tags (and reads its replies in Python,
    so the common multi-statement Query, a script's, does not come here)."""
    if _may_drop(data, start, end):
        return True
    last = end
    while last > start and data[last - 1] in _TRAILING:
        last -= 1
    if data.find(b";", start, last) < 0:
        return False
    text = bytes(data[start:last]).lower()
    return b"deallocate" in text or b"discard" in text


def _poolds(link: LinkStatements, name: bytes) -> bool:
    """Whether ``name`` is the server name of one of poold's statements on ``link``
    (a client's own name that only looks like one, e.g. a pinned client's SQL
    PREPARE, is the client's)."""
    return name.startswith(SERVER_NAME_PREFIX) and any(stmt.name == name for stmt in link.lru)


def _name_of(found: re.Match[bytes]) -> bytes:
    """The statement name a _DEALLOCATE_NAME match names, as PostgreSQL reads it."""
    quoted, plain = found.groups()
    return quoted.replace(b'""', b'"') if quoted is not None else plain.lower()


def _does_not_exist(name: bytes) -> bytes:
    """PostgreSQL's error for a statement name the session does not have."""
    return messages.error_response("26000", f'prepared statement "{name.decode(errors="replace")}" does not exist',
                                   severity="ERROR")


class ClientStatements:
    """A client's statement names, and the rewriting of its requests (sans-IO)."""

    __slots__ = ("_partial", "_skip", "_want", "names", "registry")

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.names: dict[bytes, Statement] = {}
        self._partial = bytearray()  # a naming request (or a header) not complete yet
        self._want = 0  # the bytes _partial must reach before it is looked at again (0: any)
        self._skip = 0  # bytes of a passing request still to come

    @property
    def mid(self) -> bool:
        """Whether the client's stream stopped inside a message."""
        return bool(self._partial or self._skip)

    def feed(self, link: LinkStatements, data: bytes) -> bytes:
        """Rewrite a chunk of client requests for ``link``: the bytes for the server.

        Expectations for every request go to ``link``'s queue; synthesized replies
        wait there (``LinkStatements.ready``)."""
        out: list[bytes] = []
        if self._partial:
            self._partial += data
            if len(self._partial) < self._want:  # a large named Parse: read on, look once it is whole
                return b""
            buf: bytes | bytearray = self._partial
            self._partial = bytearray()
            self._want = 0
        else:
            buf = data
        n = len(buf)
        pos = 0
        if self._skip:
            k = min(self._skip, n)
            out.append(bytes(buf[:k]))
            self._skip -= k
            pos = k
        while pos < n:
            if n - pos < 5:
                self._partial += buf[pos:]
                break
            t, length = HEADER.unpack_from(buf, pos)
            end = pos + 1 + length
            if t in _NAMING:
                if end > n:
                    # A large Bind (or unnamed Parse) streams once its names are read;
                    # the rest waits, whole, in _partial (read on linearly: _want).
                    head = self._head(link, t, buf, pos, end, n, out)
                    if head:
                        self._skip = end - n
                    else:
                        self._partial += buf[pos:]
                        self._want = end - pos if length >= 4 else 0
                    break
                self._request(link, t, bytes(buf[pos:end]), out)
            elif t == _Q and length < 512 and end <= n and self._deallocate(link, bytes(buf[pos + 5 : end]), out):
                pass
            else:
                link.expect_request(t)
                if end > n:
                    out.append(bytes(buf[pos:]))
                    self._skip = end - n
                    break
                out.append(bytes(buf[pos:end]))
            pos = end
        return b"".join(out)

    def rename(self, link: LinkStatements, data: bytes) -> bytes | None:
        """The common case, with no queue: whole messages ending at a sync point whose
        only named requests are Binds and Describes of statements ``link`` has ready.
        The same bytes under poold's names; None for anything else (``feed`` has it).
        The statements bound are kept (``link.bound``): a 0A000 that follows marks them
        stale. ``_relaycore.c``, ps_rename, is the same walk."""
        n = len(data)
        pos = done = 0
        last = -1
        out: list[bytes] = []
        bound: list[Statement] = []
        lru = link.lru
        while pos < n:
            if n - pos < 5:
                return None
            t, length = HEADER.unpack_from(data, pos)
            end = pos + 1 + length
            if length < 4 or end > n:
                return None
            start = pos + 5
            if t == _B or (t == _D and start + 1 < end and data[start] == _STATEMENT_S and data[start + 1] != 0):
                if t == _B:
                    portal_end = data.find(b"\0", start, end)
                    if portal_end < 0 or portal_end + 1 >= end:
                        return None
                    name_start = portal_end + 1
                else:
                    name_start = start + 1
                name_end = data.find(b"\0", name_start, end)
                if name_end < 0:
                    return None
                if name_end > name_start:
                    stmt = self.names.get(data[name_start:name_end])
                    if stmt is None or lru.get(stmt) is not False:
                        return None
                    lru.move_to_end(stmt)
                    bound.append(stmt)
                    out.append(data[done:pos])
                    body = data[start:name_start] + stmt.name + data[name_end:end]
                    out.append(frame(bytes((t,)), body))
                    done = end
            elif t in _NAMING:
                if _names_statement(data, t, start, end):
                    return None
            elif t == _Q and _query_may_drop(data, start, end):
                return None
            last = t
            pos = end
        if last not in SYNC_POINTS or not bound:
            return None
        out.append(data[done:])
        self.registry.hits += len(bound)
        link.bound = bound
        return b"".join(out)

    def _head(self, link: LinkStatements, t: int, buf: bytes | bytearray, pos: int, end: int, n: int,
              out: list[bytes]) -> bool:
        """The start of a Bind or unnamed Parse that ends in a later chunk: sent (renamed)
        when its names are all here, the rest of it to stream through; False otherwise
        (a named Parse, whose whole text is the registry's key, or names cut short)."""
        start = pos + 5
        if t == _P:
            if n - start < 5 or buf[start] != 0 or _may_drop(buf, start + 1, min(n, start + 5)):
                return False
            link.expect_request(t)
            out.append(bytes(buf[pos:n]))
            return True
        if t != _B:
            return False
        portal_end = buf.find(b"\0", start, n)
        name_end = buf.find(b"\0", portal_end + 1, n) if portal_end >= 0 else -1
        if name_end < 0:
            return False
        name = bytes(buf[portal_end + 1 : name_end])
        stmt = self.names.get(name) if name else None
        if stmt is None and _poolds(link, name):
            return False  # one of poold's statements: refused once whole (_request)
        if stmt is None:  # unnamed, or unknown to this client (the server answers 26000)
            link.expect_request(t)
            out.append(bytes(buf[pos:n]))
            return True
        link.prepare(stmt, out)
        length = end - pos - 1 - (name_end - portal_end - 1) + len(stmt.name)
        out.append(HEADER.pack(_B, length) + bytes(buf[start : portal_end + 1]) + stmt.name + bytes(buf[name_end:n]))
        link.push(Expect(BIND, stmt))
        return True

    def _request(self, link: LinkStatements, t: int, msg: bytes, out: list[bytes]) -> None:
        """A whole Parse, Bind, Describe or Close."""
        end = len(msg)
        if t == _P:
            name_end = msg.find(b"\0", 5)
            if name_end > 5:
                self._parse(link, msg[5:name_end], msg[name_end + 1 :], out)
                return
            found = _DEALLOCATE_NAME.fullmatch(msg, 6, msg.find(b"\0", 6) + 1) if name_end == 5 else None
            name = _name_of(found) if found is not None else b""
            if _poolds(link, name):  # DEALLOCATE poold_<n>: a failed transaction's 25P02 stays (REFUSE)
                self._absent(link, name, out, REFUSE)
                return
        elif t == _B:
            portal_end = msg.find(b"\0", 5)
            name_end = msg.find(b"\0", portal_end + 1) if portal_end >= 0 else -1
            name = msg[portal_end + 1 : name_end] if name_end > portal_end + 1 else b""
            stmt = self.names.get(name) if name else None
            if stmt is not None:
                link.prepare(stmt, out)
                out.append(frame(b"B", msg[5 : portal_end + 1] + stmt.name + msg[name_end:]))
                link.push(Expect(BIND, stmt))
                return
            if _poolds(link, name):
                self._absent(link, name, out)
                return
        elif end > 6 and msg[5] == _STATEMENT_S and msg[6] != 0:  # Describe or Close of a statement
            name = msg[6 : end - 1]
            if t == _C:
                stmt = self.names.pop(name, None)  # its reference moves to the reply: undone with it
                link.push(Expect(REPLY, stmt, self, name, CLOSE_COMPLETE))
                return
            stmt = self.names.get(name)
            if stmt is None and _poolds(link, name):
                self._absent(link, name, out)
                return
            if stmt is not None:
                link.prepare(stmt, out)
                out.append(frame(b"D", b"S" + stmt.name + b"\0"))
                link.expect_request(t)
                return
        # unnamed, unknown to this client (the server answers 26000 in its words), or malformed
        link.expect_request(t)
        out.append(msg)

    def _deallocate(self, link: LinkStatements, text: bytes, out: list[bytes]) -> bool:
        """SQL DEALLOCATE of one of the client's protocol-level names: run on the server
        under poold's name (or, where the connection lacks it, on a stand-in), the name
        forgotten at its CommandComplete. False: not that (the Query goes as it is)."""
        found = _DEALLOCATE_NAME.fullmatch(text)
        if found is None:
            return False
        name = _name_of(found)
        stmt = self.names.get(name)
        if stmt is None and _poolds(link, name):  # one of poold's: as absent
            out.append(_FAILING_QUERY)
            link.push(Expect(REFUSE, data=_does_not_exist(name)))
            link.push(Expect(SYNC))
            return True
        if stmt is None:
            return False  # the server answers 26000 in the client's words
        if stmt in link.lru:
            out.append(frame(b"Q", b"DEALLOCATE " + stmt.name + b"\0"))
        else:
            out.append(frame(b"Q", _DEALLOCATE_ABSENT + b"\0"))
            link.push(Expect(OWN_PARSE))  # the stand-in's PREPARE tag, swallowed
        link.push(Expect(DEALLOCATE, stmt, self, name))
        link.push(Expect(SYNC))
        return True

    def _absent(self, link: LinkStatements, name: bytes, out: list[bytes], kind: int = ABSENT) -> None:
        """A Bind, Describe or unnamed Parse (of DEALLOCATE) naming one of poold's own
        statements, which this client has not prepared: PostgreSQL's 26000 for it, the
        server skipping the batch after poold's failing Parse. A Bind or Describe gets it
        in a failed transaction too (PostgreSQL looks the name up first: ABSENT); a
        DEALLOCATE there gets the server's 25P02 (REFUSE)."""
        out.append(_FAILING_PARSE)
        link.push(Expect(kind, data=_does_not_exist(name)))

    def _parse(self, link: LinkStatements, name: bytes, key: bytes, out: list[bytes]) -> None:
        registry = self.registry
        error = None
        if name in self.names:
            error = messages.error_response("42P05", f'prepared statement "{name.decode(errors="replace")}" '
                                            "already exists", severity="ERROR")
        else:
            cap = registry.settings()[1]
            if cap and len(self.names) >= cap:
                error = messages.error_response(
                    "53400", f"poold: too many prepared statements for this client (max_client_prepared_statements"
                    f" is {cap})", severity="ERROR", hint="Close or DEALLOCATE statements the client no longer uses.")
        if error is not None:
            out.append(_FAILING_PARSE)
            link.push(Expect(REFUSE, data=error))
            return
        stmt = registry.statement(key)
        self.names[name] = stmt
        registry.hold(stmt)
        if link.has(stmt):
            registry.hits += 1
            link.push(Expect(REPLY, stmt, self, name, PARSE_COMPLETE))
        else:
            registry.misses += 1
            link.prepare(stmt, out, Expect(PARSE, stmt, self, name))

    def forget(self, name: bytes, stmt: Statement | None) -> None:
        """Drop ``name`` if it still means ``stmt`` (an undone Parse)."""
        if stmt is not None and self.names.get(name) is stmt:
            del self.names[name]
            self.registry.release(stmt)

    def clear(self) -> None:
        """DEALLOCATE ALL, DISCARD ALL, or the client is gone: every name released."""
        names, self.names = self.names, {}
        for stmt in names.values():
            self.registry.release(stmt)
