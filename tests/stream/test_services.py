"""``known_clients_of_service`` over every partition: service maps, their union, and new_edge
events held by a partition until every partition's map is known (no Kafka).

Twelve clients of db:5432 and five of api:443 are spread over three partitions (by client,
as the ingest routes them); after the audit new clients reach both services. Each partition's
new_edge events must list the service's first clients by key over *all* partitions — what one
``Pipeline`` over every flow (replay) lists — whatever order the partitions end their audits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline.core.baseline import DAY
from pipeline.core.pipeline import SERVICE_CLIENTS_MAX, BatchOutput, Pipeline
from pipeline.core.settings import CoreSettings
from pipeline.stream import partition as partition_mod
from pipeline.stream import services as services_mod
from pipeline.stream.flowbatch import decode, encode
from pipeline.stream.outputs import latest_by_id
from pipeline.stream.partition import PartitionState, Step
from pipeline.stream.services import (
    ServiceDirectory,
    map_records,
    parse_map_record,
    union,
    with_clients,
)
from tests.conftest import T0, flow, flows_table, make_inventory

SETTINGS = CoreSettings(audit_days=1, audit_start=T0)
END = T0 + DAY
PARTS = 3
DB, API = "10.0.0.10", "10.0.0.11"
CLIENTS = [f"10.0.1.{i}" for i in range(1, 16)]  # c01..c15; client i on partition i % 3
INVENTORY = [{"ip": DB, "app": "db", "namespace": "n"},
             {"ip": API, "app": "api", "namespace": "n"},
             *({"ip": ip, "app": f"c{i + 1:02d}", "namespace": "n"}
               for i, ip in enumerate(CLIENTS))]
STEP = 2 * 3600.0  # event time per message round


def part_of(ip: str) -> int:
    return (CLIENTS.index(ip) + 1) % PARTS


def traffic() -> list[dict[str, Any]]:
    """c01..c12 → db:5432 and c08..c12 → api:443 during the audit (in descending client
    order, so learning order is not key order); afterwards c13..c15 → db, c01..c03 → api."""
    recs = []
    for h in range(0, 24, 2):
        t = T0 + h * 3600
        recs += [flow(t + k, CLIENTS[i], DB, 40_000 + k, 5432) for k, i in
                 enumerate(range(11, -1, -1))]
        recs += [flow(t + 30 + i, CLIENTS[i], API, 41_000 + i, 443) for i in range(7, 12)]
    t = END + 3 * 3600
    recs += [flow(t + i, CLIENTS[i], DB, 42_000 + i, 5432) for i in range(12, 15)]
    recs += [flow(t + 600 + i, CLIENTS[i], API, 43_000 + i, 443) for i in range(3)]
    return sorted(recs, key=lambda r: r["start"])


def messages() -> list[tuple[int, bytes]]:
    """(partition, message): per round of ``STEP`` event time, each partition its clients'
    flows of the round (or progress only), in the order ``order`` rotates; then progress far
    ahead (closes every window)."""
    recs = traffic()
    out = []
    lo = T0
    while lo <= recs[-1]["start"] + STEP:
        rnd = [r for r in recs if lo <= r["start"] < lo + STEP]
        wm = {"raw/0": lo + STEP - 1}
        for p in range(PARTS):
            mine = [r for r in rnd if part_of(r["src_ip"]) == p]
            out.append((p, _msg(mine, wm)))
        lo += STEP
    out += [(p, _msg([], {"raw/0": END + 10 * DAY})) for p in range(PARTS)]
    return out


def _msg(recs: list[dict[str, Any]], wm: dict[str, float]) -> bytes:
    return encode(flows_table(recs), ["raw/0"], np.zeros(len(recs), np.int32),
                  np.arange(len(recs)) + int(wm["raw/0"]), watermarks=wm,
                  partitions={"raw": 1}, audit_start=T0)


@pytest.fixture(scope="module")
def replay() -> dict[str, dict[str, Any]]:
    p = Pipeline(SETTINGS, make_inventory(INVENTORY))
    recs = traffic()
    out = [v for lo in range(0, len(recs), 50)
           for v in p.process(flows_table(recs[lo:lo + 50])).violations]
    return latest_by_id(out + p.flush().violations)


def run(order: list[int], directory: ServiceDirectory | None, *, last: int | None = None
        ) -> tuple[list[PartitionState], list[dict[str, Any]], list[int]]:
    """Apply every message, partitions in ``order`` within a round (partition ``last`` gets
    all its messages only after the others: its consumer is behind); on a partition's audit
    end publish its map to ``directory`` and release what that completes (the stage's job).
    Returns the states, the events in emission order and the held counts after each step."""
    states = [PartitionState(p, Pipeline(SETTINGS, make_inventory(INVENTORY)), f"flows/{p}",
                             services=directory) for p in range(PARTS)]
    msgs = messages()
    rounds = [msgs[i:i + PARTS] for i in range(0, len(msgs), PARTS)]
    steps = [(p, rnd[p][1]) for rnd in rounds for p in order if p != last]
    steps += [(p, m) for p, m in msgs if p == last]
    events: list[dict[str, Any]] = []
    held: list[int] = []
    offsets = [0] * PARTS
    for p, data in steps:
        state = states[p]
        step = state.apply(offsets[p], decode(data))
        offsets[p] += 1
        events += step.output.violations
        if step.audit_ended and directory is not None and directory.add_local(
                p, state.pipeline.service_clients()):
            for s in states:
                events += s.release()
        held.append(sum(len(s.held_events) for s in states))
    return states, events, held


def clients_of(events: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    return {k: v["evidence"]["expected"]["known_clients_of_service"]
            for k, v in events.items() if v["type"] == "new_edge"}


@pytest.mark.parametrize(("order", "last"), [([0, 1, 2], 2), ([2, 1, 0], 0), ([1, 2, 0], 1),
                                             ([0, 1, 2], None)])
def test_new_edge_events_list_every_partition_s_clients(
        order: list[int], last: int | None, replay: dict[str, dict[str, Any]]) -> None:
    states, events, held = run(order, ServiceDirectory(PARTS), last=last)
    got = latest_by_id(events)
    assert got == replay  # the whole events, known_clients_of_service included
    want = clients_of(replay)
    assert len(want) == 6
    assert {len(c) for c in want.values()} == {SERVICE_CLIENTS_MAX, 5}
    assert all(c == sorted(c) for c in want.values())
    assert held[-1] == 0 and (max(held) > 0) == (last is not None)  # held until the last
    # partition's map came (partitions ending their audits together hold nothing)
    assert len(events) == len({e["id"] for e in events})  # each emitted once
    assert all(not s.held_events for s in states)


def test_without_a_directory_a_partition_lists_its_own_clients(
        replay: dict[str, dict[str, Any]]) -> None:
    _, events, held = run([0, 1, 2], None)
    got = clients_of(latest_by_id(events))
    assert set(got) == set(clients_of(replay)) and got != clients_of(replay)
    assert set(held) == {0}


def test_held_events_survive_a_snapshot(replay: dict[str, dict[str, Any]]) -> None:
    """Partition 0 alone: its new_edge events (c15 → db, c03 → api) wait for the others'
    maps, are kept by a snapshot, and are released complete after the restore."""
    others, _, _ = run([0, 1, 2], ServiceDirectory(PARTS))
    d = ServiceDirectory(PARTS)
    state = PartitionState(0, Pipeline(SETTINGS, make_inventory(INVENTORY)), "flows/0",
                           services=d)
    for offset, (_, data) in enumerate(m for m in messages() if m[0] == 0):
        step = state.apply(offset, decode(data))
        assert not [e for e in step.output.violations if e["type"] == "new_edge"]
        if step.audit_ended:
            d.add_local(0, state.pipeline.service_clients())
    assert len(state.held_events) == 2
    restored = PartitionState.from_bytes(state.to_bytes(), SETTINGS, make_inventory(INVENTORY))
    assert restored.held_events == state.held_events and restored.services is None
    restored.services = d
    for p in (1, 2):
        assert restored.release() == []
        d.add_local(p, others[p].pipeline.service_clients())
    released = restored.release()
    assert [e["id"] for e in released] == [e["id"] for e in state.held_events]
    assert released == [replay[e["id"]] for e in released] and not restored.held_events


def test_beyond_the_bound_the_oldest_are_released_with_what_is_known(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        replay: dict[str, dict[str, Any]]) -> None:
    monkeypatch.setattr(partition_mod, "MAX_HELD_EVENTS", 1)
    with caplog.at_level("WARNING", logger="pipeline.stream.partition"):
        _, events, held = run([0, 1, 2], ServiceDirectory(PARTS), last=2)
    assert max(held) == 2  # one each on partitions 0 and 1
    assert "wait for the service maps of partitions [2]" in caplog.text
    got = latest_by_id(events)
    assert set(got) == set(replay)
    partial = [k for k in got if got[k] != replay[k]]
    assert len(partial) == 2  # without partition 2's clients; the rest as in replay
    want = clients_of(replay)
    assert all(with_clients(got[k], want[k]) == replay[k] for k in partial)


def test_union_keeps_the_first_clients_by_key() -> None:
    a = {("n/db", 5432, 6): ["n/c03", "n/c09"], ("n/api", 443, 6): ["n/c01"]}
    b = {("n/db", 5432, 6): [f"n/c{i:02d}" for i in (1, 2, 4, 5, 6, 7, 8, 10)]}
    assert union([a, b]) == {
        ("n/db", 5432, 6): [f"n/c{i:02d}" for i in range(1, 9)],
        ("n/api", 443, 6): ["n/c01"]}
    assert union([]) == {}


def test_map_records_are_chunked_and_reassembled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services_mod, "CHUNK_BYTES", 200)
    m = {(f"n/s{i:03d}", 80 + i, 6): [f"n/c{j}" for j in range(i % 4 + 1)] for i in range(30)}
    records = map_records(2, m)
    assert len(records) > 3 and records == map_records(2, dict(reversed(m.items())))
    assert [k for k, _ in records] == [f"service-clients/2/{i}".encode()
                                       for i in range(len(records))]
    d = ServiceDirectory(3)
    chunks = [parse_map_record(k, v) for k, v in records]
    assert all(c is not None for c in chunks)
    for c in chunks[:-1]:
        assert c is not None and not d.add(c)
    assert chunks[-1] is not None and d.add(chunks[-1])
    assert not d.add(chunks[-1]) and d.missing() == [0, 1]  # the same map again: no change
    assert d.clients(("n/s005", 85, 6)) == ["n/c0", "n/c1"]
    d.add_local(0, {})
    assert not d.complete and d.add_local(1, {("n/s005", 85, 6): ["n/a"]}) and d.complete
    assert d.clients(("n/s005", 85, 6)) == ["n/a", "n/c0", "n/c1"]
    assert parse_map_record(b"audit-start/x", b"{}") is None
    assert parse_map_record(b"service-clients/0/0", b"nope") is None
    assert parse_map_record(b"service-clients/0/0", None) is None


def test_a_held_new_edge_keeps_only_its_latest_version() -> None:
    """Updates of a held new_edge (first flow, then its count doubling) replace it in place:
    the hold grows with ids, not versions."""
    state = PartitionState(0, Pipeline(SETTINGS, make_inventory(INVENTORY)), "flows/0",
                           services=ServiceDirectory(PARTS))

    def ev(vid: str, version: int) -> dict[str, Any]:
        return {"id": vid, "type": "new_edge", "version": version}

    scan = {"id": "v-s", "type": "scan", "version": 1}
    out = state._complete([ev("v-1", 1), ev("v-2", 1), scan, ev("v-1", 2)], Step(BatchOutput()))
    assert out == [scan]  # only new_edge events wait
    state._complete([ev("v-1", 4), ev("v-2", 1), ev("v-3", 1)], Step(BatchOutput()))
    state._complete([ev("v-1", 3)], Step(BatchOutput()))  # an older version changes nothing
    assert state.held_events == [ev("v-1", 4), ev("v-2", 1), ev("v-3", 1)]
    restored = PartitionState.from_bytes(state.to_bytes(), SETTINGS, make_inventory(INVENTORY))
    restored.services = ServiceDirectory(PARTS)
    restored._complete([ev("v-2", 8)], Step(BatchOutput()))
    assert restored.held_events == [ev("v-1", 4), ev("v-2", 8), ev("v-3", 1)]
