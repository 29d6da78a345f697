"""A client's own session state in transaction mode: its settings, and what pins it.

In transaction mode a client's transactions run on whichever server connection
is free, so what PostgreSQL keeps per session must follow the client, or stay
with its server connection, and never reach another client.

Settings (any GUC) follow the client. They come from its startup packet (a
parameter given directly, or ``options`` with ``-c name=value`` and
``--name=value``: ``startup_settings``) and from its own SET, RESET, RESET ALL,
SET ROLE, SET SESSION AUTHORIZATION, set_config() and DISCARD ALL. A session's
``wanted`` holds them; a link's ``params`` holds what its server connection
carries beyond the pool's defaults. At hand-off, a link whose ``params`` differ
gets the client's in one round trip (``sync_sql``); the same client on the same
link costs nothing. A link never goes back to the pool with a setting beyond
the reported ones (statement_timeout, work_mem, role...): those are reset at
its release (``release_settings``, when ``link.carries``). Reported settings
(application_name, TimeZone... the ones every client is told of with
ParameterStatus) may stay, as PgBouncer's do: the next client's first request
is preceded by the difference, in the same write (a role or session
authorization excepted: set first, and waited for, ``SetIdentity``).

What a client's statements did is not parsed: the first bytes of each Query and
Parse in a chunk the client sends (each statement of a Query) tell whether it
may change a setting (``look``, the same walk as ``_relaycore.c``'s
may_carry_state; a read that ends inside a header or a Query's or Parse's first
``HEAD_BYTES`` keeps that start for the next read, and the rest of a long
Query's text in later reads is looked at for a ';' or the names below); then, at the
release after that transaction, one internal query (``SETTLE_SQL``) asks the
server which settings the session holds. That answer is PostgreSQL's own: a SET
in a block rolled back is gone, SET LOCAL ended with its transaction, RESET ALL
dropped everything (and the client's startup settings are given back, as
PostgreSQL's RESET ALL returns to them), and a set_config() in a function
counts.

What cannot be carried (a LISTEN, a session advisory lock, a temporary table, a
cursor WITH HOLD, a prepared statement made with SQL PREPARE) pins the client
to its server connection until it disconnects (``session_state = "pin"``), or
is refused with 0A000 before it runs (``"error"``): ``pin_reason``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import structlog

from .errors import ServerRefusal
from .protocol import messages
from .protocol.framing import MAX_MESSAGE_LENGTH, PyFrameScanner
from .relay import canonical_parameter, quote_literal

if TYPE_CHECKING:
    from .client import ClientSession
    from .relay import ServerLink

log = structlog.get_logger("poold.settings")

_DATA_ROW = ord("D")

#: startup parameters that are not settings
NOT_SETTINGS = frozenset({"user", "database", "replication", "options"})

#: the single-letter server switches of ``options`` that name a setting (postgres --help)
_SWITCHES = {"B": "shared_buffers", "S": "work_mem", "N": "max_connections", "p": "port",
             "h": "listen_addresses", "k": "unix_socket_directories", "W": "post_auth_delay"}

#: settings the session's identity hangs on: applied after the others, reset before them
_IDENTITY = ("session_authorization", "role")

#: what a session holds beyond its server connection's startup: the settings it
#: set (pg_settings hides role and session_authorization: asked for apart; the
#: transaction_* settings belong to a transaction, never to the session)
SETTLE_SQL = (
    "SELECT name, setting FROM pg_settings WHERE source = 'session' AND name NOT LIKE 'transaction\\_%'"
    " UNION ALL SELECT 'session_authorization', current_setting('session_authorization')"
    " UNION ALL SELECT 'role', current_setting('role')"
)

#: what pins a client (``classify``'s reasons), as the metrics name them
PIN_REASONS = ("LISTEN", "advisory lock", "CREATE TEMPORARY", "DECLARE ... WITH HOLD", "PREPARE")

#: a link whose client left with settings not learned yet (settings.Settle) is given back clean
RESET_SQL = "RESET role; RESET session_authorization; RESET ALL"

#: a Query's or Parse's first bytes (and every header) reach the look in one read: a read
#: that ends inside them keeps them for the next (``look``)
HEAD_BYTES = 256

#: the keywords a chunk's first Query or Parse may start with to be looked at (lower case)
_KEYWORDS = (b"set", b"reset", b"discard", b"listen", b"prepare", b"declare", b"create")
#: or, anywhere in the chunk: a session advisory lock, a setting changed by a function
_ANYWHERE = (b"advisory_lock", b"ADVISORY_LOCK", b"set_config", b"SET_CONFIG")
#: white space or a comment first: the statement is found past them
_LEAD = frozenset(b"-/ \t\r\n")
_IDENT = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")
#: the requests with a statement's text: Query, Parse
_TEXTS = frozenset((messages.QUERY, messages.PARSE))

_SKIP = re.compile(rb"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)
_WORD = re.compile(rb"[A-Za-z_]+")
_WITH_HOLD = re.compile(rb"\bwith\s+hold\b", re.I)
_TEMP = re.compile(rb"create\s+(?:or\s+replace\s+)?(?:(?:global|local)\s+)?temp(?:orary)?\s", re.I)
#: a setting's name as SQL may write it bare (custom ones have a dot)
_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_$]*(?:\.[a-z_][a-z0-9_$]*)?")
_PREPARE_TRANSACTION = re.compile(rb"prepare\s+transaction\b", re.I)


# -- startup parameters ------------------------------------------------------------


def setting_name(name: str) -> str:
    """The key a setting is kept under: a reported one's canonical spelling, else lower case
    (as pg_settings names them)."""
    return canonical_parameter(name) or name.lower()


def startup_settings(params: Mapping[str, str], ignored: Iterable[str] = ()) -> dict[str, str]:
    """The settings a startup packet asks for, by name as the client wrote them: each
    parameter that is not a connection's (user, database, replication), and each
    ``-c name=value`` or ``--name=value`` of ``options``. A parameter in ``ignored``
    (ignore_startup_parameters) is dropped, as PgBouncer does. ServerRefusal 42601 for an
    ``options`` PostgreSQL would refuse, in its words."""
    skip = {n.lower() for n in ignored}
    out: dict[str, str] = {}
    for name, value in params.items():
        if name.lower() in skip:
            continue
        if name == "options":
            out.update((n, v) for n, v in parse_options(value) if n.lower() not in skip)
        elif name not in NOT_SETTINGS:
            out[name] = value
    return out


def parse_options(options: str) -> list[tuple[str, str]]:
    """``options`` as PostgreSQL reads it (pg_split_opts, then its switches): words
    split at white space, a backslash keeping the next character; ``-c name=value``,
    ``-cname=value``, ``--name=value`` (dashes in the name are underscores) and the
    single-letter switches that set one setting (``-S 1MB`` is work_mem)."""
    words = _split_options(options)
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("--"):
            pair = word[2:]
        elif len(word) >= 2 and word[0] == "-" and (word[1] == "c" or word[1] in _SWITCHES):
            arg = word[2:]
            if not arg:
                if i >= len(words):
                    raise _invalid_argument(word)
                arg, i = words[i], i + 1
            if word[1] != "c":
                out.append((_SWITCHES[word[1]], arg))
                continue
            pair = arg
        else:
            raise _invalid_argument(word)
        name, eq, value = pair.partition("=")
        if not eq:
            raise ServerRefusal("42601", f"{word if word.startswith('--') else '-c ' + pair} requires a value")
        out.append((name.replace("-", "_"), value))
    return out


def _invalid_argument(word: str) -> ServerRefusal:
    return ServerRefusal("42601", f"invalid command-line argument for server process: {word}",
                         hint='Try "postgres --help" for more information.')


def _split_options(options: str) -> list[str]:
    words: list[str] = []
    word: list[str] = []
    escaped = False
    for ch in options:
        if escaped:
            word.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(ch)
    if word:
        words.append("".join(word))
    return words


# -- the client's requests ---------------------------------------------------------


def requests(data: bytes, at: int = 0) -> Iterator[tuple[int, int, int]]:
    """The Queries and Parses of a chunk whose messages start at ``at`` (what comes
    before is the end of one that began earlier): (where the message starts, where its
    text starts, where it ends in this chunk), each with some text in the chunk. The
    walk stops at a length below 4 (the relay refuses it)."""
    n, pos = len(data), at
    while pos + 5 <= n:
        t = data[pos]
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        if length < 4:
            return
        end = min(n, pos + 1 + length)
        if t == messages.QUERY and pos + 5 < end:
            yield pos, pos + 5, end
        elif t == messages.PARSE:
            name_end = data.find(b"\0", pos + 5, end)
            if name_end >= 0 and name_end + 1 < end:
                yield pos, name_end + 1, end
        pos += 1 + length


def look(data: bytes, at: int = 0, tail: int = -1, limit: int = MAX_MESSAGE_LENGTH) -> tuple[bool, int]:
    """The relay's look at a client chunk whose messages start at ``at``; what comes
    before is the rest of a message begun in an earlier read, of type ``tail`` (-1: not
    known). Returns (whether the chunk may change the session's state, where to cut
    it): what follows the cut is a message's start too short to look at (a header, or
    less than a Query's or Parse's first ``HEAD_BYTES``, of one no longer than ``limit``,
    the longest the scanner takes: a longer one goes on to be refused), kept for the
    next read. The rest of a Query may hold more statements (a ';'), of a Query or
    Parse the names of ``_ANYWHERE``. _relaycore.c, may_carry_state, is the same walk."""
    cut = _cut(data, at, limit)
    head = data[:cut]
    return may_carry_state(head, at) or rest_may_carry(head[:at], tail), cut


def rest_may_carry(rest: bytes, tail: int) -> bool:
    """The rest of a message of type ``tail`` begun in an earlier read: a Query's with
    a ';' (more statements), a Query's or Parse's naming one of ``_ANYWHERE``."""
    return tail in _TEXTS and ((tail == messages.QUERY and b";" in rest) or any(w in rest for w in _ANYWHERE))


def _cut(data: bytes, at: int, limit: int) -> int:
    """Where ``data``'s last message starts if it is cut too short to look at; else its length."""
    n, pos = len(data), at
    while pos < n:
        if n - pos < 5:
            return pos
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        if length < 4 or length > limit:
            return n  # the relay refuses it
        if pos + 1 + length > n:
            return pos if data[pos] in _TEXTS and n - pos < 5 + HEAD_BYTES else n
        pos += 1 + length
    return n


