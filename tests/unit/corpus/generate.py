"""Writes the fuzz corpus beside this file: byte fixtures that test_corpus.py feeds,
whole and split at every byte, to the C and the Python twins.

Run it again after changing a case (``python tests/unit/corpus/generate.py``); the
files are committed, so a case's bytes stay fixed when this script changes.

- ``login/``: what a client sends from its first byte: startup packets (valid,
  truncated, oversized, a bad protocol, the encryption and cancel requests) and
  SCRAM exchanges after a valid one (client-first and client-final messages, valid
  in form and malformed), sized around the C login's limits (_relaycore.c:
  LOGIN_MAX_STARTUP, LOGIN_MAX_BUFFER; scram_core.h: SCRAM_MAX_MESSAGE). A static
  client-final cannot carry a valid proof (the server's nonce is random): it ends
  in the refusal, which both logins must give alike.
- ``frames/``: client streams after login, as the relay scans them: simple and
  extended queries, COPY, Terminate mid-stream, bad and oversized lengths.
"""

from __future__ import annotations

import base64
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOCOL_3_0 = 3 << 16


def msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def packet(body: bytes) -> bytes:
    """An untyped message: the startup packet and the requests before it."""
    return struct.pack("!I", len(body) + 4) + body


def startup(params: dict[str, str] | bytes, version: int = PROTOCOL_3_0) -> bytes:
    raw = params if isinstance(params, bytes) else b"".join(f"{k}\0{v}\0".encode() for k, v in params.items()) + b"\0"
    return packet(struct.pack("!I", version) + raw)


APP = startup({"user": "app", "database": "app"})
NONCE = "rOprNGfwEbeRWgbNEkqO"  # RFC 7677's example client nonce


def first(bare: bytes = f"n=app,r={NONCE}".encode(), header: bytes = b"n,,", mechanism: bytes = b"SCRAM-SHA-256",
          length: int | None = None) -> bytes:
    """SASLInitialResponse: the mechanism, the length of the client-first message, the message."""
    data = header + bare
    return msg(b"p", mechanism + b"\0" + struct.pack("!i", len(data) if length is None else length) + data)


def final(text: bytes) -> bytes:
    return msg(b"p", text)


PROOF = base64.b64encode(bytes(32))
FINAL = b"c=biws,r=" + NONCE.encode() + b"serverpart,p=" + PROOF

LOGIN = {
    # startup packets
    "startup_valid": APP,
    "startup_valid_with_settings": startup({"user": "app", "database": "app", "application_name": "pgbench",
                                            "options": "-c search_path=public", "client_encoding": "UTF8"}),
    "startup_protocol_3_2": startup({"user": "app", "database": "app"}, (3 << 16) | 2),
    "startup_protocol_options": startup({"user": "app", "database": "app", "_pq_.compression": "on"}),
    "startup_protocol_2_0": startup({"user": "app", "database": "app"}, 2 << 16),
    "startup_protocol_4_0": startup({"user": "app", "database": "app"}, 4 << 16),
    "startup_truncated_length": APP[:3],
    "startup_truncated_body": APP[:20],
    "startup_length_too_short": struct.pack("!II", 4, PROTOCOL_3_0),
    "startup_length_seven": struct.pack("!I", 7) + b"\0\3\0",
    "startup_oversized": struct.pack("!II", 20_000, PROTOCOL_3_0) + b"user\0app\0",
    "startup_negative_length": struct.pack("!iI", -5, PROTOCOL_3_0),
    "startup_over_the_c_login_limit": startup({"user": "app", "database": "app", "application_name": "x" * 4080}),
    "startup_at_the_c_login_limit": startup({"user": "app", "database": "app", "application_name": "x" * 4050}),
    "startup_no_terminator": startup(b"user\0app\0database\0app\0"),
    "startup_odd_strings": startup(b"user\0app\0database\0\0"),
    "startup_unknown_parameter": startup({"user": "app", "database": "app", "bogus": "1"}),
    "startup_unknown_database": startup({"user": "app", "database": "nowhere"}),
    "startup_unknown_user": startup({"user": "nobody", "database": "app"}),
    "startup_no_user": startup({"database": "app"}),
    "startup_replication": startup({"user": "app", "database": "app", "replication": "true"}),
    "startup_not_utf8": startup(b"user\0\xff\xfe\0database\0app\0\0"),
    "ssl_request_then_startup": packet(struct.pack("!I", 80877103)) + APP,
    "gssenc_request_then_startup": packet(struct.pack("!I", 80877104)) + APP,
    "ssl_request_three_times": packet(struct.pack("!I", 80877103)) * 3 + APP,
    "cancel_request": packet(struct.pack("!III", 80877102, 1234, 5678)),
    "cancel_request_short": packet(struct.pack("!II", 80877102, 1234)),
    # SCRAM client-first (SASLInitialResponse) after a valid startup packet
    "scram_first_valid": APP + first(),
    "scram_first_unknown_user": startup({"user": "nobody", "database": "app"}) + first(),
    "scram_first_mechanism_sha1": APP + first(mechanism=b"SCRAM-SHA-1"),
    "scram_first_mechanism_plus": APP + first(mechanism=b"SCRAM-SHA-256-PLUS", header=b"p=tls-server-end-point,,"),
    "scram_first_channel_binding_y": APP + first(header=b"y,,"),
    "scram_first_authzid": APP + first(header=b"n,a=admin,"),
    "scram_first_bad_gs2": APP + first(header=b"x,,"),
    "scram_first_no_nonce": APP + first(bare=b"n=app"),
    "scram_first_empty_nonce": APP + first(bare=b"n=app,r="),
    "scram_first_nonce_with_comma": APP + first(bare=b"n=app,r=ab,cd"),
    "scram_first_extension": APP + first(bare=f"m=ext,n=app,r={NONCE}".encode()),
    "scram_first_length_too_long": APP + first(length=500),
    "scram_first_length_negative": APP + first(length=-1),
    "scram_first_no_mechanism_terminator": APP + msg(b"p", b"SCRAM-SHA-256"),
    "scram_first_empty": APP + msg(b"p", b""),
    "scram_first_wrong_type": APP + msg(b"Q", b"SELECT 1\0"),
    "scram_first_long_nonce_at_the_c_limit": APP + first(bare=b"n=app,r=" + b"A" * 490),
    "scram_first_long_nonce_over_the_c_limit": APP + first(bare=b"n=app,r=" + b"A" * 520),
    "scram_first_not_utf8_user": APP + first(bare=f"n=\xff,r={NONCE}".encode("latin-1")),
    "scram_first_escaped_user": APP + first(bare=f"n=a=2Cb=3D,r={NONCE}".encode()),
    # SCRAM client-final (SASLResponse) after a valid client-first
    "scram_final_wrong_nonce": APP + first() + final(FINAL),
    "scram_final_no_proof": APP + first() + final(b"c=biws,r=" + NONCE.encode()),
    "scram_final_bad_base64_proof": APP + first() + final(b"c=biws,r=" + NONCE.encode() + b",p=!!!!"),
    "scram_final_short_proof": APP + first() + final(b"c=biws,r=" + NONCE.encode() + b",p=AAAA"),
    "scram_final_channel_binding": APP + first() + final(b"c=eSws,r=" + NONCE.encode() + b",p=" + PROOF),
    "scram_final_attributes_reordered": APP + first() + final(b"r=" + NONCE.encode() + b",c=biws,p=" + PROOF),
    "scram_final_empty": APP + first() + final(b""),
    "scram_final_oversized": APP + first() + final(b"c=biws,r=" + b"A" * 600 + b",p=" + PROOF),
    "scram_final_then_query": APP + first() + final(FINAL) + msg(b"Q", b"SELECT 1\0"),
    "scram_final_then_garbage": APP + first() + final(FINAL) + b"\xff" * 9000,
}

