"""ClickHouse DDL, the next migration and the JSON schema files, from :mod:`pipeline.core.records`.

The numbered migrations in ``schemas/clickhouse`` are checksummed once applied, so the
declarations cannot regenerate them: instead :func:`plan_migration` compares a store's
``system.columns`` / ``system.tables`` with the records and writes the *next* migration —
``CREATE TABLE`` for a declared table the store lacks, ``ALTER TABLE … ADD COLUMN … AFTER``
for a declared column it lacks (so the column order stays the declared one). What a migration
cannot safely do by itself (a changed type, codec, order or key; a stored column nobody
declares) is reported as a problem for a person to resolve.

``segflow migrate --print-ddl`` prints that migration for a fresh store with every committed
migration applied (or for ``--store``). ``python -m pipeline.storage.ddl`` rewrites the JSON
schemas under ``schemas/``. How a developer adds a column: :mod:`pipeline.core.records`.
"""

from __future__ import annotations

import re
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.records import RECORDS, Column, Record, event_records, json_schema_text
from pipeline.errors import StorageError
from pipeline.storage.migrations import MIGRATIONS_TABLE, Migration, load_migrations, schemas_dir

if TYPE_CHECKING:
    from pipeline.storage.store import Store

QueryRows = Callable[[str], list[tuple[Any, ...]]]
GENERATED_BY = "segflow migrate --print-ddl (from pipeline/core/records.py)"


# -- DDL ---------------------------------------------------------------------------------------


def column_sql(column: Column) -> str:
    """``name Type [CODEC(...)]`` as in a CREATE TABLE or ADD COLUMN."""
    return " ".join(p for p in (column.name, column.clickhouse, column.codec_sql) if p)


def _comment_lines(text: str, width: int = 96) -> list[str]:
    # a line ending in ';' would split the file there (migrations split on ';' at line ends)
    return [f"-- {ln}" for ln in textwrap.wrap(text.replace(";", ","), width - 3)]


def create_table_sql(rec: Record) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for ``rec``, as a migration file holds it."""
    width = max(len(c.name) for c in rec.columns)
    body: list[str] = []
    for i, c in enumerate(rec.columns):
        line = f"    {c.name:<{width}} {c.clickhouse}{' ' + c.codec_sql if c.codec else ''}"
        line += "," if i < len(rec.columns) - 1 else ""
        if c.doc:
            line += f"  -- {c.doc.replace(';', ',')}"
        body.append(line.rstrip())
    keys = ", ".join(rec.order_by)
    order = f"({keys})" if len(rec.order_by) > 1 else keys or "tuple()"
    lines = [
        *_comment_lines(rec.doc),
        f"CREATE TABLE IF NOT EXISTS {rec.table}",
        "(",
        *body,
        ")",
        f"ENGINE = {rec.engine}",
        *([f"PARTITION BY {rec.partition_by}"] if rec.partition_by else []),
        f"ORDER BY {order}",
    ]
    return "\n".join(lines)


def add_column_sql(rec: Record, column: Column) -> str:
    """``ALTER TABLE … ADD COLUMN`` placing ``column`` where ``rec`` declares it."""
    i = rec.names.index(column.name)
    where = "FIRST" if i == 0 else f"AFTER {rec.names[i - 1]}"
    return f"ALTER TABLE {rec.table} ADD COLUMN IF NOT EXISTS {column_sql(column)} {where}"


# -- what a store holds ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredColumn:
    """A column as ``system.columns`` reports it (codec: ``CODEC(...)`` or "")."""

    name: str
    type: str
    codec: str = ""


@dataclass(frozen=True, slots=True)
class StoredTable:
    """A table as ``system.columns`` and ``system.tables`` report it."""

    columns: tuple[StoredColumn, ...]
    engine: str = ""  # e.g. ReplacingMergeTree(version)
    sorting_key: str = ""
    partition_key: str = ""


_ENGINE_END = re.compile(r"\s+(PARTITION BY|ORDER BY|PRIMARY KEY|SAMPLE BY|TTL|SETTINGS)\b")


def declared(rec: Record) -> StoredTable:
    """How ``rec``'s table must look in the system tables."""
    return StoredTable(
        columns=tuple(StoredColumn(c.name, c.clickhouse, c.codec_sql) for c in rec.columns),
        engine=rec.engine,
        sorting_key=", ".join(rec.order_by),
        partition_key=rec.partition_by,
    )


def read_tables(query_rows: QueryRows) -> dict[str, StoredTable]:
    """Every table of the current database, as :class:`StoredTable`."""
    columns: dict[str, list[StoredColumn]] = {}
    for table, name, kind, codec in query_rows(
        "SELECT table, name, type, compression_codec FROM system.columns "
        "WHERE database = currentDatabase() ORDER BY table, position"
    ):
        columns.setdefault(str(table), []).append(StoredColumn(str(name), str(kind), str(codec)))
    out: dict[str, StoredTable] = {}
    for name, engine_full, sorting_key, partition_key in query_rows(
        "SELECT name, engine_full, sorting_key, partition_key FROM system.tables "
        "WHERE database = currentDatabase()"
    ):
        engine = _ENGINE_END.split(str(engine_full), maxsplit=1)[0].strip()
        out[str(name)] = StoredTable(tuple(columns.get(str(name), ())), engine,
                                     str(sorting_key), str(partition_key))
    return out


