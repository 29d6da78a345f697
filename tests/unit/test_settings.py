"""settings.py's pure parts: startup parameters read as PostgreSQL reads them, the first
bytes of a request looked at (the same in Python and C), the hand-off's query."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from poold import relaycore, settings
from poold.errors import ServerRefusal


def query(sql: str) -> bytes:
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!i", len(body) + 4) + body


def parse(sql: str, name: str = "", types: tuple[int, ...] = ()) -> bytes:
    body = name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", len(types))
    body += b"".join(struct.pack("!i", t) for t in types)
    return b"P" + struct.pack("!i", len(body) + 4) + body


SYNC = b"S\0\0\0\x04"


@pytest.mark.parametrize(("options", "want"), [
    ("-c statement_timeout=1234", [("statement_timeout", "1234")]),
    ("-cstatement_timeout=1234 -c work_mem=2MB", [("statement_timeout", "1234"), ("work_mem", "2MB")]),
    ("--statement-timeout=5s  --search_path=a,b", [("statement_timeout", "5s"), ("search_path", "a,b")]),
    (r"-c application_name=a\ b\\c", [("application_name", "a b\\c")]),
    ("-S 1000", [("work_mem", "1000")]),
    ("", []),
    ("   ", []),
])
def test_options_are_read_as_postgresql_reads_them(options: str, want: list[tuple[str, str]]) -> None:
    assert settings.parse_options(options) == want


@pytest.mark.parametrize(("options", "message"), [
    ("-x", "invalid command-line argument for server process: -x"),
    ("-c work_mem", "-c work_mem requires a value"),
    ("--work_mem", "--work_mem requires a value"),
    ("-c", "invalid command-line argument for server process: -c"),
])
def test_options_postgresql_refuses(options: str, message: str) -> None:
    with pytest.raises(ServerRefusal) as refused:
        settings.parse_options(options)
    assert (refused.value.sqlstate, refused.value.message) == ("42601", message)


def test_startup_settings() -> None:
    params = {"user": "app", "database": "app", "options": "-c lock_timeout=1s", "TimeZone": "utc", "Work_Mem": "1MB"}
    assert settings.startup_settings(params) == {"lock_timeout": "1s", "TimeZone": "utc", "Work_Mem": "1MB"}
    assert settings.startup_settings(params, {"work_mem", "lock_timeout"}) == {"TimeZone": "utc"}
    assert {settings.setting_name(n) for n in settings.startup_settings(params)} == {"lock_timeout", "TimeZone",
                                                                                    "work_mem"}


@pytest.mark.parametrize(("data", "touched", "reason"), [
    (query("SET statement_timeout = 0"), True, None),
    (query("set local work_mem = '1MB'"), True, None),
    (query("  /* c */ -- x\n RESET ALL"), True, None),
    (query("DISCARD ALL"), True, None),
    (query("SELECT set_config('work_mem', '1MB', false)"), True, None),
    (parse("SET search_path TO a") + SYNC, True, None),
    (parse("SET ROLE r", "named"), True, None),
    (query("LISTEN x"), False, "LISTEN"),
    (query("SELECT pg_advisory_lock(1)"), False, "advisory lock"),
    (query("select pg_try_advisory_lock_shared(1)"), False, "advisory lock"),
    (query("CREATE TEMP TABLE t (i int)"), False, "CREATE TEMPORARY"),
    (query("create global temporary table t (i int)"), False, "CREATE TEMPORARY"),
    (query("DECLARE c CURSOR WITH HOLD FOR SELECT 1"), False, "DECLARE ... WITH HOLD"),
    (query("PREPARE p AS SELECT 1"), False, "PREPARE"),
    (query("BEGIN; SET work_mem = '1MB'; COMMIT"), True, None),
    (query("select 1;listen x;"), False, "LISTEN"),
])
def test_classify(data: bytes, touched: bool, reason: str | None) -> None:
    assert settings.may_carry_state(data)
    assert settings.classify(data) == (touched, reason)


@pytest.mark.parametrize("data", [
    query("SELECT 1"), query("settings"), query("CREATE TABLE t (i int)"), query("DECLARE c CURSOR FOR SELECT 1"),
    query("PREPARE TRANSACTION 'x'"), query("SELECT pg_advisory_xact_lock(1)"), query("SELECT pg_advisory_unlock(1)"),
    query("LISTENER"),
])
def test_what_does_not_carry_state(data: bytes) -> None:
    assert settings.classify(data) == (False, None) or not settings.may_carry_state(data)


def test_every_request_of_a_chunk_is_looked_at() -> None:
    pipeline = parse("SELECT 1") + b"B\0\0\0\x0c\0\0\0\0\0\0\0\0" + parse("SET work_mem = 1") + SYNC
    assert settings.may_carry_state(pipeline)
    assert settings.classify(pipeline) == (True, None)
    assert settings.classify(parse("SELECT 1") + parse("LISTEN x") + SYNC) == (False, "LISTEN")


@pytest.mark.parametrize("data", [
    query("SELECT abalance FROM pgbench_accounts WHERE aid = 1"), query("SELECT 1; \n"), parse("SELECT 1") + SYNC,
    b"B\0\0\0\x0c\0\0\0\0\0\0\0\0" + SYNC, query("INSERT INTO t VALUES (1)"), query("UPDATE t SET i = 1"),
])
def test_common_requests_are_not_looked_at(data: bytes) -> None:
    assert not settings.may_carry_state(data)


@given(st.binary(max_size=64), st.sampled_from([b"Q", b"P", b"B"]), st.sampled_from(
    [b"", b"set ", b"SeT\t", b"reset", b"listen x", b"Prepare p", b"create", b"select 1", b" ", b"--", b"settings",
     b"select pg_advisory_lock(", b"SELECT PG_ADVISORY_LOCK", b"select set_config", b"x_set_config_", b"_",
     b"advisory_loc", b"et_config", b"select 1;", b"; ", b"select 1; select 2", b";\0x;"]))
@hsettings(max_examples=500, deadline=None)
def test_look_is_the_same_in_c(tail: bytes, kind: bytes, head: bytes) -> None:
    """The C core's look (_relaycore.c, may_carry_state) and the reference agree on any bytes,
    wherever the chunk's first whole message starts and whatever message came before it."""
    native = relaycore.native
    assert native is not None, "the C core was not built"
    one = query("select 1") + b"B\0\0\0\x04"
    framed = kind + struct.pack("!i", len(head) + 5) + head + b"\0"
    for data in (kind + b"\0\0\0\0" + head + tail, kind + b"\0\0\0\0name\0" + head + tail, kind + head + tail,
                 kind + b"\0\0\0\0select " + tail + head, kind + b"\0\0\0\0" + head + b"_lock" + tail,
                 one + framed + tail, framed + one + tail, one + kind + struct.pack("!i", 40) + b"n\0" + head + tail,
                 kind + struct.pack("!i", 9) + head + tail, one + kind + struct.pack("!i", 900) + head + tail):
        for at in (0, 1, 5, len(one), len(data)):  # a chunk whose first whole message starts further in
            at = min(at, len(data))
            for before in (-1, ord("Q"), ord("P"), ord("d")):
                assert native.look(data, at, before) == settings.look(data, at, before), (data, at, before)


