"""The mainstream drivers at their default settings, through transaction pooling.

Each test gives poold more clients than server connections (40 over 4), so that a
client's transactions really land on different server connections, and runs the
driver as its users run it: no ``prepare_threshold=None``, no
``statement_cache_size=0``. psycopg and pgbench ``-M prepared`` name their
prepared statements (``_pg3_N``, ``P_N``), asyncpg too (``__asyncpg_stmt_N__``),
node-postgres for named queries. Both relay cores run every test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import asyncpg
import psycopg
import pytest

from scripts import pgcluster
from tests.conftest import APP_PASSWORD, Poold, wait_until

CORES = {
    "c": {},
    "python": {"POOLD_RELAY_CORE": "python", "POOLD_FRAME_SCANNER": "python", "POOLD_SOCKET_IO": "asyncio"},
}
CLIENTS = 40
SERVERS = 4
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=list(CORES))
def pooled(request: pytest.FixtureRequest, poold_factory: Callable[..., Poold]) -> Poold:
    """Transaction mode, 4 server connections, the pool's default statement_timeout (15 s)."""
    return poold_factory(mode="transaction", max_size=SERVERS, min_size=SERVERS, environ=CORES[request.param])


def _in_threads(n: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(i)`` in n threads at once; the results, or the exceptions raised, by i."""
    results: list[object] = [None] * n
    start = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            start.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def _failures(results: list[object]) -> list[str]:
    return [f"client {i}: {r!r}" for i, r in enumerate(results) if isinstance(r, BaseException)]


# -- psycopg 3 ------------------------------------------------------------------


def test_psycopg_defaults_commit_after_each(pooled: Poold) -> None:
    """psycopg prepares a statement on its 5th run (prepare_threshold=5) and keeps using its name."""

    def client(i: int) -> int:
        total = 0
        with psycopg.connect(pooled.dsn()) as conn:
            for j in range(50):
                total += conn.execute("SELECT %s::int + 1", (i * 1000 + j,)).fetchone()[0]  # type: ignore[index]
                conn.commit()
        return total

    results = _in_threads(CLIENTS, client)
    assert not _failures(results), "\n".join(_failures(results))
    assert results == [sum(i * 1000 + j + 1 for j in range(50)) for i in range(CLIENTS)]


def test_psycopg_prepare_true_pipeline_and_executemany(pooled: Poold) -> None:
    with psycopg.connect(pooled.dsn(), autocommit=True) as setup:
        setup.execute("DROP TABLE IF EXISTS driver_rows")
        setup.execute("CREATE TABLE driver_rows (client int, n int)")

    def client(i: int) -> int:
        with psycopg.connect(pooled.dsn()) as conn:
            for j in range(10):
                row = conn.execute("SELECT %s::int * 2", (j,), prepare=True).fetchone()
                assert row == (j * 2,)
                conn.commit()
            with conn.pipeline():
                curs = [conn.execute("SELECT %s::int + %s::int", (i, j), prepare=True) for j in range(20)]
            assert [c.fetchone()[0] for c in curs] == [i + j for j in range(20)]  # type: ignore[index]
            conn.commit()
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO driver_rows VALUES (%s, %s)", [(i, j) for j in range(25)])
            conn.commit()
            return conn.execute("SELECT count(*) FROM driver_rows WHERE client = %s", (i,)).fetchone()[0]  # type: ignore[index]

    results = _in_threads(CLIENTS, client)
    assert not _failures(results), "\n".join(_failures(results))
    assert results == [25] * CLIENTS


def test_psycopg_async_defaults(pooled: Poold) -> None:
    async def client(i: int) -> int:
        async with await psycopg.AsyncConnection.connect(pooled.dsn(), autocommit=True) as conn:
            total = 0
            for j in range(30):
                cur = await conn.execute("SELECT %s::int + %s::int", (i, j))
                total += (await cur.fetchone())[0]  # type: ignore[index]
            return total

    async def main() -> list[int]:
        return await asyncio.gather(*(client(i) for i in range(CLIENTS)))

    assert asyncio.run(main()) == [sum(i + j for j in range(30)) for i in range(CLIENTS)]


# -- asyncpg --------------------------------------------------------------------


def test_asyncpg_default_statement_cache(pooled: Poold) -> None:
    """asyncpg prepares every query under a name of its own and caches it (statement_cache_size=100)."""

    async def client(i: int) -> int:
        conn = await asyncpg.connect(host="127.0.0.1", port=pooled.port, user="app", password=APP_PASSWORD,
                                     database="app")
        try:
            total = 0
            for j in range(30):
                async with conn.transaction():
                    total += await conn.fetchval("SELECT $1::int + 1", i * 100 + j)
                total += len(await conn.fetch("SELECT g FROM generate_series(1, $1::int) g", j % 5 + 1))
            return total
        finally:
            await conn.close()

    async def main() -> list[int]:
        return await asyncio.gather(*(client(i) for i in range(CLIENTS)))

    expected = [sum(i * 100 + j + 1 + j % 5 + 1 for j in range(30)) for i in range(CLIENTS)]
    assert asyncio.run(main()) == expected


def test_asyncpg_pool_and_executemany(pooled: Poold) -> None:
    async def main() -> int:
        pool = await asyncpg.create_pool(host="127.0.0.1", port=pooled.port, user="app", password=APP_PASSWORD,
                                         database="app", min_size=10, max_size=CLIENTS)
        try:
            await pool.execute("DROP TABLE IF EXISTS asyncpg_rows")
            await pool.execute("CREATE TABLE asyncpg_rows (a int, b text)")

            async def one(i: int) -> None:
                async with pool.acquire() as conn:
                    await conn.executemany("INSERT INTO asyncpg_rows VALUES ($1, $2)",
                                           [(i, str(j)) for j in range(10)])

            await asyncio.gather(*(one(i) for i in range(CLIENTS)))
            return int(await pool.fetchval("SELECT count(*) FROM asyncpg_rows"))
        finally:
            await pool.close()

    assert asyncio.run(main()) == CLIENTS * 10


# -- pgbench -M prepared --------------------------------------------------------


def _pgbench(p: Poold, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([pgcluster.client_tool("pgbench"), *args], env=p.env(), capture_output=True, text=True,
                          timeout=180)


@pytest.mark.parametrize("script", ["select-only", "tpcb-like"])
def test_pgbench_prepared(pooled: Poold, script: str) -> None:
    init = _pgbench(pooled, "-i", "-q", "-s", "1")
    assert init.returncode == 0, init.stderr
    # A thread per client: pgbench prepares with a synchronous PQprepare that blocks its
    # thread's other clients, one of which may hold, inside BEGIN ... END, the server
    # connection that Parse waits for (PgBouncer 1.25.2 then waits out query_wait_timeout too).
    r = _pgbench(pooled, "-n", "-M", "prepared", "-b", script, "-c", "16", "-j", "16", "-T", "4")
    assert r.returncode == 0, r.stderr + r.stdout
    processed = int(re.search(r"number of transactions actually processed: (\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    failed = re.search(r"number of failed transactions: (\d+)", r.stdout)
    assert processed > 0
    assert failed is None or int(failed.group(1)) == 0, r.stdout
    assert "prepared statement" not in r.stderr, r.stderr


# -- node-postgres --------------------------------------------------------------


def _node_pg() -> Path:
    """Where ``scripts/node_pg.py`` (run by make test) installed node-postgres."""
    modules = REPO / ".venv" / "node" / "node_modules"
    assert (modules / "pg").is_dir(), "node-postgres missing: run `python scripts/node_pg.py` (make test does)"
    assert shutil.which("node"), "node missing: run `python scripts/node_pg.py` (make test does)"
    return modules


NODE_CLIENTS = """
const { Client } = require('pg');
const [port, password, n] = [Number(process.argv[2]), process.argv[3], Number(process.argv[4])];
async function one(i) {
  const c = new Client({ host: '127.0.0.1', port, user: 'app', password, database: 'app' });
  await c.connect();
  let total = 0;
  for (let j = 0; j < 30; j++) {
    const r = await c.query({ name: 'plus-one', text: 'SELECT $1::int + 1 AS v', values: [i * 100 + j] });
    total += r.rows[0].v;
    const s = await c.query({ name: 'times-two', text: 'SELECT $1::int * 2 AS v', values: [j] });
    total += s.rows[0].v;
  }
  await c.end();
  return total;
}
Promise.all([...Array(n).keys()].map(one))
  .then((t) => { console.log(JSON.stringify(t)); })
  .catch((e) => { console.error(String(e)); process.exit(1); });
"""


def test_node_postgres_named_queries(pooled: Poold, tmp_path: Path) -> None:
    modules = _node_pg()
    script = tmp_path / "clients.js"
    script.write_text(NODE_CLIENTS)
    r = subprocess.run(["node", str(script), str(pooled.port), APP_PASSWORD, str(CLIENTS)],
                       env=dict(os.environ, NODE_PATH=str(modules)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    expected = [sum(i * 100 + j + 1 + j * 2 for j in range(30)) for i in range(CLIENTS)]
    assert json.loads(r.stdout) == expected


# -- settings a client makes belong to it ---------------------------------------


def test_a_client_setting_statement_timeout_leaves_others_the_pools(poold_factory: Callable[..., Poold]) -> None:
    """One server connection: the second client must get the pool's 15 s, not the first client's 0."""
    p = poold_factory(mode="transaction", max_size=1, min_size=1)
    with psycopg.connect(p.dsn(), autocommit=True) as a:
        a.execute("SET statement_timeout = 0")
        a.execute("SET work_mem = '7MB'")
        assert a.execute("SHOW statement_timeout").fetchone() == ("0",)
        with psycopg.connect(p.dsn(), autocommit=True) as b:
            assert b.execute("SHOW statement_timeout").fetchone() == ("15s",)
            assert b.execute("SHOW work_mem").fetchone() != ("7MB",)
            assert b.execute("SELECT pg_backend_pid()").fetchone() == a.execute("SELECT pg_backend_pid()").fetchone()
        # and the first client keeps what it set
        assert a.execute("SHOW statement_timeout").fetchone() == ("0",)
        assert a.execute("SHOW work_mem").fetchone() == ("7MB",)


@pytest.mark.parametrize("core", list(CORES))
def test_no_client_setting_waits_in_the_pool(poold_factory: Callable[..., Poold], core: str) -> None:
    """A server connection goes back to the pool with the pool's settings: after each of a
    client's transactions, its work_mem (from options) and its SET statement_timeout are
    reset before another client could be given the connection; the client keeps both."""
    p = poold_factory(mode="transaction", max_size=1, min_size=1, environ=CORES[core])

    def last_statement(pid: int) -> str:
        return p.pg.psql(f"SELECT query FROM pg_stat_activity WHERE pid = {pid} AND state = 'idle'")

    with psycopg.connect(p.dsn(options="'-c work_mem=5MB'"), autocommit=True) as a:
        pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        assert wait_until(lambda: last_statement(pid).startswith("RESET work_mem"))
        a.execute("SET statement_timeout = 0")
        assert wait_until(lambda: last_statement(pid).startswith("RESET"))
        reset = last_statement(pid)
        assert "statement_timeout" in reset and "work_mem" in reset, reset
        assert a.execute("SHOW statement_timeout").fetchone() == ("0",)
        assert a.execute("SHOW work_mem").fetchone() == ("5MB",)
        assert a.execute("SELECT pg_backend_pid()").fetchone() == (pid,)


def test_a_failing_setting_of_the_next_client_leaves_it_no_other_clients(poold_factory: Callable[..., Poold]) -> None:
    """Client A's TimeZone stays on the server connection (a reported setting); client B's
    text search configuration, valid at its login, is dropped before B's next request.
    B's setting fails there, but the reset of A's TimeZone, written with it, holds: B
    never runs under A's settings. (A role that fails so ends B's session instead:
    test_settings.py, test_a_role_that_can_no_longer_be_set_ends_the_session.)"""
    p = poold_factory(mode="transaction", max_size=1, min_size=1)
    p.pg.psql("DROP TEXT SEARCH CONFIGURATION IF EXISTS doomed_cfg; "
              "CREATE TEXT SEARCH CONFIGURATION doomed_cfg (COPY = english)", dbname="app")
    with psycopg.connect(p.dsn(), autocommit=True) as a:
        default = a.execute("SHOW TimeZone").fetchone()
        with psycopg.connect(p.dsn(options="'-c default_text_search_config=doomed_cfg'"), autocommit=True) as b:
            assert b.execute("SHOW default_text_search_config").fetchone() == ("public.doomed_cfg",)
            a.execute("SET TimeZone = 'Asia/Tokyo'")
            assert a.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
            p.pg.psql("DROP TEXT SEARCH CONFIGURATION doomed_cfg", dbname="app")
            assert b.execute("SHOW TimeZone").fetchone() == default
            # (its own setting failed there: the server's default stands in, logged)
            assert b.execute("SHOW default_text_search_config").fetchone() == ("pg_catalog.english",)


def test_options_search_path_follows_the_client(pooled: Poold) -> None:
    with psycopg.connect(pooled.dsn(), autocommit=True) as setup:
        setup.execute("CREATE SCHEMA IF NOT EXISTS driver_schema")
        setup.execute("CREATE TABLE IF NOT EXISTS driver_schema.marker AS SELECT 'found'::text AS t")

    def client(i: int) -> list[str]:
        with psycopg.connect(pooled.dsn(options="-c\\ search_path=driver_schema,public"), autocommit=True) as conn:
            return [conn.execute("SELECT t FROM marker").fetchone()[0] for _ in range(10)]  # type: ignore[index]

    def plain(i: int) -> str:
        with psycopg.connect(pooled.dsn(), autocommit=True) as conn:
            return str(conn.execute("SHOW search_path").fetchone()[0])  # type: ignore[index]

    results = _in_threads(CLIENTS // 2, client) + _in_threads(CLIENTS // 2, plain)
    assert not _failures(results), "\n".join(_failures(results))
    assert results[: CLIENTS // 2] == [["found"] * 10] * (CLIENTS // 2)
    assert results[CLIENTS // 2 :] == ['"$user", public'] * (CLIENTS // 2)


# -- pg_dump --------------------------------------------------------------------


def test_pg_dump_through_transaction_mode(pooled: Poold) -> None:
    with psycopg.connect(pooled.dsn(), autocommit=True) as setup:
        setup.execute("DROP TABLE IF EXISTS dumped")
        setup.execute("CREATE TABLE dumped (id int PRIMARY KEY, t text)")
        setup.execute("INSERT INTO dumped SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
        setup.execute("CREATE OR REPLACE FUNCTION dumped_fn(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1'")
    dump = [pgcluster.client_tool("pg_dump"), "--no-owner", "-t", "dumped", "-t", "dumped_fn"]
    through = subprocess.run([*dump, "-d", "app"], env=pooled.env(), capture_output=True, text=True, timeout=120)
    assert through.returncode == 0, through.stderr
    direct_env = dict(pooled.env(), PGHOST=pooled.pg.host, PGPORT=str(pooled.pg.port))
    direct = subprocess.run([*dump, "-d", "app"], env=direct_env, capture_output=True, text=True, timeout=120)
    assert direct.returncode == 0, direct.stderr
    assert _comparable(through.stdout) == _comparable(direct.stdout)
    assert "COPY public.dumped" in through.stdout


def _comparable(dump: str) -> str:
    """A dump without its \\restrict lines, whose key pg_dump draws at random each run."""
    return "\n".join(line for line in dump.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))
