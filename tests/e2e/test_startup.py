"""Start-up fails loudly or not at all: a listener that cannot bind is named with its address
and errno, and poold exits non-zero before it serves anything; a signal stops start-up at any
point; a notification systemd cannot hear is logged."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Poold, pgcluster


def spawn(p: Poold, **env: str) -> subprocess.Popen[bytes]:
    p.log = open(p.log_path, "ab")
    p.proc = subprocess.Popen([sys.executable, "-m", "poold", "-c", str(p.config_path)], stdout=p.log,
                              stderr=p.log, env=dict(os.environ, **env))
    return p.proc


def events(p: Poold) -> list[dict[str, object]]:
    out = []
    for line in p.log_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def occupy(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


@pytest.mark.parametrize("listener", ["postgres", "postgres_unix", "http", "control"])
def test_a_listener_that_cannot_bind_stops_start_up(tmp_path: Path, pg: pgcluster.Cluster, listener: str) -> None:
    p = Poold(tmp_path, pg)
    blocker = None
    if listener == "postgres":
        blocker, address = occupy(p.port), f"127.0.0.1:{p.port}"
    elif listener == "http":
        blocker, address = occupy(p.http_port), f"127.0.0.1:{p.http_port}"
    else:
        (tmp_path / "a-file").write_text("not a directory\n")
        if listener == "postgres_unix":
            text = p.config_path.read_text().replace(f'unix_socket_dir = "{p.sockdir}"',
                                                     f'unix_socket_dir = "{tmp_path}/a-file"')
            address = f"{tmp_path}/a-file/.s.PGSQL.{p.port}"
        else:
            text = p.config_path.read_text().replace(f'socket = "{p.control_path}"',
                                                     f'socket = "{tmp_path}/a-file/control.sock"')
            address = f"{tmp_path}/a-file/control.sock"
        p.config_path.write_text(text)
    proc = spawn(p)
    try:
        assert proc.wait(timeout=15) == 1, p.log_text()
    except subprocess.TimeoutExpired:
        raise AssertionError(f"poold did not exit:\n{p.log_text()}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if blocker is not None:
            blocker.close()
        p.log.close()
    failed = [e for e in events(p) if e.get("event") == "listen_failed"]
    assert len(failed) == 1, p.log_text()
    assert failed[0]["listener"] == listener and failed[0]["address"] == address
    assert failed[0]["errno"] in ("EADDRINUSE", "ENOTDIR", "EEXIST"), failed[0]
    assert not any(e.get("event") == "ready" for e in events(p))
    if listener in ("http", "control"):  # bound before the client listeners: no client was ever served
        assert not any(e.get("event") == "listening" for e in events(p)), p.log_text()
    assert not p.control_path.exists()


def test_a_signal_at_any_point_of_start_up_stops_it(tmp_path: Path, pg: pgcluster.Cluster) -> None:
    for i, delay in enumerate((0.05, 0.3, 0.6, 0.9, 1.2, 1.6)):
        sub = tmp_path / f"run{i}"
        sub.mkdir()
        p = Poold(sub, pg)
        proc = spawn(p)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"poold ignored SIGTERM {delay} s into start-up:\n{p.log_text()}") from None
        finally:
            p.log.close()
        # 0: stopped by its own handler; -15: the signal came before Python installed it
        assert code in (0, -signal.SIGTERM), (delay, code, p.log_text())
        assert not p.control_path.exists() and not (p.sockdir / f".s.PGSQL.{p.port}").exists()


def test_a_notification_systemd_cannot_hear_is_logged(tmp_path: Path, pg: pgcluster.Cluster) -> None:
    p = Poold(tmp_path, pg)
    spawn(p, NOTIFY_SOCKET=str(tmp_path / "no-such-dir" / "notify.sock"))
    try:
        deadline = time.monotonic() + 20
        while not any(e.get("event") == "ready" for e in events(p)) and time.monotonic() < deadline:
            time.sleep(0.1)
        failed = [e for e in events(p) if e.get("event") == "sd_notify_failed"]
        assert len(failed) == 1 and "No such file" in str(failed[0]["error"]), p.log_text()
        assert failed[0]["socket"] == str(tmp_path / "no-such-dir" / "notify.sock")
    finally:
        assert p.stop() == 0
