"""Reloads under pgbench load: nobody dropped, server connections follow max_size."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable

from tests.conftest import Poold, pgcluster, server_backends, wait_until


def test_twenty_reloads_one_invalid_one_rollback_under_pgbench(
    poold_factory: Callable[..., Poold], pg: pgcluster.Cluster
) -> None:
    p = poold_factory(mode="transaction", max_size=4, min_size=1)
    env = p.env()
    pgbench = pgcluster.client_tool("pgbench")
    init = subprocess.run([pgbench, "-i", "-q", "-s", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr

    def generation() -> int:
        r = p.poolctl("--json", "status")
        assert r.returncode == 0, r.stderr
        return int(json.loads(r.stdout)["generation"])

    over_limit: list[tuple[int, int]] = []  # (configured max, count seen) after the shrink settled
    peak_at_12 = 0
    bench = subprocess.Popen([pgbench, "-n", "-c", "16", "-j", "2", "-T", "20", "-M", "extended"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        current_max = 4
        reloads = 0
        for i in range(20):
            target = 12 if i % 2 == 0 else 4
            (p.tmp / "poold.env").write_text(f"DB_POOL_MAX={target}\n")
            before = generation()
            if i % 2:
                os.kill(p.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
            else:
                assert p.poolctl("reload").returncode == 0
            wait_until(lambda b=before: generation() == b + 1, timeout=10)
            reloads += 1
            current_max = target
            if i == 10:  # one invalid configuration: refused, nothing changes
                (p.tmp / "poold.env").write_text("DB_POOL_MAX=-3\n")
                bad = p.poolctl("reload")
                assert bad.returncode == 1 and "pool.max_size: must be >= 1" in bad.stderr
                assert generation() == before + 1
            if i == 15:  # one rollback: back to the previous generation's max
                assert p.poolctl("rollback").returncode == 0
                current_max = 12 if target == 4 else 4
            # the shrink settles at transaction boundaries; then the count stays within the max
            limit = current_max
            wait_until(lambda m=limit: server_backends(pg) <= m, timeout=5)
            for _ in range(5):
                seen = server_backends(pg)
                if seen > limit:
                    over_limit.append((limit, seen))
                if limit == 12:
                    peak_at_12 = max(peak_at_12, seen)
                threading.Event().wait(0.05)
        out, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 0, err
    failed = int(re.search(r"number of failed transactions: (\d+)", out).group(1))  # type: ignore[union-attr]
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    print(f"reload under load: 20 reloads + 1 invalid + 1 rollback, tps={tps:.0f}, failed={failed}, "
          f"peak at max 12: {peak_at_12}")
    assert reloads == 20
    assert failed == 0
    assert over_limit == []
    assert peak_at_12 > 4  # the pool really grew when allowed to
    assert '"reload_rejected"' in p.log_text()
