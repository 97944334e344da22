"""One storage code path for embedded chdb and a ClickHouse server.

clickhouse-connect's chdb backend serialises exactly as over HTTP, so only the client
construction differs; every statement, insert and query below is shared. Driver errors
are translated here into one-line :class:`StorageError` messages.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from pipeline.errors import StorageError
from pipeline.storage import migrations, tables
from pipeline.storage.url import StoreURL, check_chdb_dir, parse_store_url, redact

log = logging.getLogger(__name__)

T = TypeVar("T")
RetryHook = Callable[[str, int, BaseException], None]
"""Called before each retry with (operation, attempt just failed (1-based), error)."""

# ClickHouse error codes worth retrying: overload, timeouts, network, parts pressure.
TRANSIENT_CODES = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE
        159,  # TIMEOUT_EXCEEDED
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        252,  # TOO_MANY_PARTS
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)
AUTH_CODES = frozenset({192, 193, 194, 516})  # UNKNOWN_USER, WRONG_PASSWORD, ..., AUTH_FAILED
_HTTP_TRANSIENT = re.compile(r"HTTP status (429|502|503|504)\b")
_CODE = re.compile(r"Code: (\d+)")
# Replacing tables are read with FINAL anyway; collapsing each inserted block on the way in
# (optimize_on_insert=1, the default) cost ~4x insert speed on edge_minute (measured).
INSERT_SETTINGS: dict[str, Any] = {"optimize_on_insert": 0}
_VERSION_TRAILER = re.compile(r"\s*\(version [^)]*\)\s*$")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient server errors: the one backoff rule of
    every retry (reads here, writes in :mod:`pipeline.storage.writer`)."""

    attempts: int | None = 5  # total tries, >= 1; None: until it works (the worker's writes)
    base_delay: float = 0.25  # seconds before the first retry
    max_delay: float = 8.0

    def exhausted(self, attempt: int) -> bool:
        """True when ``attempt`` tries (1-based) are all this policy allows."""
        return self.attempts is not None and attempt >= self.attempts

    def delay(self, attempt: int) -> float:
        """Sleep before retry number ``attempt`` (1-based): full-ish jitter in [d/2, d]."""
        d = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return d * (0.5 + random.random() / 2)


NO_RETRY = RetryPolicy(attempts=1)


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    m = _CODE.search(str(exc))
    return int(m.group(1)) if m else None


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same request may succeed (network, overload, timeouts)."""
    code = _code(exc)
    if code is not None:
        return code in TRANSIENT_CODES
    if isinstance(exc, OperationalError | ConnectionError | TimeoutError):
        return True  # transport failure without a server error code
    return bool(_HTTP_TRANSIENT.search(str(exc)))


def call_with_retry(
    fn: Callable[[], T],
    *,
    op: str,
    policy: RetryPolicy,
    on_retry: RetryHook | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``fn``; retry transient errors up to ``policy.attempts`` tries; re-raise the last."""
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:
            if policy.exhausted(attempt) or not is_transient(exc):
                raise
            log.warning("storage %s failed (attempt %d), retrying: %s", op, attempt, _short(exc))
            if on_retry is not None:
                on_retry(op, attempt, exc)
            sleep(policy.delay(attempt))
            attempt += 1


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^\"')]+)")


def _short(exc: BaseException) -> str:
    """The first line of a driver message, without the server version trailer."""
    text = str(exc).strip() or type(exc).__name__
    text = text.splitlines()[0]
    errno = _ERRNO.search(text)  # socket errors: keep the OS reason, not the urllib3 story
    if errno:
        return errno.group(1).strip().lower()
    text = _VERSION_TRAILER.sub("", text)
    return text if len(text) <= 300 else text[:297] + "..."


def translate(exc: BaseException, url: StoreURL, op: str) -> StorageError:
    """A driver error → one-line StorageError saying what is wrong and how to fix it (and
    whether retrying may help: ``transient``)."""
    if isinstance(exc, StorageError):
        return exc
    code = _code(exc)
    transient = is_transient(exc)
    if code in AUTH_CODES:
        return StorageError(
            f"ClickHouse at {url} rejected user {url.username or 'default'!r}: "
            "check the user and password in the store URL"
        )
    if not url.is_embedded and code is None and isinstance(exc, OperationalError):
        return StorageError(
            f"cannot reach ClickHouse at {url} ({redact(_short(exc), url.password)}); "
            "check host and port, and that the server is running", transient=transient
        )
    return StorageError(f"{op} failed on {url}: {redact(_short(exc), url.password)}",
                        transient=transient)