def test_look_from_the_first_whole_message() -> None:
    """A chunk that starts inside a message: the SET after it is seen from ``at``, and
    bytes before ``at`` (the end of a long text) are not read as a header."""
    native = relaycore.native
    assert native is not None, "the C core was not built"
    tail = b"x" * 30 + b"')\0"
    data = tail + query("SET work_mem = '3MB'")
    for look in (settings.look, native.look):
        assert look(data, len(tail)) == (True, len(data))
        assert look(tail + query("SELECT 1"), len(tail)) == (False, len(tail + query("SELECT 1")))
        assert look(data, len(data)) == (False, len(data))


def test_look_keeps_a_start_too_short_for_the_next_read() -> None:
    """A read that ends inside a header, or inside a Query's or Parse's first HEAD_BYTES,
    is cut there; a longer start, or another message's, is not."""
    native = relaycore.native
    assert native is not None, "the C core was not built"
    setting = query("SET work_mem = '3MB'")
    long_query = query("SELECT '" + "x" * 1000 + "'")
    bind = b"B" + struct.pack("!i", 1000) + b"\0\0"
    for look in (settings.look, native.look):
        for k in range(1, len(setting)):  # every cut of a SET behind a whole query
            assert look(query("SELECT 1") + setting[:k]) == (False, len(query("SELECT 1"))), k
        assert look(long_query[: 5 + settings.HEAD_BYTES]) == (False, 5 + settings.HEAD_BYTES)
        assert look(long_query[: 4 + settings.HEAD_BYTES]) == (False, 0)
        assert look(bind) == (False, len(bind))  # a Bind's start: nothing to look at
        assert look(bind[:4]) == (False, 0)  # a cut header
        # a start longer than the scanner takes goes on, to be refused at once
        assert look(b"Q" + struct.pack("!I", 0x7FFFFFF0)) == (False, 5)
        assert look(long_query[:100], 0, -1, 500) == (False, 100)
        assert look(long_query[:100], 0, -1, 2000) == (False, 0)


