"""Client-side TLS: the server certificate poold presents to clients.

With ``[tls] cert_file`` and ``key_file`` set, poold answers SSLRequest with 'S'
and runs TLS on the client connection (TLS 1.2 or newer). ``require = true``
refuses clients that do not ask for TLS (FATAL 28000), as ``hostssl`` does.
With ``ca_file`` set, a client may present a certificate, verified against it
(a client without one still gets in); the hba file's ``cert`` method requires one.
The server leg stays plain (see docs/behaviour.md: "no TLS on the server leg").
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
    if settings.ca_file:
        ctx.load_verify_locations(settings.ca_file)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # asked for, checked when given: as PostgreSQL's ssl_ca_file
    return ctx
