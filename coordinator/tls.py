"""Serving the API over TLS: the server's ``ssl.SSLContext`` from ``tls.*`` in the config.

With ``tls.cert_file`` and ``tls.key_file`` the coordinator serves HTTPS only (a plain-HTTP request on that port
fails its handshake), and WebSockets become ``wss://``. TLS 1.2 is the floor. With ``tls.client_ca_file`` the
server asks every client for a certificate (optional at the handshake, so browsers and the CLI still connect)
and the auth middleware requires a verified one for agent credentials: runner tokens and the registration role.
"""

from __future__ import annotations

import ssl

from coordinator.config import Tls
from shared.config import ConfigError


def server_context(settings: Tls) -> ssl.SSLContext | None:
    if settings.cert_file is None or settings.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"config error: cannot load tls.cert_file {settings.cert_file} with tls.key_file {settings.key_file}: {e}"
        ) from e
    if settings.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(settings.client_ca_file))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"config error: cannot load tls.client_ca_file {settings.client_ca_file}: {e}") from e
        context.verify_mode = ssl.CERT_OPTIONAL
    return context
