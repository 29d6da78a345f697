"""The floor for a login on uvloop: a server that answers with canned bytes.

    python bench/canned_login.py LISTEN_PORT

It answers the messages of a SCRAM-SHA-256 login, one simple query and
Terminate with fixed bytes, in the order a client sends them: no password is
checked, no pool, no session. What a pooler spends per login above it is its
own work; what it spends is the event loop's accept, transports and close, and
the kernel's. Used by login_cost.py as a reference point; not a product.
"""

from __future__ import annotations

import asyncio
import struct
import sys

import uvloop


def msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


SASL = msg(b"R", struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0")
PARAMS = [(b"server_version", b"15"), (b"client_encoding", b"UTF8"), (b"DateStyle", b"ISO, MDY"),
          (b"TimeZone", b"UTC"), (b"integer_datetimes", b"on"), (b"standard_conforming_strings", b"on")]
WELCOME = (msg(b"R", struct.pack("!i", 12) + b"v=" + b"A" * 43 + b"=")
           + msg(b"R", struct.pack("!i", 0))
           + b"".join(msg(b"S", name + b"\0" + value + b"\0") for name, value in PARAMS)
           + msg(b"K", struct.pack("!ii", 1, 2)) + msg(b"Z", b"I"))
REPLY = (msg(b"T", b"\0\x01?column?\0" + b"\0" * 18) + msg(b"D", b"\0\x01\0\0\0\x011")
         + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I"))


def sasl_continue(client_first: bytes) -> bytes:
    """AuthenticationSASLContinue for a client-first message: its nonce, a canned salt."""
    client_nonce = client_first.split(b"r=", 1)[1]
    return msg(b"R", struct.pack("!i", 11) + b"r=" + client_nonce + b"canned,s=c2FsdHNhbHRzYWx0,i=4096")


class CannedLogin(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.step = 0

    def data_received(self, data: bytes) -> None:
        # One message per chunk: the client waits for each answer before it sends the next.
        if self.step == 0:  # StartupMessage
            self.transport.write(SASL)
        elif self.step == 1:  # SASLInitialResponse: "SCRAM-SHA-256\0", a length, the client-first message
            self.transport.write(sasl_continue(data[5 + 14 + 4:]))
        elif self.step == 2:  # SASLResponse
            self.transport.write(WELCOME)
        elif data[:1] == b"Q":
            self.transport.write(REPLY)
        elif data[:1] == b"X":
            self.transport.close()
        self.step += 1


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(CannedLogin, "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
