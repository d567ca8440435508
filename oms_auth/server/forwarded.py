"""The client's address behind trusted proxies (docs/operations.md, "Behind a proxy:
trusted_proxies and proxy_header"): sans-I/O, headers in, an address out.

From a peer in ``trusted_proxies`` the client is the right-most entry of the one header the
deployment's proxies write (``proxy_header``: ``X-Forwarded-For`` or RFC 7239 ``Forwarded:
for=``) that is not itself a trusted proxy: each proxy appends the address it saw, so entries
to the right were written by proxies we trust and entries to the left by whoever the client is
(and can be forged). The other header is never read, whatever it says: a proxy that appends to
its own header passes the client's copy of the other one through untouched. From any other peer
neither header is read: anyone can send them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Network", "NO_PROXIES", "Proxies", "client_address", "X_FORWARDED_FOR", "FORWARDED"]

X_FORWARDED_FOR, FORWARDED = "x-forwarded-for", "forwarded"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)', re.IGNORECASE)


def _address(token: str) -> str | None:
    """One ``for=`` value or X-Forwarded-For entry as a normalised address, else None
    (``unknown``, an obfuscated ``_name``, garbage). Ports and IPv6 brackets are dropped."""
    token = token.strip().strip('"').strip()
    if token.startswith("["):  # "[2001:db8::1]:4711"
        token = token[1 : token.find("]")] if "]" in token else ""
    elif token.count(":") == 1:  # "192.0.2.1:4711"
        token = token.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(token)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def _entries(values: Sequence[str], header: str) -> list[str | None]:
    """The hops, left to right, of the lines of one header (none: no hop)."""
    if not values:
        return []
    if header == FORWARDED:
        hops: list[str | None] = []
        for element in ",".join(values).split(","):
            found = _FOR.search(element.strip())
            hops.append(_address(found[1]) if found else None)
        return hops
    return [_address(entry) for entry in ",".join(values).split(",")]


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in networks)


def client_address(
    peer: str,
    forwarded: Sequence[str],
    x_forwarded_for: Sequence[str],
    trusted: Sequence[Network],
    header: str = X_FORWARDED_FOR,
) -> str:
    """The address every per-address rule and the audit trail key on: from the lines of
    ``Forwarded`` or of ``X-Forwarded-For``, whichever ``header`` names."""
    values = forwarded if header == FORWARDED else x_forwarded_for
    return _rightmost_untrusted(peer, values, tuple(trusted), header)


def _rightmost_untrusted(
    peer: str, values: Sequence[str], trusted: Sequence[Network], header: str
) -> str:
    if not trusted or _address(peer) is None or not _trusted(peer, trusted):
        return peer
    nearest = peer
    for hop in reversed(_entries(values, header)):
        if hop is None:
            # A trusted proxy could not say who its client was: they stay that proxy's.
            return nearest
        if not _trusted(hop, trusted):
            return hop
        nearest = hop
    return nearest


class _Headers(Protocol):
    def get_all(self, key: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Proxies:
    """The deployment's trusted proxies and the header they write (settings
    ``trusted_proxies`` and ``proxy_header``)."""

    trusted: tuple[Network, ...] = ()
    header: str = X_FORWARDED_FOR

    def trusts(self, peer: str) -> bool:
        return bool(self.trusted) and _address(peer) is not None and _trusted(peer, self.trusted)

    def client(self, peer: str, headers: _Headers | None) -> str:
        """The client of a connection from ``peer`` whose request head holds ``headers``."""
        if headers is None or not self.trusted:
            return peer
        return _rightmost_untrusted(peer, headers.get_all(self.header), self.trusted, self.header)


NO_PROXIES = Proxies()