def may_carry_state(data: bytes, at: int = 0) -> bool:
    """Whether a chunk (its messages starting at ``at``) must be looked at: the text of one
    of its Queries or Parses starts with one of the keywords, or with white space or a
    comment, or is a Query of more than one statement; or the chunk has a Query or Parse
    and names a session advisory lock or set_config. Cheap, for every request: the first
    bytes of each; _relaycore.c, may_carry_state."""
    seen = False
    for pos, start, end in requests(data, at):
        seen = True
        if _may_carry(data, data[pos] == messages.QUERY, start, end):
            return True
    return seen and any(w in data for w in _ANYWHERE)


def _may_carry(data: bytes, is_query: bool, start: int, end: int) -> bool:
    """may_carry_state for one Query or Parse, whose text starts at ``start``."""
    if data[start] in _LEAD:
        return True
    for word in _KEYWORDS:
        after = start + len(word)
        if after <= end and data[start:after].lower() == word and (after >= end or data[after] not in _IDENT):
            return True
    if is_query:  # more than one statement: each is looked at
        nul = data.find(b"\0", start, end)
        return b";" in data[start : nul if nul >= 0 else end].rstrip(b"; \t\r\n")
    return False


def classify(data: bytes, at: int = 0) -> tuple[bool, str | None]:
    """What a chunk that ``may_carry_state`` does to its session: (it may change a
    setting, what it makes that cannot be carried or None)."""
    touched = b"set_config" in data or b"SET_CONFIG" in data
    reason = "advisory lock" if b"advisory_lock" in data or b"ADVISORY_LOCK" in data else None
    for pos, start, end in requests(data, at):
        one_touched, one_reason = _classify_request(data, pos, start, end)
        touched = touched or one_touched
        reason = reason or one_reason
    return touched, reason


