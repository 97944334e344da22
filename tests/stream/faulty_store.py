"""``python -m tests.stream.faulty_store CONTROL worker --config FILE``: ``segflow worker`` whose
store driver fails on demand, for the storage-outage test.

The worker's store is the real one (chdb through clickhouse-connect); only its client's
``insert_arrow`` is wrapped. Before every insert it reads the file CONTROL, which the test
rewrites while the worker runs:

- missing or ``up``: insert normally;
- ``down``: fail as the HTTP driver does when the server behind it is stopped (HTTP 503,
  ``build_http_error`` — the exception clickhouse-connect itself raises);
- ``slow SECONDS``: wait that long, then insert (an overloaded server).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from clickhouse_connect.driver._backend.httpcommon import build_http_error


class FaultyClient:
    def __init__(self, client: Any, control: Path) -> None:
        self._client = client
        self._control = control

    def _mode(self) -> list[str]:
        try:
            return self._control.read_text().split() or ["up"]
        except FileNotFoundError:
            return ["up"]

    def insert_arrow(self, *args: Any, **kwargs: Any) -> Any:
        mode = self._mode()
        if mode[0] == "down":
            raise build_http_error(503, None, "Service Unavailable", True,
                                   "http://clickhouse:8123", False)
        if mode[0] == "slow":
            time.sleep(float(mode[1]))
        return self._client.insert_arrow(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def main(argv: list[str]) -> int:
    control, cli_args = Path(argv[0]), argv[1:]
    import pipeline.stream.worker as worker

    real_open = worker.open_store

    def open_store(*args: Any, **kwargs: Any) -> Any:
        store = real_open(*args, **kwargs)
        store._client = FaultyClient(store._client, control)
        return store

    worker.open_store = open_store  # type: ignore[assignment]
    from pipeline.commands.cli import main as cli

    return cli(cli_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
