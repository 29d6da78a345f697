"""`make install` / `make uninstall`: poold as a systemd service (standard library only).

Install puts, each at a path of its own (all overridable, so that a test can
install under a temporary root):

  PREFIX (/opt/poold)                 a virtual environment with poold and poolctl
  BINDIR (/usr/bin)                   poold and poolctl, links into PREFIX/bin
  UNITDIR (/etc/systemd/system)       poold.service and poold.socket, paths filled in
  SYSUSERSDIR (/usr/lib/sysusers.d)   poold.conf: the poold system user and group
  MANDIR (/usr/share/man)             man8/poold.8 (the unit's Documentation=)
  SYSCONFDIR (/etc/poold)             poold.toml, userlist.txt, poold.env: written
                                      only where absent, never over an operator's

and, installing for real (root, the default paths), creates the user with
systemd-sysusers and reloads systemd. Uninstall removes all of it but
SYSCONFDIR, which holds the operator's configuration and secrets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "pgpoold"  # PyPI's "poold" is an unrelated project

SYSUSERS = 'u poold - "poold PostgreSQL connection pool daemon" - -\n'

USERLIST = """\
; poold auth file, PgBouncer's userlist.txt format: "user" "secret" per line.
; The secret is a SCRAM verifier (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>,
; as in pg_authid), "md5" + md5(password + user), or a plain password. Empty secrets are refused.
; Readable by root and the poold group only.
"""


def paths(args: argparse.Namespace) -> dict[str, Path]:
    return {k: Path(getattr(args, k)) for k in ("prefix", "bindir", "unitdir", "sysusersdir", "mandir", "sysconfdir")}


def unit_text(name: str, p: dict[str, Path]) -> str:
    text = (ROOT / "systemd" / name).read_text()
    return (text.replace("/usr/bin/poold", str(p["bindir"] / "poold"))
            .replace("/usr/bin/poolctl", str(p["bindir"] / "poolctl"))
            .replace("/etc/poold/", f"{p['sysconfdir']}/"))


def default_config() -> str:
    """config/poold.toml, with the Unix socket where the unit's RuntimeDirectory= puts it
    (the unit's PrivateTmp= hides /tmp from clients)."""
    text = (ROOT / "config" / "poold.toml").read_text()
    return text.replace('unix_socket_dir = "/tmp"   ', 'unix_socket_dir = "/run/poold"')


def install(args: argparse.Namespace) -> None:
    p = paths(args)
    real = os.geteuid() == 0 and not args.no_system
    say(f"virtual environment {p['prefix']}")
    venv.create(p["prefix"], with_pip=True)  # an upgrade installs into the one there
    pip = [str(p["prefix"] / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, str(ROOT)], check=True)
    p["bindir"].mkdir(parents=True, exist_ok=True)
    for command in ("poold", "poolctl"):
        link = p["bindir"] / command
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(p["prefix"] / "bin" / command)
    p["unitdir"].mkdir(parents=True, exist_ok=True)
    for name in ("poold.service", "poold.socket"):
        (p["unitdir"] / name).write_text(unit_text(name, p))
    p["sysusersdir"].mkdir(parents=True, exist_ok=True)
    (p["sysusersdir"] / "poold.conf").write_text(SYSUSERS)
    (p["mandir"] / "man8").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "docs" / "poold.8", p["mandir"] / "man8" / "poold.8")
    if real:
        subprocess.run(["systemd-sysusers", str(p["sysusersdir"] / "poold.conf")], check=True)
    p["sysconfdir"].mkdir(parents=True, exist_ok=True)
    for name, text, mode in (("poold.toml", default_config(), 0o644), ("userlist.txt", USERLIST, 0o640),
                             ("poold.env", (ROOT / "config" / "poold.env").read_text(), 0o644)):
        target = p["sysconfdir"] / name
        if target.exists():
            say(f"kept {target} (yours)")
            continue
        target.write_text(text)
        target.chmod(mode)
        if real and name == "userlist.txt":
            shutil.chown(target, "root", "poold")
    if real:
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    say(f"installed: {p['bindir'] / 'poold'}, {p['unitdir'] / 'poold.service'}; "
        f"configure {p['sysconfdir']}/poold.toml, then: systemctl enable --now poold")


def uninstall(args: argparse.Namespace) -> None:
    p = paths(args)
    for f in (p["bindir"] / "poold", p["bindir"] / "poolctl", p["unitdir"] / "poold.service",
              p["unitdir"] / "poold.socket", p["sysusersdir"] / "poold.conf", p["mandir"] / "man8" / "poold.8"):
        if f.is_symlink() or f.exists():
            f.unlink()
    shutil.rmtree(p["prefix"], ignore_errors=True)
    say(f"removed poold; kept {p['sysconfdir']} (configuration and secrets: remove it yourself)")


def say(text: str) -> None:
    print(f"install: {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="install.py", description=__doc__.split("\n", 1)[0])
    parser.add_argument("action", choices=["install", "uninstall"])
    parser.add_argument("--prefix", default=os.environ.get("PREFIX") or "/opt/poold")
    parser.add_argument("--bindir", default=os.environ.get("BINDIR") or "/usr/bin")
    parser.add_argument("--unitdir", default=os.environ.get("UNITDIR") or "/etc/systemd/system")
    parser.add_argument("--sysusersdir", default=os.environ.get("SYSUSERSDIR") or "/usr/lib/sysusers.d")
    parser.add_argument("--mandir", default=os.environ.get("MANDIR") or "/usr/share/man")
    parser.add_argument("--sysconfdir", default=os.environ.get("SYSCONFDIR") or "/etc/poold")
    parser.add_argument("--no-system", action="store_true", help="no systemd-sysusers, no daemon-reload")
    args = parser.parse_args(argv)
    (install if args.action == "install" else uninstall)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
