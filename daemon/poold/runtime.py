"""The one runtime object: live configuration, pools, clients and cancel keys.

Created once by app.py and passed explicitly; nothing in poold keeps module-level
mutable state.
"""

from __future__ import annotations

import itertools
import os
import secrets
import struct
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from .auth import ScramCache, Secret, server_credentials
from .authquery import AuthQuery
from .config import Config, DatabaseSettings
from .hba import Hba
from .loginguard import LoginGuard
from .pools import PoolRegistry
from .protocol.messages import backend_key_data
from .stats import DaemonStats
from .tls import server_context

if TYPE_CHECKING:
    from .admin import Console
    from .client import ClientSession

_SECRETS = struct.Struct("1024I")


class Runtime:
    def __init__(self, config: Config, users: dict[str, Secret], hba: Hba | None = None) -> None:
        #: what the C login decided per startup packet (client.LoginPlan), for this
        #: configuration and auth files: emptied when one is replaced. Keyed by the
        #: packet, or under an hba file by (packet, hba.Origin)
        self.login_plans: dict[bytes | tuple[bytes, Any], Any] = {}
        self.config = config
        self.ssl_context = server_context(config.tls)
        self.users = users
        self.hba = hba  # the hba file's rules when auth.type = "hba"
        #: looks up the users the auth file lacks, when [auth] user is set
        self.auth_query = AuthQuery(config.auth, users) if config.auth.user else None
        self.scram = ScramCache()
        self.pools = PoolRegistry()
        self.clients: set[ClientSession] = set()
        #: clients still logging in, oldest first, with when they connected (monotonic)
        self.logins: dict[ClientSession, float] = {}
        self.guard = LoginGuard()
        #: logged-in clients by their cancel key (pid, secret)
        self.by_key: dict[tuple[int, int], ClientSession] = {}
        #: connections ended after an error, still reading the client's last bytes (sockio.linger)
        self.lingering: set[Any] = set()
        self.draining = False  # no new clients; each closes at its next boundary
        self.disabled: set[str] = set()  # databases whose new clients are refused (the console's DISABLE)
        self.console: Console | None = None  # the admin console (admin.py), once the App has one
        self.listening = False
        self.started = time.monotonic()
        self.stats = DaemonStats()
        self._pids = itertools.count(secrets.randbelow(1 << 20) + 1)
        self._secrets: list[int] = []  # the cancel keys' secrets: the kernel's random bytes, drawn 4 KiB at a time

    def __setattr__(self, name: str, value: Any) -> None:
        # A plain attribute for reading (every login reads config); a new configuration,
        # auth file or hba file empties login_plans.
        object.__setattr__(self, name, value)
        if name in ("config", "users", "hba", "auth_query"):
            self.login_plans.clear()

    def secret(self, db: DatabaseSettings, user: str) -> Secret | None:
        """A user's secret known now: the auth file's, else auth_query's last answer."""
        secret = self.users.get(user)
        if secret is None and self.auth_query is not None:
            secret = self.auth_query.last(db, user)
        return secret

    def server_credentials(self, db: DatabaseSettings, user: str) -> dict[str, str]:
        """How a server connection logs in as ``user`` where the DSN has no password
        (pools.Credentials): see auth.server_credentials."""
        return server_credentials(self.secret(db, user), self.scram)

    def register(self, client: ClientSession, server_pid: int = 0) -> bytes:
        """Give a logged-in client its cancel key (``client.key``); its BackendKeyData message.

        The key's pid is ``server_pid`` when given (a session-mode client is told its
        server's process id), else one of poold's own; its secret is always poold's:
        libpq does not tell the server's. The C login does the same for poold's own
        pids with the same state (_relaycore.c, client_register)."""
        while True:
            pid = server_pid or next(self._pids) & 0x7FFFFFFF
            if not self._secrets:
                self._draw_secrets()
            key = (pid, self._secrets.pop() & 0x7FFFFFFF)
            if pid and key not in self.by_key:
                break
        self.by_key[key] = client
        client.key = key
        return backend_key_data(*key)

    def _draw_secrets(self) -> None:
        """The next 1,024 cancel key secrets (the C login's registration draws them here too)."""
        self._secrets.extend(_SECRETS.unpack(os.urandom(_SECRETS.size)))

    def unregister(self, client: ClientSession) -> None:
        self.clients.discard(client)
        if self.by_key.get(client.key) is client:
            del self.by_key[client.key]

    def expire_logins(self, now: float) -> None:
        """Close the clients whose login has taken longer than login_timeout.

        Swept by the janitor, as PgBouncer checks client_login_timeout: a timer
        per connection would cost every login a timer handle.
        """
        deadline = now - self.config.clients.login_timeout
        expired = []
        for client, started in self.logins.items():  # oldest first
            if started > deadline:
                break
            expired.append(client)
        for client in expired:
            client.login_timed_out()

    def make_room_for_login(self, now: float) -> None:
        """More logins in progress than max_login_conn: close the oldest (FATAL 53300).

        Logins are capped apart from logged-in clients, and the oldest gives way
        rather than the newest being refused: connections that never finish a
        login (a slowloris) are the oldest, and a real login, done in
        milliseconds, is young. Called when a connection is made, by both cores.
        """
        limit = self.config.clients.max_login_conn
        while len(self.logins) > limit:
            oldest = next(iter(self.logins))
            del self.logins[oldest]
            self.guard.pushed(now)
            oldest.login_pushed_out()

    def logged_in(self) -> int:
        """Clients past their login: what max_client_conn caps (logins have max_login_conn)."""
        return len(self.clients) - len(self.logins)

    def cancel(self, pid: int, secret: int) -> Awaitable[None] | None:
        """Forward a CancelRequest to the server connection its client holds now.

        The awaitable is done once the server has closed its cancel connection, after
        signalling the backend: the client's cancel connection closes after that, as
        PostgreSQL's does, so a driver that waits for that close (libpq 17+, asyncpg)
        sends its next query after the cancel has landed. None: nothing to cancel (an
        unknown key, or a client that holds no server connection), ignored silently
        like PostgreSQL does."""
        client = self.by_key.get((pid, secret))
        if client is None:
            return None
        if client.pool is None and (on_cancel := getattr(client, "on_cancel", None)) is not None:
            on_cancel()  # an admin console session's (admin.py): its running command ends
            return None
        server, pool = client.server, client.pool
        if server is None or pool is None:
            return None
        return pool.cancel_query(server, client)
