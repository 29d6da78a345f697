"""The hba file: which authentication method a login gets, by origin, database and user.

PostgreSQL's pg_hba.conf format, as PgBouncer's ``auth_type = hba`` reads it:
one rule per line, ``TYPE DATABASE USER [ADDRESS [MASK]] METHOD``, ``#``
comments, a trailing backslash continuing a line, double quotes making a
keyword a plain name. The first rule matching a login decides it; none
matching refuses it (``no pg_hba.conf entry for ...``, 28000), as PostgreSQL does.

- TYPE: ``local`` (the Unix socket), ``host`` (TCP), ``hostssl`` and
  ``hostnossl`` (TCP with and without TLS); ``hostgssenc`` never matches and
  ``hostnogssenc`` matches as ``host`` does, since poold never does GSSAPI
  encryption.
- DATABASE and USER: comma lists of names, ``all``, ``/regex`` and ``@file``
  (names read from a file beside this one); DATABASE also ``sameuser`` and
  ``replication`` (poold refuses replication connections, so it never matches).
- ADDRESS: ``all``, an address with a CIDR length, or an address and a mask
  column; host bits are ignored as PostgreSQL ignores them. An IPv4 rule
  matches an IPv4-mapped IPv6 peer.
- METHOD: trust, reject, md5, password, scram-sha-256 and cert.

What poold cannot honour is refused at load with the line named, never
ignored: role membership (``+group``, ``samerole``), host names and
``samehost``/``samenet``, other methods, options, include directives.

Pure: ``parse`` takes the text (and a reader for ``@file``), ``Hba.match``
takes the login's origin; nothing here touches a socket.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

METHODS = ("trust", "reject", "md5", "password", "scram-sha-256", "cert")
CONNECTION_TYPES = ("local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_TOKEN = re.compile(r'"((?:[^"]|"")*)"|([^\s,"]+)|(,)')


class HbaError(ValueError):
    """A line poold cannot read or cannot honour; the message names it."""


@dataclass(frozen=True)
class Origin:
    """Where a login comes from: a TCP peer's address (None: the Unix socket), and TLS."""

    address: Address | None
    tls: bool = False

    @classmethod
    def of(cls, peername: object, tls: bool) -> Origin:
        """From a transport's ``peername``: a (host, port, ...) tuple, or a Unix socket's."""
        if isinstance(peername, tuple) and peername:
            host = str(peername[0]).split("%", 1)[0]  # an IPv6 zone is no part of the address
            return cls(ipaddress.ip_address(host), tls)
        return cls(None, tls)

    def describe(self) -> str:
        """The host part of PostgreSQL's messages: the address, or "[local]"."""
        return "[local]" if self.address is None else str(self.address)


@dataclass(frozen=True)
class Names:
    """A DATABASE or USER column: ``all``, names, patterns, ``sameuser``, ``replication``."""

    all: bool = False
    names: frozenset[str] = frozenset()
    patterns: tuple[re.Pattern[str], ...] = ()
    sameuser: bool = False  # DATABASE only: the database named as the user

    def match(self, name: str, other: str) -> bool:
        """``other``: the user's name when this is the DATABASE column."""
        if self.all or name in self.names or (self.sameuser and name == other):
            return True
        return any(p.search(name) for p in self.patterns)


@dataclass(frozen=True)
class Rule:
    lineno: int
    type: str  # one of CONNECTION_TYPES
    databases: Names
    users: Names
    network: Network | None  # None: any address (``all``, or a ``local`` rule)
    method: str  # one of METHODS

    def matches(self, origin: Origin, database: str, user: str) -> bool:
        if not self._origin_matches(origin):
            return False
        return self.databases.match(database, user) and self.users.match(user, database)

    def _origin_matches(self, origin: Origin) -> bool:
        if origin.address is None:
            return self.type == "local"
        if self.type == "local" or self.type == "hostgssenc":
            return False
        if (self.type == "hostssl" and not origin.tls) or (self.type == "hostnossl" and origin.tls):
            return False
        net = self.network
        if net is None:
            return True
        address = origin.address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None and net.version == 4:
            address = address.ipv4_mapped
        return address.version == net.version and address in net


@dataclass(frozen=True)
class Hba:
    rules: tuple[Rule, ...]

    def match(self, origin: Origin, database: str, user: str) -> Rule | None:
        """The first rule that matches, as PostgreSQL decides; None: no entry, refuse."""
        for rule in self.rules:
            if rule.matches(origin, database, user):
                return rule
        return None


def no_entry_message(origin: Origin, database: str, user: str, rejected: bool = False) -> str:
    """PostgreSQL's words for a login no rule admits (28000)."""
    encryption = "SSL encryption" if origin.tls else "no encryption"
    where = f'host "{origin.describe()}", user "{user}", database "{database}", {encryption}'
    return f"pg_hba.conf rejects connection for {where}" if rejected else f"no pg_hba.conf entry for {where}"


def load(path: str) -> Hba:
    """The hba file at ``path``; ``@file`` names are read beside it. HbaError or OSError."""
    base = Path(path).parent
    return parse(Path(path).read_text(encoding="utf-8"), lambda name: (base / name).read_text(encoding="utf-8"))


def parse(text: str, read: Callable[[str], str] | None = None) -> Hba:
    """Every rule of an hba file's ``text``; HbaError naming the first bad line.

    ``read``: the text of a file an ``@file`` name refers to."""
    rules = []
    for lineno, line in _lines(text):
        tokens = _tokens(line, lineno)
        if tokens:
            rules.append(_rule(lineno, tokens, read))
    return Hba(tuple(rules))


#: a token: its comma-separated items, each (text, quoted)
Token = list[tuple[str, bool]]


