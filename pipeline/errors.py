"""One exception root for segflow.

    SegflowError                 raised on purpose; the CLI prints str(exc) and exits 2
    ├── ConfigError              bad flag, setting or config file
    ├── InputError               unreadable file, unknown format, unreadable inventory
    ├── StorageError             ClickHouse / chdb unreachable or rejecting a write
    └── BrokerError              Kafka unreachable or misconfigured

Bad *records* are never exceptions: parsers return them as rejects (see ``pipeline.core.columns``).
Messages are one line: what is wrong, then how to fix it.
"""

from __future__ import annotations


class SegflowError(Exception):
    """Root of every error segflow raises deliberately."""


class ConfigError(SegflowError):
    """A flag, setting or config file is wrong."""


class InputError(SegflowError):
    """An input file or inventory cannot be read as asked."""


class StorageError(SegflowError):
    """The store is unreachable or rejected a statement. ``transient``: retrying the same
    request may succeed (network, overload, timeouts)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class BrokerError(SegflowError):
    """The Kafka broker is unreachable or rejected a request."""


__all__ = ["BrokerError", "ConfigError", "InputError", "SegflowError", "StorageError"]
