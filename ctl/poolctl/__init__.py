"""poolctl: the control client for poold (standard library only)."""

__version__ = "0.1.0"  # poold's: released together (tests/unit/test_cli.py checks)
