"""A real systemd user manager for the tests that run poold's units (test_systemd, test_install).

The manager runs with its own XDG_RUNTIME_DIR under /run (the unit's PrivateTmp
hides /tmp from the service) and XDG_CONFIG_HOME beside it, whose systemd/user
directory no unit file of this machine's outranks (/etc/systemd/user,
~/.config/systemd/user).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import wait_until

SYSTEMD = "/lib/systemd/systemd"


class UserManager:
    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        config_home = runtime_dir.parent / "config"
        self.env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime_dir), XDG_CONFIG_HOME=str(config_home))
        self.env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        self.units = config_home / "systemd" / "user"
        self.proc: subprocess.Popen[bytes] | None = None
        self.made: list[str] = []  # directories under /run made here, removed by stop()

    def start(self) -> None:
        for d in ("/run/systemd", "/run/systemd/system"):  # marks systemd as the init system
            if not os.path.isdir(d):
                os.mkdir(d)
                self.made.insert(0, d)
        self.units.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([SYSTEMD, "--user"], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_until(lambda: self.ctl("is-system-running").stdout.strip() in ("running", "degraded"), timeout=30)

    def ctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["systemctl", "--user", *args], env=self.env, capture_output=True, text=True, timeout=60)
        if check:
            assert r.returncode == 0, f"systemctl --user {' '.join(args)}: {r.stderr}"
        return r

    def show(self, unit: str, prop: str) -> str:
        return self.ctl("show", "-p", prop, "--value", unit).stdout.strip()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for d in self.made:
            try:
                os.rmdir(d)
            except OSError:
                pass  # someone else's files arrived meanwhile: theirs to keep


SANDBOXING = ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
              "ProtectKernelModules", "ProtectControlGroups", "RestrictNamespaces", "NoNewPrivileges",
              "RestrictAddressFamilies", "LockPersonality", "SystemCallArchitectures")


def unsupported_here(m: UserManager, directives: list[str], probe: Path) -> list[str]:
    """Sandboxing lines with which this Python cannot start in a unit, or read ``probe``."""
    probe.write_text("probe\n")
    failing = []
    for line in directives:
        check = f"{sys.executable} -c 'import poold; open(\"{probe}\").read()'"
        unit = f"[Service]\nType=oneshot\nExecStart={check}\n{line}\n"
        (m.units / "probe.service").write_text(unit)
        m.ctl("daemon-reload", check=True)
        if m.ctl("start", "probe.service").returncode != 0:
            failing.append(line.split("=")[0])
    (m.units / "probe.service").unlink()
    return failing
