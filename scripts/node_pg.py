"""node-postgres for the driver tests: ``node`` and the ``pg`` package under .venv/node.

``make test`` runs this before the tests. It installs Node.js and npm with
apt-get when they are missing and we are root (as CI is), then node-postgres 8
from the npm registry into ``.venv/node`` (once; later runs find it there).
A part that cannot be installed is an error: the driver tests fail, never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFIX = REPO / ".venv" / "node"
PACKAGE = "pg@8"


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"missing: {' '.join(packages)} (install them with your package manager)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env, check=True)


def ensure_node() -> None:
    """``node`` and ``npm`` on PATH: Debian's, installed with apt-get when we are root."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        _apt_install(*("nodejs" if tool == "node" else tool for tool in missing))


def main() -> None:
    ensure_node()
    if not (PREFIX / "node_modules" / "pg" / "package.json").is_file():
        PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(PREFIX), PACKAGE],
                       check=True, timeout=600)
    print(PREFIX / "node_modules")


if __name__ == "__main__":
    main()