def _lines(text: str) -> list[tuple[int, str]]:
    """Logical lines with their first physical line's number: comments gone, continuations joined."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw)
        if not pending:
            start = lineno
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def _strip_comment(line: str) -> str:
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            return line[:i]
    return line


def _tokens(line: str, lineno: int) -> list[Token]:
    """Whitespace-separated tokens; commas join items into one token, as PostgreSQL reads them."""
    tokens: list[Token] = []
    pos, joining = 0, False
    line = line.strip()
    while pos < len(line):
        if line[pos].isspace():
            pos += 1
            continue
        m = _TOKEN.match(line, pos)
        if m is None:
            raise HbaError(f"line {lineno}: unterminated quoted string")
        pos = m.end()
        if m.group(3):  # a comma: the next item belongs to this token
            if not tokens or joining:
                raise HbaError(f"line {lineno}: misplaced comma")
            joining = True
            continue
        item = (m.group(1).replace('""', '"'), True) if m.group(1) is not None else (m.group(2), False)
        if joining:
            tokens[-1].append(item)
            joining = False
        else:
            tokens.append([item])
    if joining:
        raise HbaError(f"line {lineno}: a list ends with a comma")
    return tokens


def _keyword(token: Token) -> str | None:
    """A single unquoted item: a keyword candidate."""
    return token[0][0] if len(token) == 1 and not token[0][1] else None


def _rule(lineno: int, tokens: list[Token], read: Callable[[str], str] | None) -> Rule:
    def bad(why: str) -> HbaError:
        return HbaError(f"line {lineno}: {why}")

    kind = _keyword(tokens[0])
    if kind in ("include", "include_if_exists", "include_dir"):
        raise bad(f"{kind} is not supported")
    if kind not in CONNECTION_TYPES:
        raise bad(f"invalid connection type {tokens[0][0][0]!r}")
    if len(tokens) < 4:
        raise bad("end-of-line before authentication method")
    databases = _names(tokens[1], lineno, read, database=True)
    users = _names(tokens[2], lineno, read, database=False)
    rest = tokens[3:]
    network: Network | None = None
    if kind != "local":
        network, used = _network(rest, lineno)
        rest = rest[used:]
    if not rest:
        raise bad("end-of-line before authentication method")
    method = _keyword(rest[0])
    if method not in METHODS:
        raise bad(f"authentication method {rest[0][0][0]!r} is not supported (poold knows {', '.join(METHODS)})")
    if len(rest) > 1:
        raise bad(f"authentication option {rest[1][0][0]!r} is not supported")
    if method == "cert" and kind not in ("hostssl",):
        raise bad('cert authentication is only supported on hostssl connections')
    return Rule(lineno, kind, databases, users, network, method)


def _names(token: Token, lineno: int, read: Callable[[str], str] | None, *, database: bool) -> Names:
    all_, sameuser = False, False
    names: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    column = "database" if database else "user"
    for text, quoted in token:
        if not quoted and text == "all":
            all_ = True
        elif not quoted and database and text == "sameuser":
            sameuser = True
        elif not quoted and database and text == "replication":
            pass  # replication connections are refused before authentication: never matches
        elif not quoted and database and text in ("samerole", "samegroup"):
            raise HbaError(f"line {lineno}: {text} is not supported (poold does not know role membership)")
        elif not quoted and not database and text.startswith("+"):
            raise HbaError(f"line {lineno}: group {text!r} is not supported (poold does not know role membership)")
        elif not quoted and text.startswith("@"):
            if read is None:
                raise HbaError(f"line {lineno}: {column} file {text[1:]!r}: no file to read it from")
            try:
                included = read(text[1:])
            except OSError as exc:
                raise HbaError(f"line {lineno}: {column} file {text[1:]!r}: {exc.strerror or exc}") from None
            for _, inner in _lines(included):
                for item_token in _tokens(inner.replace(",", " "), lineno):
                    for item, _q in item_token:
                        names.add(item)
        elif text.startswith("/"):
            try:
                patterns.append(re.compile(text[1:]))
            except re.error as exc:
                raise HbaError(f"line {lineno}: invalid regular expression {text!r}: {exc}") from None
        else:
            names.add(text)
    return Names(all_, frozenset(names), tuple(patterns), sameuser)


def _network(tokens: list[Token], lineno: int) -> tuple[Network | None, int]:
    """The ADDRESS column (and MASK when one follows): the network, and how many tokens it took."""
    word = _keyword(tokens[0])
    if word == "all":
        return None, 1
    if word in ("samehost", "samenet"):
        raise HbaError(f"line {lineno}: {word} is not supported")
    if word is None:
        raise HbaError(f"line {lineno}: invalid IP address {tokens[0][0][0]!r}")
    address, slash, length = word.partition("/")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise HbaError(f"line {lineno}: invalid IP address {word!r} (host names are not supported)") from None
    if slash:
        try:
            return ipaddress.ip_network(f"{ip}/{int(length)}", strict=False), 1
        except ValueError:
            raise HbaError(f"line {lineno}: invalid CIDR mask in address {word!r}") from None
    mask = _keyword(tokens[1]) if len(tokens) > 2 else None
    if mask is None:
        raise HbaError(f"line {lineno}: end-of-line before netmask specification: write {word!r} "
                       "in CIDR notation, or give a separate netmask")
    try:
        bits = ipaddress.ip_address(mask)
    except ValueError:
        raise HbaError(f"line {lineno}: invalid IP mask {mask!r}") from None
    value, width = int(bits), bits.max_prefixlen
    ones = bin(value).count("1")
    if bits.version != ip.version or value != ((1 << width) - 1) ^ ((1 << (width - ones)) - 1):
        raise HbaError(f"line {lineno}: invalid IP mask {mask!r}")
    return ipaddress.ip_network(f"{ip}/{ones}", strict=False), 2
