"""protocol/scram.py: RFC 7677's test vector, malformed messages, and fuzz."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poold.protocol.scram import ScramError, ScramExchange

# RFC 7677, section 3: user "user", password "pencil".
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def keys(password: bytes, salt: bytes = SALT, iterations: int = 4096) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    return hashlib.sha256(client_key).digest(), hmac.digest(salted, b"Server Key", "sha256")


def exchange(password: bytes = b"pencil") -> ScramExchange:
    stored, server = keys(password)
    return ScramExchange(stored, server, SALT, 4096, nonce=SERVER_NONCE)


def test_rfc7677_vector() -> None:
    ex = exchange()
    assert ex.server_first(CLIENT_FIRST) == SERVER_FIRST
    assert ex.server_final(CLIENT_FINAL) == SERVER_FINAL


def test_wrong_password_fails_the_proof() -> None:
    ex = exchange(b"not pencil")
    ex.server_first(CLIENT_FIRST)
    with pytest.raises(ScramError) as info:
        ex.server_final(CLIENT_FINAL)
    assert info.value.sqlstate == "28P01"


@pytest.mark.parametrize(
    "client_first",
    [
        b"p=tls-server-end-point,,n=,r=abc",  # channel binding: not offered
        b"n,a=admin,n=,r=abc",  # authzid
        b"n,,n=,r=abc,x=ext",  # extension
        b"n,,r=abc",  # no user attribute
        b"n,,n=,r=",  # empty nonce
        b"n,,n=,r=a,b",  # comma in the nonce
        b"x,,n=,r=abc",
        b"n,,n=\xff,r=abc",  # not UTF-8
        b"",
    ],
)
def test_malformed_client_first(client_first: bytes) -> None:
    with pytest.raises(ScramError):
        exchange().server_first(client_first)


@pytest.mark.parametrize(
    "client_final",
    [
        CLIENT_FINAL.replace(b"c=biws", b"c=eSws"),  # says "y,," after "n,,"
        CLIENT_FINAL.replace(b"rOprNGfw", b"xOprNGfw"),  # another nonce
        CLIENT_FINAL.split(b",p=")[0],  # no proof
        CLIENT_FINAL[:-4] + b"!!!=",  # proof not base64
        CLIENT_FINAL.replace(b"p=dHzb", b"p=dHz"),  # proof of the wrong length
        b"r=x,c=biws,p=AAAA",
    ],
)
def test_malformed_client_final(client_final: bytes) -> None:
    ex = exchange()
    ex.server_first(CLIENT_FIRST)
    with pytest.raises(ScramError):
        ex.server_final(client_final)


def test_final_before_first_is_refused() -> None:
    with pytest.raises(ScramError):
        exchange().server_final(CLIENT_FINAL)


def test_libpq_style_y_flag_and_empty_user() -> None:
    """libpq sends n= (no user name); a client that could bind but was not offered it sends y."""
    ex = exchange()
    first = ex.server_first(b"y,,n=,r=rOprNGfwEbeRWgbNEkqO")
    assert first == SERVER_FIRST
    # The proof covers the messages as sent: compute it the way a client does.
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", SALT, 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = b"c=eSws,r=rOprNGfwEbeRWgbNEkqO" + SERVER_NONCE.encode()
    auth_message = b"n=,r=rOprNGfwEbeRWgbNEkqO," + first + b"," + without_proof
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = ex.server_final(without_proof + b",p=" + base64.b64encode(proof))
    assert final == b"v=" + base64.b64encode(hmac.digest(keys(b"pencil")[1], auth_message, "sha256"))


@given(st.binary(max_size=120), st.binary(max_size=160))
@settings(max_examples=1000, deadline=None)
def test_arbitrary_messages_only_ever_raise_scram_error(first: bytes, final: bytes) -> None:
    ex = exchange()
    try:
        ex.server_first(first)
        ex.server_final(final)
    except ScramError:
        return
    raise AssertionError("arbitrary bytes passed the proof")
