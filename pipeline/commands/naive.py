"""Two naive detectors ``segflow eval`` runs beside segflow on the same flows, as a yardstick.

Both see the same oriented flows (client → server, from the core's enrichment) and learn
during the same audit, but know nothing of workload identity:

- ``naive-new-pair``: an allowlist of (client address, server address, port, protocol)
  seen during the audit; after it, the first flow of every other tuple alerts.
- ``naive-rate``: flows per client address per 10 minutes; after the audit a bucket
  alerts when it exceeds twice the address's busiest audit bucket (addresses unseen during
  the audit use the 99th percentile of all audit buckets), at least 10.

They alert on the flow that crosses the line, so their time to detect is immediate.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from pipeline.commands.scoring import Alert
from pipeline.core.enrich import Enriched

BUCKET = 600.0


def _endpoints(e: Enriched, rows: np.ndarray) -> tuple[list[str], list[str]]:
    return e.client_ip(rows), e.server_ip(rows)


class NewPairDetector:
    """Host-level allowlist of oriented (client, server, port, proto) tuples."""

    name = "naive-new-pair"

    def __init__(self) -> None:
        self.seen: set[tuple[str, str, int, int]] = set()
        self.alerts: list[Alert] = []

    def feed(self, e: Enriched, in_audit: np.ndarray) -> None:
        rows = np.flatnonzero(~e.local)
        if not len(rows):
            return
        client, server = _endpoints(e, rows)
        port, proto, start = e.service_port[rows], e.proto[rows], e.start[rows]
        audit = in_audit[rows]
        for i, (c, s) in enumerate(zip(client, server, strict=True)):
            key = (c, s, int(port[i]), int(proto[i]))
            if key in self.seen:
                continue
            self.seen.add(key)
            if not audit[i]:
                t = float(start[i])
                self.alerts.append(Alert("new_pair", frozenset([c]), "", t, t, t,
                                         frozenset([s])))


class RateDetector:
    """Flows per client address per 10-minute bucket against its audit maximum."""

    name = "naive-rate"

    def __init__(self) -> None:
        self.audit_max: dict[str, int] = {}
        self.counts: dict[tuple[str, int], int] = defaultdict(int)
        self.fired: set[tuple[str, int]] = set()
        self.default: float | None = None
        self.alerts: list[Alert] = []

    def _threshold(self, ip: str) -> float:
        if self.default is None:
            values = np.array(list(self.audit_max.values()) or [10])
            self.default = float(np.percentile(values, 99))
        return max(10.0, 2.0 * self.audit_max.get(ip, self.default))

    def feed(self, e: Enriched, in_audit: np.ndarray) -> None:
        rows = np.flatnonzero(~e.local)
        if not len(rows):
            return
        client = e.client_ip(rows)
        bucket = (e.start[rows] // BUCKET).astype(np.int64)
        audit = in_audit[rows]
        start = e.start[rows]
        for i, ip in enumerate(client):
            key = (ip, int(bucket[i]))
            self.counts[key] += 1
            n = self.counts[key]
            if audit[i]:
                if n > self.audit_max.get(ip, 0):
                    self.audit_max[ip] = n
                continue
            if key not in self.fired and n > self._threshold(ip):
                self.fired.add(key)
                t = float(start[i])
                self.alerts.append(Alert("rate", frozenset([ip]), "", t - BUCKET, t, t))
        if len(self.counts) > 1_000_000:  # only the current buckets matter
            newest = int(bucket.max())
            self.counts = defaultdict(int, {k: v for k, v in self.counts.items()
                                            if k[1] >= newest - 1})


__all__ = ["NewPairDetector", "RateDetector"]
