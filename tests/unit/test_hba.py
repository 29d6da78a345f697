"""The hba file parser and matcher: pg_hba.conf text in, the first matching rule out.

The fixtures are hand-written in the format PostgreSQL's documentation shows
(pg_hba.conf's own examples), plus the corner cases of its tokeniser.
"""

from __future__ import annotations

import ipaddress

import pytest

from poold import hba

TCP = hba.Origin(ipaddress.ip_address("127.0.0.1"))
TLS = hba.Origin(ipaddress.ip_address("127.0.0.1"), tls=True)
UNIX = hba.Origin(None)

# PostgreSQL's pg_hba.conf examples (doc/src/sgml/client-auth.sgml), with the
# methods poold does not know left out.
DOC_EXAMPLE = """\
# Allow any user on the local system to connect to any database with
# any database user name using Unix-domain sockets (the default for local
# connections).
#
# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             all                                     trust

# The same using local loopback TCP/IP connections.
host    all             all             127.0.0.1/32            trust

# The same as the previous line, but using a separate netmask column
host    all             all             127.0.0.1       255.255.255.255     trust

# Allow any user from host 192.168.12.10 to connect to database
# "postgres" if the user's password is correctly supplied.
host    postgres        all             192.168.12.10/32        scram-sha-256

# Allow any user from hosts in the 192.168.12.x network to connect to
# database "postgres" as the same user name that ident reports (left out)
# Allow a user from host 192.168.12.10 to connect to database
# "postgres" if the user's password is correctly supplied.
# In the absence of preceding "host" lines, these three lines will
# reject all connections from 192.168.54.1 (since that entry will be
# matched first), but allow encrypted passwords from anywhere else.
host    all             all             192.168.54.1/32         reject
host    all             all             0.0.0.0/0               scram-sha-256

# Users of "admins" and "support" connect to db1 with md5
host    db1             admins,support  ::/0                    md5
"""


def method(rules: hba.Hba, origin: hba.Origin, database: str, user: str) -> str | None:
    rule = rules.match(origin, database, user)
    return rule.method if rule is not None else None


def at(address: str, tls: bool = False) -> hba.Origin:
    return hba.Origin(ipaddress.ip_address(address), tls)


def test_postgresql_documentation_example() -> None:
    rules = hba.parse(DOC_EXAMPLE)
    assert [r.lineno for r in rules.rules] == [6, 9, 12, 16, 25, 26, 29]
    assert method(rules, UNIX, "x", "y") == "trust"
    assert method(rules, TCP, "x", "y") == "trust"
    assert method(rules, at("192.168.12.10"), "postgres", "bob") == "scram-sha-256"
    assert method(rules, at("192.168.54.1"), "postgres", "bob") == "reject"  # first match wins
    assert method(rules, at("10.9.8.7"), "postgres", "bob") == "scram-sha-256"
    assert method(rules, at("2001:db8::1"), "db1", "support") == "md5"
    assert method(rules, at("2001:db8::1"), "db2", "support") is None  # no entry: refuse
    assert method(rules, at("::1"), "db1", "nobody") is None


def test_crlf_line_endings_make_no_difference() -> None:
    crlf = DOC_EXAMPLE.replace("\n", "\r\n")
    assert hba.parse(crlf) == hba.parse(DOC_EXAMPLE)


def test_connection_types() -> None:
    rules = hba.parse("hostssl all a all trust\nhostnossl all b all trust\nhostgssenc all c all trust\n"
                      "hostnogssenc all d all trust\nlocal all e trust\n")
    assert method(rules, TLS, "db", "a") == "trust" and method(rules, TCP, "db", "a") is None
    assert method(rules, TCP, "db", "b") == "trust" and method(rules, TLS, "db", "b") is None
    assert method(rules, TCP, "db", "c") is None and method(rules, TLS, "db", "c") is None  # never GSS
    assert method(rules, TCP, "db", "d") == "trust"
    assert method(rules, UNIX, "db", "e") == "trust" and method(rules, TCP, "db", "e") is None
    assert method(rules, UNIX, "db", "a") is None  # host rules never match the Unix socket


def test_names_lists_quotes_keywords_regex_and_sameuser() -> None:
    rules = hba.parse(
        'host "all" x all md5\n'  # a quoted keyword is a plain name
        'host app,"my db" "Bob","a,b" all scram-sha-256\n'
        'host sameuser all all password\n'
        'host /^test_ /_ro$ all trust\n'
        'host replication all all reject\n'
    )
    assert method(rules, TCP, "all", "x") == "md5" and method(rules, TCP, "other", "x") is None
    assert method(rules, TCP, "my db", "Bob") == "scram-sha-256"
    assert method(rules, TCP, "app", "a,b") == "scram-sha-256"
    assert method(rules, TCP, "app", "bob") is None  # quoted names keep their case
    assert method(rules, TCP, "carol", "carol") == "password"
    assert method(rules, TCP, "test_1", "web_ro") == "trust" and method(rules, TCP, "test_1", "web") is None
    assert method(rules, TCP, "replication", "z") is None  # the keyword: replication connections only


