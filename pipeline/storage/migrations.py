"""Numbered ClickHouse migrations: ``schemas/clickhouse/NNN_name.sql``, each applied once.

Applied versions are recorded in ``schema_migrations`` (version, name, checksum,
applied_at). Editing a migration that was already applied is refused: add a new file.
Statements are split on ``;`` at line ends; unqualified table names land in the
store's database.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import StorageError

SCHEMAS_ENV = "SEGFLOW_SCHEMAS_DIR"
MIGRATIONS_TABLE = "schema_migrations"
_FILE = re.compile(r"^(\d{3,})_([A-Za-z0-9_]+)\.sql$")
_SPLIT = re.compile(r";[ \t]*(?:\r?\n|$)")

CREATE_MIGRATIONS_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY version
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.replace("\r\n", "\n").encode()).hexdigest()

    def statements(self) -> list[str]:
        """The file's statements, without empty or comment-only pieces."""
        out: list[str] = []
        for piece in _SPLIT.split(self.sql):
            code = [
                ln for ln in piece.splitlines() if ln.strip() and not ln.strip().startswith("--")
            ]
            if code:
                out.append(piece.strip())
        return out


def schemas_dir() -> Path:
    """``$SEGFLOW_SCHEMAS_DIR``, the repository's ``schemas/`` (source checkouts and editable
    installs), or ``<prefix>/share/segflow/schemas`` (wheels install it there)."""
    override = os.environ.get(SCHEMAS_ENV)
    if override:
        return Path(override)
    repo = Path(__file__).resolve().parents[2] / "schemas"
    if repo.is_dir():
        return repo
    return Path(sys.prefix) / "share" / "segflow" / "schemas"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Read ``NNN_name.sql`` files in version order; StorageError on bad names or duplicates."""
    root = (directory or schemas_dir()) / "clickhouse"
    if not root.is_dir():
        raise StorageError(f"no migrations directory {root}; set {SCHEMAS_ENV} to the schemas dir")
    found: dict[int, Migration] = {}
    for path in sorted(root.glob("*.sql")):
        m = _FILE.match(path.name)
        if m is None:
            raise StorageError(f"migration file {path.name} must be named NNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise StorageError(
                f"migrations {found[version].path.name} and {path.name} share version {version}"
            )
        found[version] = Migration(version, m.group(2), path, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


Execute = Callable[[str], Any]
QueryRows = Callable[[str], list[tuple[Any, ...]]]


def apply_migrations(
    execute: Execute,
    query_rows: QueryRows,
    insert_record: Callable[[Migration], None],
    migrations: list[Migration],
) -> list[str]:
    """Apply the pending migrations in order; return the file names applied now."""
    execute(CREATE_MIGRATIONS_TABLE)
    rows = query_rows(f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE} ORDER BY version")
    applied: dict[int, tuple[str, str]] = {int(v): (str(n), str(c)) for v, n, c in rows}
    done: list[str] = []
    for mig in migrations:
        if mig.version in applied:
            name, checksum = applied[mig.version]
            if checksum != mig.checksum:
                raise StorageError(
                    f"migration {mig.path.name} changed after it was applied (as {name}); "
                    "restore it and add a new numbered migration instead"
                )
            continue
        for n, statement in enumerate(mig.statements(), start=1):
            try:
                execute(statement)
            except StorageError as exc:
                raise StorageError(
                    f"migration {mig.path.name} statement {n} failed: {exc}"
                ) from exc
        insert_record(mig)
        done.append(mig.path.name)
    return done


__all__ = [
    "MIGRATIONS_TABLE",
    "SCHEMAS_ENV",
    "Migration",
    "apply_migrations",
    "load_migrations",
    "schemas_dir",
]
