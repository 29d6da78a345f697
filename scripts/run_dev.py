"""`make run`: a throwaway PostgreSQL and poold in front of it, until Ctrl-C.

Creates role and database "app" (password "app"), writes a configuration into a
temporary directory, starts poold on 127.0.0.1:$POOLD_PORT (6432) and a Unix
socket in that directory, and prints how to connect. Ctrl-C stops poold (which
closes its server connections) and then PostgreSQL, and removes the directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import pgcluster  # noqa: E402


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Ctrl-C and SIGTERM both stop poold and PostgreSQL, even when this script
    # was started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    pgcluster.ensure_binaries()
    port = int(os.environ.get("POOLD_PORT", "6432"))
    work = Path(tempfile.mkdtemp(prefix="poold-run-"))
    os.chmod(work, 0o755)
    cluster = pgcluster.Cluster(base=str(work / "pg"))
    print(f"Starting PostgreSQL ({cluster.bindir}) on 127.0.0.1:{cluster.port} ...", flush=True)
    cluster.init()
    cluster.start()
    poold = None
    try:
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
port = {os.environ.get("POOLD_HTTP_PORT", "9127")}

[auth]
type = "scram-sha-256"
file = "userlist.txt"

[pool]
mode = "transaction"

[databases.app]
dsn = "host=127.0.0.1 port={cluster.port} dbname=app user=app password=app"
"""
        )
        # Its own session: Ctrl-C reaches only this script, which then sends
        # poold exactly one SIGTERM (a second signal would mean "exit now").
        poold = subprocess.Popen([sys.executable, "-m", "poold", "-c", str(work / "poold.toml")], start_new_session=True)
        time.sleep(1.0)
        if poold.poll() is not None:
            print("poold failed to start", file=sys.stderr)
            return 1
        print(
            f"""
poold is running in transaction mode in front of a throwaway PostgreSQL.

  psql -h 127.0.0.1 -p {port} -U app app          (password: app)
  psql -h {work} -p {port} -U app app
  postgresql://app:app@127.0.0.1:{port}/app

  poolctl --socket {work}/control.sock pools      (.venv/bin/poolctl)
  curl http://127.0.0.1:{os.environ.get("POOLD_HTTP_PORT", "9127")}/metrics

Configuration: {work / 'poold.toml'}    Ctrl-C stops both.
""",
            flush=True,
        )
        try:
            poold.wait()
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        if poold is not None and poold.poll() is None:
            poold.send_signal(signal.SIGTERM)
            try:
                poold.wait(timeout=40)
            except subprocess.TimeoutExpired:
                poold.kill()
        print("Stopping PostgreSQL ...", flush=True)
        cluster.destroy()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
