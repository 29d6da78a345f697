"""pools.Pool against a real PostgreSQL: leasing, hand-off, give-back, broken links.

No poold process here: the pool runs in the test's own event loop and server-side
effects are read from pg_stat_activity.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from poold.config import load_config
from poold.errors import PooldError
from poold.pools import Pool
from poold.protocol import messages
from poold.relay import ServerLink
from tests.conftest import APP_PASSWORD, pgcluster, server_backends


class Waiter:
    def __init__(self) -> None:
        self.fut: asyncio.Future[ServerLink] = asyncio.get_running_loop().create_future()

    def on_server(self, link: ServerLink) -> None:
        self.fut.set_result(link)

    def on_acquire_failed(self, error: PooldError) -> None:
        self.fut.set_exception(error)


class Collector:
    """A minimal link owner that gathers server bytes until ReadyForQuery."""

    def __init__(self) -> None:
        self.data = b""
        self.ready: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def on_server_data(self, data: bytes) -> None:
        self.data += data

    def on_server_ready(self, status: bytes) -> None:
        if not self.ready.done():
            self.ready.set_result(status)

    def on_server_parameter(self, name: str, value: str) -> None:
        pass

    def on_server_lost(self, sqlstate: str = "08006", message: str = "") -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("lost"))

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def lease(pool: Pool) -> ServerLink:
    w = Waiter()
    link = pool.acquire(w)
    return link if link is not None else await asyncio.wait_for(w.fut, 10)


async def query(link: ServerLink, sql: str) -> tuple[bytes, bytes]:
    owner = Collector()
    link.owner = owner
    link.pending += 1
    link.write(messages.query(sql))
    status = await asyncio.wait_for(owner.ready, 10)
    link.owner = None
    return status, owner.data


async def expect_timeout(w: Waiter, low: float, high: float) -> None:
    """``w`` fails with acquire_timeout's 53300 between ``low`` and ``high`` seconds from now."""
    start = time.monotonic()
    with pytest.raises(PooldError) as info:
        await asyncio.wait_for(w.fut, 5)
    assert info.value.sqlstate == "53300"
    assert low < time.monotonic() - start < high


@contextlib.asynccontextmanager
async def opened_pool(tmp_path: Path, pg: pgcluster.Cluster, **settings: object) -> AsyncIterator[Pool]:
    pool = make_pool(tmp_path, pg, **settings)
    await pool.open()
    try:
        yield pool
    finally:
        await pool.close()


def make_pool(tmp_path: Path, pg: pgcluster.Cluster, **pool: object) -> Pool:
    settings = "\n".join(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in pool.items())
    (tmp_path / "p.toml").write_text(
        f'[pool]\n{settings}\n[databases.app]\ndsn = "host={pg.host} port={pg.port} dbname=app user=app"\n'
    )
    config = load_config(tmp_path / "p.toml", {})
    return Pool(config.databases["app"], "app", {"password": APP_PASSWORD})


def test_lease_relay_and_release(tmp_path: Path, pg: pgcluster.Cluster) -> None:
    async def main() -> None:
        async with opened_pool(tmp_path, pg, max_size=2, min_size=0) as pool:
            defaults = await pool.prepare()
            assert defaults["server_encoding"] == "UTF8" and "TimeZone" in defaults
            link = await lease(pool)
            status, data = await query(link, "SELECT current_setting('statement_timeout')")
            assert status == b"I" and b"15s" in data
            pool.release(link)
            again = await lease(pool)
            assert again is link  # LIFO free list: the hottest connection comes back
            status, _ = await query(again, "BEGIN")
            assert status == b"T"  # poold's own view of the transaction status
            status, _ = await query(again, "ROLLBACK")
            pool.release(again)

    asyncio.run(main())
    assert server_backends(pg) == 0


def test_never_more_than_max_size_and_waiters_are_served_in_order(tmp_path: Path, pg: pgcluster.Cluster) -> None:
    async def main() -> None:
        async with opened_pool(tmp_path, pg, max_size=2, min_size=0) as pool:
            a, b = await lease(pool), await lease(pool)
            w1, w2 = Waiter(), Waiter()
            assert pool.acquire(w1) is None and pool.acquire(w2) is None
            await asyncio.sleep(0.3)
            assert await asyncio.to_thread(server_backends, pg) == 2
            assert not w1.fut.done()
            pool.release(a)
            assert (await asyncio.wait_for(w1.fut, 1)) is a and not w2.fut.done()
            pool.release(b)
            assert (await asyncio.wait_for(w2.fut, 1)) is b
            pool.release(a)
            pool.release(b)

    asyncio.run(main())


def test_acquire_timeout_fails_the_waiter_with_53300(tmp_path: Path, pg: pgcluster.Cluster) -> None:
    async def main() -> None:
        async with opened_pool(tmp_path, pg, max_size=1, min_size=0, acquire_timeout=0.5) as pool:
            held = await lease(pool)
            w = Waiter()
            assert pool.acquire(w) is None
            await expect_timeout(w, 0.4, 3)
            pool.release(held)

    asyncio.run(main())


