"""One audit start for every worker, agreed on the compacted control topic.

When ``core.audit_start`` is unset, an ingest instance calls :meth:`AuditStartAgreement.agree`
before it sends its first flows. It reads the control topic (one partition) from the
beginning and adopts the first ``audit-start/…`` record; if there is none it appends its own
proposal — the earliest flow start of its first batch, under a unique key so compaction never
removes it — waits until every in-sync replica has it, reads the topic to its end again and
adopts the *first* proposal in the log, which may be another worker's. The log's order is
the same for every reader, so workers starting together, and any worker starting later,
adopt the same start. :func:`winner` is that rule, without Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from pipeline.core.events import iso
from pipeline.errors import BrokerError
from pipeline.stream.reader import PartitionReader

log = logging.getLogger(__name__)

AUDIT_START = "audit-start/"  # key prefix of audit-start proposals
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Proposal:
    """An audit-start record of the control topic."""

    offset: int
    key: str
    start: float  # epoch s
    by: str = ""  # who proposed it
    at: float | None = None  # wall-clock time of the proposal


def proposal_value(start: float, *, by: str, at: float) -> bytes:
    """The JSON value of a proposal (``start_utc`` is for people reading the topic)."""
    return orjson.dumps({"start": start, "start_utc": iso(start), "by": by, "at": at})


def parse_proposal(offset: int, key: bytes | None, value: bytes | None) -> Proposal | None:
    """The proposal in one control record; None for other keys, tombstones and malformed
    values (every reader skips the same records, so agreement holds)."""
    name = (key or b"").decode("utf-8", "replace")
    if not name.startswith(AUDIT_START) or value is None:
        return None
    try:
        v = orjson.loads(value)
        start = float(v["start"])
        if not math.isfinite(start):
            raise ValueError("not finite")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        log.warning("control record %s at offset %d is not a proposal (%s); ignored",
                    name, offset, exc)
        return None
    at = v.get("at")
    return Proposal(offset, name, start, str(v.get("by", "")),
                    float(at) if isinstance(at, int | float) else None)


def winner(records: Iterable[tuple[int, bytes | None, bytes | None]]) -> Proposal | None:
    """Among ``(offset, key, value)`` records, the audit-start proposal with the lowest
    offset ("first record in the log wins"); None when there is none."""
    best: Proposal | None = None
    for offset, key, value in records:
        if best is not None and offset >= best.offset:
            continue
        p = parse_proposal(offset, key, value)
        if p is not None:
            best = p
    return best


def whoami(app_id: str) -> str:
    """``<app_id>@<host>:<pid>``: who made a proposal."""
    return f"{app_id}@{socket.gethostname()}:{os.getpid()}"


class AuditStartAgreement:
    """Reads and appends audit-start proposals (see the module docstring). Each call opens
    its own group-less reader, so it never waits behind the stateful stage's reads."""

    def __init__(self, topic: str, client: dict[str, Any], producer: Any, *, who: str,
                 timeout: float) -> None:
        self.topic = topic
        self.client = client  # aiokafka connection kwargs
        self.producer = producer  # an AIOKafkaProducer with acks="all"
        self.who = who
        self.timeout = timeout

    async def current(self) -> Proposal | None:
        """The winning proposal in the topic as it is now (None: no proposal yet)."""
        return await self._timed(self._current)

    async def agree(self, proposal: float) -> float:
        """The agreed audit start: the first proposal in the log, ours (``proposal``) only
        if the log had none. BrokerError when the control topic does not answer in time."""
        return await self._timed(lambda reader: self._agree(reader, proposal))

    async def _timed(self, fn: Callable[[PartitionReader], Awaitable[T]]) -> T:
        reader = PartitionReader(self.client, max_fetch_bytes=1 << 20)
        try:
            async with asyncio.timeout(self.timeout):
                await reader.start()
                return await fn(reader)
        except TimeoutError:
            raise BrokerError(
                f"no audit start agreed on topic {self.topic} within {self.timeout:g} s; "
                "check the broker, or set core.audit_start (SEGFLOW_CORE__AUDIT_START)") from None
        finally:
            await reader.stop()

    async def _current(self, reader: PartitionReader) -> Proposal | None:
        return winner(await self._records(reader))

    async def _agree(self, reader: PartitionReader, proposal: float) -> float:
        found, key = await self._current(reader), ""
        if found is None:
            key = f"{AUDIT_START}{uuid.uuid4().hex}"
            value = proposal_value(proposal, by=self.who, at=time.time())
            sent = await (await self.producer.send(self.topic, key=key.encode(), value=value,
                                                   partition=0))
            records = await self._records(reader)
            while not records or records[-1][0] < sent.offset:  # not readable yet
                await asyncio.sleep(0.05)
                records = await self._records(reader)
            found = winner(records)
            if found is None:
                raise BrokerError(f"topic {self.topic} lost the audit-start proposal at offset "
                                  f"{sent.offset}; check its cleanup.policy (compact only)")
        log.info("audit start %s agreed on %s (proposed by %s%s)", iso(found.start), self.topic,
                 found.by or "?", ", this worker" if found.key == key else "")
        return found.start

    async def _records(self, reader: PartitionReader
                       ) -> list[tuple[int, bytes | None, bytes | None]]:
        return [(r.offset, r.key, r.value) async for r in reader.read(self.topic, 0)]


__all__ = ["AUDIT_START", "AuditStartAgreement", "Proposal", "parse_proposal",
           "proposal_value", "whoami", "winner"]