def _classify_request(data: bytes, pos: int, start: int, end: int) -> tuple[bool, str | None]:
    """One Query's or Parse's statements, by their first words. A Query's are split at each
    ';' (one inside a string or a comment splits it too: the worst that does is a round
    trip or a pin of too many)."""
    nul = data.find(b"\0", start, end)
    text = data[start : nul if nul >= 0 else end]
    touched, reason = False, None
    for statement in text.split(b";") if data[pos] == messages.QUERY else [text]:
        one_touched, one_reason = _classify_statement(statement)
        touched = touched or one_touched
        reason = reason or one_reason
    if b"advisory_lock" in text or b"ADVISORY_LOCK" in text:
        reason = reason or "advisory lock"
    return touched, reason


def _classify_statement(text: bytes) -> tuple[bool, str | None]:
    """One statement's first word, as ``classify`` reads it."""
    at = _SKIP.match(text).end()  # type: ignore[union-attr]  # always matches
    found = _WORD.match(text, at)
    word = found.group().lower() if found is not None else b""
    if word == b"listen":
        return False, "LISTEN"
    if word == b"prepare" and not _PREPARE_TRANSACTION.match(text, at):
        return False, "PREPARE"
    if word == b"declare" and _WITH_HOLD.search(text):
        return False, "DECLARE ... WITH HOLD"
    if word == b"create" and _TEMP.match(text, at):
        return False, "CREATE TEMPORARY"
    return word in (b"set", b"reset", b"discard"), None


