"""pgbench through the real poold process: both pool modes, both query modes."""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
from collections.abc import Callable

import pytest

from tests.conftest import Poold, pgcluster, server_backends, wait_until

MAX_SIZE = 5


@pytest.fixture(scope="module")
def pgbench_tables(pg: pgcluster.Cluster) -> None:
    """pgbench -i, run through a session-mode poold (like an application would)."""


def run_pgbench(p: Poold, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([pgcluster.client_tool("pgbench"), *args], env=p.env(), capture_output=True, text=True,
                          timeout=timeout)


def failed_and_tps(out: str) -> tuple[int, float]:
    failed = re.search(r"number of failed transactions: (\d+)", out)
    tps = re.search(r"tps = ([\d.]+)", out)
    assert failed and tps, out
    return int(failed.group(1)), float(tps.group(1))


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_pgbench_zero_failures_and_bounded_server_connections(
    poold_factory: Callable[..., Poold], pg: pgcluster.Cluster, mode: str, protocol: str
) -> None:
    # Session mode holds a server connection per client: give it room for 16.
    max_size = MAX_SIZE if mode == "transaction" else 16
    p = poold_factory(mode=mode, max_size=max_size, min_size=1)
    # Built by pip install; CI must exercise the native paths, not fall back quietly.
    ready = wait_until(lambda: next((line for line in p.log_text().splitlines() if '"event": "ready"' in line), None))
    assert '"frame_scanner": "native"' in str(ready) and '"relay_core": "c"' in str(ready)
    assert '"scanner_capi": true' in str(ready)  # the core calls the scanner's C API, not its methods
    assert '"socket_io": "c"' in str(ready)  # TCP clients and server legs on the C sockets (_sockio.c)
    init = run_pgbench(p, "-i", "-q", "-s", "1")
    assert init.returncode == 0, init.stderr

    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, server_backends(pg))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        r = run_pgbench(p, "-n", "-c", "16", "-j", "2", "-T", "5", "-M", protocol)
    finally:
        stop.set()
        sampler.join()
    assert r.returncode == 0, r.stderr + r.stdout
    failed, tps = failed_and_tps(r.stdout)
    print(f"pgbench {mode}/{protocol}: tps={tps:.0f} failed={failed} peak_server_connections={peak}")
    assert failed == 0
    assert tps > 0
    assert 1 <= peak <= max_size


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_python_references_serve_the_same(poold_factory: Callable[..., Poold], protocol: str) -> None:
    """The daemon as it runs where no C extension was built: the reference frame
    scanner and relay core, the event loop's transports (POOLD_FRAME_SCANNER=python,
    POOLD_RELAY_CORE=python, POOLD_SOCKET_IO=asyncio)."""
    p = poold_factory(mode="transaction", max_size=MAX_SIZE,
                      environ={"POOLD_FRAME_SCANNER": "python", "POOLD_RELAY_CORE": "python",
                               "POOLD_SOCKET_IO": "asyncio"})
    ready = wait_until(lambda: next((line for line in p.log_text().splitlines() if '"event": "ready"' in line), None))
    assert '"frame_scanner": "python"' in str(ready) and '"relay_core": "python"' in str(ready)
    assert '"socket_io": "asyncio"' in str(ready)
    assert '"scanner_capi": false' in str(ready)
    init = run_pgbench(p, "-i", "-q", "-s", "1")
    assert init.returncode == 0, init.stderr
    r = run_pgbench(p, "-n", "-c", "8", "-j", "2", "-T", "3", "-M", protocol)
    assert r.returncode == 0, r.stderr + r.stdout
    failed, tps = failed_and_tps(r.stdout)
    assert failed == 0 and tps > 0
    # A COPY of 20,000 rows crosses many chunk boundaries the scanner must carry.
    copy = subprocess.run(
        [pgcluster.client_tool("psql"), "-v", "ON_ERROR_STOP=1", "-At", "-c",
         "COPY (SELECT g, md5(g::text) FROM generate_series(1, 20000) g) TO STDOUT"],
        env=p.env(), capture_output=True, text=True, timeout=60,
    )
    assert copy.returncode == 0, copy.stderr
    lines = copy.stdout.splitlines()
    assert len(lines) == 20000 and lines[-1] == "20000\t" + hashlib.md5(b"20000").hexdigest()
