"""query_timeout, and a server that stops answering (a stalling TCP proxy in between)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from tests.conftest import APP_PASSWORD, Poold, pgcluster


class StallingProxy:
    """A loopback TCP proxy to PostgreSQL that can stop forwarding (both ways)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.stalled = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._ready = threading.Event()

    def start(self) -> StallingProxy:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)
        return self

    async def _serve(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    while self.stalled.is_set():  # hold everything: the peer hears nothing
                        await asyncio.sleep(0.05)
                    w.write(data)
                    await w.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    def stop(self) -> None:
        self.stalled.clear()
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def _shutdown(self) -> None:
        self.server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def proxy(pg: pgcluster.Cluster) -> Iterator[StallingProxy]:
    p = StallingProxy(pg.port).start()
    yield p
    p.stop()


def test_query_timeout_cancels_a_long_query(poold_factory: Callable[..., Poold]) -> None:
    # statement_timeout off: it is poold's query_timeout that acts here
    p = poold_factory(mode="transaction", query_timeout=1, statement_timeout=0)
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        start = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")
        elapsed = time.monotonic() - start
        assert 0.9 < elapsed < 4
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the connection goes on
    assert '"query_timeout"' in p.log_text()


def test_a_server_that_stops_answering_does_not_hang_clients(
    poold_factory: Callable[..., Poold], pg: pgcluster.Cluster, proxy: StallingProxy
) -> None:
    raw = f'\n[databases.stalled]\ndsn = "host=127.0.0.1 port={proxy.port} dbname=app user=app password={APP_PASSWORD}"\n'
    p = poold_factory(mode="transaction", query_timeout=1, statement_timeout=0, acquire_timeout=3, raw=raw)
    with psycopg.connect(p.dsn(dbname="stalled"), prepare_threshold=None, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        proxy.stalled.set()
        start = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("SELECT 1")
        elapsed = time.monotonic() - start
    assert "query_timeout" in str(info.value) and "did not answer" in str(info.value)
    assert elapsed < 1 + 2 + 2.5  # query_timeout + cancel grace + janitor ticks
    # and a new client is not stuck either: it gets an answer within acquire_timeout
    start = time.monotonic()
    try:
        with psycopg.connect(p.dsn(dbname="stalled"), prepare_threshold=None, autocommit=True, connect_timeout=20) as c:
            c.execute("SELECT 1")
    except psycopg.OperationalError:
        pass
    assert time.monotonic() - start < 3 + 2 + 2.5
    proxy.stalled.clear()
    assert p.proc.poll() is None  # type: ignore[union-attr]