def test_waits_follow_each_their_own_deadline_across_a_reload(tmp_path: Path, pg: pgcluster.Cluster) -> None:
    """One timer serves all waiters: a wait begun after a reload shortened
    acquire_timeout still ends on time, and the earlier, longer wait is kept."""

    async def main() -> None:
        async with opened_pool(tmp_path, pg, max_size=1, min_size=0, acquire_timeout=5) as pool:
            held = await lease(pool)
            long_wait, short_wait = Waiter(), Waiter()
            assert pool.acquire(long_wait) is None
            pool.settings = dataclasses.replace(pool.settings, acquire_timeout=0.3)  # as a reload does
            assert pool.acquire(short_wait) is None
            await expect_timeout(short_wait, 0.2, 2)
            assert not long_wait.fut.done()
            pool.release(held)
            link = await asyncio.wait_for(long_wait.fut, 5)
            pool.release(link)

    asyncio.run(main())


def test_idle_link_killed_by_the_server_is_replaced_silently(tmp_path: Path, pg: pgcluster.Cluster) -> None:
    async def main() -> None:
        async with opened_pool(tmp_path, pg, max_size=2, min_size=0) as pool:
            link = await lease(pool)
            pid = link.pid
            pool.release(link)
            await asyncio.to_thread(pg.psql, f"SELECT pg_terminate_backend({pid})")
            for _ in range(100):  # poold reads idle links: EOF retires this one
                if link.closed:
                    break
                await asyncio.sleep(0.05)
            assert link.closed and link not in pool.free
            fresh = await lease(pool)
            assert fresh.pid != pid
            status, data = await query(fresh, "SELECT 1")
            assert status == b"I"
            pool.release(fresh)

    asyncio.run(main())


def test_idle_links_go_back_to_psycopg_pool_at_the_pools_defaults(tmp_path: Path, pg: pgcluster.Cluster) -> None:
    async def main() -> None:
        async with opened_pool(tmp_path, pg, max_size=1, min_size=1, idle_timeout=0.2) as pool:
            link = await lease(pool)
            _status, data = await query(link, "SHOW TimeZone")
            default = data
            link.sync_parameters({"TimeZone": "Asia/Tokyo"})  # its reply is swallowed
            _status, data = await query(link, "SHOW TimeZone")
            assert b"Asia/Tokyo" in data
            pool.release(link)
            await asyncio.sleep(0.3)
            pool.maintain(time.monotonic())  # past hold_time, within min_size: reset, back to psycopg_pool
            assert not pool.free
            for _ in range(100):  # RESET ALL's round trip
                if pool.leased == 0:
                    break
                await asyncio.sleep(0.02)
            assert pool.leased == 0
            again = await lease(pool)
            assert again is not link and again.pid == link.pid  # same server connection, new link
            assert again.params == {}  # what the server really has: the pool's defaults
            _status, data = await query(again, "SHOW TimeZone")
            assert data == default
            pool.release(again)

    asyncio.run(main())


def test_idle_links_above_min_size_are_closed_at_idle_timeout(tmp_path: Path, pg: pgcluster.Cluster) -> None:
    async def main() -> None:
        async with opened_pool(tmp_path, pg, max_size=2, min_size=0, idle_timeout=0.4) as pool:
            link = await lease(pool)
            pid = link.pid
            pool.release(link)
            await asyncio.sleep(0.25)
            pool.maintain(time.monotonic())  # past hold_time (0.2 s), not idle_timeout: kept
            assert pool.free == [link]
            await asyncio.sleep(0.25)
            pool.maintain(time.monotonic())  # past idle_timeout, above min_size: closed
            assert not pool.free and pool.leased == 0
            await asyncio.sleep(0.2)
            assert pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") == "0"

    asyncio.run(main())


def test_an_internal_query_left_unanswered_drops_its_link(tmp_path: Path, pg: pgcluster.Cluster,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """poold's own queries on a link (a reset, a client's settings) are bounded: past
    INTERNAL_QUERY_TIMEOUT the link is dropped, its owner told, and a new one serves."""
    from poold import pools

    monkeypatch.setattr(pools, "INTERNAL_QUERY_TIMEOUT", 0.3)

    async def main() -> None:
        async with opened_pool(tmp_path, pg, max_size=1, min_size=1) as pool:
            link = await lease(pool)
            owner = Collector()
            link.owner = owner
            link.run_internal(["SELECT pg_sleep(30)"])
            pool.maintain(time.monotonic())
            assert link in pool.active and not link.closed  # not yet
            await asyncio.sleep(0.5)
            pool.maintain(time.monotonic())
            assert link.closed and link not in pool.active
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(owner.ready, 1)
            again = await lease(pool)
            assert again.pid != link.pid
            assert (await query(again, "SELECT 1"))[0] == b"I"
            pool.release(again)

    asyncio.run(main())
