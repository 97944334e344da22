"""Enrich a flow batch with workload identity and orient it client → server.

Identity: the flow source's own identity (Hubble, GKE details) wins; otherwise the
time-aware inventory at the flow's start time. Broadcast, multicast, link-local and
unspecified addresses the inventory does not list get their scope as identity and mark the
flow *local* (not learned, not alerted).

Orientation (which end is the service), strongest evidence first:

1. a pure SYN seen from the source (the destination listens);
2. a broadcast/multicast end (it is always the destination);
3. a service-table port below the ephemeral range facing an ephemeral port (both agree);
4. a listener already confirmed by a pure SYN on exactly one end;
5. the ephemeral range (≥ 32768) on exactly one end: that end is the client;
6. a service-table port below the ephemeral range, then a privileged (< 1024) port;
7. a service-table port inside the ephemeral range (e.g. 50051): weak, used only when
   both ends are ephemeral;
8. the lower port; finally the destination.

Ephemeral-range evidence and confirmed listeners win over a bare table match: a client whose
ephemeral source port happens to equal a listed service port (50051) is still the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.addresses import BROADCAST, LOCAL_SCOPES, MULTICAST, encode_ips
from pipeline.core.columns import ACTION_REJECT, NO_TCP_FLAGS
from pipeline.core.hosts import host_keys
from pipeline.core.hostsets import unique_inverse
from pipeline.core.inventory import Inventory
from pipeline.core.workloads import WorkloadInfo, Workloads

TCP_SYN = 0x02
TCP_ACK = 0x10

# Ports that identify the service side when only one end uses them.
SERVICE_PORTS = np.array(
    sorted(
        {
            21, 22, 23, 25, 53, 67, 69, 80, 88, 110, 111, 123, 135, 137, 139, 143, 161, 179,
            389, 443, 445, 465, 514, 587, 636, 853, 873, 993, 995, 1433, 1521, 1883, 2049,
            2181, 2379, 2380, 3000, 3100, 3306, 3389, 4222, 4317, 4318, 5000, 5044, 5432,
            5601, 5672, 5984, 6379, 6443, 7000, 7001, 7199, 8000, 8080, 8081, 8086, 8088,
            8200, 8443, 8500, 8888, 9000, 9042, 9090, 9091, 9092, 9093, 9100, 9200, 9300,
            9411, 9443, 10250, 10255, 11211, 15672, 27017, 50051,
        }
    ),
    dtype=np.int32,
)
EPHEMERAL_FLOOR = 32768
_IS_SERVICE = np.zeros(65536, dtype=bool)  # any table port
_IS_SERVICE[SERVICE_PORTS] = True
_IS_STRONG = _IS_SERVICE.copy()  # table ports below the ephemeral range
_IS_STRONG[EPHEMERAL_FLOOR:] = False
_IS_EPHEMERAL = np.zeros(65536, dtype=bool)
_IS_EPHEMERAL[EPHEMERAL_FLOOR:] = True
_LISTENERS_MAX = 1 << 20  # confirmed (address, port) listeners kept (cleared when full)
# Identity an upstream stage already derived (the streaming router enriches to route): a flow
# table carrying these columns — wids of the inventory it is enriched with, and whether the
# record was server → client — is taken as is instead of being enriched again.
IDENTITY_COLUMNS = ("client_wid", "server_wid", "swapped")


@dataclass(slots=True)
class Enriched:
    """A flow batch with identities, oriented client → server (numpy columns)."""

    start: np.ndarray  # float64 epoch seconds
    end: np.ndarray
    client_wid: np.ndarray  # int64
    server_wid: np.ndarray
    client_port: np.ndarray  # int32
    service_port: np.ndarray  # int32 (0 for protocols without ports)
    proto: np.ndarray  # int16
    bytes: np.ndarray  # int64
    packets: np.ndarray
    rejected: np.ndarray  # bool
    swapped: np.ndarray  # bool: the record was server → client
    local: np.ndarray  # bool: an end is broadcast/multicast/link-local/unspecified
    src_ip: pa.Array  # original columns, for evidence on the few flows that need it
    dst_ip: pa.Array
    client_host: np.ndarray  # uint64 address key of each end (pipeline.core.hosts.host_keys)
    server_host: np.ndarray
    unanswered: np.ndarray  # bool: TCP with known flags, SYN but never an ACK

    def __len__(self) -> int:
        return len(self.start)

    def client_ip(self, rows: np.ndarray) -> list[str]:
        return _pick(self.src_ip, self.dst_ip, self.swapped, rows)

    def server_ip(self, rows: np.ndarray) -> list[str]:
        return _pick(self.dst_ip, self.src_ip, self.swapped, rows)


def _pick(a: pa.Array, b: pa.Array, swapped: np.ndarray, rows: np.ndarray) -> list[str]:
    idx = pa.array(rows)
    first = a.take(idx).to_pylist()
    second = b.take(idx).to_pylist()
    sw = swapped[rows]
    return [s if w else f for f, s, w in zip(first, second, sw, strict=True)]


def _np(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col.to_numpy(zero_copy_only=False)


class Orienter:
    """Service-side inference with a bounded memory of listeners confirmed by pure SYNs.

    No parameters; the learned ``listeners_`` ((address, port) pairs) exist from the first
    :meth:`orient` on; :meth:`state`/:meth:`from_state` give them as numpy arrays."""

    listeners_: set[tuple[int, int]]

    def state(self) -> dict[str, np.ndarray]:
        """The listeners, sorted, as 128-bit addresses split in two uint64 plus ports."""
        listeners = sorted(getattr(self, "listeners_", ()))
        return {
            "hi": np.array([a >> 64 for a, _ in listeners], dtype=np.uint64),
            "lo": np.array([a & ((1 << 64) - 1) for a, _ in listeners], dtype=np.uint64),
            "port": np.array([port for _, port in listeners], dtype=np.int32),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> Self:
        """An orienter with the listeners from :meth:`state`."""
        o = cls()
        o.listeners_ = {((int(h) << 64) | int(low), int(pt)) for h, low, pt in
                        zip(state["hi"], state["lo"], state["port"], strict=True)}
        return o

    def orient(
        self,
        src_port: np.ndarray,
        dst_port: np.ndarray,
        flags: np.ndarray,
        src_addr: np.ndarray,
        dst_addr: np.ndarray,
        addrs: list[int],
        src_group: np.ndarray | None = None,
        dst_group: np.ndarray | None = None,
    ) -> np.ndarray:
        """True where the *source* is the server (the record must be swapped).

        ``src_group``/``dst_group``: where that end is a broadcast or multicast address."""
        if not hasattr(self, "listeners_"):
            self.listeners_ = set()
        n = len(src_port)
        decided = np.zeros(n, dtype=bool)
        swap = np.zeros(n, dtype=bool)

        def decide(mask: np.ndarray, src_is_server: np.ndarray | bool) -> None:
            m = mask & ~decided
            swap[m] = np.broadcast_to(src_is_server, n)[m]
            decided[m] = True

        known = flags != NO_TCP_FLAGS
        pure_syn = known & ((flags & TCP_SYN) != 0) & ((flags & TCP_ACK) == 0)
        decide(pure_syn, False)
        self._learn(dst_addr[pure_syn], dst_port[pure_syn], addrs)
        if src_group is not None and dst_group is not None:
            decide(src_group ^ dst_group, src_group)
        sp, dp = src_port & 0xFFFF, dst_port & 0xFFFF  # ports are 0..65535 once normalised
        src_strong, dst_strong = _IS_STRONG[sp], _IS_STRONG[dp]
        src_eph, dst_eph = _IS_EPHEMERAL[sp], _IS_EPHEMERAL[dp]
        decide((src_strong & dst_eph) | (dst_strong & src_eph), src_strong)  # evidence agrees
        if self.listeners_ and not decided.all():
            open_rows = np.flatnonzero(~decided)
            src_l, dst_l = self._listening(src_addr[open_rows], src_port[open_rows],
                                           dst_addr[open_rows], dst_port[open_rows], addrs)
            m = np.zeros(n, dtype=bool)
            m[open_rows] = src_l ^ dst_l
            s_l = np.zeros(n, dtype=bool)
            s_l[open_rows] = src_l
            decide(m, s_l)
        decide(src_eph ^ dst_eph, dst_eph)
        decide(src_strong ^ dst_strong, src_strong)
        src_priv = (src_port > 0) & (src_port < 1024)
        dst_priv = (dst_port > 0) & (dst_port < 1024)
        decide(src_priv ^ dst_priv, src_priv)
        src_svc, dst_svc = _IS_SERVICE[sp], _IS_SERVICE[dp]
        decide(src_svc ^ dst_svc, src_svc)
        decide((src_port != dst_port) & (src_port > 0) & (dst_port > 0), src_port < dst_port)
        return swap

    def _learn(self, addr_idx: np.ndarray, ports: np.ndarray, addrs: list[int]) -> None:
        if not len(addr_idx):
            return
        if len(self.listeners_) > _LISTENERS_MAX:
            self.listeners_.clear()
        pairs = np.unique(addr_idx.astype(np.int64) * 65536 + ports)
        self.listeners_.update((addrs[int(a) // 65536], int(a) % 65536) for a in pairs)

    def _listening(
        self,
        src_addr: np.ndarray,
        src_port: np.ndarray,
        dst_addr: np.ndarray,
        dst_port: np.ndarray,
        addrs: list[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for a_idx, ports in ((src_addr, src_port), (dst_addr, dst_port)):
            combo = a_idx.astype(np.int64) * 65536 + ports
            uniq, inv = unique_inverse(combo)
            hit = np.fromiter(
                ((addrs[int(u) // 65536], int(u) % 65536) in self.listeners_ for u in uniq),
                dtype=bool,
                count=len(uniq),
            )
            out.append(hit[inv])
        return out[0], out[1]


def _source_identity(
    table: pa.Table, side: str, inventory: Inventory
) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, wids) for rows whose source already named the workload, or None."""
    app = table.column(f"{side}_app")
    if app.null_count == len(app):
        return None
    rows = np.flatnonzero(~np.asarray(pc.is_null(app)))
    taken = table.take(pa.array(rows))
    # distinct (namespace, app, labels) triples from per-column codes: no separator that a
    # value could contain
    parts = [taken.column(f"{side}_{c}").fill_null("").combine_chunks().dictionary_encode()
             for c in ("namespace", "app", "labels")]
    codes = np.stack([np.asarray(p.indices, dtype=np.int64) for p in parts], axis=1)
    uniq, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # intern in order of first appearance
    texts = [p.dictionary.to_pylist() for p in parts]
    lut = np.zeros(len(uniq), dtype=np.int64)
    for k in order:
        i_ns, i_app, i_lab = uniq[k]
        ns, name, labels = texts[0][i_ns], texts[1][i_app], texts[2][i_lab]
        lab: tuple[tuple[str, str], ...] = ()
        if labels:
            try:
                lab = tuple(sorted((str(a), str(b)) for a, b in orjson.loads(labels).items()))
            except (orjson.JSONDecodeError, AttributeError):
                lab = ()
        lut[k] = inventory.workloads.intern(WorkloadInfo(ns, name, "pod", labels=lab))
    return rows, lut[inverse.reshape(-1)]


