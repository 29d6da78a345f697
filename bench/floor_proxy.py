"""The floor for a Python pooler on uvloop: a 1:1 byte proxy and nothing else.

    python bench/floor_proxy.py LISTEN_PORT SERVER_PORT

Each client connection gets its own server connection; bytes are written from
one transport to the other as they arrive. No parsing, no pooling, no auth of
its own (the server's SCRAM passes through). Used by cpu_split.py as a
reference point; not a product.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class ServerSide(asyncio.Protocol):
    def __init__(self, client: ClientSide) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class ClientSide(asyncio.Protocol):
    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.transport: asyncio.Transport | None = None
        self.server: ServerSide | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.server = await loop.create_connection(lambda: ServerSide(self), "127.0.0.1", self.server_port)
        for data in self.early:
            self.server.transport.write(data)  # type: ignore[union-attr]
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.server is None:
            self.early.append(data)
        else:
            self.server.transport.write(data)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.server is not None and self.server.transport is not None:
            self.server.transport.close()


async def serve(listen_port: int, server_port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: ClientSide(server_port), "127.0.0.1", listen_port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2])))
