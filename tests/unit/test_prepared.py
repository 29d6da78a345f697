"""prepared.py with byte fixtures: the clean test (and its C twin), request rewriting,
reply filtering, whole and one byte at a time.

The fixtures are built by hand after the messages psycopg and pgbench send (the
bytes of ``pgbench -M prepared`` were read with strace: Parse+Sync, then
Bind+Describe('P')+Execute+Sync).
"""

from __future__ import annotations

import struct

import pytest

from poold import prepared, relaycore


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


def parse(name: bytes, query: bytes) -> bytes:
    return msg(b"P", name + b"\0" + query + b"\0\0\0")


def bind(stmt: bytes, portal: bytes = b"") -> bytes:
    return msg(b"B", portal + b"\0" + stmt + b"\0\0\0\0\0\0\0")


DESCRIBE_PORTAL = msg(b"D", b"P\0")
EXECUTE = msg(b"E", b"\0\0\0\0\0")
SYNC = msg(b"S")
PARSE_COMPLETE = msg(b"1")
BIND_COMPLETE = msg(b"2")
CLOSE_COMPLETE = msg(b"3")
NO_DATA = msg(b"n")


def ready(status: bytes = b"I") -> bytes:
    return msg(b"Z", status)


def complete(tag: bytes) -> bytes:
    return msg(b"C", tag + b"\0")


def error(sqlstate: str, text: str = "boom") -> bytes:
    return msg(b"E", b"SERROR\0VERROR\0C" + sqlstate.encode() + b"\0M" + text.encode() + b"\0\0")