_GROUP_KINDS = (BROADCAST, MULTICAST)


_scope_cache: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (kind column, luts)


def _scope_masks(workloads: Workloads, wids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group, local) per row: broadcast/multicast identity, any local-scope identity."""
    kind = workloads.column("kind")  # cached by the registry until it changes
    if not _scope_cache or _scope_cache[0][0] is not kind:
        _scope_cache[:] = [(kind, np.isin(kind, _GROUP_KINDS), np.isin(kind, LOCAL_SCOPES))]
    _, group, local = _scope_cache[0]
    return group[wids], local[wids]


def enrich(table: pa.Table, inventory: Inventory, orienter: Orienter) -> Enriched:
    """Identity + orientation for a FLOW_SCHEMA table (taken from its
    :data:`IDENTITY_COLUMNS` when it carries them; ``orienter`` then learns nothing)."""
    if IDENTITY_COLUMNS[0] in table.schema.names:
        return _given(table, inventory)
    start = _np(table.column("start"))
    src_ip = table.column("src_ip").combine_chunks()
    dst_ip = table.column("dst_ip").combine_chunks()
    both = pa.concat_arrays([src_ip, dst_ip])
    idx, addrs = encode_ips(both)
    n = table.num_rows
    src_idx, dst_idx = idx[:n], idx[n:]
    wids = inventory.assign(idx, addrs, np.concatenate([start, start]))
    src_wid, dst_wid = wids[:n], wids[n:]
    for side, target in (("src", src_wid), ("dst", dst_wid)):
        given = _source_identity(table, side, inventory)
        if given is not None:
            target[given[0]] = given[1]
    src_port = _np(table.column("src_port")).astype(np.int32)
    dst_port = _np(table.column("dst_port")).astype(np.int32)
    flags = _np(table.column("tcp_flags")).astype(np.int16)
    hk = host_keys(addrs)
    src_host, dst_host = hk[src_idx], hk[dst_idx]
    group, local = _scope_masks(inventory.workloads, wids)
    swap = orienter.orient(src_port, dst_port, flags, src_idx, dst_idx, addrs,
                           group[:n], group[n:])
    return Enriched(
        start=start,
        end=_np(table.column("end")),
        client_wid=np.where(swap, dst_wid, src_wid),
        server_wid=np.where(swap, src_wid, dst_wid),
        client_port=np.where(swap, dst_port, src_port),
        service_port=np.where(swap, src_port, dst_port),
        proto=_np(table.column("proto")).astype(np.int16),
        bytes=_np(table.column("bytes")).astype(np.int64),
        packets=_np(table.column("packets")).astype(np.int64),
        rejected=_np(table.column("action")) == ACTION_REJECT,
        swapped=swap,
        local=local[:n] | local[n:],
        src_ip=src_ip,
        dst_ip=dst_ip,
        client_host=np.where(swap, dst_host, src_host),
        server_host=np.where(swap, src_host, dst_host),
        unanswered=_unanswered(flags),
    )


def _given(table: pa.Table, inventory: Inventory) -> Enriched:
    """:class:`Enriched` from a table's :data:`IDENTITY_COLUMNS` (no lookup, no orientation)."""
    client = _np(table.column("client_wid")).astype(np.int64, copy=False)
    server = _np(table.column("server_wid")).astype(np.int64, copy=False)
    swap = _np(table.column("swapped")).astype(bool, copy=False)
    src_port = _np(table.column("src_port")).astype(np.int32)
    dst_port = _np(table.column("dst_port")).astype(np.int32)
    n = table.num_rows
    _, local = _scope_masks(inventory.workloads, np.concatenate([client, server]))
    src_ip = table.column("src_ip").combine_chunks()
    dst_ip = table.column("dst_ip").combine_chunks()
    idx, addrs = encode_ips(pa.concat_arrays([src_ip, dst_ip]))
    hk = host_keys(addrs)
    src_host, dst_host = hk[idx[:n]], hk[idx[n:]]
    flags = _np(table.column("tcp_flags")).astype(np.int16)
    return Enriched(
        start=_np(table.column("start")),
        end=_np(table.column("end")),
        client_wid=client,
        server_wid=server,
        client_port=np.where(swap, dst_port, src_port),
        service_port=np.where(swap, src_port, dst_port),
        proto=_np(table.column("proto")).astype(np.int16),
        bytes=_np(table.column("bytes")).astype(np.int64),
        packets=_np(table.column("packets")).astype(np.int64),
        rejected=_np(table.column("action")) == ACTION_REJECT,
        swapped=swap,
        local=local[:n] | local[n:],
        src_ip=src_ip,
        dst_ip=dst_ip,
        client_host=np.where(swap, dst_host, src_host),
        server_host=np.where(swap, src_host, dst_host),
        unanswered=_unanswered(flags),
    )


def _unanswered(flags: np.ndarray) -> np.ndarray:
    """TCP flows with known flags that sent a SYN and never saw an ACK."""
    return (flags != NO_TCP_FLAGS) & ((flags & TCP_SYN) != 0) & ((flags & TCP_ACK) == 0)


__all__ = ["IDENTITY_COLUMNS", "SERVICE_PORTS", "Enriched", "Orienter", "enrich"]
