"""The statements poold keeps for named prepared statements (transaction mode), and
what a server connection owes: the server side of ``prepared.py``.

A pool's :class:`Registry` holds each statement (:class:`Statement`: text and
parameter types, under a server name unique to poold). Each server connection's
:class:`LinkStatements` is the LRU of those prepared on it, bounded by
``max_prepared_statements``, and its queue of expected replies.

The queue has one entry per request in server order (runs of plain requests
counted in one entry). Each request owes one *terminal* reply (ParseComplete,
BindComplete, CloseComplete, RowDescription or NoData, CommandComplete,
EmptyQueryResponse, PortalSuspended) or, for a sync point, ReadyForQuery.
``LinkStatements.filter`` matches replies to entries: poold's own replies are
swallowed, the ones it gives itself go out when they reach the head of the
queue, so they land where PostgreSQL would have put them. An ErrorResponse in an
extended-query batch makes the server skip to the next Sync: the entries up to
it are dropped, and what they had recorded is undone, newest first (a failed
Parse caches nothing). A Bind that fails with 0A000 (the result type changed
under a cached plan) marks its statement stale on that connection.
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from .protocol import messages

if TYPE_CHECKING:
    from collections.abc import Callable

    from .prepared import ClientStatements

HEADER = struct.Struct("!Bi")
_LENGTH = struct.Struct("!i")

PARSE_COMPLETE = b"1\0\0\0\4"
CLOSE_COMPLETE = b"3\0\0\0\4"

_C, _Z, _E = (ord(c) for c in "CZE")
_PARAMETER_STATUS = ord("S")
#: requests that owe one terminal reply: Parse, Bind, Describe, Close, Execute
_TERMINAL_REQUESTS = frozenset(b"PBDCE")
#: requests that owe a ReadyForQuery: Query, Sync, FunctionCall
SYNC_POINTS = frozenset(b"QSF")
#: the replies that end a request's answer
_TERMINAL_REPLIES = frozenset(b"123TnCIs")
#: replies that may come at any time: NoticeResponse, NotificationResponse, ParameterStatus
_ASYNC_REPLIES = frozenset(b"NAS")
_DROPPED_ALL = frozenset((b"DEALLOCATE ALL", b"DISCARD ALL"))
#: what the server says to poold's failing Parse (prepared._FAILING_PARSE)
_REFUSED_SQLSTATE = "42703"


def frame(t: bytes, body: bytes) -> bytes:
    """A message: type, length, body."""
    return t + _LENGTH.pack(len(body) + 4) + body


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
ABSENT = 9  # poold's failing Parse for a Bind or Describe of poold's name by a client without it: any error -> ``data``


class Statement:
    """One statement in a pool's registry: its server name and its Parse for that name."""

    __slots__ = ("key", "name", "parse", "users")

    def __init__(self, key: bytes, name: bytes) -> None:
        self.key = key  # the Parse body after the name: text, parameter count and types
        self.name = name
        self.parse = frame(b"P", name + b"\0" + key)
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


class Expect:
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


class LinkStatements:
    """A server connection's statements (an LRU) and its queue of expected replies (sans-IO)."""

    __slots__ = ("bound", "carried", "failed", "held", "held_syncs", "lru", "owed", "queue", "registry", "tail")

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.lru: OrderedDict[Statement, bool] = OrderedDict()  # statement -> stale (its result type changed)
        self.queue: deque[Expect] = deque()
        self.failed = False  # an error in the current batch: the server skips to its Sync
        self.tail = bytearray()  # a reply not complete yet, while the queue is not empty
        self.held: list[bytes] = []  # client requests waiting for the server's stream to reach a boundary
        self.held_syncs = 0
        self.owed = 0  # while requests are fed: ReadyForQuery owed for earlier ones, sent as they were
        self.bound: list[Statement] = []  # the statements of the last renamed chunk (ClientStatements.rename)
        self.carried = False  # kept with its connection in psycopg_pool at least once (pools.py)

    @property
    def busy(self) -> bool:
        """Whether this connection's traffic must come here rather than take the fast path:
        also while an error's skip lasts (``failed``), until the ReadyForQuery that ends it."""
        return bool(self.queue or self.tail or self.held or self.failed)

    def has(self, stmt: Statement) -> bool:
        stale = self.lru.get(stmt)
        if stale is None or stale:
            return False
        self.lru.move_to_end(stmt)
        return True

    # -- requests ----------------------------------------------------------

    def push(self, e: Expect) -> None:
        q = self.queue
        if not q and self.owed > 0:  # the replies still owed come first
            q.append(Expect(SYNC))
            q[0].n = self.owed
            self.owed = 0
        if e.kind <= SYNC and q and q[-1].kind == e.kind:
            q[-1].n += 1
        else:
            q.append(e)

    def expect_request(self, t: int) -> None:
        if t in _TERMINAL_REQUESTS:
            self.push(Expect(FORWARD))
        elif t in SYNC_POINTS:
            self.push(Expect(SYNC))

    def prepare(self, stmt: Statement, out: list[bytes], parse: Expect | None = None) -> None:
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
        self.push(parse if parse is not None else Expect(OWN_PARSE, stmt))

    def _close(self, stmt: Statement, stale: bool, out: list[bytes]) -> None:
        out.append(frame(b"C", b"S" + stmt.name + b"\0"))
        self.push(Expect(OWN_CLOSE, stmt, data=b"s" if stale else b""))

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
            t, length = HEADER.unpack_from(buf, pos)
            end = pos + 1 + length
            if end > n:
                break
            msg = bytes(buf[pos:end])
            keep = self._reply(t, msg, client)
            if keep is not None:
                out.append(keep)
                if t in (_Z, _E) or t == _PARAMETER_STATUS:
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
        elif t == _C and msg[5:-1] == b"DEALLOCATE" and q and q[0].kind != DEALLOCATE:
            self.doubt()  # a DEALLOCATE poold did not write (in a script, behind a comment)
        if not q or t in _ASYNC_REPLIES:
            if t == _Z:  # the Sync that ends an error's skip came by the fast path's side
                self.failed = False
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
            if (head.kind == REFUSE and sqlstate == _REFUSED_SQLSTATE) or head.kind == ABSENT:
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
            if head.kind in (OWN_PARSE, OWN_CLOSE, REFUSE, ABSENT):
                if head.kind == OWN_CLOSE and head.stmt is not None:
                    self.registry.release(head.stmt)
                return None
        return msg

    def _consume(self, head: Expect) -> None:
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

    def _undo(self, e: Expect) -> None:
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

    def doubt(self) -> None:
        """A DEALLOCATE that poold did not write ran here: whichever statement it named,
        each is closed (a Close of what is gone is no error) and prepared again before its
        next use here, as a stale one is."""
        for stmt in self.lru:
            self.lru[stmt] = True

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
