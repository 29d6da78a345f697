"""The real unit files under a real systemd user manager (tests/e2e/usermanager.py).

Units are installed in the manager's unit directory from systemd/poold.service
and poold.socket, with paths pointed at this checkout and the test cluster.
The changes, all said here: User=/Group= are dropped (a user manager cannot
switch users); a drop-in sends output to a file (no journald here); and a
sandboxing directive that this machine cannot set up (a probe unit fails with
226/NAMESPACE, as ProtectHome and ProtectKernelTunables do in some
containers, or cannot read the test's files, as ProtectControlGroups there,
or cannot reach this checkout's Python, as ProtectHome for a Python under
/root or PrivateTmp for a checkout under /tmp) is turned off.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from tests.conftest import APP_PASSWORD, ROOT, pgcluster, wait_until
from tests.e2e.usermanager import SANDBOXING, UserManager, unsupported_here


def install_units(m: UserManager, pg: pgcluster.Cluster, tmp: Path, port: int) -> Path:
    poold = Path(sys.executable).with_name("poold")
    run = m.runtime_dir / "poold"
    config = tmp / "poold.toml"
    (tmp / "userlist.txt").write_text(f'"app" "{APP_PASSWORD}"\n')
    (tmp / "poold.env").write_text("DB_POOL_MAX=3\n")
    config.write_text(f"""
[listen]
host = "127.0.0.1"
port = {port}
unix_socket_dir = "{run}"
[control]
socket = "{run}/control.sock"
[http]
port = {pgcluster.free_port()}
[auth]
file = "userlist.txt"
[daemon]
env_file = "poold.env"
[pool]
min_size = 1
max_size = 6
[databases.app]
dsn = "host={pg.host} port={pg.port} dbname=app user=app password={APP_PASSWORD}"
""")
    service = (ROOT / "systemd" / "poold.service").read_text()
    service = "\n".join(line for line in service.splitlines() if not line.startswith(("User=", "Group=")))
    sandboxing = [line for line in service.splitlines() if line.split("=")[0] in SANDBOXING]
    service = (service.replace("/usr/bin/poold", str(poold))
               .replace("/usr/bin/poolctl", str(poold.with_name("poolctl")))
               .replace("/run/poold/control.sock", f"{run}/control.sock")
               .replace("/etc/poold/poold.toml", str(config))
               .replace("/etc/poold/poold.env", str(tmp / "poold.env")))
    (m.units / "poold.service").write_text(service)
    socket_unit = (ROOT / "systemd" / "poold.socket").read_text()
    socket_unit = (socket_unit.replace("127.0.0.1:6432", f"127.0.0.1:{port}")
                   .replace("/run/poold/.s.PGSQL.6432", f"{tmp}/.s.PGSQL.{port}"))
    (m.units / "poold.socket").write_text(socket_unit)
    dropin = m.units / "poold.service.d"
    dropin.mkdir()
    # No journald under a bare user manager: keep poold's output in a file.
    test_conf = f"[Service]\nStandardOutput=append:{tmp}/poold.log\nStandardError=append:{tmp}/poold.log\n"
    relaxed = unsupported_here(m, sandboxing, tmp / "probe")
    test_conf += "".join(f"{name}=no\n" for name in sorted(set(relaxed)))
    (dropin / "test.conf").write_text(test_conf)
    m.ctl("daemon-reload", check=True)
    return run / "control.sock"


def poolctl(control: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "poolctl", "--socket", str(control), *args],
                          capture_output=True, text=True, timeout=30)


def dsn(port: int) -> str:
    return f"host=127.0.0.1 port={port} dbname=app user=app password={APP_PASSWORD}"


def test_start_reload_stop_under_systemd(manager: UserManager, pg: pgcluster.Cluster, files: Path) -> None:
    tmp_path = files
    port = pgcluster.free_port()
    control = install_units(manager, pg, tmp_path, port)
    manager.ctl("start", "poold.service", check=True)  # returns once READY=1 arrived (Type=notify)
    assert manager.show("poold.service", "FragmentPath") == str(manager.units / "poold.service")  # ours, not outranked
    assert manager.show("poold.service", "ActiveState") == "active"
    assert manager.show("poold.service", "StatusText").startswith("serving:")
    assert manager.show("poold.service", "WatchdogUSec") == "30s"

    def max_size() -> int:
        return int(json.loads(poolctl(control, "--json", "pools").stdout)[0]["max_size"])

    with psycopg.connect(dsn(port), prepare_threshold=None, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert max_size() == 3  # the env file's, which EnvironmentFile= also put into poold's environment
        (tmp_path / "poold.env").write_text("DB_POOL_MAX=7\n")
        manager.ctl("reload", "poold.service", check=True)
        wait_until(lambda: json.loads(poolctl(control, "--json", "status").stdout)["generation"] == 2)
        assert max_size() == 7
        # Removed from the env file: back to the TOML's value, though systemd's copy of it is still in the environment.
        (tmp_path / "poold.env").write_text("# DB_POOL_MAX=7\n")
        manager.ctl("reload", "poold.service", check=True)
        assert max_size() == 6
        assert poolctl(control, "rollback").returncode == 0
        assert max_size() == 7
        # the same client connection goes on after the reload
        assert conn.execute("SELECT 2").fetchone() == (2,)
        # A refused configuration: `systemctl reload` fails and says why; the old one keeps serving.
        good = (tmp_path / "poold.toml").read_text()
        (tmp_path / "poold.toml").write_text(good + "\n[pool\n")
        refused = manager.ctl("reload", "poold.service")
        assert refused.returncode != 0
        status = manager.ctl("status", "poold.service").stdout
        assert "last reload refused" in status and "poold.toml" in status, status
        assert manager.show("poold.service", "ActiveState") == "active"
        assert conn.execute("SELECT 3").fetchone() == (3,)
        (tmp_path / "poold.toml").write_text(good)
        manager.ctl("reload", "poold.service", check=True)
        assert "refused" not in manager.show("poold.service", "StatusText")
    assert manager.show("poold.service", "ActiveState") == "active"

    manager.ctl("stop", "poold.service", check=True)
    assert manager.show("poold.service", "ActiveState") == "inactive"
    assert manager.show("poold.service", "Result") == "success"
    assert manager.show("poold.service", "ExecMainStatus") == "0"


def test_socket_activation_serves_a_client(manager: UserManager, pg: pgcluster.Cluster, files: Path) -> None:
    tmp_path = files
    port = pgcluster.free_port()
    install_units(manager, pg, tmp_path, port)
    manager.ctl("start", "poold.socket", check=True)
    assert manager.show("poold.service", "ActiveState") == "inactive"
    deadline = time.monotonic() + 30
    with psycopg.connect(dsn(port), prepare_threshold=None, autocommit=True, connect_timeout=30) as conn:
        assert conn.execute("SELECT 'activated'").fetchone() == ("activated",)
    assert time.monotonic() < deadline
    assert manager.show("poold.service", "ActiveState") == "active"
    with psycopg.connect(f"host={tmp_path} port={port} dbname=app user=app password={APP_PASSWORD}",
                         prepare_threshold=None) as conn:  # the passed Unix socket too
        assert conn.execute("SELECT 1").fetchone() == (1,)
    manager.ctl("stop", "poold.service", "poold.socket", check=True)
