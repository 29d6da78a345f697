"""Every poolctl command against the real daemon, through its control socket."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import APP_PASSWORD, Poold, pgcluster, server_backends, wait_until


def ctl_json(p: Poold, *args: str) -> object:
    r = p.poolctl("--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_clients_servers_and_config(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(mode="session", max_size=3, min_size=1)
    with psycopg.connect(p.dsn(application_name="ctl-test"), autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        (client,) = ctl_json(p, "clients")  # type: ignore[misc]
        assert client["user"] == "app" and client["state"] == "active" and client["server_pid"] == pid
        servers = ctl_json(p, "servers")
        mine = {"pool": "app.app", "pid": pid, "state": "active", "tx_status": "I", "client": client["id"]}
        assert any(row.items() >= mine.items() for row in servers)  # type: ignore[union-attr]
        text = p.poolctl("clients").stdout
        assert text.splitlines()[0].split()[:3] == ["ID", "PEER", "DATABASE"]
    shown = p.poolctl("config", "show")
    assert shown.returncode == 0
    assert any(line.split() == ["databases.app.max_size", "3"] for line in shown.stdout.splitlines())
    assert "password=********" in shown.stdout and APP_PASSWORD not in shown.stdout


def test_config_diff_and_dry_run_do_not_apply(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(max_size=3, min_size=1)
    (p.tmp / "poold.env").write_text("DB_POOL_MAX=7\n")
    diff = ctl_json(p, "config", "diff")
    assert diff["databases.app.max_size"] == {"running": 3, "on_disk": 7}  # type: ignore[index]
    dry = p.poolctl("reload", "--dry-run")
    assert dry.returncode == 0
    assert "dry run" in dry.stdout and "database app: max_size: 3 -> 7" in dry.stdout
    assert ctl_json(p, "status")["generation"] == 1  # type: ignore[index]
    applied = p.poolctl("reload")
    assert applied.returncode == 0 and "applied generation 2" in applied.stdout
    assert ctl_json(p, "pools")[0]["max_size"] == 7  # type: ignore[index]


def test_invalid_reload_is_refused_and_the_old_config_serves(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(max_size=3, min_size=1)
    (p.tmp / "poold.env").write_text("DB_POOL_MAX=banana\n")
    r = p.poolctl("reload")
    assert r.returncode == 1
    assert r.stderr.strip() == "poolctl: reload failed: configuration rejected: pool.max_size: must be an integer, got 'banana'"
    os.kill(p.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
    wait_until(lambda: p.log_text().count('"reload_rejected"') == 2)
    assert p.proc.poll() is None  # type: ignore[union-attr]
    with psycopg.connect(p.dsn(), prepare_threshold=None) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert ctl_json(p, "status")["generation"] == 1  # type: ignore[index]


def test_sighup_applies_env_file_and_rollback_restores(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(max_size=3, min_size=1)
    (p.tmp / "poold.env").write_text("DB_POOL_MAX=6\nDB_STATEMENT_TIMEOUT=2500\n")
    os.kill(p.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
    wait_until(lambda: ctl_json(p, "status")["generation"] == 2)  # type: ignore[index]
    assert ctl_json(p, "pools")[0]["max_size"] == 6  # type: ignore[index]
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        # a changed statement_timeout reconnects: new server connections carry it
        assert conn.execute("SHOW statement_timeout").fetchone() == ("2500ms",)
    back = p.poolctl("rollback")
    assert back.returncode == 0 and "restored generation 1" in back.stdout
    assert ctl_json(p, "pools")[0]["max_size"] == 3  # type: ignore[index]
    assert ctl_json(p, "status")["generation"] == 3  # type: ignore[index]
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("15s",)


def test_pause_holds_queries_until_resume(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(mode="transaction", max_size=2, min_size=1)
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        conn.execute("SELECT 1")
        paused = ctl_json(p, "pause", "app")
        assert paused == {"paused": ["app.app"], "still_active": 0}
        done = threading.Event()

        def query() -> None:
            conn.execute("SELECT 2")
            done.set()

        t = threading.Thread(target=query)
        t.start()
        time.sleep(0.5)
        assert not done.is_set()
        assert ctl_json(p, "pools")[0]["waiting"] == 1  # type: ignore[index]
        assert ctl_json(p, "resume", "app") == {"resumed": ["app.app"]}
        t.join(5)
        assert done.is_set()
    r = p.poolctl("pause", "nosuchpool")
    assert r.returncode == 1 and "no pool named 'nosuchpool'" in r.stderr


def test_reconnect_replaces_server_connections(poold_factory: Callable[..., Poold], pg: pgcluster.Cluster) -> None:
    p = poold_factory(mode="transaction", max_size=1, min_size=1)
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        before = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert ctl_json(p, "reconnect") == {"reconnecting": ["app.app"]}
        after = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert after != before
    wait_until(lambda: server_backends(pg, f"pid = {before[0]}") == 0)  # type: ignore[index]


def test_drain_finishes_transactions_then_closes_and_refuses_new_clients(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(mode="transaction", max_size=2, min_size=1)
    idle = psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True)
    busy = psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True)
    busy.execute("BEGIN")
    busy.execute("CREATE TEMP TABLE drained(x int)")
    assert ctl_json(p, "drain")["draining"] is True  # type: ignore[index]
    wait_until(lambda: idle.closed or _closed(idle))
    busy.execute("INSERT INTO drained VALUES (1)")  # the open transaction goes on
    busy.execute("COMMIT")
    with pytest.raises(psycopg.OperationalError):
        busy.execute("SELECT 1")  # closed at the boundary with 57P01
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(p.dsn(), connect_timeout=2)
    status, body = p.http("/health/ready")
    assert status == 503 and "draining" in body
    assert p.proc.poll() is None  # type: ignore[union-attr]
    assert p.poolctl("shutdown").returncode == 0
    assert p.proc.wait(timeout=20) == 0  # type: ignore[union-attr]


def _closed(conn: psycopg.Connection) -> bool:  # type: ignore[type-arg]
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_control_socket_refuses_other_uids(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory()
    os.chmod(p.control_path, 0o666)  # let another uid get as far as SO_PEERCRED
    for parent in p.control_path.parents:
        if parent == parent.parent or str(parent) == "/tmp":
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o711)
    pid = os.fork()
    if pid == 0:  # child: become nobody and ask for status
        code = 3
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(str(p.control_path))
                try:
                    s.sendall(b'{"version": 1, "command": "status"}\n')
                    reply = s.recv(100)
                except (BrokenPipeError, ConnectionResetError):
                    reply = b""  # closed by poold before or while we wrote
                code = 0 if reply == b"" else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0  # closed without a reply
    wait_until(lambda: '"control_peer_refused"' in p.log_text())
    assert ctl_json(p, "status")["clients"] == 0  # root still served  # type: ignore[index]


def scram_verifier(password: str) -> str:
    salt, iterations = os.urandom(16), 4096
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server = hmac.digest(salted, b"Server Key", "sha256")
    salt64, stored64, server64 = (base64.b64encode(x).decode() for x in (salt, stored, server))
    return f"SCRAM-SHA-256${iterations}:{salt64}${stored64}:{server64}"


def test_the_next_login_after_a_reload_meets_the_new_auth_file_and_databases(poold_factory: Callable[..., Poold]) -> None:
    # logins with one startup packet are decided once (Runtime.login_plans): a reload must undo that.
    # sslmode=disable: the C login takes a StartupMessage first, not an SSLRequest
    p = poold_factory(max_size=2, min_size=1)
    (p.tmp / "userlist.txt").write_text(f'"app" "{scram_verifier("first-pw")}"\n')
    assert p.poolctl("reload").returncode == 0
    for _ in range(3):  # the C login, on the packet's kept plan after the first
        with psycopg.connect(p.dsn(password="first-pw", sslmode="disable"), prepare_threshold=None) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    (p.tmp / "userlist.txt").write_text(f'"app" "{scram_verifier("second-pw")}"\n')
    assert p.poolctl("reload").returncode == 0
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "app"'):
        psycopg.connect(p.dsn(password="first-pw", sslmode="disable"))
    for _ in range(2):
        with psycopg.connect(p.dsn(password="second-pw", sslmode="disable"), prepare_threshold=None) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    config = p.config_path.read_text()
    p.config_path.write_text(config.replace("[databases.app]", "[databases.other]"))
    assert p.poolctl("reload").returncode == 0
    with pytest.raises(psycopg.OperationalError, match='database "app" does not exist'):
        psycopg.connect(p.dsn(password="second-pw", sslmode="disable"))
    p.config_path.write_text(config)
    assert p.poolctl("reload").returncode == 0
    with psycopg.connect(p.dsn(password="second-pw", sslmode="disable"), prepare_threshold=None) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