def differences(rec: Record, stored: StoredTable, *, missing: bool = True) -> list[str]:
    """What differs between ``rec`` and its stored table, one line each ([] = in line);
    ``missing=False`` leaves out declared columns the table lacks (ADD COLUMN fixes those)."""
    want = declared(rec)
    have = {c.name: c for c in stored.columns}
    out: list[str] = []
    for c in want.columns:
        got = have.get(c.name)
        if got is None:
            if missing:
                out.append(f"{rec.table}.{c.name}: missing, declared {c.type} {c.codec}".rstrip())
        elif (got.type, got.codec) != (c.type, c.codec):
            out.append(f"{rec.table}.{c.name}: stored as {got.type} {got.codec}".rstrip()
                       + f", declared {c.type} {c.codec}".rstrip())
    names = {c.name for c in want.columns}
    out.extend(f"{rec.table}.{c.name}: stored but not declared in pipeline/core/records.py"
               for c in stored.columns if c.name not in names)
    shared = [c.name for c in stored.columns if c.name in names]
    if shared != [c.name for c in want.columns if c.name in have]:
        out.append(f"{rec.table}: column order {shared} differs from the declared order")
    for what, got_v, want_v in (("ENGINE", stored.engine, want.engine),
                                ("ORDER BY", stored.sorting_key, want.sorting_key),
                                ("PARTITION BY", stored.partition_key, want.partition_key)):
        if got_v != want_v:
            out.append(f"{rec.table}: {what} is {got_v or 'none'!r}, declared {want_v or 'none'!r}")
    return out


# -- the next migration ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NextMigration:
    """The migration that brings a store in line with the records (maybe nothing)."""

    version: int
    name: str
    statements: tuple[str, ...]
    problems: tuple[str, ...]  # differences a migration written here cannot fix

    @property
    def filename(self) -> str:
        return f"{self.version:03d}_{self.name}.sql"

    @property
    def needed(self) -> bool:
        return bool(self.statements)

    def sql(self) -> str:
        """The file's text: a header, then each statement ending in ``;``."""
        head = f"-- {self.filename}: generated by {GENERATED_BY}\n"
        return head + "".join(f"\n{s};\n" for s in self.statements)


def plan_migration(stored: Mapping[str, StoredTable], existing: Sequence[Migration],
                   records: Sequence[Record] = RECORDS) -> NextMigration:
    """The next numbered migration for a store holding ``stored``, after ``existing``."""
    statements: list[str] = []
    problems: list[str] = []
    parts: list[str] = []
    for rec in records:
        table = stored.get(rec.table)
        if table is None:
            statements.append(create_table_sql(rec))
            parts.append(f"create_{rec.table}")
            continue
        have = {c.name for c in table.columns}
        added = [c for c in rec.columns if c.name not in have]
        for c in added:
            statements.append(add_column_sql(rec, c))
        if added:
            parts.append(f"{rec.table}_add_{added[0].name}" if len(added) == 1
                         else f"{rec.table}_add_columns")
        problems.extend(differences(rec, table, missing=False))
    version = max((m.version for m in existing), default=0) + 1
    name = "_".join(parts)[:60].rstrip("_") or "records"
    return NextMigration(version, name, tuple(statements), tuple(problems))


def pending_migrations(query_rows: QueryRows, migrations: Sequence[Migration]) -> list[str]:
    """File names of ``migrations`` the store has not applied."""
    tables = {str(r[0]) for r in query_rows(
        "SELECT name FROM system.tables WHERE database = currentDatabase()")}
    applied: set[int] = set()
    if MIGRATIONS_TABLE in tables:
        applied = {int(r[0]) for r in query_rows(f"SELECT version FROM {MIGRATIONS_TABLE}")}
    return [m.path.name for m in migrations if m.version not in applied]


def next_migration(store: Store, directory: Path | None = None) -> NextMigration:
    """The next migration for ``store``; StorageError when it has pending migrations (apply
    them first: the next one is planned on top of every committed one)."""
    existing = load_migrations(directory)
    pending = pending_migrations(store.query_rows, existing)
    if pending:
        raise StorageError(
            f"{store.url} has migrations not applied yet ({', '.join(pending)}); run "
            f"`segflow migrate --store {store.url}` first, or leave out --store to plan "
            "against a fresh store")
    return plan_migration(read_tables(store.query_rows), existing)


def next_migration_for_fresh_store(directory: Path | None = None) -> NextMigration:
    """:func:`next_migration` on a temporary chdb store with every committed migration
    applied (opens chdb: not in a process that already has another chdb store open)."""
    from pipeline.storage.store import open_store

    with (tempfile.TemporaryDirectory(prefix="segflow-ddl-") as tmp,
          open_store(f"chdb://{tmp}/store") as store):
        store.migrate(directory)
        return next_migration(store, directory)


# -- JSON schemas ------------------------------------------------------------------------------


def json_schema_files(records: Iterable[Record] = RECORDS) -> dict[str, str]:
    """``<event>.schema.json`` → text, for every event record."""
    return {f"{r.event}.schema.json": json_schema_text(r) for r in event_records(list(records))}


def write_json_schemas(directory: Path | None = None) -> list[Path]:
    """(Re)write the JSON schemas of the records into ``schemas/``; return the files written."""
    root = directory or schemas_dir()
    written: list[Path] = []
    for name, text in json_schema_files().items():
        path = root / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def main() -> int:
    """``python -m pipeline.storage.ddl``: rewrite the JSON schemas from the records."""
    written = write_json_schemas()
    print("\n".join(f"wrote {p}" for p in written) or "JSON schemas are up to date",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "NextMigration",
    "StoredColumn",
    "StoredTable",
    "add_column_sql",
    "column_sql",
    "create_table_sql",
    "declared",
    "differences",
    "json_schema_files",
    "next_migration",
    "next_migration_for_fresh_store",
    "pending_migrations",
    "plan_migration",
    "read_tables",
    "write_json_schemas",
]
