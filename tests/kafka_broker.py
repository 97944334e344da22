"""Pytest plugin: a real Apache Kafka broker for tests marked ``kafka``.

Register once in ``tests/conftest.py``::

    pytest_plugins = ["tests.kafka_broker"]

Fixtures:

* ``kafka_bootstrap`` (session) -> ``"host:port"``. Uses ``$KAFKA_BOOTSTRAP`` if set, else
  runs ``scripts/kafka-local start``; a broker started by pytest is stopped when the last
  pytest session using it ends, one started by hand keeps running.
* ``kafka_topic`` -> ``make(partitions=4, compacted=False, *, prefix, configs) -> name``;
  ``new_topic(bootstrap, partitions=4, compacted=False)`` is the plain-function form.

Tests that use ``kafka_bootstrap`` (directly or through ``kafka_topic``) get the ``kafka``
mark automatically, so ``pytest -m "not kafka"`` skips them.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = REPO_ROOT / "scripts" / "kafka-local"
# A first start on a fresh machine downloads ~45 MB of jars through Maven (~40 s here);
# stay below pytest-timeout's 600 s so a hang reports as a start failure.
START_TIMEOUT_S = 540


def state_dir(env: dict[str, str] | None = None) -> Path:
    """State directory ``scripts/kafka-local`` uses under ``env`` (default: os.environ)."""
    env = os.environ if env is None else env
    return Path(env.get("KAFKA_STATE_DIR") or REPO_ROOT / ".kafka").resolve()


def kafka_local(
    command: str, env: dict[str, str] | None = None, timeout: float = START_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/kafka-local <command>``; output captured, exit status not checked."""
    return subprocess.run(
        [str(KAFKA_LOCAL), command],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def new_topic(
    bootstrap: str,
    partitions: int = 4,
    compacted: bool = False,
    *,
    prefix: str = "test",
    configs: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> str:
    """Create a uniquely named topic and wait until every partition has a leader."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    topic_configs = dict(configs or {})
    if compacted:
        topic_configs.setdefault("cleanup.policy", "compact")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="segflow-tests")
    try:
        admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=topic_configs)], timeout_ms=10_000
        )
        deadline = time.monotonic() + timeout_s
        while True:
            (meta,) = admin.describe_topics([name])
            parts = meta.get("partitions") or []
            # kafka-python 3 says "leader_id", 2.x says "leader".
            leaders = [p.get("leader_id", p.get("leader", -1)) for p in parts]
            if len(leaders) == partitions and all(leader >= 0 for leader in leaders):
                return name
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name}: partitions without leader after {timeout_s}s")
            time.sleep(0.1)
    finally:
        admin.close()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a running broker: ``$KAFKA_BOOTSTRAP`` or the local one."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    sdir = state_dir()
    sdir.mkdir(parents=True, exist_ok=True)
    pid_file, owner_file = sdir / "kafka.pid", sdir / "pytest-owned"
    # Each pytest session using the local broker holds a shared lock on users.lock. At the
    # end, a session that gets the lock exclusively (last user) stops the broker if a pytest
    # session started it (owner_file names its pid); a broker started by hand keeps running.
    with open(sdir / "users.lock", "w") as users:
        fcntl.flock(users, fcntl.LOCK_SH)
        was_running = kafka_local("status", timeout=30).returncode == 0
        proc = kafka_local("start")
        if proc.returncode != 0:
            pytest.fail(
                "scripts/kafka-local start failed (deselect with -m 'not kafka', or set "
                f"KAFKA_BOOTSTRAP):\n{proc.stderr}{proc.stdout}",
                pytrace=False,
            )
        if not was_running:
            owner_file.write_text(pid_file.read_text())
        try:
            yield proc.stdout.strip().splitlines()[-1]
        finally:
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another pytest session still uses the broker; it will stop it
            else:
                owner = owner_file.read_text() if owner_file.exists() else None
                if owner and pid_file.exists() and owner == pid_file.read_text():
                    kafka_local("stop", timeout=60)
                owner_file.unlink(missing_ok=True)


@pytest.fixture
def kafka_topic(kafka_bootstrap: str) -> Callable[..., str]:
    """Factory: ``kafka_topic(partitions=4, compacted=False, ...)`` -> new topic name."""

    def make(
        partitions: int = 4,
        compacted: bool = False,
        *,
        prefix: str = "test",
        configs: dict[str, str] | None = None,
    ) -> str:
        return new_topic(kafka_bootstrap, partitions, compacted, prefix=prefix, configs=configs)

    return make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the broker as ``kafka``."""
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)