def test_look_at_the_rest_of_a_query() -> None:
    """The rest of a Query begun in an earlier read: a ';' may start a SET, a name of a
    session advisory lock or set_config counts; the rest of another message does not."""
    native = relaycore.native
    assert native is not None, "the C core was not built"
    rest = b"xxxx'; SET work_mem = '3MB'\0"
    for look in (settings.look, native.look):
        assert look(rest, len(rest), ord("Q")) == (True, len(rest))
        assert look(rest, len(rest), ord("d")) == (False, len(rest))  # COPY data
        assert look(b"x) FROM pg_advisory_lock(1)\0", 28, ord("P")) == (True, 28)
        assert look(b"xxxx') + 1\0" + query("SELECT 1"), 11, ord("Q")) == (False, 11 + len(query("SELECT 1")))
    assert settings.classify_rest(rest, ord("Q")) == (True, None)
    assert settings.classify_rest(b"x'; LISTEN x\0", ord("Q")) == (True, "LISTEN")
    assert settings.classify_rest(b"x) FROM pg_advisory_lock(1)\0", ord("P")) == (True, "advisory lock")


def test_refused_keeps_the_rest_of_the_chunk() -> None:
    rest = b"B\0\0\0\x0c\0\0\0\0\0\0\0\0" + SYNC
    out = settings.refused(parse("LISTEN x", "s1", (23,)) + rest)
    assert out is not None and out.endswith(rest) and out.startswith(b"P")
    length = struct.unpack_from("!i", out, 1)[0]
    body = out[5 : 1 + length]
    name, sql, tail = body.split(b"\0", 2)
    assert name == b"s1" and sql.startswith(b"DO $poold$") and b"0A000" in sql and tail == struct.pack("!hi", 1, 23)
    # the one that makes it, wherever it is in the chunk; the others as they were
    first = parse("SELECT 1") + rest
    out = settings.refused(first + query("LISTEN x") + SYNC)
    assert out is not None and out.startswith(first) and out.endswith(SYNC) and b"0A000" in out
    assert settings.refused(query("LISTEN x")[:-3]) is None  # does not end in the chunk: pinned instead


def test_sync_sql() -> None:
    assert settings.sync_sql({"work_mem": "1MB"}, {"work_mem": "1MB"}) == []
    assert settings.sync_sql({}, {"work_mem": "1MB"}) == ["SELECT set_config('work_mem', '1MB', false)"]
    assert settings.sync_sql({"work_mem": "1MB", "x.y": "1"}, {}) == ['RESET "work_mem"; RESET "x.y"']
    # the RESETs apart from the set_config() calls: a failing value of the new client's
    # cannot roll back the reset of the last client's; the role last, in a Query of its own
    assert settings.sync_sql({"role": "r", "work_mem": "1MB"}, {"work_mem": "2MB", "role": "s"}) == [
        "RESET role", "SELECT set_config('work_mem', '2MB', false)", "SELECT set_config('role', 's', false)"]
    assert settings.sync_sql({}, {"search_path": "a, \"B\""}) == ["SELECT set_config('search_path', 'a, \"B\"', false)"]


def test_session_settings() -> None:
    rows = [("work_mem", "1024"), ("DateStyle", "ISO, DMY"), ("session_authorization", "app"), ("role", "none")]
    assert settings.session_settings(rows, {"session_authorization": "app"}) == {"work_mem": "1024",
                                                                               "DateStyle": "ISO, DMY"}
