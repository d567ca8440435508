"""The client's address behind trusted proxies (SPEC section 6a): sans-I/O, headers in, an
address out.

From a peer in ``trusted_proxies`` the client is the right-most entry of ``Forwarded: for=``
(RFC 7239) or, without it, of ``X-Forwarded-For``, that is not itself a trusted proxy: each
proxy appends the address it saw, so entries to the right were written by proxies we trust and
entries to the left by whoever the client is (and can be forged). From any other peer the
headers are ignored: anyone can send them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

__all__ = ["Network", "client_address"]

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


def _entries(forwarded: Sequence[str], x_forwarded_for: Sequence[str]) -> list[str | None]:
    """The hops, left to right, from ``Forwarded`` when present, else ``X-Forwarded-For``."""
    if forwarded:
        hops: list[str | None] = []
        for element in ",".join(forwarded).split(","):
            found = _FOR.search(element.strip())
            hops.append(_address(found[1]) if found else None)
        return hops
    return [_address(entry) for entry in ",".join(x_forwarded_for).split(",")]


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in networks)


def client_address(
    peer: str,
    forwarded: Sequence[str],
    x_forwarded_for: Sequence[str],
    trusted: Sequence[Network],
) -> str:
    """The address every per-address rule and the audit trail key on."""
    if not trusted or _address(peer) is None or not _trusted(peer, trusted):
        return peer
    nearest = peer
    for hop in reversed(_entries(forwarded, x_forwarded_for)):
        if hop is None:
            # A trusted proxy could not say who its client was: they stay that proxy's.
            return nearest
        if not _trusted(hop, trusted):
            return hop
        nearest = hop
    return nearest
