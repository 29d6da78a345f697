"""`make run`'s script as a user meets it: the commands it prints work as printed, and
Ctrl-C under a pipe (`make run 2>&1 | tee log`) stops PostgreSQL and removes its directory."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import pgcluster, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_printed_commands_work_and_ctrl_c_under_a_pipe_cleans_up(tmp_path: Path) -> None:
    port, http_port = pgcluster.free_port(), pgcluster.free_port()
    log = tmp_path / "run.log"
    env = dict(os.environ, POOLD_PORT=str(port), POOLD_HTTP_PORT=str(http_port))
    # A shell pipeline in a session of its own, as a terminal runs `make run 2>&1 | tee log`.
    shell = subprocess.Popen(
        ["sh", "-c", f"{shlex.quote(sys.executable)} scripts/run_dev.py 2>&1 | tee {shlex.quote(str(log))}"],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: "Ctrl-C stops both" in log.read_text() if log.exists() else False, timeout=90)
        text = log.read_text()
        work = Path(re.search(r"Configuration: (\S+)/poold.toml", text).group(1))  # type: ignore[union-attr]
        assert work.is_dir()
        lines = [line.strip() for line in text.splitlines()]
        commands = [line.split("  (")[0].strip() for line in lines
                    if line.startswith(("psql ", "curl ")) or "poolctl " in line.split("  (")[0]]
        assert len(commands) == 5, text  # psql over TCP and the socket, the admin console, poolctl, curl
        run_env = dict(os.environ, PGPASSWORD="app")
        for command in commands:
            argv = shlex.split(command)
            console = argv[0] == "psql" and argv[-1] == "pgbouncer"
            if argv[0] == "psql":
                sql = "SHOW VERSION" if console else "SELECT 40 + 2"
                argv = [pgcluster.client_tool("psql"), *argv[1:], "-X", "-At", "-c", sql]
            out = subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, (command, out.stdout, out.stderr)
            if argv[0].endswith("psql"):
                assert out.stdout.strip().startswith("poold ") if console else out.stdout.strip() == "42"
        # Ctrl-C: SIGINT to the whole foreground group (the script and tee both).
        os.killpg(shell.pid, signal.SIGINT)
        shell.wait(timeout=60)
        wait_until(lambda: not work.exists(), timeout=30)
        running = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True)
        assert running.stdout == "", f"left running: {running.stdout}"
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            time.sleep(0.5)
