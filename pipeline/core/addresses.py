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


__all__ = ["encode_ips", "int_to_ip", "ip_to_int", "network_to_int"]
