"""psycopg 3 sync, async and pipeline mode through the real poold process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import Poold


@pytest.fixture(params=["transaction", "session"])
def poold(request: pytest.FixtureRequest, poold_factory: Callable[..., Poold]) -> Poold:
    return poold_factory(mode=request.param)


def test_sync_connection(poold: Poold) -> None:
    with psycopg.connect(poold.dsn(), prepare_threshold=None) as conn:
        assert conn.execute("SELECT %s::int + %s::int", (20, 22)).fetchone() == (42,)
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS tmp_sync(x int)") if poold.settings["mode"] == "session" else None
            conn.execute("SELECT 1")
        assert conn.execute("SHOW statement_timeout").fetchone() == ("15s",)
        assert conn.info.parameter_status("server_version")


def test_async_connections_in_parallel(poold: Poold) -> None:
    async def one(i: int) -> int:
        async with await psycopg.AsyncConnection.connect(poold.dsn(), prepare_threshold=None) as conn:
            total = 0
            for j in range(5):
                async with conn.transaction():
                    cur = await conn.execute("SELECT %s::int * %s::int", (i, j))
                    row = await cur.fetchone()
                    assert row is not None
                    total += row[0]
            return total

    async def main() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(10)))

    assert asyncio.run(main()) == [i * 10 for i in range(10)]


def test_pipeline_mode(poold: Poold) -> None:
    with psycopg.connect(poold.dsn(), prepare_threshold=None, autocommit=True) as conn:
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::int", (i,)) for i in range(50)]
        assert [c.fetchone()[0] for c in curs] == list(range(50))  # type: ignore[index]
        with conn.pipeline() as p:
            c1 = conn.execute("SELECT 1")
            p.sync()
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1/0")
                p.sync()
            c2 = conn.execute("SELECT 2")
        assert c1.fetchone() == (1,) and c2.fetchone() == (2,)


def test_settings_do_not_leak_between_clients(poold_factory: Callable[..., Poold]) -> None:
    # max_size=1: every client gets the same server connection in turn.
    p = poold_factory(mode="transaction", max_size=1, min_size=1)
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as a:
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        a.execute("SET application_name = 'client_a'")
        with psycopg.connect(p.dsn(application_name="client_b"), prepare_threshold=None, autocommit=True) as b:
            assert b.execute("SHOW TimeZone").fetchone() != ("Asia/Tokyo",)
            assert b.execute("SELECT current_setting('application_name')").fetchone() == ("client_b",)
            assert b.execute("SELECT pg_backend_pid()").fetchone() == a.execute("SELECT pg_backend_pid()").fetchone()
        # and the first client keeps what it set, on the same shared connection
        assert a.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
        assert a.execute("SELECT current_setting('application_name')").fetchone() == ("client_a",)
        assert a.info.parameter_status("TimeZone") == "Asia/Tokyo"


def test_session_mode_resets_with_discard_all(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(mode="session", max_size=1, min_size=1)
    with psycopg.connect(p.dsn(), autocommit=True) as a:
        pid = a.execute("SELECT pg_backend_pid()").fetchone()
        a.execute("SET work_mem = '7MB'")
        a.execute("CREATE TEMP TABLE session_tmp(x int)")
        a.execute("PREPARE s1 AS SELECT 1")  # session mode keeps prepared statements
        assert a.execute("EXECUTE s1").fetchone() == (1,)
    with psycopg.connect(p.dsn(), autocommit=True) as b:
        assert b.execute("SELECT pg_backend_pid()").fetchone() == pid  # same server connection
        assert b.execute("SHOW work_mem").fetchone() != ("7MB",)
        assert b.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        assert b.execute("SELECT to_regclass('pg_temp.session_tmp')").fetchone() == (None,)
