"""Broker outages in the worker's log: one segflow line when Kafka is lost, one when it is back.

aiokafka logs every failed connection attempt and every failed fetch, metadata update and
heartbeat: ~200 lines a second while a broker is down (measured: 5,753 lines in a 30 s
outage), and none of them says in plain words that the broker is gone or back.
:class:`LibraryLogLimiter` (a filter on the process's log handlers) lets the first record of
each library message through and then at most one per ``every`` seconds, with the number it
held back; segflow's own records always pass. It also tells :class:`BrokerWatch` when a
library record reports a failed connection; the watch confirms with a metadata request and
logs the state change, then probes until the broker answers again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

OWN_LOGGERS = "pipeline"
MAX_KEYS = 1024  # distinct (logger, level, template) remembered; cleared at the bound
CONNECTION_TROUBLE = re.compile(
    r"Unable connect|Unable to (update|request) metadata|NodeNotReady|KafkaConnectionError|"
    r"Connect call failed|Connection at .* closed|coordinator dead|Heartbeat failed|"
    r"Failed fetch messages|Connection refused", re.IGNORECASE)


class LibraryLogLimiter(logging.Filter):
    """Rate-limits library log records per message template (see the module docstring)."""

    def __init__(self, every: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every = every
        self.clock = clock
        self.suppressed = 0  # records held back since start
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key → [last shown, held]
        self._listeners: list[Callable[[str], None]] = []
        self._lock = threading.Lock()  # kafka-python logs from worker threads too

    def subscribe(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(message)`` for each library record about a failed connection;
        returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == OWN_LOGGERS or record.name.startswith(OWN_LOGGERS + "."):
            return True
        if record.levelno >= logging.WARNING and self._listeners:
            text = record.getMessage()
            if CONNECTION_TROUBLE.search(text):
                for listener in list(self._listeners):
                    listener(text)
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.every:
                seen[1] += 1
                self.suppressed += 1
                return False
            if len(self._seen) >= MAX_KEYS:
                self._seen.clear()
            self._seen[key] = [now, 0]
        if seen is not None and seen[1]:
            record.msg = (f"{record.msg} [and {int(seen[1])} more like this in the last "
                          f"{now - seen[0]:.0f} s, not shown]")
        return True


_installed: LibraryLogLimiter | None = None


def install_limiter(every: float = 30.0) -> LibraryLogLimiter:
    """Put one limiter on every handler of the root logger (once per process)."""
    global _installed
    if _installed is None:
        _installed = LibraryLogLimiter(every)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_installed)
    return _installed


def installed_limiter() -> LibraryLogLimiter | None:
    return _installed


class BrokerWatch:
    """Whether the broker answers, logged once per change (``lost`` / ``back``).

    ``probe`` is one cheap request that raises when the broker does not answer. It runs on
    :meth:`tick` when a library reported a connection failure, every ``probe_every`` seconds
    while the broker is lost, and every ``idle_every`` seconds otherwise.
    """

    def __init__(self, where: str, probe: Callable[[], Awaitable[Any]], *,
                 on_change: Callable[[bool], None] | None = None,
                 suppressed: Callable[[], int] = lambda: 0,
                 probe_every: float = 2.0, idle_every: float = 15.0, timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.where = where
        self.probe = probe
        self.on_change = on_change
        self.suppressed = suppressed
        self._held_at_loss = 0
        self.probe_every, self.idle_every, self.timeout = probe_every, idle_every, timeout
        self.clock = clock
        self.up = True
        self.since = clock()
        self.last_probe = clock()
        self._reported: str | None = None  # first library complaint since the last probe

    def suspect(self, detail: str) -> None:
        """A library reported a failed connection (any thread)."""
        if self._reported is None:
            self._reported = detail

    async def tick(self) -> None:
        now = self.clock()
        if not self.up:
            due = self.probe_every
        else:
            due = 0.0 if self._reported is not None else self.idle_every
        if now - self.last_probe < due:
            return
        detail, self._reported = self._reported, None
        self.last_probe = now
        try:
            await asyncio.wait_for(self.probe(), self.timeout)
        except (Exception, TimeoutError) as exc:
            if self.up:
                self._held_at_loss = self.suppressed()
                self._change(False)
                log.warning("lost the connection to Kafka at %s (%s); checking every %.0f s "
                            "until it answers, the Kafka clients retry meanwhile", self.where,
                            _short(detail) or _short(repr(exc)), self.probe_every)
            return
        if not self.up:
            down_for = self.clock() - self.since
            held = self.suppressed() - self._held_at_loss
            self._change(True)
            log.info("Kafka at %s is back after %.0f s (%d library log lines about it not "
                     "shown); processing resumes", self.where, down_for, held)

    def _change(self, up: bool) -> None:
        self.up = up
        self.since = self.clock()
        if self.on_change is not None:
            self.on_change(up)


def _short(text: str | None, limit: int = 160) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["BrokerWatch", "LibraryLogLimiter", "install_limiter", "installed_limiter"]
