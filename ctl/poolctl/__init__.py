"""poolctl: the control client for poold (standard library only)."""
