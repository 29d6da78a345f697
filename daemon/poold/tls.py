"""Client-side TLS: the server certificate poold presents to clients.

With ``[tls] cert_file`` and ``key_file`` set, poold answers SSLRequest with 'S'
and runs TLS on the client connection (TLS 1.2 or newer). ``require = true``
refuses clients that do not ask for TLS (FATAL 28000), as ``hostssl`` does.
The server leg stays plain (see README: "no TLS on the server leg").
"""

from __future__ import annotations

import ssl

from .config import TlsSettings


def server_context(settings: TlsSettings) -> ssl.SSLContext | None:
    if not settings.cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.cert_file, settings.key_file or None)
    return ctx
