"""Named prepared statements in transaction mode, through the real poold process.

More clients than server connections, so that clients really change server
connections between transactions: psycopg at its defaults and with prepare=True,
pipeline mode, executemany, pgbench -M prepared, and hand-driven protocol sessions
for PostgreSQL's exact error sequences (a reused name, a failing Parse, Close,
DEALLOCATE ALL, DISCARD ALL, a DDL that changes a result type, the caps).
Each test runs on the C core and on the Python references.
"""

from __future__ import annotations

import json
import struct
import subprocess
import threading
import urllib.request
from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import Poold, RawClient, pgcluster, wait_until

PYTHON_TWINS = {"POOLD_RELAY_CORE": "python", "POOLD_FRAME_SCANNER": "python", "POOLD_SOCKET_IO": "asyncio"}


@pytest.fixture(params=["c", "python"])
def core(request: pytest.FixtureRequest) -> dict[str, str]:
    return PYTHON_TWINS if request.param == "python" else {}


# -- a hand-driven extended-protocol client -----------------------------------


def _parse(name: str, query: str, oids: tuple[int, ...] = ()) -> tuple[bytes, bytes]:
    body = name.encode() + b"\0" + query.encode() + b"\0" + struct.pack(f"!h{len(oids)}I", len(oids), *oids)
    return b"P", body


def _bind(stmt: str, *params: str | None, portal: str = "") -> tuple[bytes, bytes]:
    body = portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!hh", 0, len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p.encode())) + p.encode()
    return b"B", body + struct.pack("!h", 0)


def _execute(portal: str = "") -> tuple[bytes, bytes]:
    return b"E", portal.encode() + b"\0" + struct.pack("!i", 0)


def _describe(kind: str, name: str) -> tuple[bytes, bytes]:
    return b"D", kind.encode() + name.encode() + b"\0"


def _close(kind: str, name: str) -> tuple[bytes, bytes]:
    return b"C", kind.encode() + name.encode() + b"\0"


SYNC = (b"S", b"")


