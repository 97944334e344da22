"""A throwaway Kafka broker a test may stop and restart (the shared one is never touched).

It runs ``scripts/kafka-local`` with its own state directory and free ports, reusing the
jars of the default state directory when they are there (``KAFKA_LIB_DIR`` overrides).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kafka_broker import REPO_ROOT, kafka_local, state_dir


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class OwnBroker:
    """One single-node broker in ``state`` (data kept across :meth:`restart`)."""

    state: Path
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self, keep_data: bool) -> dict[str, str]:
        lib = os.environ.get("KAFKA_LIB_DIR") or str(state_dir() / "lib")
        env = {**os.environ, "KAFKA_STATE_DIR": str(self.state), "KAFKA_PORT": str(self.port),
               "KAFKA_CONTROLLER_PORT": str(self.controller_port), "KAFKA_LIB_DIR": lib}
        env.pop("KAFKA_KEEP_DATA", None)
        if keep_data:
            env["KAFKA_KEEP_DATA"] = "1"
        return env

    def start(self, keep_data: bool = True) -> float:
        """Start (again) and wait until it serves; returns the seconds it took."""
        t0 = time.monotonic()
        proc = kafka_local("start", self.env(keep_data))
        if proc.returncode != 0:
            pytest.fail(f"own broker did not start:\n{proc.stderr}{proc.stdout}", pytrace=False)
        return time.monotonic() - t0

    def stop(self) -> None:
        kafka_local("stop", self.env(True), timeout=60)


@pytest.fixture(scope="session")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnBroker]:
    if not (REPO_ROOT / "scripts" / "kafka-local").exists():  # pragma: no cover
        pytest.skip("scripts/kafka-local missing")
    broker = OwnBroker(tmp_path_factory.mktemp("own-kafka"), *_free_ports(2))
    broker.start(keep_data=False)
    try:
        yield broker
    finally:
        broker.stop()
