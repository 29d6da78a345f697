"""A client's login: the startup packet, authentication, the server's
parameters, and the welcome; then the session relays (client.py).

The login is a generator (``_login_steps``) driven from
``ClientSession.data_received``: it runs as far as the client's bytes allow and
yields for more, with no task or future per login; only a step that must wait
for something else (keys being derived, a pool opening, a server connection in
session mode, a settings question, TLS, an auth_query lookup) yields an
awaitable and is resumed when it is done (``_advance``, ``_resume``).

The C login (_relaycore.c, client_login) runs the common case itself, a
startup packet and SCRAM against known keys, and calls the ``_native_login_...``
methods here for the session's own decisions; everything else it hands to
``_login_steps`` by replaying the client's bytes there.

``LoginSteps`` is a base class of ``client.ClientSession``: its methods use the
session's state (the core's slots, or the C core's members).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from . import auth, hba, settings, sockio
from .admin import CONSOLE_DATABASES
from .errors import PooldError, ServerRefusal
from .loginguard import Pause
from .pools import PoolRegistry
from .protocol import messages
from .protocol.errors import ProtocolError, StartupLengthInvalid
from .protocol.framing import MessageReader
from .relay import ServerLink

if TYPE_CHECKING:
    from .client import ClientCorePy as _Session  # the state these steps use
    from .config import Config, DatabaseSettings
    from .pools import Pool
    from .runtime import Runtime
else:
    _Session = object

log = structlog.get_logger("poold.login")

_AUTH_OK = messages.auth_ok()
_READY_IDLE = messages.ready_for_query()


class LoginSteps(_Session):
    """The login's steps, as methods of the session they log in (see the module's docstring)."""

    __slots__ = ()

    if TYPE_CHECKING:  # client.ClientSession's, which these steps call
        @property
        def peer(self) -> str: ...
        @property
        def host(self) -> str: ...
        def _close(self) -> None: ...
        def _fail(self, error: PooldError) -> None: ...
        def _refuse(self, sqlstate: str, message: str, response: bytes | None = None) -> None: ...

    @property
    def reader(self) -> MessageReader:
        """The Python login's buffer; made when first asked for (the C login keeps its own)."""
        if self._reader is None:
            self._reader = MessageReader()
        return self._reader

    def _start_login(self) -> None:
        """The Python login (where the C core does not read it): up to reading the startup packet."""
        self._login = self._login_steps()
        self._advance()

    def _login_data(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
        except ProtocolError as exc:
            self._fatal(exc.sqlstate, str(exc))
            return
        if self._login_wait is None:
            self._advance()


    # -- login ------------------------------------------------------------------

    def _advance(self, value: Any = None, error: BaseException | None = None) -> None:
        """Run the login's steps until they want more bytes, wait for something, or end."""
        steps = self._login
        if steps is None:
            return
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
            if step is not None:  # wait for it, then resume with its result
                self._login_wait = fut = asyncio.ensure_future(step)
                fut.add_done_callback(self._resume)
            return
        except StopIteration:
            pass  # logged in
        except ConnectionError:
            self._close()
        except StartupLengthInvalid as exc:
            # As PostgreSQL: logged, and closed without a word (a client that sends
            # Terminate before any startup packet, as node-postgres' connect-then-end does).
            log.info("startup_packet_invalid", peer=self.peer, error=str(exc))
            self._close()
        except auth.AuthFailed as exc:
            self._refuse(exc.sqlstate, str(exc))  # logged in aggregate (loginguard)
        except ProtocolError as exc:
            self._fatal(exc.sqlstate, str(exc))
        except PooldError as exc:
            self._fail(exc)
        except Exception:  # one broken login must not hurt others
            log.exception("login_failed", peer=self.peer)
            self._fatal("XX000", "internal error during login")
        self._end_login()

    def _resume(self, fut: asyncio.Future[Any]) -> None:
        self._login_wait = None
        if self._login is None:  # the login was given up meanwhile (the client went away)
            if not fut.cancelled():
                fut.exception()  # its outcome is no one's: not an "exception was never retrieved"
            return
        if fut.cancelled():  # poold is stopping
            self._end_login()
            self._fatal("57P01", "terminating connection: poold is shutting down")
        elif (error := fut.exception()) is not None:
            self._advance(error=error)
        else:
            self._advance(fut.result())

    def _end_login(self) -> None:
        """The login is over: done, failed, timed out, or the client went away.

        What a step waited for is not cancelled (a pool being opened, keys being
        derived): it finishes for the next login. A pause of its own is.
        """
        steps, self._login = self._login, None
        if steps is not None:
            steps.close()
        if isinstance(self._login_wait, Pause):
            self._login_wait.cancel()
        self._login_wait = None
        self.native_login = False
        self._plan = None
        self.rt.logins.pop(self, None)  # type: ignore[call-overload]  # self is a ClientSession

    def _read_untyped(self) -> auth.Steps[bytes]:
        while (payload := self.reader.next_untyped()) is None:
            yield None
        return payload

    def _read_typed(self) -> auth.Steps[tuple[int, bytes]]:
        while (msg := self.reader.next_typed()) is None:
            yield None
        return msg

    def login_timed_out(self) -> None:
        """login_timeout passed before the login was done (Runtime.expire_logins)."""
        if self.relaying or self.closed:
            return
        self._end_login()
        self._fatal("08P01", "login timeout: startup and authentication did not finish in time")

    def login_pushed_out(self) -> None:
        """A newer login needs this one's place (Runtime.make_room_for_login)."""
        if self.relaying or self.closed:
            return
        self._end_login()
        self._refuse("53300", "sorry, too many clients logging in already (max_login_conn)")

    def _login_steps(self, muted: int = 0, nonce: str | None = None, negotiated: int = 0) -> auth.Steps[None]:
        """The login, from the first byte. ``muted``, ``nonce`` and ``negotiated``: see _native_login_fallback."""
        startup = yield from self._negotiate(negotiated)
        if startup is None:
            return
        db, wanted = self._admit(startup)
        rt = self.rt
        # The admin console's login has one rule of its own (Console.auth_method).
        method = self._auth_method() if db is not None else rt.console.auth_method(self)  # type: ignore[union-attr,arg-type]
        secret = rt.users.get(self.user)
        if secret is None and rt.auth_query is not None and method != "trust" and db is not None:
            secret = yield rt.auth_query.lookup(db, self.user)  # None: refused as a wrong password is
        send = self.transport.write if not muted else _Muted(self.transport.write, muted)  # type: ignore[union-attr]
        try:
            sasl_final = yield from auth.authenticate(method, self.user, secret, self._read_typed, send, rt.scram,
                                                      nonce, self._hold_proof)
        except auth.AuthFailed:
            yield from self._delay_failure()
            raise
        if db is None:  # the admin console's database: no pool, no server (admin.py)
            assert rt.console is not None
            rt.console.enter(self, startup, _authenticated(startup, sasl_final))  # type: ignore[arg-type]  # a ClientSession
            return
        yield from self._enter_pool(startup, db, wanted, sasl_final)

    def _hold_proof(self) -> auth.Steps[None]:
        """Before a password or proof is checked: wait for this (user, address)'s turn (LoginGuard.hold)."""
        rt = self.rt
        limits = rt.config.clients
        wait = rt.guard.hold(self.user, self.host, time.monotonic(), limits.auth_failure_delay, limits.login_timeout)
        if wait > 0:
            yield Pause(wait)

    def _delay_failure(self) -> auth.Steps[None]:
        """A failed authentication is answered auth_failure_delay late, as PostgreSQL's auth_delay does."""
        rt = self.rt
        delay = rt.config.clients.auth_failure_delay
        rt.guard.failed(self.user, self.host, time.monotonic(), delay)
        if delay > 0:
            yield Pause(delay)

    def _admit(self, startup: messages.StartupMessage) -> tuple[DatabaseSettings | None, dict[str, str]]:
        """The startup packet's checks: room for a client, the database, the parameters.
        No database for the admin console's (admin.py)."""
        rt = self.rt
        self.user, self.database = startup.user, startup.database
        if rt.logged_in() >= rt.config.clients.max_client_conn or rt.draining:
            if rt.draining:
                raise PooldError("57P01", "poold is shutting down")
            raise PooldError("53300", "sorry, too many clients already (max_client_conn)")
        if startup.database in CONSOLE_DATABASES and rt.console is not None:
            return None, {}
        if startup.database in rt.disabled:
            raise PooldError("55000", f'database "{startup.database}" is not currently accepting connections (DISABLE)')
        return _database_and_settings(rt.config, startup)

    def _origin(self) -> hba.Origin:
        """Where this client comes from, as the hba file's rules see it."""
        transport = self.transport
        return hba.Origin.of(transport.get_extra_info("peername") if transport is not None else None, self.tls)

    def _auth_method(self) -> str:
        """The method this login gets: ``auth.type``, or the first matching hba rule's;
        PooldError 28000 where no rule admits it, in PostgreSQL's words. ``cert`` is
        checked here (the client's certificate, verified in the TLS handshake, must name
        the user) and then needs no exchange."""
        rt = self.rt
        method = rt.config.auth.type
        if method != "hba":
            return method
        origin = self._origin()
        rule = rt.hba.match(origin, self.database, self.user) if rt.hba is not None else None
        if rule is None or rule.method == "reject":
            raise PooldError("28000", hba.no_entry_message(origin, self.database, self.user, rule is not None))
        if rule.method == "cert":
            cert = self.transport.get_extra_info("peercert") if self.transport is not None else None
            if not cert:
                raise PooldError("28000", "connection requires a valid client certificate")
            if auth.certificate_user(cert) != self.user:
                raise PooldError("28000", f'certificate authentication failed for user "{self.user}"')
            return "trust"
        return rule.method

    def _enter_pool(self, startup: messages.StartupMessage, db: DatabaseSettings, wanted: dict[str, str],
                    sasl_final: bytes) -> auth.Steps[None]:
        """Authenticated: join the pool, send the welcome, start relaying."""
        rt = self.rt
        pool = rt.pools.find(db, self.user)
        if pool is None:
            pool = yield rt.pools.get(db, self.user, rt.server_credentials)
        self.pool = pool
        pool.clients += 1
        defaults = pool.defaults
        if defaults is None:
            defaults = yield pool.prepare()
        spelled = pool.spellings.spell(wanted, defaults)
        if spelled is None:  # a value the pool's server has not spelled yet: ask it (spellings.py)
            try:
                written = settings.startup_settings(startup.params, rt.config.clients.ignored_startup_parameters)
                spelled = yield pool.spellings.ask(pool, wanted, written)
            except ServerRefusal:
                # As PostgreSQL refuses a startup parameter: once authenticated.
                self.transport.write(_authenticated(startup, sasl_final) + _AUTH_OK)  # type: ignore[union-attr]
                raise
        link = None
        if pool.settings.mode == "session":
            link = yield from self._lease_for_session(pool)
        self._welcome(startup, pool, _greeting(pool, defaults, spelled), sasl_final, self.reader.take_rest(), link)

    def _lease_for_session(self, pool: Pool) -> auth.Steps[ServerLink]:
        """Session mode: the server connection this client holds for its life, leased
        before the welcome so that its BackendKeyData can carry that server's process id
        (pg_backend_pid() and a notification's sender are then what the driver knows)."""
        lease = _SessionLease(pool)
        link = pool.acquire(lease)
        if link is not None:
            return link
        try:
            link = yield lease.future  # a failure to lease is raised here, and refuses the login
        except GeneratorExit:  # the login ended first (the client left, login_timeout)
            lease.abandon()
            raise
        return link

    def _welcome(self, startup: messages.StartupMessage, pool: Pool, greeting: Greeting, sasl_final: bytes,
                 rest: bytes, link: ServerLink | None = None) -> None:
        """One write: SASL final (if any), AuthenticationOk, the settings, the key, ReadyForQuery.

        ``link``: a session-mode client's server connection, held from here on; the key
        carries its process id. Without one (transaction mode) the key is poold's own."""
        own, settings = greeting
        self.session_mode = link is not None
        if own:
            self.wanted = dict(own)  # the session's own copy: on_server_parameter changes it
            self.startup = own  # RESET ALL returns to these (settings.Settle)
        if link is not None:
            self._attach(link, b"", 0)  # the client's settings go first, if it has its own
        sasl_final = _authenticated(startup, sasl_final)
        key = self.rt.register(self, link.pid if link is not None else 0)  # type: ignore[arg-type]  # a ClientSession
        self.transport.write(b"".join((sasl_final, settings, key, _READY_IDLE)))  # type: ignore[union-attr]
        self.relaying = True
        if rest:
            self._relay(rest)

    # -- the C login's calls (_relaycore.c, client_login) ---------------------

    def _native_login_plan(self, payload: bytes) -> auth.NativeKeys | None:
        """A protocol 3.0 startup packet (its payload): this login's SCRAM keys (StoredKey,
        ServerKey and ",s=<salt>,i=<iterations>") when it is the common case the C login
        runs: the checks of ``_admit`` pass, SCRAM against keys known without waiting.
        None leaves the whole login to ``_login_steps``, which gives the answer for
        everything else.

        What follows from the packet alone (the database, the settings, the keys) is
        decided once per packet and kept in ``Runtime.login_plans`` until the
        configuration or the auth file is replaced: a pooler's clients send the same
        few packets again and again.

        For a kept plan whose checks pass, the C login does this itself
        (_relaycore.c, login_kept_plan).

        An unknown user gets mock keys here, as in ``auth._scram``, and a pool is not
        looked for until the proof is checked, as there: so up to its refusal an unknown
        user's login runs the same code as a known user's, and costs the same."""
        rt = self.rt
        config = rt.config
        if rt.logged_in() >= config.clients.max_client_conn or rt.draining or (config.tls.require and not self.tls):
            return None  # _admit and _negotiate refuse these
        # Under an hba file the decision depends on where the client comes from too: its
        # plan is kept by packet and origin, a key the C login never looks up (it looks
        # up the packet alone, login_kept_plan), so each such login comes here.
        origin = self._origin() if config.auth.type == "hba" else None
        key = payload if origin is None else (payload, origin)
        plan = rt.login_plans.get(key)
        if plan is None:
            try:
                plan = _login_plan(rt, payload, origin)
            except Exception:  # as in _advance: one broken login must not hurt others
                log.exception("login_failed", peer=self.peer)
                return None
            if plan is None:
                return None
            if len(rt.login_plans) >= _LOGIN_PLANS_KEPT:
                del rt.login_plans[next(iter(rt.login_plans))]  # the oldest
            rt.login_plans[key] = plan
        self._plan = plan
        self.user, self.database = plan.user, plan.database
        return plan.keys

    def _native_login_done(self, sasl_final: bytes, rest: bytes) -> None:
        """The C login checked the proof: the rest of the login is ``_enter_pool``'s.

        The plan's welcome is made for the registry's open pool once the pool knows
        how its server spells the packet's settings (``Spellings.spell``); until
        then ``_enter_pool`` asks it. Once made, the C login does the first branch
        itself in transaction mode (_relaycore.c, client_welcome)."""
        plan, self._plan = self._plan, None
        assert plan is not None
        rt = self.rt
        pool = rt.pools.pools.get(plan.pool_key)  # rt.pools.find(plan.db, self.user)
        welcome = plan.welcome
        if (pool is not None and pool.defaults is not None and pool.settings.mode != "session"
                and (welcome is None or welcome[0] is not pool)):
            # this packet's greeting, kept for its pool once its settings are spelled the server's way
            spelled = pool.spellings.spell(plan.wanted, pool.defaults)
            if spelled is not None:
                own, settings = _greeting(pool, pool.defaults, spelled)
                plan.welcome = welcome = (pool, settings, own or None)
        if pool is not None and pool.settings.mode != "session" and welcome is not None and welcome[0] is pool:
            # _enter_pool with nothing to wait for (session mode leases a server first)
            self.pool = pool
            pool.clients += 1
            rt.logins.pop(self, None)  # type: ignore[call-overload]  # the login is over: _end_login, with the C login's own state reset already
            self._welcome(plan.startup, pool, (welcome[2] or {}, welcome[1]), sasl_final, rest)
        else:
            self.reader.feed(rest)  # pipelined after the proof; within the limit: the C login's buffer is smaller
            self._login = self._enter_pool(plan.startup, plan.db, plan.wanted, sasl_final)
            self._advance()

    def _native_login_held(self) -> bool:
        """Whether this login's proof must wait for its turn (LoginGuard.held): then the
        C login leaves it to ``_login_steps``. Asked only while some pair is held."""
        return self.rt.guard.held(self.user, self.host, time.monotonic())

    def _native_login_fallback(self, transcript: bytes, sent: int, nonce: str | None, negotiated: int) -> None:
        """The C login met what it leaves to ``_login_steps``: replay the client's bytes
        through it. The first ``sent`` messages it sends are not sent again (the C login
        sent the same), and its SCRAM exchange uses the C login's server ``nonce`` once
        that went out, so the client sees what this login alone would have sent.
        ``negotiated``: the C login answered that many SSLRequests or GSSENCRequests 'N'
        before the startup packet, where the ``transcript`` begins."""
        self._plan = None
        self._login = self._login_steps(sent, nonce, negotiated)
        self._login_data(transcript)

    def _negotiate(self, negotiated: int = 0) -> auth.Steps[messages.StartupMessage | None]:
        """Answer SSLRequest ('S' and TLS when configured, else 'N') and GSSENCRequest
        ('N'); serve a CancelRequest. ``negotiated``: requests answered already."""
        for _ in range(3 - negotiated):
            request = messages.parse_startup((yield from self._read_untyped()))
            if isinstance(request, messages.StartupMessage):
                if self.rt.config.tls.require and not self.tls:
                    raise PooldError("28000", "TLS is required: connect with sslmode=require")
                return request
            if isinstance(request, messages.CancelRequest):
                self.cancel_request = True  # from now on nothing is written to it, not even an error (_refuse)
                delivered = self.rt.cancel(request.pid, request.secret)
                if delivered is not None:
                    yield delivered  # closed after the server closed its own cancel connection
                self._close()
                return None
            if self.reader.take_rest():
                # Bytes pipelined after SSLRequest would be read as TLS by a
                # server that said 'S': refuse, as PostgreSQL does.
                raise ProtocolError("received unencrypted data after SSL request")
            ctx = self.rt.ssl_context
            if isinstance(request, messages.SSLRequest) and ctx is not None and not self.tls:
                self.transport = yield sockio.start_tls(self.transport, self, ctx)  # type: ignore[arg-type]  # 'S', then TLS
                self.tls = True
            else:
                self.transport.write(b"N")  # type: ignore[union-attr]
        raise ProtocolError("too many encryption negotiation requests")


class _SessionLease:
    """A session-mode login waiting for its server connection (a pools.Waiter)."""

    __slots__ = ("future", "pool", "since")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.future: asyncio.Future[ServerLink] = asyncio.get_running_loop().create_future()
        self.since = time.monotonic()

    def on_server(self, link: ServerLink) -> None:
        if self.future.done():  # the login was given up
            self.pool.release(link)
            return
        self.pool.stats.wait.observe(time.monotonic() - self.since)
        self.future.set_result(link)

    def on_acquire_failed(self, error: PooldError) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def abandon(self) -> None:
        """The login ended before it took its server connection: give it back, or stop waiting."""
        if not self.future.done():
            self.future.cancel()
            self.pool.cancel_wait(self)
        elif not self.future.cancelled() and self.future.exception() is None:
            self.pool.release(self.future.result())


class LoginPlan:
    """What a startup packet decides for the C login, whoever sends it (see _native_login_plan).

    An unknown user's plan keeps its mock keys like any other: its ServerKey signs
    nothing, since no proof matches the mock StoredKey."""

    __slots__ = ("db", "database", "keys", "pool_key", "startup", "user", "wanted", "welcome")

    def __init__(self, startup: messages.StartupMessage, db: DatabaseSettings, wanted: dict[str, str],
                 keys: auth.NativeKeys) -> None:
        self.startup, self.db, self.wanted, self.keys = startup, db, wanted, keys  # wanted: read, never changed
        self.user, self.database = startup.user, startup.database
        self.pool_key = PoolRegistry.key(db, self.user)
        #: for the pool these logins last joined: (the pool, the AuthenticationOk and
        #: ParameterStatus bytes, the settings of the client's own or None), spelled
        #: as the pool's server spells them; see _greeting
        self.welcome: tuple[Pool, bytes, dict[str, str] | None] | None = None


#: the settings a client asked for that differ from its pool's, and the welcome's
#: AuthenticationOk and ParameterStatus messages (see _greeting)
Greeting = tuple[dict[str, str], bytes]


def _authenticated(startup: messages.StartupMessage, sasl_final: bytes) -> bytes:
    """What a client is sent before AuthenticationOk: NegotiateProtocolVersion if it asked
    for a newer protocol or for protocol options, and the SASL final message if any."""
    if startup.minor or startup.protocol_options:
        return messages.negotiate_protocol_version(0, startup.protocol_options) + sasl_final
    return sasl_final


def _greeting(pool: Pool, defaults: dict[str, str], wanted: dict[str, str]) -> Greeting:
    """AuthenticationOk and the settings a client is told: its pool's, and its own where it set one.

    ``wanted``: the client's settings spelled as the server reports them (Spellings.spell)."""
    own = {k: v for k, v in wanted.items() if defaults.get(k) != v}
    status = pool.status_messages
    out = [_AUTH_OK]
    for name in defaults:
        value = own.get(name)
        out.append(status[name] if value is None else messages.parameter_status(name, value))
    return own, b"".join(out)


#: startup packets whose LoginPlan is kept; beyond, the oldest is dropped
_LOGIN_PLANS_KEPT = 1000


def _login_plan(rt: Runtime, payload: bytes, origin: hba.Origin | None) -> LoginPlan | None:
    """The LoginPlan of a startup packet, or None where ``_login_steps`` must answer.
    ``origin``: where the client comes from, under an hba file (else None)."""
    try:
        startup = messages.parse_startup(payload)
        if not isinstance(startup, messages.StartupMessage) or startup.minor or startup.protocol_options:
            return None
        if startup.database in CONSOLE_DATABASES or startup.database in rt.disabled:
            return None  # the admin console's login, or a refusal: _login_steps'
        if "replication" in startup.params:
            return None
        db, wanted = _database_and_settings(rt.config, startup)
    except (ProtocolError, PooldError):
        return None
    user = startup.user
    method = rt.config.auth.type
    if origin is not None:  # only SCRAM and md5 rules may run the C login's SCRAM exchange
        rule = rt.hba.match(origin, startup.database, user) if rt.hba is not None else None
        if rule is None or rule.method not in ("scram-sha-256", "md5"):
            return None
        method = rule.method
    secret = rt.users.get(user)
    if secret is None and rt.auth_query is not None:
        return None  # looked up by auth_query, whose answers expire: the Python login's
    if ("user" not in db.conninfo and "password" not in db.conninfo and rt.pools.find(db, user) is None
            and auth.needs_client_key(secret, rt.scram)):
        return None  # the pool to open logs in with the client's SCRAM key: the Python login learns it
    keys = auth.native_scram_keys(method, user, secret, rt.scram)
    if keys is None:
        return None
    return LoginPlan(startup, db, wanted, keys)


def _database_and_settings(config: Config, startup: messages.StartupMessage) -> tuple[DatabaseSettings, dict[str, str]]:
    """The database a startup packet asks for, and the settings it sets (settings.startup_settings):
    any setting is the client's; PostgreSQL's refusal of one is the server's to give (spellings.py)."""
    db = config.database(startup.database)
    if db is None:
        raise PooldError("3D000", f'database "{startup.database}" does not exist')
    written = settings.startup_settings(startup.params, config.clients.ignored_startup_parameters)
    return db, {settings.setting_name(name): value for name, value in written.items()}


class _Muted:
    """A send that drops its first ``n`` messages: those the C login already sent."""

    __slots__ = ("_n", "_write")

    def __init__(self, write: auth.Send, n: int) -> None:
        self._write, self._n = write, n

    def __call__(self, data: bytes) -> None:
        if self._n:
            self._n -= 1
        else:
            self._write(data)
