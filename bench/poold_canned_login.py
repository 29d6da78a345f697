"""poold with its login answered by canned bytes: what a connection costs it besides the login.

    python bench/poold_canned_login.py {login|all} -c poold.toml

Runs the daemon as ``poold -c poold.toml`` does, with one change made here, at
import, for this process only: a client's login (``ClientSession._login_steps``)
answers the SCRAM messages with canned bytes from canned_login.py, checks no
proof, and sends the welcome of the pool the client would get.

- ``login``: everything else is poold's own: the ClientSession and its
  transport, the pool, the query relayed to a server connection and back, the
  release at ReadyForQuery, the close.
- ``all``: the query is answered with canned bytes too, and no server
  connection is leased: the ClientSession and its transport, its login
  generator, the startup packet parsed, the database and pool looked up, and
  nothing else.

Used by login_cost.py as reference points between the canned server and
poold. The client must not check the server's SCRAM signature (login_cost.py's
does not; libpq does). Not a product.
"""

from __future__ import annotations

import sys
from typing import Any

from canned_login import REPLY, SASL, WELCOME, sasl_continue

from poold import __main__ as poold_main
from poold import client
from poold.protocol import messages

#: the canned server's AuthenticationSASLFinal, the first message of its WELCOME
SASL_FINAL = WELCOME[: 1 + int.from_bytes(WELCOME[1:5], "big")]
_welcome: dict[int, bytes] = {}  # per pool: SASL final, AuthenticationOk, the pool's settings, a key, ReadyForQuery


def canned_login_steps(self: client.ClientSession, answer_query: bool) -> Any:
    startup = yield from self._negotiate()
    if startup is None:
        return
    rt = self.rt
    transport: Any = self.transport
    transport.write(SASL)
    _, body = yield from self._read_typed()  # SASLInitialResponse
    transport.write(sasl_continue(body))
    yield from self._read_typed()  # SASLResponse: the proof is not checked
    db = rt.config.database(startup.database)
    assert db is not None, startup.database
    pool = rt.pools.find(db, startup.user)
    if pool is None:
        pool = yield rt.pools.get(db, startup.user, rt.server_credentials)
    defaults = pool.defaults
    if defaults is None:
        defaults = yield pool.prepare()
    welcome = _welcome.get(id(pool))
    if welcome is None:
        welcome = _welcome[id(pool)] = b"".join(
            [SASL_FINAL, messages.auth_ok(), *(pool.status_messages[name] for name in defaults),
             messages.backend_key_data(1, 2), messages.ready_for_query()])
    if not answer_query:
        self.pool = pool
        pool.clients += 1
        self.wanted = {}
        transport.write(welcome)
        self.relaying = True
        rest = self.reader.take_rest()
        if rest:
            self._relay(rest)
        return
    transport.write(welcome)
    while True:
        kind, _ = yield from self._read_typed()
        if kind != ord("Q"):
            self._close()  # Terminate
            return
        transport.write(REPLY)


def main() -> int:
    mode, argv = sys.argv[1], sys.argv[2:]
    if mode not in ("login", "all"):
        print("usage: poold_canned_login.py {login|all} -c FILE", file=sys.stderr)
        return 2
    answer_query = mode == "all"
    # the login is this file's, in Python, whichever core runs: the Python core's
    # connection_made starts it (the C core's would start the C login)
    client.ClientSession.connection_made = client.ClientCorePy.connection_made  # type: ignore[assignment, method-assign]
    client.ClientSession._login_steps = lambda self, *_: canned_login_steps(self, answer_query)  # type: ignore[method-assign]
    return poold_main.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
