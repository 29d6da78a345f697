"""`make install` into a temporary root, and the installed unit under a real systemd user manager.

Every installed path is under the test's root (scripts/install.py takes them all), the units
straight into the user manager's unit directory. What a user manager cannot run as installed is
changed, and said here: User=/Group= are dropped (it cannot switch users), the control socket is
under its $XDG_RUNTIME_DIR/poold (where RuntimeDirectory= puts it for a user manager, /run/poold
for the system one) in the configuration and ExecReload, and sandboxing this machine cannot set
up is relaxed in a drop-in, as in test_systemd.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.conftest import APP_PASSWORD, ROOT, pgcluster
from tests.e2e.usermanager import SANDBOXING, UserManager, unsupported_here

INSTALL = [sys.executable, str(ROOT / "scripts" / "install.py")]


def dirs(root: Path, manager: UserManager) -> list[str]:
    return ["--prefix", str(root / "opt/poold"), "--bindir", str(root / "usr/bin"),
            "--unitdir", str(manager.units), "--sysusersdir", str(root / "usr/lib/sysusers.d"),
            "--mandir", str(root / "usr/share/man"), "--sysconfdir", str(root / "etc/poold"), "--no-system"]


def test_install_run_reload_rollback_stop_uninstall(manager: UserManager, pg: pgcluster.Cluster,
                                                    files: Path) -> None:
    root = files / "root"
    args = dirs(root, manager)
    out = subprocess.run([*INSTALL, "install", *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    etc, unit = root / "etc/poold", manager.units / "poold.service"
    assert {p.name for p in etc.iterdir()} == {"poold.toml", "userlist.txt", "poold.env"}
    assert oct(os.stat(etc / "userlist.txt").st_mode & 0o777) == "0o640"
    version = subprocess.run([str(root / "usr/bin/poold"), "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("poold ")
    # The unit names what was installed, and verifies clean (its man page included).
    text = unit.read_text()
    assert f"ExecStart={root}/usr/bin/poold -c ${{POOLD_CONFIG}}" in text and f"{etc}/poold.env" in text
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                            env=dict(os.environ, MANPATH=str(root / "usr/share/man")))
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    sysusers = subprocess.run(["systemd-sysusers", f"--root={root}", str(root / "usr/lib/sysusers.d/poold.conf")],
                              capture_output=True, text=True)
    assert sysusers.returncode == 0, sysusers.stderr
    assert (root / "etc/passwd").read_text().startswith("poold:")

    # Configure it as an operator would: a database, a user, the ports; then run the unit.
    run = manager.runtime_dir / "poold"
    port, control = pgcluster.free_port(), run / "control.sock"
    config = (etc / "poold.toml").read_text()
    config = (config.replace("port = 6432", f"port = {port}").replace("port = 9127", f"port = {pgcluster.free_port()}")
              .replace('unix_socket_dir = "/run/poold"', f'unix_socket_dir = "{run}"')
              .replace('socket = "/run/poold/control.sock"', f'socket = "{control}"')
              .replace('dsn = "host=127.0.0.1 port=5432 dbname=app"',
                       f'dsn = "host={pg.host} port={pg.port} dbname=app user=app password={APP_PASSWORD}"'))
    (etc / "poold.toml").write_text(config)
    with open(etc / "userlist.txt", "a") as f:
        f.write(f'"app" "{APP_PASSWORD}"\n')
    (etc / "poold.env").write_text("DB_POOL_MAX=4\n")
    unit.write_text("\n".join(line for line in text.splitlines() if not line.startswith(("User=", "Group=")))
                    .replace("/run/poold/control.sock", str(control)) + "\n")
    sandboxing = [line for line in text.splitlines() if line.split("=")[0] in SANDBOXING]
    dropin = manager.units / "poold.service.d"
    dropin.mkdir()
    relaxed = unsupported_here(manager, sandboxing, files / "probe")
    (dropin / "test.conf").write_text(
        f"[Service]\nStandardOutput=append:{files}/poold.log\nStandardError=append:{files}/poold.log\n"
        + "".join(f"{name}=no\n" for name in sorted(set(relaxed))))
    manager.ctl("daemon-reload", check=True)

    poolctl = [str(root / "usr/bin/poolctl"), "--socket", str(control), "--json"]

    def max_size() -> int:
        return int(json.loads(subprocess.run([*poolctl, "pools"], capture_output=True, text=True).stdout)[0]["max_size"])

    manager.ctl("start", "poold.service", check=True)
    try:
        dsn = f"host=127.0.0.1 port={port} dbname=app user=app password={APP_PASSWORD}"
        with psycopg.connect(dsn, prepare_threshold=None, autocommit=True) as conn:
            assert conn.execute("SELECT 'installed'").fetchone() == ("installed",)
            assert max_size() == 4
            (etc / "poold.env").write_text("DB_POOL_MAX=6\n")
            manager.ctl("reload", "poold.service", check=True)
            assert max_size() == 6
            assert subprocess.run([*poolctl, "rollback"], capture_output=True).returncode == 0
            assert max_size() == 4
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        manager.ctl("stop", "poold.service", check=True)
    assert manager.show("poold.service", "Result") == "success"

    # An upgrade keeps the operator's files; uninstall removes all but them.
    out = subprocess.run([*INSTALL, "install", *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and (etc / "poold.toml").read_text() == config, out.stdout + out.stderr
    out = subprocess.run([*INSTALL, "uninstall", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert not (root / "opt/poold").exists() and not (root / "usr/bin/poold").exists()
    assert not unit.exists() and not (root / "usr/share/man/man8/poold.8").exists()
    assert (etc / "poold.toml").read_text() == config
