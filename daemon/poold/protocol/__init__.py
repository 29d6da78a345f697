"""Sans-IO PostgreSQL v3 protocol: framing, startup, and the messages poold speaks.

Nothing in this package performs I/O or imports asyncio. Bytes go in, events and
bytes come out; the I/O shell (``client.py``, ``relay.py``) owns the sockets.
"""
