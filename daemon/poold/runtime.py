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
from typing import TYPE_CHECKING, Any

from .auth import ScramCache, Secret
from .config import Config
from .pools import PoolRegistry
from .protocol.messages import backend_key_data
from .stats import DaemonStats
from .tls import server_context

if TYPE_CHECKING:
    from .client import ClientSession

_SECRETS = struct.Struct("1024I")


class Runtime:
    def __init__(self, config: Config, users: dict[str, Secret]) -> None:
        #: what the C login decided per startup packet (client.LoginPlan), for this
        #: configuration and auth file: emptied when either is replaced
        self.login_plans: dict[bytes, Any] = {}
        self.config = config
        self.ssl_context = server_context(config.tls)
        self.users = users
        self.scram = ScramCache()
        self.pools = PoolRegistry()
        self.clients: set[ClientSession] = set()
        #: clients still logging in, oldest first, with when they connected (monotonic)
        self.logins: dict[ClientSession, float] = {}
        self.by_key: dict[int, ClientSession] = {}
        #: connections ended after an error, still reading the client's last bytes (sockio.linger)
        self.lingering: set[Any] = set()
        self.draining = False  # no new clients; each closes at its next boundary
        self.listening = False
        self.started = time.monotonic()
        self.stats = DaemonStats()
        self._pids = itertools.count(secrets.randbelow(1 << 20) + 1)
        self._secrets: list[int] = []  # the cancel keys' secrets: the kernel's random bytes, drawn 4 KiB at a time

    def __setattr__(self, name: str, value: Any) -> None:
        # A plain attribute for reading (every login reads config); a new configuration
        # or auth file empties login_plans.
        object.__setattr__(self, name, value)
        if name in ("config", "users"):
            self.login_plans.clear()

    def register(self, client: ClientSession) -> bytes:
        """Give a logged-in client its own cancel key (``client.key``); its BackendKeyData message.

        The C login does the same with the same state (_relaycore.c, client_register)."""
        while True:
            pid = next(self._pids) & 0x7FFFFFFF
            if pid and pid not in self.by_key:
                break
        self.by_key[pid] = client
        if not self._secrets:
            self._draw_secrets()
        client.key = key = (pid, self._secrets.pop() & 0x7FFFFFFF)
        return backend_key_data(*key)

    def _draw_secrets(self) -> None:
        """The next 1,024 cancel key secrets (the C login's registration draws them here too)."""
        self._secrets.extend(_SECRETS.unpack(os.urandom(_SECRETS.size)))

    def unregister(self, client: ClientSession) -> None:
        self.clients.discard(client)
        if self.by_key.get(client.key[0]) is client:
            del self.by_key[client.key[0]]

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

    def cancel(self, pid: int, secret: int) -> None:
        """Forward a CancelRequest to the server connection the client holds now."""
        client = self.by_key.get(pid)
        if client is None or client.key != (pid, secret):
            return  # like PostgreSQL: an unknown key is ignored silently
        server, pool = client.server, client.pool
        if server is not None and pool is not None:
            pool.cancel_query(server)