def _frame(msgs: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(t + struct.pack("!I", len(b) + 4) + b for t, b in msgs)


class Session(RawClient):
    """A logged-in raw client (trust auth) that sends batches and reads replies up to ReadyForQuery."""

    def __init__(self, p: Poold) -> None:
        super().__init__(p.port)
        self.startup()
        while self.read_message()[0] != b"Z":
            pass

    def batch(self, *msgs: tuple[bytes, bytes], split: bool = False) -> list[tuple[str, bytes]]:
        """Send messages ending with Sync; the replies' (type, body) up to ReadyForQuery."""
        data = _frame([*msgs, SYNC])
        if split:  # one byte at a time: the relay must carry every boundary
            for i in range(len(data)):
                self.sock.sendall(data[i : i + 1])
        else:
            self.sock.sendall(data)
        replies = []
        while True:
            t, body = self.read_message()
            replies.append((t.decode(), body))
            if t == b"Z":
                return replies

    def types(self, *msgs: tuple[bytes, bytes], split: bool = False) -> str:
        return "".join(t for t, _ in self.batch(*msgs, split=split))

    def query(self, sql: str) -> list[tuple[str, bytes]]:
        self.send(b"Q", sql.encode() + b"\0")
        replies = []
        while True:
            t, body = self.read_message()
            replies.append((t.decode(), body))
            if t == b"Z":
                return replies


def _fields(body: bytes) -> dict[str, str]:
    return {chr(f[0]): f[1:].decode() for f in body.split(b"\0") if f}


def _error(replies: list[tuple[str, bytes]]) -> dict[str, str]:
    return next(_fields(b) for t, b in replies if t == "E")


def _rows(replies: list[tuple[str, bytes]]) -> list[str]:
    """The first column of each DataRow, as text."""
    out = []
    for t, b in replies:
        if t == "D":
            (n,) = struct.unpack_from("!i", b, 2)
            out.append(b[6 : 6 + n].decode())
    return out


def _poold(factory: Callable[..., Poold], core: dict[str, str], **settings: object) -> Poold:
    settings.setdefault("max_size", 4)
    settings.setdefault("min_size", 4)
    return factory(mode="transaction", auth_type="trust", environ=core, **settings)


def _hold_others(p: Poold, n: int) -> list[psycopg.Connection]:
    """Hold ``n - 1`` server connections in open transactions, so that the next
    client's next transaction must use the one left (a different server)."""
    held = []
    for _ in range(n):
        c = psycopg.connect(p.dsn(), prepare_threshold=None)
        c.execute("SELECT 1")
        held.append(c)
    return held


# -- drivers at their defaults --------------------------------------------------


def test_psycopg_defaults_40_threads_over_4_servers(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    p = _poold(poold_factory, core)
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with psycopg.connect(p.dsn()) as conn:  # prepare_threshold=5: named statements from the 6th use on
                for j in range(50):
                    assert conn.execute("SELECT %s::int + 1", (j,)).fetchone() == (j + 1,)
                    conn.commit()
        except BaseException as exc:  # noqa: BLE001  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]


def test_psycopg_prepare_true_and_executemany(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    p = _poold(poold_factory, core)
    with psycopg.connect(p.dsn(), autocommit=True) as setup:
        setup.execute("DROP TABLE IF EXISTS many; CREATE TABLE many (i int, s text)")
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with psycopg.connect(p.dsn(), autocommit=True) as conn:
                for j in range(20):
                    row = conn.execute("SELECT %s::int * 2, %s::text", (j, f"c{i}"), prepare=True).fetchone()
                    assert row == (j * 2, f"c{i}")
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO many VALUES (%s, %s)", [(k, f"c{i}") for k in range(30)])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    with psycopg.connect(p.dsn(), autocommit=True) as check:
        assert check.execute("SELECT count(*), count(DISTINCT s) FROM many").fetchone() == (12 * 30, 12)


def test_pipeline_mode_with_prepared_statements(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    p = _poold(poold_factory, core, max_size=2, min_size=2)
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with psycopg.connect(p.dsn(), autocommit=True) as conn:
                for _ in range(5):
                    with conn.pipeline():
                        curs = [conn.execute("SELECT %s::int + %s::int", (i, k), prepare=True) for k in range(20)]
                        curs += [conn.execute("SELECT %s::text || 'x'", (str(k),), prepare=True) for k in range(5)]
                    got = [c.fetchone()[0] for c in curs]  # type: ignore[index]
                    assert got == [i + k for k in range(20)] + [f"{k}x" for k in range(5)]
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]


@pytest.mark.parametrize("script", ["-S", "tpcb"])
def test_pgbench_prepared_zero_failures(poold_factory: Callable[..., Poold], core: dict[str, str], script: str) -> None:
    p = _poold(poold_factory, core)
    env = p.env()
    init = subprocess.run([pgcluster.client_tool("pgbench"), "-i", "-q", "-s", "1"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    # A thread per client: pgbench prepares with a synchronous PQprepare, which would block a
    # thread's other clients, one of which may hold the server connection it waits for.
    args = ["-n", "-c", "16", "-j", "16", "-T", "4", "-M", "prepared"] + (["-S"] if script == "-S" else [])
    r = subprocess.run([pgcluster.client_tool("pgbench"), *args], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "number of failed transactions: 0 " in r.stdout, r.stdout
    assert "tps = " in r.stdout


# -- PostgreSQL's exact sequences -------------------------------------------------


def test_statement_follows_the_client_to_another_server(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    p = _poold(poold_factory, core, max_size=2, min_size=2)
    s = Session(p)
    assert s.types(_parse("q", "SELECT $1::int * 10", (23,))) == "1Z"
    others = _hold_others(p, 1)  # the server s used is the one held now, or the other: force a change
    try:
        for i in range(3):
            replies = s.batch(_bind("q", str(i)), _execute())
            assert [t for t, _ in replies] == ["2", "D", "C", "Z"] and _rows(replies) == [str(i * 10)]
        # Describe of the statement on whichever server: its parameter and row descriptions
        assert s.types(_describe("S", "q")) == "tTZ"
        # split one byte at a time
        assert s.types(_bind("q", "7"), _execute(), split=True) == "2DCZ"
    finally:
        for c in others:
            c.close()
        s.close()


def test_statements_stay_with_a_connection_given_back_to_psycopg_pool(
    poold_factory: Callable[..., Poold], core: dict[str, str]
) -> None:
    # idle_timeout 1 s: an idle link goes back to psycopg_pool after 0.5 s (Pool.hold_time), and the
    # server connection keeps poold's statements: poold must know them when it leases it again.
    p = _poold(poold_factory, core, max_size=1, min_size=1, idle_timeout=1)
    s = Session(p)
    try:
        assert s.types(_parse("kept", "SELECT 'kept'")) == "1Z"

        def given_back() -> bool:
            rows = json.loads(p.poolctl("--json", "servers").stdout)
            return bool(rows) and all(r["state"] == "pool" for r in rows)

        wait_until(given_back, timeout=20)
        assert _rows(s.batch(_bind("kept"), _execute())) == ["kept"]
        t = Session(p)
        try:  # the same text under another client's name: already there (not 42P05 on poold_1)
            assert t.types(_parse("again", "SELECT 'kept'"), _bind("again"), _execute()) == "12DCZ"
        finally:
            t.close()
    finally:
        s.close()


def test_reused_name_gets_42P05_and_the_session_continues(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    p = _poold(poold_factory, core, max_size=2, min_size=2)
    s = Session(p)
    others: list[psycopg.Connection] = []
    try:
        assert s.types(_parse("x", "SELECT 1")) == "1Z"
        others = _hold_others(p, 1)  # the connection s used last (the free list is LIFO): s goes to the other
        replies = s.batch(_parse("x", "SELECT 2"), _bind("x"), _execute())
        assert [t for t, _ in replies] == ["E", "Z"]  # the rest of the batch skipped, as PostgreSQL does
        err = _error(replies)
        assert err["C"] == "42P05" and err["M"] == 'prepared statement "x" already exists', err
        assert replies[-1][1] == b"I"
        # inside a transaction block the error fails the block, as it would on PostgreSQL
        assert s.query("BEGIN")[-1] == ("Z", b"T")
        replies = s.batch(_parse("x", "SELECT 3"))
        assert [t for t, _ in replies] == ["E", "Z"] and replies[-1][1] == b"E"
        assert s.query("ROLLBACK")[-1] == ("Z", b"I")
        # and x still is the first statement
        assert _rows(s.batch(_bind("x"), _execute())) == ["1"]
    finally:
        for c in others:
            c.close()
        s.close()


def test_failing_parse_leaves_nothing(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    p = _poold(poold_factory, core)
    s = Session(p)
    try:
        replies = s.batch(_parse("bad", "SELEC 1"), _bind("bad"), _execute())
        assert [t for t, _ in replies] == ["E", "Z"] and _error(replies)["C"] == "42601"
        replies = s.batch(_bind("bad"), _execute())  # the name does not exist: PostgreSQL's own 26000
        assert [t for t, _ in replies] == ["E", "Z"] and _error(replies)["C"] == "26000"
        assert 'prepared statement "bad" does not exist' == _error(replies)["M"]
        # the same text, now valid, prepares fine under the same name
        assert s.types(_parse("bad", "SELECT 1")) == "1Z"
        assert _rows(s.batch(_bind("bad"), _execute())) == ["1"]
        # a failure later in a pipeline undoes a Parse that came after it
        replies = s.batch(_parse("a", "SELECT 1 / (random() * 0)::int"), _bind("a"), _execute(), _parse("b", "SELECT 'b'"))
        assert [t for t, _ in replies] == ["1", "2", "E", "Z"]
        replies = s.batch(_bind("b"), _execute())
        assert _error(replies)["C"] == "26000"
        assert s.types(_parse("b", "SELECT 'b'")) == "1Z"
    finally:
        s.close()


def test_close_is_answered_and_forgets_the_name(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    p = _poold(poold_factory, core)
    s = Session(p)
    try:
        assert s.types(_parse("c1", "SELECT 'one'")) == "1Z"
        assert s.types(_close("S", "c1")) == "3Z"
        assert s.types(_close("S", "never")) == "3Z"  # PostgreSQL closes an unknown name without error
        assert _error(s.batch(_bind("c1"), _execute()))["C"] == "26000"
        # Parse, use and Close in one pipeline, then the name is free again
        replies = s.batch(_parse("c1", "SELECT 'two'"), _bind("c1"), _execute(), _close("S", "c1"),
                          _parse("c1", "SELECT 'three'"), _bind("c1"), _execute())
        assert [t for t, _ in replies] == ["1", "2", "D", "C", "3", "1", "2", "D", "C", "Z"]
        assert _rows(replies) == ["two", "three"]
    finally:
        s.close()


def _drop_all(s: Session, command: str) -> list[tuple[str, bytes]]:
    """Run ``command`` (its last statement DEALLOCATE ALL or DISCARD ALL) as a simple
    Query, or, written ``extended: ...``, through an unnamed Parse; the replies."""
    if command.startswith("extended: "):
        return s.batch(_parse("", command.removeprefix("extended: ")), _bind(""), _execute())
    return s.query(command)


@pytest.mark.parametrize("command", ["DEALLOCATE ALL", "DISCARD ALL", "SELECT 1; DEALLOCATE ALL",
                                     "select 1;deallocate all", "extended: DEALLOCATE ALL", "extended: DISCARD ALL"])
def test_deallocate_all_and_discard_all(poold_factory: Callable[..., Poold], core: dict[str, str], command: str) -> None:
    """Wherever DEALLOCATE ALL or DISCARD ALL comes (alone, after another statement in
    one Query, or through the extended protocol), poold sees it by its tag."""
    p = _poold(poold_factory, core, max_size=1, min_size=1)
    s = Session(p)
    tag = b"DEALLOCATE ALL" if "deallocate" in command.lower() else b"DISCARD ALL"
    try:
        assert s.types(_parse("d1", "SELECT 'd1'")) == "1Z"
        assert _rows(s.batch(_bind("d1"), _execute())) == ["d1"]
        assert _drop_all(s, command)[-2][1].rstrip(b"\0") == tag
        # the client's statements are gone, as on PostgreSQL
        assert _error(s.batch(_bind("d1"), _execute()))["C"] == "26000"
        # and the name and the text prepare again on the same server connection
        assert s.types(_parse("d1", "SELECT 'd1'")) == "1Z"
        assert _rows(s.batch(_bind("d1"), _execute())) == ["d1"]
        # another client's statement of the same text is prepared again for it, not lost
        t = Session(p)
        try:
            assert t.types(_parse("t1", "SELECT 'd1'"), _bind("t1"), _execute()) == "12DCZ"
            assert _drop_all(s, command)[-1][0] == "Z"
            assert _rows(t.batch(_bind("t1"), _execute())) == ["d1"]
        finally:
            t.close()
    finally:
        s.close()


def test_sql_deallocate_of_a_protocol_name(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    p = _poold(poold_factory, core, max_size=2, min_size=2)
    s = Session(p)
    others: list[psycopg.Connection] = []
    try:
        assert s.types(_parse("d1", "SELECT 'd1'"), _parse("D2", "SELECT 'd2'"), _parse("d3", "SELECT 'd3'")) == "111Z"
        replies = s.query("DEALLOCATE d1")  # on the connection that has it
        assert [t for t, _ in replies] == ["C", "Z"] and replies[0][1] == b"DEALLOCATE\0"
        assert _error(s.batch(_bind("d1"), _execute()))["M"] == 'prepared statement "d1" does not exist'
        # an unquoted name folds to lower case, as on PostgreSQL: D2 is not d2
        assert _error(s.query("DEALLOCATE D2"))["C"] == "26000"
        others = _hold_others(p, 1)  # s goes to the other connection, which lacks "D2"
        replies = s.query('DEALLOCATE PREPARE "D2";')
        assert [t for t, _ in replies] == ["C", "Z"] and replies[0][1] == b"DEALLOCATE\0"
        assert _error(s.batch(_bind("D2"), _execute()))["C"] == "26000"
        # in a failed transaction block, PostgreSQL's 25P02, and the name stays
        s.query("BEGIN")
        s.query("SELECT 1/0")
        replies = s.query("DEALLOCATE d3")
        assert _error(replies)["C"] == "25P02" and replies[-1] == ("Z", b"E")
        s.query("ROLLBACK")
        assert _rows(s.batch(_bind("d3"), _execute())) == ["d3"]
    finally:
        for c in others:
            c.close()
        s.close()


def test_poolds_own_names_are_not_another_clients(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    """A client naming poold's server-side name of another client's statement (poold_1)
    gets PostgreSQL's 26000, as it would on a connection of its own: a Bind does not run
    the other's statement, a DEALLOCATE (SQL, or psycopg's unnamed Parse of it) does not
    drop it from under poold, whose own client goes on using it. Before, the Bind ran it
    and the DEALLOCATE dropped it: the other client's next use failed with 26000."""
    p = _poold(poold_factory, core, max_size=1, min_size=1)
    owner, guesser = Session(p), Session(p)
    try:
        assert owner.types(_parse("mine", "SELECT 'secret'")) == "1Z"  # poold_1 on the one connection
        for replies in (guesser.batch(_bind("poold_1"), _execute()),
                        guesser.batch(_describe("S", "poold_1")),
                        guesser.query("DEALLOCATE poold_1"),
                        guesser.query("deallocate prepare poold_1;")):
            error = _error(replies)
            assert (error["C"], error["M"]) == ("26000", 'prepared statement "poold_1" does not exist'), replies
            assert replies[-1] == ("Z", b"I") and "secret" not in _rows(replies)
        with psycopg.connect(p.dsn(), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InvalidSqlStatementName, match='"poold_1" does not exist'):
                conn.execute("DEALLOCATE poold_1")
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert _rows(owner.batch(_bind("mine"), _execute())) == ["secret"]
        # a client pinned to the connection (its SQL PREPARE): the same, and its own
        # statement named like poold's is its own
        pinned = Session(p)
        try:
            assert [t for t, _ in pinned.query("PREPARE poold_own AS SELECT 'own'")] == ["C", "Z"]
            assert _error(pinned.batch(_bind("poold_1"), _execute()))["C"] == "26000"
            assert _rows(pinned.batch(_bind("poold_own"), _execute())) == ["own"]
        finally:
            pinned.close()
        assert _rows(owner.batch(_bind("mine"), _execute())) == ["secret"]
    finally:
        owner.close()
        guesser.close()


def test_result_type_change_errors_once_then_works(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    p = _poold(poold_factory, core, max_size=1, min_size=1)
    with psycopg.connect(p.dsn(), autocommit=True) as setup:
        setup.execute("DROP TABLE IF EXISTS shape; CREATE TABLE shape (a int); INSERT INTO shape VALUES (1)")
    s = Session(p)
    try:
        assert s.types(_parse("sh", "SELECT * FROM shape")) == "1Z"
        assert _rows(s.batch(_bind("sh"), _execute())) == ["1"]
        s.query("ALTER TABLE shape ADD COLUMN b int")
        replies = s.batch(_bind("sh"), _execute())
        err = _error(replies)
        assert err["C"] == "0A000" and "cached plan must not change result type" in err["M"], err
        replies = s.batch(_bind("sh"), _execute())
        assert [t for t, _ in replies] == ["2", "D", "C", "Z"], replies
        assert _rows(replies) == ["1"]
        # another client of the same text on the same server connection is not broken either
        t = Session(p)
        try:
            assert t.types(_parse("other", "SELECT * FROM shape"), _bind("other"), _execute()) == "12DCZ"
        finally:
            t.close()
    finally:
        s.close()


def test_small_cache_evicts_and_stays_correct(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    p = _poold(poold_factory, core, max_size=2, min_size=2, max_prepared_statements=2)
    sessions = [Session(p) for _ in range(3)]
    try:
        for s in sessions:
            for k in range(5):
                assert s.types(_parse(f"s{k}", f"SELECT {k} + $1::int", (23,))) == "1Z"
        for _round in range(3):
            for i, s in enumerate(sessions):
                msgs = []
                for k in range(5):
                    msgs += [_bind(f"s{k}", str(i)), _execute()]
                replies = s.batch(*msgs)
                assert _rows(replies) == [str(k + i) for k in range(5)], replies
        # the server connections never hold more than two of poold's statements
        with psycopg.connect(p.dsn(), autocommit=True, prepare_threshold=None) as c:
            n = c.execute("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'poold%'").fetchone()
            assert n is not None and n[0] <= 2
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{p.http_port}/metrics", timeout=5).read().decode()
        assert 'poold_prepared_evictions_total{pool="app.app"}' in metrics
        evictions = float(next(line.split()[-1] for line in metrics.splitlines()
                               if line.startswith("poold_prepared_evictions_total{")))
        assert evictions > 0
    finally:
        for s in sessions:
            s.close()


def test_per_client_cap(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    p = _poold(poold_factory, core, max_client_prepared_statements=3)
    s = Session(p)
    try:
        for k in range(3):
            assert s.types(_parse(f"n{k}", f"SELECT {k}")) == "1Z"
        replies = s.batch(_parse("n3", "SELECT 3"), _bind("n3"), _execute())
        assert [t for t, _ in replies] == ["E", "Z"]
        err = _error(replies)
        assert err["C"] == "53400" and "3" in err["M"] and "max_client_prepared_statements" in err["M"], err
        # Close one, and there is room again
        assert s.types(_close("S", "n0")) == "3Z"
        assert s.types(_parse("n3", "SELECT 3"), _bind("n3"), _execute()) == "12DCZ"
    finally:
        s.close()


def test_pools_report_the_registry(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    p = _poold(poold_factory, core)
    s = Session(p)
    try:
        for _ in range(3):
            assert s.types(_parse("r", "SELECT 'r'"), _bind("r"), _execute(), _close("S", "r")) == "12DC3Z"
    finally:
        s.close()
    out = p.poolctl("--json", "pools")
    assert out.returncode == 0, out.stderr
    pool = json.loads(out.stdout)[0]
    assert pool["prepared"]["hits"] >= 2 and pool["prepared"]["misses"] >= 1, pool
    header, row = p.poolctl("pools").stdout.splitlines()[:2]
    assert "PS_STATEMENTS" in header.split() and "PS_HITS" in header.split()
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{p.http_port}/metrics", timeout=5).read().decode()
    for family in ("poold_prepared_statements", "poold_prepared_hits_total", "poold_prepared_misses_total",
                   "poold_prepared_reprepares_total"):
        assert family + '{pool="app.app"}' in metrics, family


def test_session_mode_passes_names_through(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(mode="session", auth_type="trust", max_size=2, min_size=1)
    s = Session(p)
    try:
        assert s.types(_parse("plain", "SELECT 'p'")) == "1Z"
        rows = _rows(s.query("SELECT name FROM pg_prepared_statements"))
        assert rows == ["plain"]
    finally:
        s.close()


def test_reload_changes_the_limit_live(poold_factory: Callable[..., Poold], core: dict[str, str]) -> None:
    p = _poold(poold_factory, core, max_size=1, min_size=1)
    s = Session(p)
    try:
        for k in range(3):
            assert s.types(_parse(f"r{k}", f"SELECT {k}")) == "1Z"
        (p.tmp / "poold.env").write_text("POOLD_POOL__MAX_PREPARED_STATEMENTS=1\n")
        dry = p.poolctl("reload", "--dry-run")
        assert dry.returncode == 0 and "max_prepared_statements: 200 -> 1" in dry.stdout, dry.stdout
        assert p.poolctl("reload").returncode == 0
        # the connection's LRU shrinks to the new limit at the next statement it prepares
        assert s.types(_parse("r3", "SELECT 3")) == "1Z"
        for _ in range(2):
            for k in range(4):
                assert _rows(s.batch(_bind(f"r{k}"), _execute())) == [str(k)]
        n = _rows(s.query("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'poold%'"))
        assert n == ["1"]
    finally:
        s.close()