def _chdb_locked(path: Path) -> bool:
    """True when another process holds chdb's lock on ``path/status``."""
    status = path / "status"
    if not status.exists():
        return False
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    try:
        with status.open("rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fh, fcntl.LOCK_UN)
    except OSError:
        return True
    return False


def _connect_chdb(url: StoreURL) -> Client:
    assert url.path is not None
    check_chdb_dir(url.path)
    try:
        url.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create chdb directory {url.path}: {exc.strerror}") from exc
    try:
        return clickhouse_connect.get_client(interface="chdb", path=str(url.path), tz_mode="aware")
    except (ClickHouseError, RuntimeError) as exc:
        text = str(exc)
        if "Cannot lock file" in text or _chdb_locked(url.path):
            raise StorageError(
                f"chdb store {url.path} is in use by another process (cannot lock "
                f"{url.path / 'status'}); stop that process or point both at a ClickHouse server"
            ) from exc
        m = re.search(r"already initialized with path '([^']*)'", text)
        if m:
            raise StorageError(
                f"this process already has chdb store {m.group(1)} open and chdb hosts one path "
                f"per process; close that store before opening {url.path}"
            ) from exc
        raise translate(exc, url, "opening chdb") from exc


def _connect_server(url: StoreURL, connect_timeout: float, read_timeout: float) -> Client:
    try:
        return clickhouse_connect.get_client(
            interface=url.scheme,
            host=url.host,
            port=url.port,
            username=url.username or "default",
            password=url.password,
            connect_timeout=connect_timeout,
            send_receive_timeout=read_timeout,
            tz_mode="aware",
            query_retries=0,  # retries are ours (call_with_retry), counted by the hook
        )
    except Exception as exc:
        raise translate(exc, url, "connecting") from exc


class Store:
    """A segflow database on chdb or a ClickHouse server. Use :func:`open_store`."""

    def __init__(
        self,
        client: Client,
        url: StoreURL,
        *,
        retry: RetryPolicy | None = None,
        on_retry: RetryHook | None = None,
        insert_chunk_rows: int = 1_000_000,
    ) -> None:
        self._client: Client | None = client
        self.url = url
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self.insert_chunk_rows = insert_chunk_rows

    # -- plumbing -----------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The underlying clickhouse-connect client (StorageError once closed)."""
        if self._client is None:
            raise StorageError(f"store {self.url} is closed; open it again with open_store()")
        return self._client

    def _run(self, op: str, fn: Callable[[Client], T], *, retry: bool = True) -> T:
        client = self.client
        try:
            return call_with_retry(
                lambda: fn(client),
                op=op,
                policy=self.retry if retry else NO_RETRY,
                on_retry=self.on_retry,
            )
        except Exception as exc:
            raise translate(exc, self.url, op) from exc

    def _insert(self, table: str, data: pa.Table) -> int:
        """One try per chunk: writes are retried by their caller, the store writer
        (:mod:`pipeline.storage.writer`), never here too."""
        step = max(1, self.insert_chunk_rows)
        for offset in range(0, data.num_rows, step):
            chunk = data.slice(offset, step)

            def insert(c: Client, chunk: pa.Table = chunk) -> None:
                c.insert_arrow(table, chunk, settings=INSERT_SETTINGS)

            self._run(f"insert into {table}", insert, retry=False)
        return data.num_rows

    # -- public API ---------------------------------------------------------------------

    @property
    def database(self) -> str:
        return self.url.database

    def ensure_database(self) -> None:
        """Create the database if missing, then make it the client's default."""
        client = self.client
        client.database = None
        exists = self._run(
            "checking the database",
            lambda c: c.query(
                "SELECT count() FROM system.databases WHERE name = {db:String}",
                parameters={"db": self.database},
            ).result_rows[0][0],
        )
        if not exists:
            self._run(
                "creating the database",
                lambda c: c.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`"),
            )
        client.database = self.database

    def migrate(self, schemas: Path | None = None) -> list[str]:
        """Apply pending ``schemas/clickhouse`` migrations; return the file names applied."""

        def record(mig: migrations.Migration) -> None:
            row = pa.table(
                {
                    "version": pa.array([mig.version], pa.uint32()),
                    "name": [mig.path.name],
                    "checksum": [mig.checksum],
                }
            )
            self._run(
                "recording a migration", lambda c: c.insert_arrow(migrations.MIGRATIONS_TABLE, row)
            )

        return migrations.apply_migrations(
            execute=self.command,
            query_rows=self.query_rows,
            insert_record=record,
            migrations=migrations.load_migrations(schemas),
        )

    def write_edge_minutes(self, table: pa.Table) -> int:
        """Insert per-minute edge aggregates; replaying a (source_id, block) replaces it."""
        if table.num_rows == 0:
            return 0
        rows = tables.as_dictionaries(tables.normalize_edge_minutes(table))
        return self._insert(tables.EDGE_MINUTE, rows)

    def write_events(self, table: str, events: Sequence[Mapping[str, Any]]) -> int:
        """Insert event dicts into ``table``, read as ``pipeline/core/records.py`` declares
        (a table declared there needs no code here)."""
        if not events:
            return 0
        return self._insert(table, tables.events_to_arrow(table, events))

    def write_violations(self, events: Sequence[Mapping[str, Any]]) -> int:
        """Insert violation event dicts; an id re-sent with a higher version replaces."""
        if not events:
            return 0
        return self._insert(tables.VIOLATIONS, tables.violations_to_arrow(events))

    def write_rules(self, events: Sequence[Mapping[str, Any]]) -> int:
        """Insert candidate-rule event dicts; an id re-sent with a higher version replaces."""
        if not events:
            return 0
        return self._insert(tables.CANDIDATE_RULES, tables.rules_to_arrow(events))

    def write_app_readiness(self, table: pa.Table) -> int:
        """Insert ``app_readiness`` rows (:data:`pipeline.core.records.APP_READINESS`); an
        (app, day, source) re-sent with a higher version replaces."""
        if table.num_rows == 0:
            return 0
        rec = tables.records.APP_READINESS
        return self._insert(rec.table, table.select(list(rec.names)).cast(rec.schema))

    def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        """Run a SELECT; ``{name:Type}`` placeholders bind from ``parameters``."""
        params = dict(parameters) if parameters else None
        return self._run("query", lambda c: c.query_arrow(sql, parameters=params, use_strings=True))

    def query_rows(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run a SELECT and return its rows as tuples."""
        params = dict(parameters) if parameters else None
        rows = self._run("query", lambda c: c.query(sql, parameters=params).result_rows)
        return [tuple(r) for r in rows]

    def command(
        self, sql: str, parameters: Mapping[str, Any] | None = None, *, retry: bool = True
    ) -> Any:
        """Run DDL or another statement without a result set (pass ``retry=False`` when
        repeating it would not be harmless)."""
        params = dict(parameters) if parameters else None
        return self._run("command", lambda c: c.command(sql, parameters=params), retry=retry)

    def close(self) -> None:
        """Release the client (for chdb: the engine, so another path may be opened)."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # closing must not mask the caller's own error
                log.debug("closing %s: %s", self.url, exc)

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._client is None else "open"
        return f"Store({str(self.url)!r}, {state})"


def open_store(
    url: str | Path | StoreURL,
    *,
    migrate: bool = False,
    retry: RetryPolicy | None = None,
    on_retry: RetryHook | None = None,
    connect_timeout: float = 3.0,
    read_timeout: float = 300.0,
) -> Store:
    """Connect (or open chdb), create the database if missing, optionally migrate.

    Raises ConfigError for a malformed URL and StorageError when the store cannot be used
    (unreachable server, bad credentials, chdb path locked by another process).
    """
    parsed = url if isinstance(url, StoreURL) else parse_store_url(url)
    if parsed.is_embedded:
        client = _connect_chdb(parsed)
    else:
        client = _connect_server(parsed, connect_timeout, read_timeout)
    store = Store(client, parsed, retry=retry, on_retry=on_retry)
    try:
        store.ensure_database()
        if migrate:
            store.migrate()
    except BaseException:
        store.close()
        raise
    return store


__all__ = [
    "NO_RETRY",
    "RetryHook",
    "RetryPolicy",
    "Store",
    "call_with_retry",
    "is_transient",
    "open_store",
    "translate",
]
