"""Command line: ``poold [-c FILE]`` runs the daemon; ``--check-config FILE`` validates;
``poold migrate PGBOUNCER_INI [-o OUT]`` converts a PgBouncer configuration."""

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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["migrate"]:
        return migrate_main(argv[1:])
    parser = argparse.ArgumentParser(prog="poold", description="PostgreSQL connection pool daemon",
                                     epilog="poold migrate PGBOUNCER_INI [-o OUT]: convert a pgbouncer.ini "
                                            "(see poold migrate --help)")
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


def migrate_main(argv: list[str]) -> int:
    """Write the poold.toml equivalent to a pgbouncer.ini; print what could not be carried."""
    from pathlib import Path

    from .migrate import IniError, convert

    parser = argparse.ArgumentParser(prog="poold migrate", description="convert a pgbouncer.ini to poold.toml")
    parser.add_argument("ini", metavar="PGBOUNCER_INI")
    parser.add_argument("-o", "--output", metavar="OUT", help="write here (default: standard output)")
    args = parser.parse_args(argv)
    ini = Path(args.ini)
    try:
        result = convert(ini.read_text(), str(ini.resolve().parent), str(ini))
    except OSError as exc:
        print(f"poold migrate: {ini}: cannot read: {exc.strerror}", file=sys.stderr)
        return 1
    except IniError as exc:
        print(f"poold migrate: {ini}: {exc}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(result.toml)
    else:
        sys.stdout.write(result.toml)
    for note in result.notes:
        if note.kind != "carried":
            print(f"poold migrate: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
