"""``segflow worker`` errors and ``segflow generate --to-kafka``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest

from pipeline.commands.cli import main
from tests.stream.harness import new_topics, read_topic


def worker_config(tmp_path: Path, **settings: object) -> Path:
    cfg = {"store": f"chdb://{tmp_path / 'store'}", "metrics_port": 0, **settings}
    path = tmp_path / "worker.json"
    path.write_text(json.dumps(cfg))
    return path


def test_unreachable_broker_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    cfg = worker_config(tmp_path, kafka={"bootstrap": "127.0.0.1:1", "connect_timeout": 1.5})
    t0 = time.monotonic()
    assert main(["worker", "--config", str(cfg)]) == 2
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "cannot reach Kafka at 127.0.0.1:1 within 1.5 s" in err
    assert "SEGFLOW_KAFKA__BOOTSTRAP" in err


def test_unknown_raw_format_is_a_config_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = worker_config(tmp_path, topics={"raw": {"flows-in": "netflow-v11"}})
    assert main(["worker", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "topics.raw: topic 'flows-in' has unknown format 'netflow-v11'" in err
    assert "canonical" in err


def test_unknown_role_is_a_config_error(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = worker_config(tmp_path, role="both")
    assert main(["worker", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "role" in err, err


@pytest.mark.kafka
def test_generate_to_kafka(kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    topics = new_topics(kafka_bootstrap)
    args = ["generate", "--to-kafka", kafka_bootstrap, "--topic", topics.raw,
            "--inventory-topic", topics.name("inventory"), "--seed", "3", "--apps", "4",
            "--days", "1", "--audit-days", "1", "--flows-per-day", "400", "--per-message", "7"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "flows in" in out and topics.raw in out
    messages = read_topic(kafka_bootstrap, topics.raw)
    records = [line for m in messages for line in m.value.split(b"\n")]
    assert len(messages) == -(-len(records) // 7)
    assert all(orjson.loads(r)["src_ip"] for r in records)
    inventory = read_topic(kafka_bootstrap, topics.name("inventory"))
    assert inventory and all(b"@" in r.key for r in inventory)
