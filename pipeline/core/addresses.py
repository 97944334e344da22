"""IP addresses as 128-bit integers (two uint64 halves), IPv4 mapped into ::ffff:0:0/96.

Parsing is done once per distinct address string, with a bounded cache, so a batch of
flows costs one dictionary encode plus a handful of ``ipaddress`` calls.
"""

from __future__ import annotations

import ipaddress

import numpy as np
import pyarrow as pa

_CACHE_MAX = 1 << 20
_cache: dict[str, int] = {}


def ip_to_int(text: str) -> int:
    """128-bit integer of an address; IPv4 is mapped (::ffff:a.b.c.d). ValueError if invalid."""
    ip = ipaddress.ip_address(text)
    if ip.version == 4:
        return 0xFFFF_0000_0000 | int(ip)
    return int(ip)


def int_to_ip(value: int) -> str:
    """Inverse of :func:`ip_to_int`."""
    if value >> 32 == 0xFFFF:
        return str(ipaddress.IPv4Address(value & 0xFFFF_FFFF))
    return str(ipaddress.IPv6Address(value))


def network_to_int(cidr: str) -> tuple[int, int]:
    """(network as 128-bit int, prefix length in the 128-bit space) of a CIDR or address."""
    net = ipaddress.ip_network(cidr.strip(), strict=False)
    if net.version == 4:
        return 0xFFFF_0000_0000 | int(net.network_address), net.prefixlen + 96
    return int(net.network_address), net.prefixlen


# Local-scope destinations: not hosts, and not edges to learn or alert on as such.
BROADCAST = "broadcast"
MULTICAST = "multicast"
LINK_LOCAL = "link-local"
UNSPECIFIED = "unspecified"
LOCAL_SCOPES = (BROADCAST, MULTICAST, LINK_LOCAL, UNSPECIFIED)


def local_scope(addr: int) -> str | None:
    """The local scope of an address (128-bit int as from :func:`ip_to_int`), or None.

    Limited broadcast (255.255.255.255), multicast (224.0.0.0/4, ff00::/8), link-local
    (169.254.0.0/16, fe80::/10) and "this network"/unspecified (0.0.0.0/8, ::).
    A subnet-directed broadcast (10.1.2.255) cannot be told from the address alone without
    the subnet's mask, so it is an ordinary address here.

    >>> local_scope(ip_to_int("224.0.0.251")), local_scope(ip_to_int("169.254.169.254"))
    ('multicast', 'link-local')
    >>> local_scope(ip_to_int("10.0.0.1")) is None
    True
    """
    if addr >> 32 == 0xFFFF:
        v4 = addr & 0xFFFF_FFFF
        if v4 == 0xFFFF_FFFF:
            return BROADCAST
        if v4 >> 28 == 0xE:
            return MULTICAST
        if v4 >> 16 == 0xA9FE:
            return LINK_LOCAL
        if v4 >> 24 == 0:
            return UNSPECIFIED
        return None
    if addr >> 120 == 0xFF:
        return MULTICAST
    if addr >> 118 == 0x3FA:  # fe80::/10
        return LINK_LOCAL
    if addr == 0:
        return UNSPECIFIED
    return None


def encode_ips(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list[int]]:
    """Dictionary-encode canonical IP strings: (index per row, distinct addresses as ints)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    enc = arr.dictionary_encode()
    if len(_cache) > _CACHE_MAX:
        _cache.clear()
    ints: list[int] = []
    for s in enc.dictionary.to_pylist():
        v = _cache.get(s)
        if v is None:
            v = ip_to_int(s)
            _cache[s] = v
        ints.append(v)
    return np.asarray(enc.indices, dtype=np.int64), ints


__all__ = ["BROADCAST", "LINK_LOCAL", "LOCAL_SCOPES", "MULTICAST", "UNSPECIFIED", "encode_ips",
           "int_to_ip", "ip_to_int", "local_scope", "network_to_int"]
