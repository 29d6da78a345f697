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

Server -> client (``LinkStatements.filter``): while poold has messages of its
own in flight, every reply is matched to the request it answers through a
queue of expectations, one entry per request in server order (runs of plain
requests counted in one entry). Each request owes one *terminal* reply
(ParseComplete, BindComplete, CloseComplete, RowDescription or NoData,
CommandComplete, EmptyQueryResponse, PortalSuspended) or, for a sync point,
ReadyForQuery. An ErrorResponse in an extended-query batch makes the server
skip to the next Sync: the entries up to it are dropped and what they had
recorded is undone (a failed Parse caches nothing), exactly as PostgreSQL
forgets them. Synthesized replies go out when they reach the head of the queue,
so they land where PostgreSQL would have put them.

The relay keeps its fast path for the common chunk (``clean``): whole messages,
the last a sync point, none naming a statement, and nothing of poold's in
flight. Only what is not clean comes here.

What PgBouncer does not: a client reusing an open name gets PostgreSQL's own
42P05 and its batch is skipped by the server itself (poold sends a Parse that
fails, and answers its error with the client's); a Parse that fails leaves
nothing; a Bind failing with 0A000 (the result type changed under a cached
plan) marks the statement stale on that server connection, and its next use
there closes and prepares it again.
"""

from __future__ import annotations

import re
import struct
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from .protocol import messages

if TYPE_CHECKING:
    from collections.abc import Callable

_HEADER = struct.Struct("!Bi")
_LENGTH = struct.Struct("!i")

PARSE_COMPLETE = b"1\0\0\0\4"
CLOSE_COMPLETE = b"3\0\0\0\4"

_P, _B, _D, _C, _Q, _Z, _E = (ord(c) for c in "PBDCQZE")
_STATEMENT_S = ord("S")
#: requests that may name a statement
_NAMING = frozenset(b"PBDC")
#: requests that owe one terminal reply: Parse, Bind, Describe, Close, Execute
_TERMINAL_REQUESTS = frozenset(b"PBDCE")
#: requests that owe a ReadyForQuery: Query, Sync, FunctionCall
_SYNC_POINTS = frozenset(b"QSF")
#: the replies that end a request's answer
_TERMINAL_REPLIES = frozenset(b"123TnCIs")
#: replies that may come at any time: NoticeResponse, NotificationResponse, ParameterStatus
_ASYNC_REPLIES = frozenset(b"NAS")
#: the first bytes of a command text that may drop statements (DEALLOCATE, DISCARD), or may hide one
_DROPPING = frozenset((b"deal", b"disc"))
_LEADING = frozenset(b" \t\r\n-/")
_DROPPED_ALL = frozenset((b"DEALLOCATE ALL", b"DISCARD ALL"))

def _message(t: bytes, body: bytes) -> bytes:
    return t + _LENGTH.pack(len(body) + 4) + body


#: poold's Parse that fails (column "poold_refused" does not exist, 42703), for an
#: error poold answers in the server's stead so that the server skips the batch
_FAILING_PARSE = _message(b"P", b"poold_refused\0SELECT poold_refused\0\0\0")
_REFUSED_SQLSTATE = "42703"

# Expectation kinds, in the order the server answers.
FORWARD = 0  # n plain requests: their terminal replies go to the client
SYNC = 1  # n sync points: their ReadyForQuery goes to the client
PARSE = 2  # the client's Parse of a statement new on this connection: forwarded
BIND = 3  # the client's Bind of a named statement: forwarded (0A000 marks it stale)
OWN_PARSE = 4  # poold's Parse before a use: swallowed
OWN_CLOSE = 5  # poold's Close (eviction, re-prepare): swallowed
REPLY = 6  # a reply poold gives itself (ParseComplete, CloseComplete)
REFUSE = 7  # poold's failing Parse: its error is replaced by ``data``
DEALLOCATE = 8  # SQL DEALLOCATE of a client's protocol-level name: its CommandComplete forgets the name

#: a Query that is only DEALLOCATE [PREPARE] name (unquoted names fold to lower case, as PostgreSQL's do)
_DEALLOCATE_NAME = re.compile(
    rb'\s*deallocate\s+(?:prepare\s+)?(?:"((?:[^"]|"")+)"|([a-z_][a-z0-9_$]*))\s*;?\s*\0', re.IGNORECASE)
#: what stands for a statement the connection lacks: prepared then deallocated, the first tag swallowed
_DEALLOCATE_ABSENT = b"PREPARE poold_deallocated AS SELECT; DEALLOCATE poold_deallocated"


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
        t, length = _HEADER.unpack_from(data, pos)
        end = pos + 1 + length
        if length < 4 or end > n:
            return False
        start = pos + 5
        if t in _NAMING:
            if _names_statement(data, t, start, end):
                return False
        elif t == _Q and _may_drop(data, start, end):
            return False
        last = t
        pos = end
    return last in _SYNC_POINTS


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


def _may_drop(data: bytes, start: int, end: int) -> bool:
    """A command text that starts with DEAL or DISC in any case, or with white space or a comment."""
    if start >= end:
        return False
    if data[start] in _LEADING:
        return True
    return bytes(data[start : min(start + 4, end)]).lower() in _DROPPING


class Statement:
    """One statement in a pool's registry: its server name and its Parse for that name."""

    __slots__ = ("key", "name", "parse", "users")

    def __init__(self, key: bytes, name: bytes) -> None:
        self.key = key  # the Parse body after the name: text, parameter count and types
        self.name = name
        self.parse = _message(b"P", name + b"\0" + key)
        self.users = 0  # client names and server connections holding it

    def __repr__(self) -> str:
        return f"Statement({self.name.decode()})"


class Registry:
    """A pool's statements and counters; entries live while a client or a server connection holds them."""

    __slots__ = ("_next", "by_key", "evictions", "hits", "misses", "reprepares", "settings")

    def __init__(self, settings: Callable[[], tuple[int, int]]) -> None:
        self.settings = settings  # () -> (max_prepared_statements, max_client_prepared_statements), read live
        self.by_key: dict[bytes, Statement] = {}
        self._next = 0
        self.hits = self.misses = self.evictions = self.reprepares = 0

    def statement(self, key: bytes) -> Statement:
        stmt = self.by_key.get(key)
        if stmt is None:
            self._next += 1
            stmt = self.by_key[key] = Statement(key, b"poold_%d" % self._next)
        return stmt

    def hold(self, stmt: Statement) -> None:
        stmt.users += 1

    def release(self, stmt: Statement) -> None:
        stmt.users -= 1
        if stmt.users <= 0 and self.by_key.get(stmt.key) is stmt:
            del self.by_key[stmt.key]

    def snapshot(self, on_servers: int) -> dict[str, int]:
        """The counters, and ``on_servers``: statements prepared on the pool's server connections now."""
        return {"statements": len(self.by_key), "server_statements": on_servers, "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions, "reprepares": self.reprepares}


class _Expect:
    """One entry of a server connection's queue of expected replies."""

    __slots__ = ("client", "data", "kind", "n", "name", "stmt")

    def __init__(self, kind: int, stmt: Statement | None = None, client: ClientStatements | None = None,
                 name: bytes = b"", data: bytes = b"") -> None:
        self.kind = kind
        self.n = 1
        self.stmt = stmt
        self.client = client
        self.name = name
        self.data = data


class ClientStatements:
    """A client's statement names, and the rewriting of its requests (sans-IO)."""

    __slots__ = ("_partial", "_skip", "names", "registry")

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.names: dict[bytes, Statement] = {}
        self._partial = bytearray()  # a naming request (or a header) not complete yet
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
            buf: bytes | bytearray = self._partial
            self._partial = bytearray()
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
            t, length = _HEADER.unpack_from(buf, pos)
            end = pos + 1 + length
            if t in _NAMING:
                if end > n:
                    self._partial += buf[pos:]
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
            t, length = _HEADER.unpack_from(data, pos)
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
                    out.append(_message(bytes((t,)), body))
                    done = end
            elif t in _NAMING:
                if _names_statement(data, t, start, end):
                    return None
            elif t == _Q and _may_drop(data, start, end):
                return None
            last = t
            pos = end
        if last not in _SYNC_POINTS or not bound:
            return None
        out.append(data[done:])
        self.registry.hits += len(bound)
        link.bound = bound
        return b"".join(out)

    def _request(self, link: LinkStatements, t: int, msg: bytes, out: list[bytes]) -> None:
        """A whole Parse, Bind, Describe or Close."""
        end = len(msg)
        if t == _P:
            name_end = msg.find(b"\0", 5)
            if name_end > 5:
                self._parse(link, msg[5:name_end], msg[name_end + 1 :], out)
                return
        elif t == _B:
            portal_end = msg.find(b"\0", 5)
            name_end = msg.find(b"\0", portal_end + 1) if portal_end >= 0 else -1
            stmt = self.names.get(msg[portal_end + 1 : name_end]) if name_end > portal_end + 1 else None
            if stmt is not None:
                link.prepare(stmt, out)
                out.append(_message(b"B", msg[5 : portal_end + 1] + stmt.name + msg[name_end:]))
                link.push(_Expect(BIND, stmt))
                return
        elif end > 6 and msg[5] == _STATEMENT_S and msg[6] != 0:  # Describe or Close of a statement
            name = msg[6 : end - 1]
            if t == _C:
                stmt = self.names.pop(name, None)  # its reference moves to the reply: undone with it
                link.push(_Expect(REPLY, stmt, self, name, CLOSE_COMPLETE))
                return
            stmt = self.names.get(name)
            if stmt is not None:
                link.prepare(stmt, out)
                out.append(_message(b"D", b"S" + stmt.name + b"\0"))
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
        quoted, plain = found.groups()
        name = quoted.replace(b'""', b'"') if quoted is not None else plain.lower()
        stmt = self.names.get(name)
        if stmt is None:
            return False  # the server answers 26000 in the client's words
        if stmt in link.lru:
            out.append(_message(b"Q", b"DEALLOCATE " + stmt.name + b"\0"))
        else:
            out.append(_message(b"Q", _DEALLOCATE_ABSENT + b"\0"))
            link.push(_Expect(OWN_PARSE))  # the stand-in's PREPARE tag, swallowed
        link.push(_Expect(DEALLOCATE, stmt, self, name))
        link.push(_Expect(SYNC))
        return True

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
            link.push(_Expect(REFUSE, data=error))
            return
        stmt = registry.statement(key)
        self.names[name] = stmt
        registry.hold(stmt)
        if link.has(stmt):
            registry.hits += 1
            link.push(_Expect(REPLY, stmt, self, name, PARSE_COMPLETE))
        else:
            registry.misses += 1
            link.prepare(stmt, out, _Expect(PARSE, stmt, self, name))

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


class LinkStatements:
    """A server connection's statements (an LRU) and its queue of expected replies (sans-IO)."""

    __slots__ = ("bound", "carried", "failed", "held", "held_syncs", "lru", "owed", "queue", "registry", "tail")

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.lru: OrderedDict[Statement, bool] = OrderedDict()  # statement -> stale (its result type changed)
        self.queue: deque[_Expect] = deque()
        self.failed = False  # an error in the current batch: the server skips to its Sync
        self.tail = bytearray()  # a reply not complete yet, while the queue is not empty
        self.held: list[bytes] = []  # client requests waiting for the server's stream to reach a boundary
        self.held_syncs = 0
        self.owed = 0  # while requests are fed: ReadyForQuery owed for earlier ones, sent as they were
        self.bound: list[Statement] = []  # the statements of the last renamed chunk (ClientStatements.rename)
        self.carried = False  # kept with its connection in psycopg_pool at least once (pools.py)

    @property
    def busy(self) -> bool:
        """Whether this connection's traffic must come here rather than take the fast path."""
        return bool(self.queue or self.tail or self.held)

    def has(self, stmt: Statement) -> bool:
        stale = self.lru.get(stmt)
        if stale is None or stale:
            return False
        self.lru.move_to_end(stmt)
        return True

    # -- requests ----------------------------------------------------------

    def push(self, e: _Expect) -> None:
        q = self.queue
        if not q and self.owed > 0:  # the replies still owed come first
            q.append(_Expect(SYNC))
            q[0].n = self.owed
            self.owed = 0
        if e.kind <= SYNC and q and q[-1].kind == e.kind:
            q[-1].n += 1
        else:
            q.append(e)

    def expect_request(self, t: int) -> None:
        if t in _TERMINAL_REQUESTS:
            self.push(_Expect(FORWARD))
        elif t in _SYNC_POINTS:
            self.push(_Expect(SYNC))

    def prepare(self, stmt: Statement, out: list[bytes], parse: _Expect | None = None) -> None:
        """Make sure ``stmt`` is prepared here before what follows: nothing if it is
        (a use), else Close what must go (stale, or past the limit) and Parse it.
        ``parse``: the client's own Parse (forwarded), else poold's (swallowed)."""
        registry = self.registry
        stale = self.lru.get(stmt)
        if stale is False and parse is None:
            self.lru.move_to_end(stmt)
            registry.hits += 1
            return
        if stale is not None:  # stale: close it first (its reference moves to the Close)
            del self.lru[stmt]
            registry.reprepares += 1
            self._close(stmt, True, out)
        elif parse is None:
            registry.misses += 1
        limit = max(registry.settings()[0], 1)
        while len(self.lru) >= limit:
            old, old_stale = self.lru.popitem(last=False)
            registry.evictions += 1
            self._close(old, old_stale, out)
        self.lru[stmt] = False
        registry.hold(stmt)
        out.append(stmt.parse)
        self.push(parse if parse is not None else _Expect(OWN_PARSE, stmt))

    def _close(self, stmt: Statement, stale: bool, out: list[bytes]) -> None:
        out.append(_message(b"C", b"S" + stmt.name + b"\0"))
        self.push(_Expect(OWN_CLOSE, stmt, data=b"s" if stale else b""))

    def hold(self, data: bytes, syncs: int) -> None:
        self.held.append(data)
        self.held_syncs += syncs

    def take_held(self) -> bytes:
        data = b"".join(self.held)
        self.held.clear()
        self.held_syncs = 0
        return data

    # -- replies -----------------------------------------------------------

    def ready(self) -> bytes:
        """Synthesized replies now at the head of the queue (none while the batch is failing)."""
        q = self.queue
        if self.failed or not q or q[0].kind != REPLY:
            return b""
        out = []
        while q and q[0].kind == REPLY:
            e = q.popleft()
            out.append(e.data)
            if e.data is CLOSE_COMPLETE and e.stmt is not None:
                self.registry.release(e.stmt)  # the client's Close is done
        return b"".join(out)

    def filter(self, data: bytes, client: ClientStatements | None) -> tuple[bytes, list[tuple[int, bytes]]]:
        """Replies from the server: the bytes for the client, and the (type, body) of
        each ReadyForQuery, ParameterStatus and ErrorResponse among them (the relay's
        watched messages). A reply cut short stays here while the queue is not empty."""
        if self.tail:
            self.tail += data
            buf: bytes | bytearray = self.tail
            self.tail = bytearray()
        else:
            buf = data
        out: list[bytes] = []
        watched: list[tuple[int, bytes]] = []
        n = len(buf)
        pos = 0
        while n - pos >= 5:
            t, length = _HEADER.unpack_from(buf, pos)
            end = pos + 1 + length
            if end > n:
                break
            msg = bytes(buf[pos:end])
            keep = self._reply(t, msg, client)
            if keep is not None:
                out.append(keep)
                if t in (_Z, _E) or t == _STATEMENT_S:
                    watched.append((keep[0], keep[5:]))
            ready = self.ready()
            if ready:
                out.append(ready)
            pos = end
        if pos < n:
            if self.queue:
                self.tail += buf[pos:]
            else:  # the rest passes as usual (the relay's scanner has seen it)
                out.append(bytes(buf[pos:]))
        return b"".join(out), watched

    def _reply(self, t: int, msg: bytes, client: ClientStatements | None) -> bytes | None:
        """One whole reply: what the client gets for it (None: swallowed)."""
        q = self.queue
        if t == _C and msg[5:-1] in _DROPPED_ALL:
            self.clear()
            if client is not None:
                client.clear()
        if not q or t in _ASYNC_REPLIES:
            return msg
        head = q[0]
        if t == _Z:
            if head.kind != SYNC:
                self._skip_batch()
            if q and q[0].kind == SYNC:
                self._consume(q[0])
            self.failed = False
            return msg
        if t == _E:
            if head.kind == SYNC:
                return msg  # a simple Query's error
            sqlstate = messages.parse_error_fields(msg[5:]).get("C")
            if head.kind == REFUSE and sqlstate == _REFUSED_SQLSTATE:
                msg = head.data
            elif head.kind == BIND and head.stmt is not None and sqlstate == "0A000" and head.stmt in self.lru:
                self.lru[head.stmt] = True  # cached plan must not change result type: prepare it again
            self._skip_batch()
            self.failed = True
            return msg
        if t in _TERMINAL_REPLIES and head.kind != SYNC:
            self._consume(head)
            if head.kind == DEALLOCATE and head.stmt is not None:  # gone from the server, and for the client
                if self.lru.pop(head.stmt, None) is not None:
                    self.registry.release(head.stmt)
                if head.client is not None:
                    head.client.forget(head.name, head.stmt)
            if head.kind in (OWN_PARSE, OWN_CLOSE, REFUSE):
                if head.kind == OWN_CLOSE and head.stmt is not None:
                    self.registry.release(head.stmt)
                return None
        return msg

    def _consume(self, head: _Expect) -> None:
        head.n -= 1
        if head.n <= 0:
            self.queue.popleft()

    def _skip_batch(self) -> None:
        """The server skips to the next Sync: the entries before it are dropped, and
        undone newest first (a Close undone before the Parse that followed it)."""
        q = self.queue
        dropped = []
        while q and q[0].kind != SYNC:
            dropped.append(q.popleft())
        for e in reversed(dropped):
            self._undo(e)

    def _undo(self, e: _Expect) -> None:
        stmt, registry = e.stmt, self.registry
        if e.kind in (PARSE, OWN_PARSE) and stmt is not None:
            if self.lru.pop(stmt, None) is not None:
                registry.release(stmt)
            if e.client is not None:
                e.client.forget(e.name, stmt)
        elif e.kind == OWN_CLOSE and stmt is not None:
            if stmt in self.lru:
                registry.release(stmt)
            else:
                self.lru[stmt] = e.data == b"s"  # still prepared there: it stays (its reference with it)
        elif e.kind == REPLY and e.client is not None:
            if e.data is PARSE_COMPLETE:
                e.client.forget(e.name, stmt)
            elif stmt is not None:  # a Close skipped: the name stays
                if e.name in e.client.names:
                    registry.release(stmt)
                else:
                    e.client.names[e.name] = stmt

    def mark_bound_stale(self) -> None:
        """0A000 after a renamed chunk (cached plan must not change result type): the
        statements it bound are prepared again before their next use here."""
        for stmt in self.bound:
            if stmt in self.lru:
                self.lru[stmt] = True
        self.bound = []

    def clear(self) -> None:
        """Every statement on the server connection is gone (DEALLOCATE ALL, DISCARD ALL, closed)."""
        lru, self.lru = self.lru, OrderedDict()
        for stmt in lru:
            self.registry.release(stmt)

    def close(self) -> None:
        """The server connection is gone."""
        self.clear()
        self.queue.clear()
        self.held.clear()
        self.tail.clear()
