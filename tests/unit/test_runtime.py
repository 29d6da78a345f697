"""Runtime bookkeeping that needs no sockets: the login_timeout sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from poold.config import build_config
from poold.runtime import Runtime


class Login:
    """Stands in for a ClientSession still logging in; records the sweep's call."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.timed_out = False

    def login_timed_out(self) -> None:
        self.timed_out = True
        self.rt.logins.pop(cast(Any, self))


def test_expire_logins_closes_only_those_past_login_timeout() -> None:
    config = build_config({"clients": {"login_timeout": 10.0}, "databases": {"db": {"dsn": "dbname=db"}}},
                          Path("/nonexistent/poold.toml"))
    rt = Runtime(config, {})
    clients = [Login(rt) for _ in range(4)]
    for client, started in zip(clients, (100.0, 104.0, 108.0, 112.0), strict=True):  # connect order
        rt.logins[cast(Any, client)] = started
    rt.expire_logins(115.0)  # deadline: connected at or before 105
    assert [c.timed_out for c in clients] == [True, True, False, False]
    assert list(rt.logins.values()) == [108.0, 112.0]
    rt.expire_logins(130.0)
    assert all(c.timed_out for c in clients) and not rt.logins
