"""Command line: ``poold [-c FILE]`` runs the daemon; ``--check-config FILE`` validates."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from . import __version__
from .auth import load_auth_files
from .config import ConfigError, load_config

DEFAULT_CONFIG = "/etc/poold/poold.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poold", description="PostgreSQL connection pool daemon")
    parser.add_argument("-c", "--config", default=os.environ.get("POOLD_CONFIG", DEFAULT_CONFIG))
    parser.add_argument("--check-config", metavar="FILE", help="validate FILE (with environment overrides) and exit")
    parser.add_argument("--version", action="version", version=f"poold {__version__}")
    args = parser.parse_args(argv)

    path = args.check_config or args.config
    try:
        config = load_config(path, os.environ)
        files = load_auth_files(config)  # the auth files are part of the configuration: checked with it
    except ConfigError as exc:
        for err in exc.errors:
            print(f"poold: {err}", file=sys.stderr)
        return 2 if args.check_config else 78  # EX_CONFIG
    if args.check_config:
        print(f"poold: {path}: configuration OK ({len(config.databases)} databases)")
        return 0

    import faulthandler
    import signal

    from . import log
    from .app import App

    # `kill -USR1` dumps every thread's stack to stderr: for a daemon that seems stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    log.configure(config.daemon.log_format, config.daemon.log_level)
    try:
        import uvloop
    except ImportError:  # uvloop is a dependency; plain asyncio still works
        return asyncio.run(App(config, os.environ, files).run())
    return uvloop.run(App(config, os.environ, files).run())


if __name__ == "__main__":
    sys.exit(main())