def classify_rest(rest: bytes, tail: int) -> tuple[bool, str | None]:
    """``classify`` for the rest of a Query or Parse begun in an earlier read (``look``
    found a ';' or a name of ``_ANYWHERE`` in it): it may change a setting; what it
    makes that cannot be carried, from the statements after each ';' and the names."""
    reason = "advisory lock" if b"advisory_lock" in rest or b"ADVISORY_LOCK" in rest else None
    for statement in rest.split(b";")[1:] if tail == messages.QUERY else []:
        reason = reason or _classify_statement(statement)[1]
    return True, reason


def refused(data: bytes, at: int = 0) -> bytes | None:
    """The chunk with each Query or Parse that makes what cannot be carried replaced by one
    that fails with 0A000 on the server: so that the error takes the statement's place in
    the client's transaction as its own would (a block is aborted, a pipeline skips to its
    Sync), and nothing else is touched. None when such a message does not end in this
    chunk (it cannot be replaced: the caller pins instead), or when the chunk names an
    advisory lock only outside its Queries and Parses."""
    out, done, found = [], 0, False
    for pos, start, end in requests(data, at):
        reason = _classify_request(data, pos, start, end)[1]
        if reason is None:
            continue
        length = struct.unpack_from("!i", data, pos + 1)[0]
        if pos + 1 + length > len(data):
            return None
        out.append(data[done:pos])
        out.append(_refusal(data, pos, start, pos + 1 + length, reason))
        done, found = pos + 1 + length, True
    return b"".join(out) + data[done:] if found else None


def _refusal(data: bytes, pos: int, start: int, end: int, reason: str) -> bytes:
    """The Query or Parse at ``pos`` (ending at ``end``) made to fail with 0A000."""
    message = (f"poold: {reason} cannot be carried across server connections in transaction mode "
               "(the pool's session_state is \"error\")")
    hint = 'Use a pool in session mode, or set session_state = "pin" for this pool.'
    sql = (f"DO $poold$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = {quote_literal(message)}, "
           f"HINT = {quote_literal(hint)}; END$poold$")
    if data[pos] == messages.QUERY:
        return messages.query(sql)
    text_end = data.index(b"\0", start)
    body = data[pos + 5 : start] + sql.encode() + b"\0" + data[text_end + 1 : end]
    return b"P" + struct.pack("!i", len(body) + 4) + body


# -- a server connection's settings ---------------------------------------------------


