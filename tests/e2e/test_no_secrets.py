"""No password from a DSN or the auth file appears in logs, poolctl or HTTP output."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable

import psycopg

from tests.conftest import APP_PASSWORD, Poold, wait_until


def test_passwords_never_leak(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(mode="transaction", max_size=3, min_size=1)
    other_plain = "sEcReT-plain-77"
    md5_hash = hashlib.md5(("hunter2-md5" + "md5only").encode()).hexdigest()
    with open(p.tmp / "userlist.txt", "a") as f:
        f.write(f'"other" "{other_plain}"\n"md5only" "md5{md5_hash}"\n')
    os.kill(p.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]  # re-read the auth file
    wait_until(lambda: '"reload_applied"' in p.log_text())

    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        conn.execute("SELECT 1")
        for args in (["status"], ["pools"], ["clients"], ["servers"], ["config", "show"], ["config", "diff"],
                     ["reload", "--dry-run"], ["--json", "config", "show"]):
            r = p.poolctl(*args)
            assert r.returncode == 0, (args, r.stderr)
            outputs = [r.stdout, r.stderr]
            for secret in (APP_PASSWORD, other_plain, md5_hash):
                assert all(secret not in o for o in outputs), (args, secret)
    # failed logins, with wrong passwords that must not be echoed either
    for user, password in (("app", "wrong-pass-1"), ("other", "wrong-pass-2"), ("nobody", "wrong-pass-3")):
        try:
            psycopg.connect(p.dsn(user=user, password=password))
        except psycopg.OperationalError:
            pass
    # a reload with a bad DSN, and a rollback: their plans and errors are logged
    (p.tmp / "poold.env").write_text(f"POOLD_DATABASES__APP__DSN=host=127.0.0.1 port=1 password={APP_PASSWORD}x\n")
    assert p.poolctl("reload").returncode == 0
    assert p.poolctl("rollback").returncode == 0
    http = [p.http(path)[1] for path in ("/health", "/health/database", "/health/ready", "/metrics")]
    assert p.stop() == 0
    log = p.log_text()
    assert '"reload_applied"' in log and '"rollback_applied"' in log and '"auth_failed"' in log
    for secret in (APP_PASSWORD, other_plain, md5_hash, "wrong-pass-1", "wrong-pass-2", "wrong-pass-3"):
        assert secret not in log, secret
        assert all(secret not in body for body in http), secret
