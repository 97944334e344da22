"""Write to a store from a background thread, so parsing and inserting overlap.

The embedded engine (and the HTTP client) release the GIL while they work, so on a
two-core machine the insert of one batch runs while the next one is parsed. The queue is
bounded (back-pressure: a slow store slows the producer, never grows memory); the first
write error is re-raised to the producer on every later call and on :meth:`close`, and no
write after it is attempted.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from pipeline.errors import StorageError

_STOP = object()


class BackgroundWriter:
    """Forwards ``write_*`` calls of a store to one writer thread, in order."""

    def __init__(self, store: Any, *, max_pending: int = 4) -> None:
        self.store = store
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="segflow-store-writer",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            fn, arg = item
            if self._error is None:
                try:
                    fn(arg)
                except BaseException as exc:  # re-raised in the producer thread
                    self._error = exc

    def _submit(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self._raise()
        self._q.put((fn, arg))

    def _raise(self) -> None:
        err = self._error  # sticky: after a failure every call fails, nothing more is written
        if err is not None:
            if isinstance(err, StorageError):
                raise err
            raise StorageError(f"store write failed: {err}") from err

    def write_edge_minutes(self, table: Any) -> None:
        self._submit(self.store.write_edge_minutes, table)

    def write_violations(self, events: list[dict[str, Any]]) -> None:
        self._submit(self.store.write_violations, events)

    def write_rules(self, events: list[dict[str, Any]]) -> None:
        self._submit(self.store.write_rules, events)

    def close(self) -> None:
        """Wait for every queued write; raise the first error if one happened."""
        if self._thread.is_alive():
            self._q.put(_STOP)
            self._thread.join()
        self._raise()


__all__ = ["BackgroundWriter"]
