"""IP addresses as 128-bit integers (two uint64 halves), IPv4 mapped into ::ffff:0:0/96.

IPv4 in canonical dotted-quad text (the usual case) is recognised and converted in Arrow, a
batch at a time (:func:`ipv4_canonical`), with no per-address Python work and no cache;
other text (IPv6, odd forms) is parsed once per distinct string with ``ipaddress``, behind
a bounded cache (:data:`_CACHE_MAX` strings, cleared when full; ~150 B each).
"""

from __future__ import annotations

import ipaddress

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_CACHE_MAX = 1 << 18  # strings (only what ipv4_canonical leaves: IPv6, odd forms)
_cache: dict[str, int] = {}
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
CANONICAL_V4 = rf"^{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}$"  # exactly str(IPv4Address(...))
V4_MAPPED = 0xFFFF_0000_0000


def ipv4_canonical(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(mask, 32-bit values) of the strings in ``values`` that are IPv4 addresses in
    canonical dotted-quad text (no leading zeros, no spaces: what ``str(IPv4Address)``
    writes); values are 0 elsewhere. Vectorised: no Python work per string."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    ok = np.asarray(pc.match_substring_regex(values, CANONICAL_V4).fill_null(False), bool)
    out = np.zeros(n, dtype=np.int64)
    if ok.any():
        picked = values.filter(pa.array(ok))
        parts = pc.list_flatten(pc.split_pattern(picked, "."))
        octets = np.asarray(pc.cast(parts, pa.int64())).reshape(-1, 4)
        out[ok] = (octets[:, 0] << 24) | (octets[:, 1] << 16) | (octets[:, 2] << 8) | octets[:, 3]
    return ok, out


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
    v4, values = ipv4_canonical(enc.dictionary)
    ints: list[int] = (values | V4_MAPPED).tolist()
    if not v4.all():
        if len(_cache) > _CACHE_MAX:
            _cache.clear()
        texts = enc.dictionary.to_pylist()
        for i in np.flatnonzero(~v4).tolist():
            s = texts[i]
            v = _cache.get(s)
            if v is None:
                v = ip_to_int(s)
                _cache[s] = v
            ints[i] = v
    return np.asarray(enc.indices, dtype=np.int64), ints


__all__ = ["BROADCAST", "LINK_LOCAL", "LOCAL_SCOPES", "MULTICAST", "UNSPECIFIED", "encode_ips",
           "int_to_ip", "ip_to_int", "ipv4_canonical", "local_scope", "network_to_int"]
