"""The address a request came from, for rate limits and the audit trail.

``X-Forwarded-For`` is believed only when the peer is a configured trusted proxy (``trusted_proxies``): then
the list is read from the right, past every trusted proxy, and the first address that is not one is the
client. From any other peer the header is ignored (anyone can write it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

from coordinator import keys

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(self, networks: Iterable[str]) -> None:
        self._networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client(self, peer: str | None, forwarded_for: Iterable[str]) -> str:
        if peer is None:
            return "unknown"
        if not self._networks or not self.trusts(peer):
            return peer
        hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return _valid(hop) or peer
        return (_valid(hops[0]) if hops else None) or peer


def _valid(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


_CLIENT: web.RequestKey[str] = web.RequestKey("client_address")


def client_address(request: web.Request) -> str:
    known = request.get(_CLIENT)
    if known is None:
        known = request.app[keys.TRUSTED_PROXIES].client(request.remote, request.headers.getall("X-Forwarded-For", []))
        request[_CLIENT] = known
    return known
