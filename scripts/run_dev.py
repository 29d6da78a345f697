"""`make run`: a throwaway PostgreSQL and poold in front of it, until Ctrl-C.

Creates role and database "app" (password "app"; also an admin of the admin
console, database pgbouncer), writes a configuration into a
temporary directory, starts poold on 127.0.0.1:$POOLD_PORT (6432) and a Unix
socket in that directory, and prints how to connect and the variables the
documentation's runnable examples use (PGPORT, POOLD_HTTP_PORT, POOLD_DIR,
POOLCTL_SOCKET). Ctrl-C stops poold (which
closes its server connections) and then PostgreSQL, and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import pgcluster  # noqa: E402


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _say(text: str, file: object = None) -> None:
    """Print, unless the reader went away: under `make run | tee log`, Ctrl-C ends tee
    too, and a failed print must not skip stopping PostgreSQL."""
    try:
        print(text, file=file or sys.stdout, flush=True)  # type: ignore[call-overload]
    except (BrokenPipeError, OSError):
        pass


def _start_poold(config: Path, notify: Path) -> tuple[subprocess.Popen[bytes], bool]:
    """Start poold and wait for its READY=1 (sd_notify on a socket of our own), up to 20 s.

    Its own session: Ctrl-C reaches only this script, which then sends poold
    exactly one SIGTERM (a second signal would mean "exit now")."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(0.2)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify))
    poold = subprocess.Popen([sys.executable, "-m", "poold", "-c", str(config)], start_new_session=True, env=env)
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline and poold.poll() is None:
            try:
                if b"READY=1" in sock.recv(4096):
                    return poold, True
            except TimeoutError:
                pass
        return poold, False
    finally:
        sock.close()


def main() -> int:
    # Ctrl-C and SIGTERM both stop poold and PostgreSQL, even when this script
    # was started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    pgcluster.ensure_binaries()
    port = int(os.environ.get("POOLD_PORT", "6432"))
    http_port = int(os.environ.get("POOLD_HTTP_PORT", "9127"))
    work = Path(tempfile.mkdtemp(prefix="poold-run-"))
    os.chmod(work, 0o755)
    cluster = pgcluster.Cluster(base=str(work / "pg"))
    _say(f"Starting PostgreSQL ({cluster.bindir}) on 127.0.0.1:{cluster.port} ...")
    poold = None
    try:
        cluster.init()
        cluster.start()
        cluster.create_role_and_db("app", "app")
        (work / "userlist.txt").write_text('"app" "app"\n')
        (work / "poold.toml").write_text(
            f"""[listen]
host = "127.0.0.1"
port = {port}
unix_socket_dir = "{work}"

[control]
socket = "{work}/control.sock"

[http]
port = {http_port}

[auth]
type = "scram-sha-256"
file = "userlist.txt"
admin_users = "app"

[pool]
mode = "transaction"

[databases.app]
dsn = "host=127.0.0.1 port={cluster.port} dbname=app user=app password=app"
"""
        )
        poold, ready = _start_poold(work / "poold.toml", work / "notify.sock")
        if not ready:
            _say("poold failed to start (its log is above)", sys.stderr)
            return 1
        poolctl = Path(sys.executable).parent / "poolctl"
        _say(
            f"""
poold is running in transaction mode in front of a throwaway PostgreSQL.

  psql -h 127.0.0.1 -p {port} -U app app          (password: app)
  psql -h {work} -p {port} -U app app
  postgresql://app:app@127.0.0.1:{port}/app
  psql -h 127.0.0.1 -p {port} -U app pgbouncer    (the admin console: SHOW POOLS; SHOW HELP)

  {poolctl} --socket {work}/control.sock pools
  curl http://127.0.0.1:{http_port}/metrics

The documentation's runnable examples use these (with .venv/bin on PATH):

  export PGPORT={port} POOLD_HTTP_PORT={http_port} POOLD_DIR={work} POOLCTL_SOCKET={work}/control.sock

Configuration: {work / 'poold.toml'}    Ctrl-C stops both.
"""
        )
        try:
            poold.wait()
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        # Cleaning up is not interrupted: a second Ctrl-C must not leave PostgreSQL behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if poold is not None and poold.poll() is None:
            poold.send_signal(signal.SIGTERM)
            try:
                poold.wait(timeout=40)
            except subprocess.TimeoutExpired:
                poold.kill()
        _say("Stopping PostgreSQL ...")
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
