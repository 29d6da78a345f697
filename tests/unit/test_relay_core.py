"""The relay's hot path in C (_relaycore) against its Python reference.

One scenario drives real ClientSession, ServerLink and Pool objects, with
transports that record what is written, through the cases the C core handles
itself and the ones it hands back to Python: leasing, queueing for a link and
the hand-off at release, a reply split mid-message, a ParameterStatus and an
ErrorResponse in a reply, an extended-protocol batch over two chunks, an open
transaction, Terminate, a link held back while a cancel for it is in flight, and
one whose internal query failed. It runs in subprocesses, one per implementation
(POOLD_RELAY_CORE), plus the C core with the Python frame scanner
(POOLD_FRAME_SCANNER=python, which the core calls as methods rather than
through the scanner's C API); their traces must be equal and right.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import types
from collections import Counter, deque
from typing import Any

import pytest


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


def query(sql: str) -> bytes:
    return msg(b"Q", sql.encode() + b"\0")


def reply(status: bytes = b"I", *, rows: int = 1, extra: bytes = b"") -> bytes:
    out = msg(b"T", b"\x00\x01a\x00" + b"\x00" * 18)
    out += msg(b"D", b"\x00\x01\x00\x00\x00\x011") * rows
    return out + extra + msg(b"C", b"SELECT 1\0") + msg(b"Z", status)


class Transport:
    def __init__(self, name: str, log: list[Any]) -> None:
        self.name, self.log, self.closing = name, log, False

    def write(self, data: bytes) -> None:
        self.log.append([self.name, data.hex()])

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return False  # poold's lingering close closes it then (sockio.linger)

    def close(self) -> None:
        self.closing = True
        self.log.append([self.name, "close"])

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class Loop:
    def time(self) -> float:
        return 1000.0

    def call_at(self, when: float, callback: Any) -> Any:
        return types.SimpleNamespace(when=lambda: when, cancel=lambda: None)


def scenario() -> dict[str, Any]:
    from poold import relaycore
    from poold.breaker import Breaker
    from poold.client import ClientSession
    from poold.pools import Pool
    from poold.relay import ServerLink
    from poold.stats import PoolStats

    log: list[Any] = []
    rt = types.SimpleNamespace(
        config=types.SimpleNamespace(clients=types.SimpleNamespace(max_message_size=1 << 20)),
        draining=False, stats=types.SimpleNamespace(errors=Counter()), unregister=lambda c: None, clients=set(), by_key={},
    )
    pool = Pool.__new__(Pool)
    pool.free, pool.active, pool.waiters = [], set(), deque()
    pool.stats, pool.settings = PoolStats(), types.SimpleNamespace(max_size=2, acquire_timeout=5.0, max_prepared_statements=0)
    pool.leased, pool.epoch, pool.paused, pool._closed = 2, 0, False, False
    pool.breaker, pool._loop, pool._wait_timer, pool.connecting = Breaker(5, 30.0), Loop(), None, 0
    pool._loop_time, pool._wait_until, pool._held = pool._loop.time, 0.0, set()
    pool.defaults, pool.name, pool.clients = {"application_name": ""}, "app.app", 3
    pool.refusal = None
    links = {}
    for name in ("s2", "s1"):  # LIFO: s1 is leased first
        link = ServerLink(lambda _link: None)
        link.transport, link.stats, link.pid = Transport(name, log), pool.stats, len(links) + 1
        link.defaults = dict(pool.defaults)
        links[name] = link
        pool.free.append(link)
    clients = {}
    for name in ("c1", "c2", "c3", "c4"):
        c = ClientSession(rt)  # type: ignore[arg-type]
        c.transport, c.relaying, c.pool, c._peer = Transport(name, log), True, pool, name
        clients[name] = c
    c1, c2, c3, c4 = clients["c1"], clients["c2"], clients["c3"], clients["c4"]
    s1, s2 = links["s1"], links["s2"]
    trace = []

    def step(label: str) -> None:
        def holder(c: Any) -> str | None:
            return next((n for n, link in links.items() if c.server is link), None)
        trace.append({
            "step": label,
            "writes": list(log),
            "clients": {n: [holder(c), c.waiting, c.in_batch, c.transactions, c.terminating,
                            len(c.buffered)] for n, c in clients.items()},
            "links": {n: [link.pending, link.swallow, link.status.decode(), dict(link.params), link.closed]
                      for n, link in links.items()},
            "pool": [sorted(n for n, link in links.items() if link in pool.free), len(pool.active), len(pool.waiters)],
            "held": sorted(n for n, link in links.items() if link in pool._held),
            "stats": [pool.stats.transactions, pool.stats.queries, pool.stats.bytes_in, pool.stats.bytes_out,
                      sum(pool.stats.wait.counts), sum(pool.stats.xact.counts)],
        })
        log.clear()

    c1.data_received(query("select 1"))
    c2.data_received(query("select 2"))
    c3.data_received(query("select 3"))
    c4.data_received(query("select 4"))
    step("four requests, two links: c3 and c4 wait")
    s1.data_received(reply())
    step("s1 answers c1 and goes to c3")
    whole = reply(rows=3)
    s2.data_received(whole[:17])
    s2.data_received(whole[17:])
    step("s2 answers c2 in two chunks, split mid-message, and goes to c4")
    s2.data_received(reply())
    step("s2 answers c4")
    s1.data_received(reply(extra=msg(b"S", b"application_name\0batch\0")))
    step("a ParameterStatus in c3's reply")
    batch = msg(b"P", b"\0select 1\0\0\0") + msg(b"B", b"\0\0\0\0\0\0\0\0") + msg(b"E", b"\0\0\0\0\0")
    c1.data_received(batch)
    c1.data_received(msg(b"S"))
    step("an extended batch in two chunks, on s1: RESET first")
    reset = msg(b"C", b"RESET\0") + msg(b"S", b"application_name\0\0") + msg(b"Z", b"I")
    s1.data_received(reset + msg(b"1") + msg(b"2") + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I"))
    step("the RESET's reply is swallowed, the batch's delivered")
    c2.data_received(query("begin"))
    s1.data_received(msg(b"C", b"BEGIN\0") + msg(b"Z", b"T"))
    step("an open transaction keeps its link")
    c2.data_received(query("select 1/0"))
    s1.data_received(msg(b"E", b"SERROR\0C22012\0Mdivision by zero\0\0") + msg(b"Z", b"E"))
    step("an error inside it")
    c2.data_received(query("rollback"))
    s1.data_received(msg(b"C", b"ROLLBACK\0") + msg(b"Z", b"I"))
    step("rollback releases it")
    c1.data_received(query("select 1/0"))
    s1.data_received(msg(b"E", b"SERROR\0C22012\0Mdivision by zero\0\0") + msg(b"Z", b"I"))
    step("an error as the first reply")
    c3.data_received(query("select 4"))
    s1.data_received(msg(b"C", b"SET\0") + msg(b"S", b"application_name\0batch\0") + msg(b"Z", b"I") + reply())
    step("c3's setting goes first; its reply is swallowed")
    c3.data_received(msg(b"X"))
    step("terminate")
    c1.data_received(query("select 5"))
    held = c1.server
    held.cancels = 1  # a cancel for c1's query is in flight (Pool.cancel_query)
    held.data_received(reset + reply())  # its RESET first (c3 left it set), then c1's reply
    step("a link with a cancel in flight is held back")
    asyncio.run(pool._cancel(held, c1))  # over (nothing sent: c1 holds the link no more)
    step("the cancel over, it is released")
    c2.session_mode = True
    c2.data_received(query("select 6"))
    c2.server.data_received(reply())
    c2.connection_lost(None)  # session mode: DISCARD ALL, then released if it succeeded
    c2_link = next(link for link in links.values() if link.swallow)
    c2_link.data_received(msg(b"E", b"SERROR\0C57014\0Mcanceling statement due to user request\0\0") + msg(b"Z", b"I"))
    step("an internal query that failed discards its link")
    return {"core": relaycore.NAME, "trace": trace, "splits": split_scenario(rt), "handoff": handoff_scenario(rt)}


def parse(name: bytes, sql: bytes) -> bytes:
    return msg(b"P", name + b"\0" + sql + b"\0\0\0")


def bind(name: bytes) -> bytes:
    return msg(b"B", b"\0" + name + b"\0\0\0\0\0\0\0")


EXECUTE_SYNC = msg(b"E", b"\0\0\0\0\0") + msg(b"S")


def handoff_scenario(rt: Any) -> dict[str, Any]:
    """Named statements over one link: a reply that poold reads itself (a new statement's
    Parse) ends a transaction whose link goes at once to a waiting client, whose Bind of a
    statement the link has ready must take the fast path (renamed, nothing owed), not the
    queue: else every transaction after it would read its replies in Python."""
    from poold.client import ClientSession

    log: list[Any] = []
    pool, link = one_link_pool(log, 2, max_prepared=200)
    c1, c2 = ClientSession(rt), ClientSession(rt)
    for name, c in (("c1", c1), ("c2", c2)):
        c.transport, c.relaying, c.pool, c._peer = Transport(name, log), True, pool, name
    answer = msg(b"2") + msg(b"D", b"\x00\x01\x00\x00\x00\x011") + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I")
    c1.data_received(parse(b"a", b"select 1") + bind(b"a") + EXECUTE_SYNC)  # poold_1, new on the link
    link.data_received(msg(b"1") + answer)
    c2.data_received(parse(b"b", b"select 2") + bind(b"b") + EXECUTE_SYNC)  # poold_2
    link.data_received(msg(b"1") + answer)
    c1.data_received(parse(b"c", b"select 3") + bind(b"c") + EXECUTE_SYNC)  # poold_3: the queue reads its reply
    c2.data_received(bind(b"b") + EXECUTE_SYNC)  # waits for the link
    log.clear()
    link.data_received(msg(b"1") + answer)  # c1's answer; the link goes to c2 at once
    to_server = [bytes.fromhex(w[1]) for w in log if w[0] == "s"]
    queue = [e.kind for e in link.ps.queue] if link.ps is not None else None
    return {"to_server": [b.hex() for b in to_server], "queue": queue, "expecting": bool(link.expecting),
            "c2_holds": c2.server is link}


#: a request, a SET and Terminate, sent in two reads cut at every offset (split_scenario)
SPLIT_STREAM = query("select 7") + query("SET work_mem = '3MB'") + msg(b"X")
#: a long Query whose second statement is a SET, its rest in a later read
LONG_STREAM = query("SELECT '" + "x" * 1000 + "'; SET work_mem = '3MB'")


def one_link_pool(log: list[Any], clients: int, max_prepared: int = 0) -> tuple[Any, Any]:
    """A pool (as Pool, without psycopg_pool) with one free link whose writes go to ``log``."""
    from poold import prepared
    from poold.breaker import Breaker
    from poold.pools import Pool
    from poold.relay import ServerLink
    from poold.stats import PoolStats

    pool = Pool.__new__(Pool)
    pool.free, pool.active, pool.waiters = [], set(), deque()
    pool.stats = PoolStats()
    pool.settings = types.SimpleNamespace(max_size=1, acquire_timeout=5.0, max_prepared_statements=max_prepared,
                                          max_client_prepared_statements=1000)
    pool.statements = prepared.Registry(lambda: (max_prepared, 1000))
    pool.leased, pool.epoch, pool.paused, pool._closed = 1, 0, False, False
    pool.breaker, pool._loop, pool._wait_timer, pool.connecting = Breaker(5, 30.0), Loop(), None, 0
    pool._loop_time, pool._wait_until, pool._held = pool._loop.time, 0.0, set()
    pool.defaults, pool.name, pool.clients, pool.refusal = {}, "app.app", clients, None
    link = ServerLink(lambda _link: None)
    link.transport, link.stats, link.pid, link.defaults = Transport("s", log), pool.stats, 1, {}
    pool.free.append(link)
    return pool, link


def split_scenario(rt: Any) -> list[Any]:
    """One client per cut: what reaches the server, whether the SET was seen (settle),
    whether the session ended at the Terminate."""
    from poold.client import ClientSession

    out = []
    for stream, cuts in ((SPLIT_STREAM, range(1, len(SPLIT_STREAM))), (LONG_STREAM, (300, 600, len(LONG_STREAM) - 3))):
        for cut in cuts:
            log: list[Any] = []
            pool, link = one_link_pool(log, 1)
            c = ClientSession(rt)
            c.transport, c.relaying, c.pool, c._peer = Transport("c", log), True, pool, "c"
            c.data_received(query("begin"))  # in a transaction: the link stays the client's
            link.data_received(msg(b"C", b"BEGIN\0") + msg(b"Z", b"T"))
            log.clear()
            c.data_received(stream[:cut])
            c.data_received(stream[cut:])
            sent = b"".join(bytes.fromhex(w[1]) for w in log if w[0] == "s" and w[1] != "close")
            out.append([cut, sent.hex(), bool(c.settle), bool(c.terminating)])
    return out


def run_scenario(core: str, scanner: str = "native") -> dict[str, Any]:
    from tests.conftest import SANITIZER_PRELOAD  # here: this file also runs as a script

    env = dict(os.environ, POOLD_RELAY_CORE=core, POOLD_FRAME_SCANNER=scanner)
    if SANITIZER_PRELOAD:  # make test-sanitize: the C core runs under the sanitizers here too
        env["LD_PRELOAD"] = SANITIZER_PRELOAD
    out = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def traces() -> dict[str, dict[str, Any]]:
    return {"python": run_scenario("python"), "c": run_scenario("c"), "c/python scanner": run_scenario("c", "python")}


def test_the_c_core_was_built(traces: dict[str, dict[str, Any]]) -> None:
    assert traces["c"]["core"] == "c", "poold._relaycore was not built (is a C compiler installed?)"
    assert traces["c/python scanner"]["core"] == "c"
    assert traces["python"]["core"] == "python"


@pytest.mark.parametrize("variant", ["c", "c/python scanner"])
def test_same_trace_step_by_step(traces: dict[str, dict[str, Any]], variant: str) -> None:
    for ref, nat in zip(traces["python"]["trace"], traces[variant]["trace"], strict=True):
        assert nat == ref, ref["step"]


@pytest.mark.parametrize("variant", ["python", "c", "c/python scanner"])
def test_a_set_is_seen_wherever_a_read_ends(traces: dict[str, dict[str, Any]], variant: str) -> None:
    """A SET sent in two reads, cut at every offset (inside its header, inside its first
    bytes, inside the Terminate behind it), or behind a ';' in the rest of a long Query:
    it is seen (settle), everything but the Terminate reaches the server once (with a
    CopyFail in the Terminate's stead: the SET's reply is owed), and the session ends
    once that is answered."""
    from poold.protocol import messages

    splits = traces[variant]["splits"]
    assert len(splits) == len(SPLIT_STREAM) - 1 + 3
    for i, (cut, sent, settle, terminating) in enumerate(splits):
        short = i < len(SPLIT_STREAM) - 1
        expected = ((SPLIT_STREAM[:-5] + messages.COPY_FAIL_TERMINATED, True, True) if short
                    else (LONG_STREAM, True, False))
        assert (bytes.fromhex(sent), settle, terminating) == expected, cut


@pytest.mark.parametrize("variant", ["python", "c", "c/python scanner"])
def test_a_link_handed_to_a_waiting_client_keeps_the_fast_path(traces: dict[str, dict[str, Any]],
                                                              variant: str) -> None:
    handoff = traces[variant]["handoff"]
    assert handoff["c2_holds"]
    assert [bytes.fromhex(b) for b in handoff["to_server"]] == [bind(b"poold_2") + EXECUTE_SYNC]
    assert (handoff["queue"], handoff["expecting"]) == ([], False)


def test_the_trace_is_right(traces: dict[str, dict[str, Any]]) -> None:
    steps = {s["step"]: s for s in traces["c"]["trace"]}
    first = steps["four requests, two links: c3 and c4 wait"]
    assert [w[0] for w in first["writes"]] == ["s1", "s2"]
    assert first["clients"]["c3"][:2] == [None, True] and first["clients"]["c4"][:2] == [None, True]
    assert first["pool"] == [[], 2, 2]
    handoff = steps["s1 answers c1 and goes to c3"]
    assert [w[0] for w in handoff["writes"]] == ["c1", "s1"]
    assert bytes.fromhex(handoff["writes"][0][1]) == reply()
    assert bytes.fromhex(handoff["writes"][1][1]) == query("select 3")
    assert handoff["clients"]["c3"][0] == "s1" and handoff["clients"]["c1"][0] is None
    split = steps["s2 answers c2 in two chunks, split mid-message, and goes to c4"]
    assert [w[0] for w in split["writes"]] == ["c2", "c2", "s2"]
    assert b"".join(bytes.fromhex(w[1]) for w in split["writes"][:2]) == reply(rows=3)
    assert bytes.fromhex(split["writes"][2][1]) == query("select 4")
    assert steps["s2 answers c4"]["pool"][0] == ["s2"]
    assert steps["a ParameterStatus in c3's reply"]["links"]["s1"][3] == {"application_name": "batch"}
    batch = steps["an extended batch in two chunks, on s1: RESET first"]
    assert batch["clients"]["c1"][:3] == ["s1", False, False]
    assert bytes.fromhex(batch["writes"][0][1]) == query('RESET "application_name"')
    swallowed = steps["the RESET's reply is swallowed, the batch's delivered"]
    assert [bytes.fromhex(w[1]) for w in swallowed["writes"]] == [
        msg(b"1") + msg(b"2") + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I")]
    assert swallowed["links"]["s1"][3] == {} and swallowed["pool"][0] == ["s1", "s2"]
    held = steps["an error inside it"]
    assert held["clients"]["c2"][0] == "s1" and held["links"]["s1"][2] == "E"
    assert steps["rollback releases it"]["clients"]["c2"][0] is None
    error = steps["an error as the first reply"]
    assert error["writes"][1][0] == "c1" and bytes.fromhex(error["writes"][1][1]).startswith(b"E")
    assert error["clients"]["c1"][0] is None  # released
    own = steps["c3's setting goes first; its reply is swallowed"]
    assert [w[0] for w in own["writes"]] == ["s1", "s1", "c3"]
    assert bytes.fromhex(own["writes"][0][1]) == query("SELECT set_config('application_name', 'batch', false)")
    assert bytes.fromhex(own["writes"][2][1]) == reply()
    assert steps["terminate"]["writes"] == [["c3", "close"]]
    assert steps["terminate"]["stats"][:2] == [8, 10]  # transactions; queries (each Query and Sync)
    kept = steps["a link with a cancel in flight is held back"]
    (name,) = kept["held"]
    assert kept["clients"]["c1"][0] is None and name not in kept["pool"][0] and kept["pool"][1] == 1
    assert steps["the cancel over, it is released"]["held"] == [] and name in steps["the cancel over, it is released"]["pool"][0]
    failed = steps["an internal query that failed discards its link"]
    assert bytes.fromhex(failed["writes"][2][1]) == query("DISCARD ALL") and failed["writes"][3][1] == "close"
    assert [link[4] for link in failed["links"].values()].count(True) == 1  # closed, not reused
    assert len(failed["pool"][0]) == 1 and failed["pool"][1] == 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    print(json.dumps(scenario()))
