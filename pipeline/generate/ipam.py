"""Pod address allocation: one small block per node, handed out host-local style.

Blocks are small (a /26 per node, like Calico blocks) and a share of allocations
deliberately recycles the most recently released address (once out of quarantine), so an
address released by one app is soon handed to a pod of another, even in short estates.
"""

from __future__ import annotations

import ipaddress

POD_NET = int(ipaddress.IPv4Address("10.1.0.0"))
BLOCK_SIZE = 64  # a /26 per node
POD_NET6 = int(ipaddress.IPv6Address("fd00:10:1::"))
QUARANTINE = 1_800.0  # seconds before a released address may be handed out again


def ipv4_text(value: int) -> str:
    """Dotted-quad text of an IPv4 integer."""
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


class NodeBlock:
    """One node's /26: next free address after the last one given, skipping quarantined ones."""

    def __init__(self, node: int) -> None:
        self.base = POD_NET + node * BLOCK_SIZE
        self.cursor = 0
        self.in_use: set[int] = set()
        self.released_at: dict[int, float] = {}
        self.v6_next = 1
        self.node = node

    def allocate(self, t: float, recycle: bool = False) -> int | None:
        """An IPv4 integer free at ``t`` (the latest released one if ``recycle``), or None."""
        if recycle:
            ready = [(r, o) for o, r in self.released_at.items()
                     if o not in self.in_use and r + QUARANTINE <= t]
            if ready:
                offset = max(ready)[1]
                self.in_use.add(offset)
                return self.base + offset
        usable = BLOCK_SIZE - 2  # no network / broadcast-like addresses
        for step in range(1, usable + 1):
            offset = (self.cursor + step - 1) % usable + 1
            if offset in self.in_use or self.released_at.get(offset, -1e18) + QUARANTINE > t:
                continue
            self.cursor = offset
            self.in_use.add(offset)
            return self.base + offset
        return None

    def release(self, ip: int, t: float) -> None:
        offset = ip - self.base
        self.in_use.discard(offset)
        self.released_at[offset] = t

    def allocate_v6(self) -> str:
        """A never-reused address from the node's fd00:10:1:<node>::/64."""
        value = POD_NET6 + (self.node << 64) + self.v6_next
        self.v6_next += 1
        return ipaddress.IPv6Address(value).compressed


__all__ = ["BLOCK_SIZE", "QUARANTINE", "NodeBlock", "ipv4_text"]
