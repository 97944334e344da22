"""Storage contract: the same behaviour on embedded chdb and (if CLICKHOUSE_URL) a server.

chdb hosts one path per process, so every test closes its store before the next opens.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from clickhouse_connect.driver.exceptions import OperationalError, ProgrammingError

from pipeline.errors import ConfigError, StorageError
from pipeline.storage import (
    EDGE_MINUTE_COLUMNS,
    RetryPolicy,
    Store,
    StoreURL,
    call_with_retry,
    open_store,
    parse_store_url,
)
from pipeline.storage.migrations import SCHEMAS_ENV, schemas_dir

REPO = Path(__file__).resolve().parents[1]
SERVER_URL = os.environ.get("CLICKHOUSE_URL", "")
BACKENDS = [
    "chdb",
    pytest.param(
        "server", marks=pytest.mark.skipif(not SERVER_URL, reason="CLICKHOUSE_URL not set")
    ),
]
MINUTE = 1770260400  # 2026-02-05T03:00:00Z


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreURL]:
    """A fresh, empty store location (a tmp chdb dir, or a throwaway server database)."""
    if request.param == "chdb":
        yield parse_store_url(f"chdb://{tmp_path / 'store'}")
        return
    url = dataclasses.replace(
        parse_store_url(SERVER_URL), database=f"segflow_test_{uuid.uuid4().hex[:10]}"
    )
    yield url
    with open_store(url) as store:
        store.command(f"DROP DATABASE IF EXISTS `{url.database}`")


@pytest.fixture
def store(store_url: StoreURL) -> Iterator[Store]:
    with open_store(store_url, migrate=True) as s:
        yield s


def _labels(prefix: str, codes: np.ndarray, k: int) -> pa.Array:
    """Plain string column from a small vocabulary."""
    return pa.array([f"{prefix}{i}" for i in range(k)]).take(pa.array(codes % k))


def edge_table(n: int, *, block: int = 0, flows: int = 1, epoch_ints: bool = True) -> pa.Table:
    idx = np.arange(n)
    minute = MINUTE + (idx % 60) * 60
    const = np.zeros(n, np.int64)
    cols: dict[str, Any] = {
        "minute": pa.array(minute, pa.int64())
        if epoch_ints
        else pa.array(minute, pa.timestamp("s", tz="UTC")),
        "src_namespace": _labels("ns", idx, 7),
        "src_app": _labels("app", idx, 101),
        "dst_namespace": _labels("ns", idx, 5),
        "dst_app": _labels("svc", idx // 60, 97),
        "src_kind": _labels("pod", const, 1),
        "dst_kind": _labels("pod", const, 1),
        "service_port": pa.array(443 + idx % 3, pa.int32()),
        "proto": pa.array(const + 6, pa.int16()),
        "phase": _labels("audit", const, 1),
        "flows": pa.array(const + flows),
        "bytes": pa.array(const + 1500),
        "packets": pa.array(const + 3),
        "rejected_flows": pa.array(const),
        "violating_flows": pa.array(const),
        "source_id": _labels("flows.jsonl#", const, 1),
        "block": pa.array(const + block),
        "version": pa.array(const + 1),
    }
    return pa.table(cols)


def violation(**over: Any) -> dict[str, Any]:
    event = {
        "schema_version": 1,
        "id": "v-1",
        "ts": "2026-02-05T03:00:00.000Z",
        "type": "new_edge",
        "severity": {"label": "high", "score": 80},
        "src_ip": "10.0.1.5",
        "dst_ip": "10.0.2.9",
        "dst_port": 5432,
        "proto": 6,
        "proto_name": "tcp",
        "src_workload": "shop/web",
        "src_namespace": "shop",
        "src_app": "web",
        "dst_workload": "data/postgres",
        "dst_namespace": "data",
        "dst_app": "postgres",
        "mode": "audit",
        "reason": "shop/web never talked to data/postgres.",
        "evidence": {"expected": ["shop/api"], "seen": "shop/web"},
        "count": 1,
        "first_seen": "2026-02-05T03:00:00.000Z",
        "last_seen": "2026-02-05T03:00:00.000Z",
        "detector": "baseline",
        "version": 1,
    }
    return event | over


def rule(**over: Any) -> dict[str, Any]:
    event = {
        "schema_version": 1,
        "id": "r-1",
        "app": "data/postgres",
        "namespace": "data",
        "direction": "ingress",
        "peer": {"kind": "workload", "namespace": "shop", "app": "api", "selector": {"app": "api"}},
        "proto": 6,
        "proto_name": "tcp",
        "ports": [5432, 5433],
        "evidence": {
            "flows": 10,
            "bytes": 1000,
            "first_seen": "2026-01-20T00:00:00.000Z",
            "last_seen": "2026-02-04T23:59:00.000Z",
            "days_observed": 16,
        },
        "confidence": 0.9,
        "status": "proposed",
        "version": 1,
    }
    return event | over


def scalar(store: Store, sql: str) -> Any:
    return store.query_rows(sql)[0][0]


# -- migrations -------------------------------------------------------------------------


def test_migrations_apply_once(store_url: StoreURL) -> None:
    with open_store(store_url) as store:
        applied = store.migrate()
        assert applied == sorted(p.name for p in (schemas_dir() / "clickhouse").glob("*.sql"))
        assert store.migrate() == []
        rows = store.query_rows("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [r[1] for r in rows] == applied
        tables = {r[0] for r in store.query_rows("SHOW TABLES")}
        assert {"edge_minute", "violations", "candidate_rules"} <= tables
    with open_store(store_url, migrate=True) as store:  # reopen: still a no-op
        assert scalar(store, "SELECT count() FROM schema_migrations") == len(applied)


def test_changed_migration_is_refused(
    store_url: StoreURL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(schemas_dir() / "clickhouse", schemas / "clickhouse")
    monkeypatch.setenv(SCHEMAS_ENV, str(schemas))
    with open_store(store_url, migrate=True) as store:
        extra = schemas / "clickhouse" / "999_probe.sql"
        extra.write_text("CREATE TABLE IF NOT EXISTS probe (x UInt8) ENGINE = Memory;\n")
        assert store.migrate() == ["999_probe.sql"]
        first = schemas / "clickhouse" / "001_edge_minute.sql"
        first.write_text(first.read_text() + "\n-- edited\n")
        with pytest.raises(StorageError, match=r"001_edge_minute\.sql changed"):
            store.migrate()


# -- idempotent writes ------------------------------------------------------------------


def test_edge_minute_replay_is_idempotent(store: Store) -> None:
    table = edge_table(5_000, flows=2)
    assert store.write_edge_minutes(table) == 5_000
    total = scalar(store, "SELECT sum(flows) FROM edge_minute FINAL")
    assert total == 10_000
    store.write_edge_minutes(table)  # replayed block
    store.write_edge_minutes(edge_table(5_000, flows=2, epoch_ints=False))  # same, as timestamps
    assert scalar(store, "SELECT sum(flows) FROM edge_minute FINAL") == total
    store.write_edge_minutes(edge_table(5_000, block=1, flows=2))  # next block adds
    assert scalar(store, "SELECT sum(flows) FROM edge_minute FINAL") == 2 * total
    minute = scalar(store, "SELECT toUnixTimestamp(min(minute)) FROM edge_minute FINAL")
    assert minute == MINUTE


def test_edge_minute_rejects_missing_columns(store: Store) -> None:
    with pytest.raises(StorageError, match="lacks columns version"):
        store.write_edge_minutes(edge_table(3).drop_columns(["version"]))
    assert set(EDGE_MINUTE_COLUMNS) == set(edge_table(1).column_names)


def test_violations_replace_by_version(store: Store) -> None:
    store.write_violations([violation(), violation(id="v-2", type="new_port")])
    store.write_violations([violation()])  # replay
    store.write_violations([violation(count=7, last_seen="2026-02-05T03:05:00.500Z", version=2)])
    rows = store.query_rows(
        "SELECT id, count, severity, score, ts, last_seen, evidence FROM violations FINAL "
        "WHERE id = {id:String}",
        {"id": "v-1"},
    )
    assert len(rows) == 1
    vid, count, severity, score, ts, last_seen, evidence = rows[0]
    assert (vid, count, severity, score) == ("v-1", 7, "high", 80)
    assert ts.timestamp() == MINUTE and last_seen.timestamp() == MINUTE + 300.5
    assert evidence == '{"expected":["shop/api"],"seen":"shop/web"}'
    assert scalar(store, "SELECT count() FROM violations FINAL") == 2


def test_rules_replace_by_version(store: Store) -> None:
    cidr_peer = {"kind": "cidr", "cidr": "10.8.0.0/16", "except": []}
    store.write_rules([rule(), rule(id="r-2", peer=cidr_peer, ports=[])])
    store.write_rules([rule(status="accepted", version=2)])
    rows = store.query_rows(
        "SELECT id, status, peer, peer_kind, ports, days_observed FROM candidate_rules FINAL "
        "ORDER BY id"
    )
    assert rows == [
        ("r-1", "accepted", "shop/api", "workload", [5432, 5433], 16),
        ("r-2", "proposed", "10.8.0.0/16", "cidr", [], 16),
    ]


def test_bad_event_is_a_storage_error(store: Store) -> None:
    broken = violation()
    del broken["dst_ip"]
    with pytest.raises(StorageError, match=r"violation event 1 lacks 'dst_ip'"):
        store.write_violations([violation(), broken])
    with pytest.raises(StorageError, match="first_seen"):
        store.write_rules([rule(evidence={**rule()["evidence"], "first_seen": "soon"})])


def test_query_arrow_binds_parameters(store: Store) -> None:
    store.write_edge_minutes(edge_table(100))
    out = store.query_arrow(
        "SELECT src_app, sum(flows) AS flows FROM edge_minute FINAL "
        "WHERE src_namespace = {ns:String} GROUP BY src_app ORDER BY src_app",
        {"ns": "ns0"},
    )
    assert out.column_names == ["src_app", "flows"]
    assert sum(out.column("flows").to_pylist()) == 15  # rows 0, 7, ..., 98


def test_closed_store_raises(store_url: StoreURL) -> None:
    store = open_store(store_url)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        store.query_rows("SELECT 1")


# -- failures at the boundary -----------------------------------------------------------


def test_second_process_gets_clear_lock_error(tmp_path: Path) -> None:
    path = tmp_path / "locked"
    code = (
        "import sys\n"
        "from pipeline.errors import StorageError\n"
        "from pipeline.storage import open_store\n"
        "try:\n"
        f"    open_store({str(path)!r})\n"
        "except StorageError as exc:\n"
        "    print(exc); sys.exit(3)\n"
    )
    with open_store(path):
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 3, done.stderr[-2000:]
    message = done.stdout.strip()
    assert "in use by another process" in message and str(path) in message
    assert "\n" not in message


def test_one_chdb_path_per_process(tmp_path: Path) -> None:
    with open_store(tmp_path / "a"), pytest.raises(StorageError, match="one path per process"):
        open_store(tmp_path / "b")
    with open_store(tmp_path / "b"):  # fine once the first is closed
        pass


def test_unreachable_server_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"cannot reach ClickHouse at http://127\.0\.0\.1:1/x"):
        open_store("http://127.0.0.1:1/x", connect_timeout=1)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "ftp://host/db",
        "http:///db",
        "http://host:99999/db",
        "http://h/a/b",
        "http://h/bad-db",
        "chdb://",
        "localhost:8123",
        "clickhouse://u:pw@h/db",
    ],
)
def test_bad_url_is_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="use chdb://PATH") as err:
        open_store(bad)
    assert "pw" not in str(err.value)


# -- URLs -------------------------------------------------------------------------------


def test_parse_chdb_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = parse_store_url("chdb://var/segflow")
    assert rel.is_embedded and rel.path == tmp_path.resolve() / "var" / "segflow"
    assert parse_store_url("var/segflow") == rel
    absolute = parse_store_url("chdb:///srv/segflow")
    assert absolute.path == Path("/srv/segflow") and absolute.database == "segflow"
    assert parse_store_url("chdb:///srv/x?database=other").database == "other"
    assert str(absolute) == "chdb:///srv/segflow"


def test_parse_server_urls() -> None:
    url = parse_store_url("https://alice:s%40cret@ch.example:9443/flows")
    assert (url.scheme, url.host, url.port, url.database) == ("https", "ch.example", 9443, "flows")
    assert (url.username, url.password) == ("alice", "s@cret")
    assert "cret" not in str(url) and "cret" not in repr(url)
    assert str(url) == "https://alice:***@ch.example:9443/flows"
    plain = parse_store_url("http://ch")
    assert (plain.port, plain.database, plain.username) == (8123, "segflow", "")
    assert parse_store_url("https://ch/").port == 8443


# -- retries ----------------------------------------------------------------------------


def test_retry_is_bounded_and_counted() -> None:
    seen: list[tuple[str, int]] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise OperationalError("connection reset by peer")
        return "ok"

    def hook(op: str, attempt: int, exc: BaseException) -> None:
        seen.append((op, attempt))

    policy = RetryPolicy(attempts=4, base_delay=0.01)
    assert call_with_retry(flaky, op="insert", policy=policy, on_retry=hook, sleep=lambda s: None)
    assert seen == [("insert", 1), ("insert", 2)]

    calls["n"] = -10  # fails more often than the policy allows
    with pytest.raises(OperationalError):
        call_with_retry(flaky, op="q", policy=policy, on_retry=hook, sleep=lambda s: None)
    assert len(seen) == 2 + 3

    def syntax() -> None:
        raise ProgrammingError("Code: 62. DB::Exception: Syntax error", code=62)

    with pytest.raises(ProgrammingError):
        call_with_retry(syntax, op="q", policy=policy, on_retry=hook, sleep=lambda s: None)
    assert len(seen) == 5  # not transient: no retry