def identity_differs(have: Mapping[str, str], want: Mapping[str, str]) -> bool:
    """Whether ``want``'s role or session authorization is not ``have``'s."""
    return any(have.get(n) != want.get(n) for n in _IDENTITY)


def sync_sql(have: Mapping[str, str], want: Mapping[str, str]) -> list[str]:
    """The queries that take a server connection from the settings ``have`` to ``want``
    (each beyond the pool's defaults), written together; none when they are the same.

    The RESETs are one Query and the set_config() calls another, each its own
    transaction: should a value of the new client's fail (a text search configuration
    dropped since its login), the RESETs of the last client's still hold. Values go
    through set_config(), which reads them as a startup packet's are (a list such as
    search_path included). Role and session authorization are reset first and set last,
    in a Query of their own (``SetIdentity`` tells its refusal from the others'), so
    that the other settings are set by the pool's user."""
    identity = identity_differs(have, want)
    parts = [f"RESET {n}" for n in _IDENTITY if identity and n in have]
    parts += [f"RESET {quote_ident(n)}" for n in have if n not in want and n not in _IDENTITY]
    calls = [f"set_config({quote_literal(n)}, {quote_literal(v)}, false)"
             for n, v in want.items() if n not in _IDENTITY and have.get(n) != v]
    own = [f"set_config({quote_literal(n)}, {quote_literal(want[n])}, false)" for n in _IDENTITY if n in want]
    queries = ["; ".join(parts)] if parts else []
    if calls:
        queries.append("SELECT " + ", ".join(calls))
    if identity and own:
        queries.append("SELECT " + ", ".join(own))
    return queries


def reset_sql(params: Mapping[str, str]) -> str:
    """The RESETs that leave a server connection with only its reported settings of
    ``params`` (the pool's defaults for every other): identity first."""
    names = [n for n in _IDENTITY if n in params]
    names += [n for n in params if n not in _IDENTITY and canonical_parameter(n) is None]
    return "; ".join(f"RESET {n if _PLAIN_NAME.fullmatch(n) else quote_ident(n)}" for n in names)


def release_settings(link: ServerLink, release: Callable[[ServerLink], None]) -> None:
    """Give ``link`` back to its pool without the settings it carries beyond the reported
    ones: one internal query, then ``release`` (a server connection never waits in the
    pool with a client's statement_timeout, role or work_mem)."""
    sql = reset_sql(link.params)
    link.take_params({n: v for n, v in link.params.items() if canonical_parameter(n) is not None})
    link.owner = None  # the client may lease another link meanwhile: this one's fate is not its
    link.run_internal([sql], release)


def session_settings(rows: Iterable[tuple[str, str]], defaults: Mapping[str, str]) -> dict[str, str]:
    """SETTLE_SQL's answer as a link's ``params``: role 'none' and a session
    authorization that is the pool's own are no settings of the client's."""
    out = {}
    for name, value in rows:
        key = setting_name(name)
        if (key == "role" and value == "none") or (key == "session_authorization" and defaults.get(key) == value):
            continue
        out[key] = value
    return out


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _ClientsInternalQuery:
    """relay.ServerOwner for a link that answers poold's own queries for a client which,
    meanwhile, holds no link and waits (``waiting``): the replies are the internal
    query's; a lost server ends the client's session."""

    __slots__ = ("_client",)

    def __init__(self, client: ClientSession) -> None:
        self._client = client

    # -- relay.ServerOwner: the link's owner while it answers -------------------

    def on_server_data(self, data: bytes) -> None:
        pass

    def on_server_ready(self, status: bytes) -> None:
        pass

    def on_server_parameter(self, name: str, value: str) -> None:
        pass

    def on_server_lost(self, sqlstate: str | None = "08006", message: str = "server connection lost") -> None:
        client = self._client
        client.waiting = False
        if not client.closed:
            client.on_server_lost(sqlstate, message)

    def on_server_in_use(self, fields: dict[str, str]) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Settle(_ClientsInternalQuery):
    """The release of a link after a transaction that may have changed settings: ask the
    server which settings the session holds (SETTLE_SQL), make them the client's and the
    link's, then give the link back, or to the same client's waiting requests.

    While it runs the client holds no link and ``waiting`` is set, so its requests are
    buffered as while it waits for one (both cores do so)."""

    __slots__ = ("_rows", "_scanner")

    def __init__(self, client: ClientSession) -> None:
        super().__init__(client)
        self._scanner = PyFrameScanner(b"DZ")
        self._rows: list[tuple[str, str]] = []

    def start(self, link: ServerLink) -> None:
        client = self._client
        client.server = None
        client.waiting = True
        link.owner = self
        link.run_internal([SETTLE_SQL], self._done, capture=self._data)

    def _data(self, data: bytes) -> None:
        for t, _start, _end, body in self._scanner.feed(data):
            if t == _DATA_ROW and body is not None:
                self._rows.append(_row(body))

    def _done(self, link: ServerLink) -> None:
        client = self._client
        pool = client.pool
        assert pool is not None
        if not link.dirty:
            link.take_params(session_settings(self._rows, link.defaults))
            # RESET ALL, and RESET of one, return to the client's startup values, as PostgreSQL's
            client.wanted = {**(client.startup or {}), **link.params}
        link.owner = None
        client.waiting = False
        if not client.closed and client.buffered:
            client.on_server(link)
        elif link.carries:
            release_settings(link, pool.release_if_idle)
        else:
            pool.release(link)