def messages_of(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("!i", data, pos + 1)
        out.append((data[pos : pos + 1], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def types(data: bytes) -> str:
    return "".join(t.decode() for t, _ in messages_of(data))


class Pair:
    """One client and one server connection's statements over a shared registry."""

    def __init__(self, limit: int = 200, cap: int = 0, registry: prepared.Registry | None = None) -> None:
        self.registry = registry or prepared.Registry(lambda: (limit, cap))
        self.client = prepared.ClientStatements(self.registry)
        self.link = prepared.LinkStatements(self.registry)

    def send(self, data: bytes, split: bool = False) -> tuple[bytes, bytes]:
        """The bytes for the server, and the replies poold gives at once."""
        chunks = [data[i : i + 1] for i in range(len(data))] if split else [data]
        out = b"".join(self.client.feed(self.link, c) for c in chunks)
        assert not self.client.mid
        return out, self.link.ready()

    def reply(self, data: bytes, split: bool = False) -> bytes:
        chunks = [data[i : i + 1] for i in range(len(data))] if split else [data]
        out = b"".join(self.link.filter(c, self.client)[0] for c in chunks)
        assert not self.link.tail
        return out


# -- clean ------------------------------------------------------------------

CLEAN_CASES = [
    (msg(b"Q", b"SELECT 1\0"), True),
    (parse(b"", b"SELECT 1") + bind(b"") + DESCRIBE_PORTAL + EXECUTE + SYNC, True),
    (bind(b"") + EXECUTE + SYNC, True),
    (parse(b"s1", b"SELECT 1") + SYNC, False),  # names a statement
    (bind(b"s1") + EXECUTE + SYNC, False),
    (bind(b"", portal=b"p1") + EXECUTE + SYNC, True),  # a named portal passes
    (msg(b"D", b"Ss1\0") + SYNC, False),
    (msg(b"C", b"Ss1\0") + SYNC, False),
    (msg(b"C", b"Pp1\0") + SYNC, True),
    (msg(b"Q", b"DEALLOCATE ALL\0"), False),
    (msg(b"Q", b"discard all\0"), False),
    (msg(b"Q", b" SELECT 1\0"), False),  # white space first: looked at in Python
    (msg(b"Q", b"DELETE FROM t\0"), True),
    (msg(b"Q", b"SELECT 1; DEALLOCATE ALL\0"), False),  # more than one statement: the tags are watched
    (msg(b"Q", b"SELECT 1;discard all;\0"), False),
    (msg(b"Q", b"SELECT 1;\0"), True),  # one statement, its ';' last
    (msg(b"Q", b"SELECT 1; SELECT 2\0"), True),  # a script's: no DEALLOCATE or DISCARD in it
    (msg(b"Q", b"SELECT 1; DeAllocate x\0"), False),
    (msg(b"Q", b"SELECT 1 ; \n\0"), True),
    (parse(b"", b"deallocate all") + SYNC, False),
    (bind(b"") + EXECUTE, False),  # no sync point last: the batch is left open
    (msg(b"Q", b"SELECT 1\0")[:-1], False),  # cut short
    (msg(b"d", b"1\t2\n"), False),
]


@pytest.mark.parametrize(("data", "expected"), CLEAN_CASES)
def test_clean(data: bytes, expected: bool) -> None:
    assert prepared.clean(data) is expected


@pytest.mark.parametrize(("data", "expected"), CLEAN_CASES)
def test_clean_same_in_c(data: bytes, expected: bool) -> None:
    assert relaycore.native is not None, "the C core must be built"
    assert bool(relaycore.native.ps_clean(data)) is expected


def test_clean_differential_on_random_bytes() -> None:
    import random

    assert relaycore.native is not None, "the C core must be built"
    rng = random.Random(19)
    pieces = [c for c, _ in CLEAN_CASES]
    for _ in range(3000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.3:
            data = bytearray(data)
            data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        assert bool(relaycore.native.ps_clean(data)) is prepared.clean(data), data


# -- requests and replies --------------------------------------------------------


@pytest.mark.parametrize("split", [False, True])
def test_first_parse_is_renamed_and_its_reply_forwarded(split: bool) -> None:
    p = Pair()
    out, now = p.send(parse(b"s1", b"SELECT 1") + SYNC, split)
    assert out == parse(b"poold_1", b"SELECT 1") + SYNC and now == b""
    assert p.reply(PARSE_COMPLETE + ready(), split) == PARSE_COMPLETE + ready()
    assert not p.link.busy and p.registry.misses == 1


@pytest.mark.parametrize("split", [False, True])
def test_parse_already_prepared_is_answered_by_poold(split: bool) -> None:
    p = Pair()
    p.send(parse(b"s1", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    other = prepared.ClientStatements(p.registry)
    out = other.feed(p.link, parse(b"mine", b"SELECT 1") + SYNC)
    assert out == SYNC and p.link.ready() == PARSE_COMPLETE
    assert p.reply(ready(), split) == ready()
    out, _ = Pair.send(p, bind(b"s1") + EXECUTE + SYNC, split)
    assert out == bind(b"poold_1") + EXECUTE + SYNC
    assert p.registry.hits >= 1


@pytest.mark.parametrize("split", [False, True])
def test_missing_statement_is_prepared_first_and_its_reply_swallowed(split: bool) -> None:
    p = Pair()
    p.send(parse(b"s1", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    fresh = prepared.LinkStatements(p.registry)  # the client landed on another server connection
    out = p.client.feed(fresh, bind(b"s1") + EXECUTE + SYNC)
    assert out == parse(b"poold_1", b"SELECT 1") + bind(b"poold_1") + EXECUTE + SYNC
    replies = PARSE_COMPLETE + BIND_COMPLETE + complete(b"SELECT 1") + ready()
    chunks = [replies[i : i + 1] for i in range(len(replies))] if split else [replies]
    got = b"".join(fresh.filter(c, p.client)[0] for c in chunks)
    assert got == BIND_COMPLETE + complete(b"SELECT 1") + ready()


def test_close_is_answered_in_order_after_earlier_replies() -> None:
    p = Pair()
    out, now = p.send(parse(b"s1", b"SELECT 1") + msg(b"C", b"Ss1\0") + SYNC)
    assert out == parse(b"poold_1", b"SELECT 1") + SYNC and now == b""  # behind the Parse's reply
    assert p.reply(PARSE_COMPLETE + ready()) == PARSE_COMPLETE + CLOSE_COMPLETE + ready()
    assert p.client.names == {}


def test_reused_name_sends_a_failing_parse_and_answers_42P05() -> None:
    p = Pair()
    p.send(parse(b"x", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    out, _ = p.send(parse(b"x", b"SELECT 2") + bind(b"x") + EXECUTE + SYNC)
    assert types(out) == "PBES" and b"poold_refused" in out
    got = messages_of(p.reply(error("42703") + ready()))
    assert [t for t, _ in got] == [b"E", b"Z"]
    assert b"C42P05\0" in got[0][1] and b'prepared statement "x" already exists' in got[0][1]
    assert list(p.client.names) == [b"x"]


def test_refused_parse_in_a_failed_transaction_keeps_the_servers_error() -> None:
    p = Pair()
    p.send(parse(b"x", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    p.send(parse(b"x", b"SELECT 2") + SYNC)
    aborted = error("25P02", "current transaction is aborted")
    assert p.reply(aborted + ready(b"E")) == aborted + ready(b"E")


def test_failed_parse_leaves_nothing_and_undoes_later_parses() -> None:
    p = Pair()
    p.send(parse(b"bad", b"SELEC") + parse(b"later", b"SELECT 2") + SYNC)
    assert p.reply(error("42601") + ready()) == error("42601") + ready()
    assert p.client.names == {} and not p.link.lru and p.registry.by_key == {}


def test_synthesized_reply_after_an_error_is_dropped() -> None:
    p = Pair()
    p.send(parse(b"s1", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    other = prepared.ClientStatements(p.registry)
    out = other.feed(p.link, bind(b"") + EXECUTE + parse(b"mine", b"SELECT 1") + SYNC)
    assert p.link.ready() == b""  # behind the Bind and Execute
    assert types(out) == "BES"
    got = b"".join(p.link.filter(d, other)[0] for d in (BIND_COMPLETE, error("22012"), ready()))
    assert types(got) == "2EZ"  # no ParseComplete: PostgreSQL skips the Parse after the error
    assert other.names == {}


def test_an_errors_skip_keeps_the_connection_off_the_fast_path_until_its_sync() -> None:
    """Parse/Bind/Execute/Flush, an error, then the client's Sync (clean, so not fed here):
    the connection stays busy until that Sync's ReadyForQuery, and the next client's
    Parse of a statement it has is answered again."""
    p = Pair()
    p.send(parse(b"s1", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    p.send(parse(b"s2", b"SELECT 1/0") + bind(b"s2") + EXECUTE + msg(b"H"))
    got = b"".join(p.link.filter(d, p.client)[0] for d in (PARSE_COMPLETE, BIND_COMPLETE, error("22012")))
    assert types(got) == "12E"
    assert p.link.busy  # the server skips to the Sync: its ReadyForQuery must come through filter
    assert p.link.filter(ready(), p.client)[0] == ready()
    assert not p.link.busy
    other = prepared.ClientStatements(p.registry)
    out = other.feed(p.link, parse(b"mine", b"SELECT 1") + bind(b"mine") + EXECUTE + SYNC)
    assert types(out) == "BES" and p.link.ready() == PARSE_COMPLETE


def test_eviction_closes_the_least_recently_used_ahead() -> None:
    p = Pair(limit=2)
    for i, q in enumerate((b"SELECT 1", b"SELECT 2")):
        p.send(parse(b"s%d" % i, q) + SYNC)
        p.reply(PARSE_COMPLETE + ready())
    out, _ = p.send(parse(b"s2", b"SELECT 3") + SYNC)
    assert out == msg(b"C", b"Spoold_1\0") + parse(b"poold_3", b"SELECT 3") + SYNC
    assert p.reply(CLOSE_COMPLETE + PARSE_COMPLETE + ready()) == PARSE_COMPLETE + ready()
    assert p.registry.evictions == 1 and len(p.link.lru) == 2


def test_result_type_change_marks_it_stale_and_prepares_it_again() -> None:
    p = Pair()
    p.send(parse(b"s", b"SELECT * FROM t") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    p.send(bind(b"s") + EXECUTE + SYNC)
    err = error("0A000", "cached plan must not change result type")
    assert p.reply(err + ready()) == err + ready()
    out, _ = p.send(bind(b"s") + EXECUTE + SYNC)
    assert types(out) == "CPBES" and p.registry.reprepares == 1
    got = p.reply(CLOSE_COMPLETE + PARSE_COMPLETE + BIND_COMPLETE + complete(b"SELECT 1") + ready())
    assert types(got) == "2CZ"


@pytest.mark.parametrize("tag", [b"DEALLOCATE ALL", b"DISCARD ALL"])
def test_deallocate_all_clears_the_link_and_the_client(tag: bytes) -> None:
    p = Pair()
    p.send(parse(b"s", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    p.send(msg(b"Q", tag + b"\0"))
    assert p.reply(complete(tag) + ready()) == complete(tag) + ready()
    assert not p.link.lru and p.client.names == {} and p.registry.by_key == {}


def test_client_cap_answers_53400() -> None:
    p = Pair(cap=1)
    p.send(parse(b"a", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    p.send(parse(b"b", b"SELECT 2") + SYNC)
    got = messages_of(p.reply(error("42703") + ready()))
    assert b"C53400\0" in got[0][1] and b"max_client_prepared_statements is 1" in got[0][1]


def test_replies_owed_before_come_first() -> None:
    p = Pair()
    p.send(parse(b"s1", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    p.link.owed = 1  # one earlier request, sent as it was, still owes its ReadyForQuery
    out = prepared.ClientStatements(p.registry).feed(p.link, parse(b"t", b"SELECT 1") + SYNC)
    p.link.owed = 0
    assert out == SYNC and p.link.ready() == b""
    earlier = msg(b"T", b"\0\0") + complete(b"SELECT 0") + ready()
    assert p.link.filter(earlier, None)[0] == earlier + PARSE_COMPLETE
    assert p.link.filter(ready(), None)[0] == ready()
    assert not p.link.busy


def test_a_large_plain_request_streams_through() -> None:
    p = Pair()
    p.send(parse(b"s1", b"SELECT 1") + SYNC)
    big = msg(b"d", b"x" * 100_000)
    out1 = p.client.feed(p.link, big[:1000])
    assert out1 == big[:1000] and p.client.mid
    out2 = p.client.feed(p.link, big[1000:] + msg(b"c"))
    assert out1 + out2 == big + msg(b"c") and not p.client.mid


@pytest.mark.parametrize("stmt", [b"s1", b""])
def test_a_large_bind_streams_once_its_names_are_read(stmt: bytes) -> None:
    """A Bind of a large parameter is renamed (or passed) from its first chunk on, the
    rest streaming through: nothing of it waits whole in poold."""
    p = Pair()
    p.send(parse(b"s1", b"SELECT $1::text") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    param = b"x" * 100_000
    big = msg(b"B", b"\0" + stmt + b"\0\0\0\0\1" + struct.pack("!i", len(param)) + param + b"\0\0")
    out1 = p.client.feed(p.link, big[:1000])
    assert p.client.mid and len(p.client._partial) == 0  # streaming, not held
    out2 = p.client.feed(p.link, big[1000:] + EXECUTE + SYNC)
    renamed = b"poold_1" if stmt else b""
    whole = msg(b"B", b"\0" + renamed + b"\0\0\0\0\1" + struct.pack("!i", len(param)) + param + b"\0\0")
    assert out1 + out2 == whole + EXECUTE + SYNC and not p.client.mid


def test_rename_only_when_every_statement_is_ready() -> None:
    p = Pair()
    p.send(parse(b"s1", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    chunk = bind(b"s1") + DESCRIBE_PORTAL + EXECUTE + SYNC
    assert p.client.rename(p.link, chunk) == bind(b"poold_1") + DESCRIBE_PORTAL + EXECUTE + SYNC
    assert p.link.bound and not p.link.busy
    assert p.client.rename(p.link, msg(b"D", b"Ss1\0") + SYNC) == msg(b"D", b"Spoold_1\0") + SYNC
    assert p.client.rename(p.link, bind(b"s1") + EXECUTE) is None  # no sync point last
    assert p.client.rename(p.link, bind(b"nope") + EXECUTE + SYNC) is None  # unknown: the server's 26000
    assert p.client.rename(prepared.LinkStatements(p.registry), chunk) is None  # not on that connection
    assert p.client.rename(p.link, parse(b"s2", b"SELECT 2") + chunk) is None
    p.link.mark_bound_stale()  # a 0A000 came back
    assert p.client.rename(p.link, chunk) is None


def test_sql_deallocate_runs_under_poolds_name_and_forgets_at_its_tag() -> None:
    p = Pair()
    p.send(parse(b"s1", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    out, _ = p.send(msg(b"Q", b"deallocate s1;\0"))
    assert out == msg(b"Q", b"DEALLOCATE poold_1\0")
    assert list(p.client.names) == [b"s1"]  # until the server says it is done
    assert p.reply(complete(b"DEALLOCATE") + ready()) == complete(b"DEALLOCATE") + ready()
    assert p.client.names == {} and not p.link.lru


def test_sql_deallocate_where_the_connection_lacks_it_uses_a_stand_in() -> None:
    p = Pair()
    p.send(parse(b"s1", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    fresh = prepared.LinkStatements(p.registry)
    out = p.client.feed(fresh, msg(b"Q", b'DEALLOCATE PREPARE "s1"\0'))
    assert b"PREPARE poold_deallocated" in out
    got = fresh.filter(complete(b"PREPARE") + complete(b"DEALLOCATE") + ready(), p.client)[0]
    assert got == complete(b"DEALLOCATE") + ready() and p.client.names == {}


def test_sql_deallocate_of_an_unknown_or_folded_name_goes_as_it_is() -> None:
    p = Pair()
    p.send(parse(b"S1", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    assert p.send(msg(b"Q", b"DEALLOCATE S1\0"))[0] == msg(b"Q", b"DEALLOCATE S1\0")  # folds to s1: not the client's


def _does_not_exist(got: list[tuple[bytes, bytes]], name: bytes) -> bool:
    return b"C26000\0" in got[0][1] and b'prepared statement "' + name + b'" does not exist' in got[0][1]


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("request_of", [
    lambda name: bind(name) + EXECUTE + SYNC,
    lambda name: msg(b"D", b"S" + name + b"\0") + SYNC,
    lambda name: parse(b"", b"DEALLOCATE " + name) + bind(b"") + EXECUTE + SYNC,
], ids=["bind", "describe", "unnamed-parse-deallocate"])
def test_poolds_own_name_from_a_client_that_has_not_prepared_it_does_not_exist(request_of, split: bool) -> None:
    """Another client's statement under poold's name (poold_1 here) is not reached by a
    client that names it: PostgreSQL's 26000 in its words, the batch skipped by the
    server after poold's failing Parse. Before, the request went to the server as it
    was: a Bind ran the other client's statement, a DEALLOCATE dropped it from under
    poold (whose next Bind of it, for its own client, then failed)."""
    p = Pair()
    p.send(parse(b"s1", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    other = prepared.ClientStatements(p.registry)
    data = request_of(b"poold_1")
    chunks = [data[i : i + 1] for i in range(len(data))] if split else [data]
    out = b"".join(other.feed(p.link, c) for c in chunks)
    assert b"poold_1" not in out and b"poold_refused" in out
    got = messages_of(p.link.filter(error("42703") + ready(), other)[0])
    assert [t for t, _ in got] == [b"E", b"Z"] and _does_not_exist(got, b"poold_1")
    assert p.link.has(p.client.names[b"s1"])  # still poold's, on the connection, for its client


def test_sql_deallocate_of_poolds_own_name_does_not_exist() -> None:
    p = Pair()
    p.send(parse(b"s1", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    other = prepared.ClientStatements(p.registry)
    for text in (b"DEALLOCATE poold_1", b'deallocate prepare "poold_1";'):
        out = other.feed(p.link, msg(b"Q", text + b"\0"))
        assert b"poold_1" not in out and b"poold_refused" in out
        got = messages_of(p.link.filter(error("42703") + ready(), other)[0])
        assert [t for t, _ in got] == [b"E", b"Z"] and _does_not_exist(got, b"poold_1")
    assert not p.link.busy and p.link.has(p.client.names[b"s1"])
    # a name of the client's own that only looks like poold's is the client's
    mine = prepared.ClientStatements(p.registry)
    mine.feed(p.link, parse(b"poold_7", b"SELECT 7") + SYNC)
    p.link.filter(PARSE_COMPLETE + ready(), mine)
    out = mine.feed(p.link, bind(b"poold_7") + EXECUTE + SYNC)
    assert b"poold_refused" not in out and b"poold_2" in out


def test_poolds_own_name_in_a_failed_transaction() -> None:
    """A Bind or Describe: PostgreSQL looks the name up before it checks the transaction,
    so 26000 there too; a DEALLOCATE is a statement: the server's 25P02."""
    p = Pair()
    p.send(parse(b"s1", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    other = prepared.ClientStatements(p.registry)
    aborted = error("25P02", "current transaction is aborted")
    other.feed(p.link, bind(b"poold_1") + EXECUTE + SYNC)
    got = messages_of(p.link.filter(aborted + ready(b"E"), other)[0])
    assert _does_not_exist(got, b"poold_1")
    other.feed(p.link, parse(b"", b"DEALLOCATE poold_1") + bind(b"") + EXECUTE + SYNC)
    assert p.link.filter(aborted + ready(b"E"), other)[0] == aborted + ready(b"E")
    other.feed(p.link, msg(b"Q", b"DEALLOCATE poold_1\0"))
    assert p.link.filter(aborted + ready(b"E"), other)[0] == aborted + ready(b"E")
    assert not p.link.busy


def test_a_name_like_poolds_that_is_not_on_the_connection_goes_as_it_is() -> None:
    """poold_9 is no statement of poold's here (a pinned client's own SQL PREPARE, or
    one on another connection): the server answers for it."""
    p = Pair()
    p.send(parse(b"s1", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    other = prepared.ClientStatements(p.registry)
    assert other.feed(p.link, bind(b"poold_9") + EXECUTE + SYNC) == bind(b"poold_9") + EXECUTE + SYNC
    assert other.feed(prepared.LinkStatements(p.registry), bind(b"poold_1") + SYNC) == bind(b"poold_1") + SYNC


@pytest.mark.parametrize("text", [b"SELECT 1; DEALLOCATE poold_1", b"/* x */ DEALLOCATE poold_1"])
def test_a_deallocate_poold_did_not_write_puts_the_connections_statements_in_doubt(text: bytes) -> None:
    """A DEALLOCATE poold cannot read the name of (in a script, behind a comment) may have
    dropped any of its statements there: each is closed and prepared again at its next use
    (a Close of what is gone is no error), as a stale one is, so its client's Bind works."""
    p = Pair()
    p.send(parse(b"s1", b"SELECT 1") + SYNC)
    p.reply(PARSE_COMPLETE + ready())
    other = prepared.ClientStatements(p.registry)
    assert other.feed(p.link, msg(b"Q", text + b"\0")) == msg(b"Q", text + b"\0")
    p.link.filter(complete(b"SELECT 1") + complete(b"DEALLOCATE") + ready(), other)
    out, _ = p.send(bind(b"s1") + EXECUTE + SYNC)
    assert types(out) == "CPBES" and out.count(b"poold_1") == 3
    got = p.reply(CLOSE_COMPLETE + PARSE_COMPLETE + BIND_COMPLETE + complete(b"SELECT 1") + ready())
    assert types(got) == "2CZ" and p.link.has(p.client.names[b"s1"])


def test_rename_differential_c_and_python() -> None:
    """_relaycore.ps_rename (ps_rename_walk) and ClientStatements.rename give the same
    bytes and the same statements for the same chunk, over random chunks."""
    import random
    from collections import OrderedDict

    assert relaycore.native is not None, "the C core must be built"
    rng = random.Random(1919)
    registry = prepared.Registry(lambda: (200, 0))
    stmts = {b"s%d" % i: registry.statement(b"SELECT %d\0\0\0" % i) for i in range(5)}
    pieces = [bind(b"s0"), bind(b"s1"), bind(b"s2", portal=b"p"), bind(b"nope"), bind(b""), msg(b"D", b"Ss3\0"),
              msg(b"D", b"P\0"), DESCRIBE_PORTAL, EXECUTE, msg(b"H"), parse(b"", b"SELECT 1"), parse(b"x", b"SELECT 1"),
              msg(b"C", b"Ss0\0"), msg(b"Q", b"SELECT 1\0"), msg(b"Q", b"discard all\0"), SYNC]
    for _ in range(3000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.2:
            cut = bytearray(data)
            cut[rng.randrange(len(cut))] = rng.randrange(256)
            data = bytes(cut)
        lru: OrderedDict[prepared.Statement, bool] = OrderedDict(
            (s, rng.random() < 0.2) for s in stmts.values() if rng.random() < 0.8)
        client = prepared.ClientStatements(registry)
        client.names = dict(stmts)
        link = prepared.LinkStatements(registry)
        link.lru = OrderedDict(lru)
        expected = client.rename(link, data)
        got = relaycore.native.ps_rename(dict(stmts), OrderedDict(lru), data)
        if expected is None:
            assert got is None, data
        else:
            assert got is not None and got[0] == expected and got[1] == link.bound, data