SIMPLE = msg(b"Q", b"SELECT 1\0")
BATCH = (msg(b"P", b"s1\0SELECT $1\0\0\0") + msg(b"B", b"\0s1\0\0\0\0\1\0\0\0\0011\0\0") + msg(b"D", b"P\0")
         + msg(b"E", b"\0\0\0\0\0"))

FRAMES = {
    "simple_queries": SIMPLE * 3,
    "extended_batch": BATCH + msg(b"S", b"") + BATCH + msg(b"S", b""),
    "extended_batch_unsynced": BATCH + BATCH,
    "flush_and_sync": BATCH + msg(b"H", b"") + msg(b"S", b""),
    "function_call": msg(b"F", b"\0\0\0\1\0\0\0\0\0\0") + SIMPLE,
    "copy_in": msg(b"Q", b"COPY t FROM STDIN\0") + msg(b"d", b"1\tx\n" * 20) + msg(b"c", b"") + SIMPLE,
    "copy_fail": msg(b"d", b"1\n") + msg(b"f", b"no\0") + msg(b"S", b""),
    "terminate_mid_stream": SIMPLE + msg(b"X", b"") + SIMPLE,
    "terminate_in_batch": BATCH + msg(b"X", b""),
    "empty_bodies": b"".join(msg(bytes([t]), b"") for t in b"SHXcQ"),
    "length_three": SIMPLE + b"Q" + struct.pack("!I", 3) + b"x",
    "length_zero": b"S" + struct.pack("!I", 0),
    "length_negative": SIMPLE + b"Q" + struct.pack("!i", -1),
    "length_oversized": b"Q" + struct.pack("!I", 1 << 30) + b"SELECT",
    "length_just_over_the_limit": msg(b"Q", b"x" * 1000),
    "half_header_at_end": SIMPLE + b"Q\0\0",
    "all_type_bytes": b"".join(msg(bytes([t]), bytes([t])) for t in range(256)),
}

#: the frame scanner's max_length in test_corpus.py (length_just_over_the_limit crosses it)
FRAME_MAX_LENGTH = 1000


def main() -> None:
    for name, cases in (("login", LOGIN), ("frames", FRAMES)):
        folder = HERE / name
        folder.mkdir(exist_ok=True)
        for old in folder.glob("*.bin"):
            old.unlink()
        for case, data in cases.items():
            (folder / f"{case}.bin").write_bytes(data)


if __name__ == "__main__":
    main()