def test_addresses_masks_and_ipv4_mapped_peers() -> None:
    rules = hba.parse(
        "host all a 10.0.0.0/8 trust\n"
        "host all b 192.168.1.77/24 trust\n"  # host bits ignored, as PostgreSQL does
        "host all c 172.16.0.0 255.240.0.0 trust\n"
        "host all d fe80::/10 trust\n"
        "host all e 2001:db8:: ffff:ffff:: trust\n"
    )
    assert method(rules, at("10.255.0.1"), "db", "a") == "trust"
    assert method(rules, at("11.0.0.1"), "db", "a") is None
    assert method(rules, at("::ffff:10.1.2.3"), "db", "a") == "trust"  # IPv4-mapped
    assert method(rules, at("192.168.1.5"), "db", "b") == "trust"
    assert method(rules, at("172.31.255.255"), "db", "c") == "trust"
    assert method(rules, at("172.32.0.0"), "db", "c") is None
    assert method(rules, at("fe80::1"), "db", "d") == "trust" and method(rules, at("10.0.0.1"), "db", "d") is None
    assert method(rules, at("2001:db8:ffff::1"), "db", "e") == "trust"


def test_comments_and_continuations() -> None:
    rules = hba.parse('host all "#notacomment" all trust # a comment\n'
                      "host all \\\n   bob \\\n   all md5\n"
                      "# host all all all trust\n")
    assert [r.lineno for r in rules.rules] == [1, 2]
    assert method(rules, TCP, "db", "#notacomment") == "trust"
    assert method(rules, TCP, "db", "bob") == "md5"


def test_name_files() -> None:
    files = {"admins.txt": "alice, bob\n# comment\ncarol\n"}
    rules = hba.parse("host all @admins.txt all md5\n", files.__getitem__)
    assert all(method(rules, TCP, "db", u) == "md5" for u in ("alice", "bob", "carol"))
    assert method(rules, TCP, "db", "dave") is None
    with pytest.raises(hba.HbaError, match="line 1: user file 'missing.txt'"):
        hba.parse("host all @missing.txt all md5\n", lambda name: open(f"/nonexistent/{name}").read())


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("hots all all all trust", "line 1: invalid connection type 'hots'"),
        ("host all all 127.0.0.1/32", "line 1: end-of-line before authentication method"),
        ("host all all 127.0.0.1/32 ldap", "line 1: authentication method 'ldap' is not supported"),
        ("host all all 127.0.0.1/32 md5 clientcert=verify-ca", "line 1: authentication option"),
        ("host all all 127.0.0.1 md5", "line 1: end-of-line before netmask"),
        ("host all all 127.0.0.1 255.0.255.0 md5", "line 1: invalid IP mask"),
        ("host all all 127.0.0.1/33 md5", "line 1: invalid CIDR mask"),
        ("host all all db.example.com md5", "host names are not supported"),
        ("host all all samenet md5", "line 1: samenet is not supported"),
        ("host all +admins all md5", "group '\\+admins' is not supported"),
        ("host samerole all all md5", "samerole is not supported"),
        ("host all all all cert", "cert authentication is only supported on hostssl"),
        ('host "all all all trust', "unterminated quoted string"),
        ("host all all all trust,", "a list ends with a comma"), (", all all all trust", "misplaced comma"),
        ("include other.conf", "include is not supported"),
        ("\n\nhost /( all all trust", "line 3: invalid regular expression"),
    ],
)
def test_what_poold_cannot_honour_is_refused_naming_the_line(text: str, why: str) -> None:
    with pytest.raises(hba.HbaError, match=why):
        hba.parse(text)


def test_postgresql_messages() -> None:
    assert hba.no_entry_message(TCP, "app", "bob") == (
        'no pg_hba.conf entry for host "127.0.0.1", user "bob", database "app", no encryption')
    assert hba.no_entry_message(UNIX, "app", "bob", rejected=True) == (
        'pg_hba.conf rejects connection for host "[local]", user "bob", database "app", no encryption')
    assert hba.no_entry_message(TLS, "app", "bob").endswith(", SSL encryption")


def test_origin_of_a_transport_peername() -> None:
    assert hba.Origin.of(("127.0.0.1", 5555), False) == TCP
    assert hba.Origin.of(("fe80::1%eth0", 5555, 0, 2), True) == at("fe80::1", tls=True)
    assert hba.Origin.of("", False) == UNIX