class SetIdentity(_ClientsInternalQuery):
    """A client's requests for a link whose role or session authorization is not the
    client's: those are set first (the last of ``sync_sql``'s queries) and the requests
    wait, buffered, for the answer, so that none runs as another role should the server
    refuse it now (the pool's user removed from the role since): the session then ends
    with the server's reason. A refusal of another setting is logged, as
    ServerLink.sync_parameters' are, and the requests go on.

    While it runs the client holds no link and ``waiting`` is set, as for ``Settle``."""

    __slots__ = ("_link", "_refusal")

    def __init__(self, client: ClientSession) -> None:
        super().__init__(client)
        self._refusal: bytes | None = None

    def start(self, link: ServerLink) -> None:
        """Set the client's settings on ``link``; the client's requests are buffered meanwhile."""
        client = self._client
        client.server = None
        client.waiting = True
        self._link = link
        link.owner = self
        link.run_internal(sync_sql(link.params, client.wanted), self._done, self._refused)
        link.take_params(dict(client.wanted))

    def _refused(self, body: bytes) -> None:
        if self._link.swallow == 1:  # the identity's own query, the last
            self._refusal = self._refusal or body
        else:
            fields = messages.parse_error_fields(body)
            log.warning("internal_query_failed", server_pid=self._link.pid, sqlstate=fields.get("C"),
                        error=fields.get("M"))

    def _done(self, link: ServerLink) -> None:
        client = self._client
        pool = client.pool
        assert pool is not None
        link.owner = None
        client.waiting = False
        ended = client.closed or client.transport is None or client.transport.is_closing()
        if not ended and self._refusal is None:
            client.on_server(link)
            return
        if self._refusal is not None or not link.carries:
            pool.release(link)  # dirty after a refusal: discarded
        else:  # the client left meanwhile: its role does not stay
            release_settings(link, pool.release_if_idle)
        if ended:
            return
        client.buffered.clear()
        client.buffered_syncs = 0
        fields = messages.parse_error_fields(self._refusal or b"")
        log.warning("client_role_refused", peer=client.peer, db=client.database, user=client.user,
                    sqlstate=fields.get("C"), error=fields.get("M"))
        client.terminate_now(fields.get("C", "42501"), "this session's role or session authorization cannot be "
                             f"set on another server connection: {fields.get('M', '')}")


def _row(body: bytes) -> tuple[str, str]:
    """A two-column DataRow of text."""
    values = []
    pos = 2
    for _ in range(2):
        (n,) = struct.unpack_from("!i", body, pos)
        pos += 4
        values.append(body[pos : pos + max(n, 0)].decode(errors="replace"))
        pos += max(n, 0)
    return values[0], values[1]
