"""File sinks: JSONL event files and the dead-letter file.

Both write to a temporary file and rename it into place on close, so a crashed run never
leaves a half-written file that looks complete, and a rerun replaces rather than appends.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import orjson

from pipeline.core.columns import Reject
from pipeline.errors import InputError


class JsonlWriter:
    """One JSON object per line, atomically replaced on close."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fh: IO[bytes] | None = self.tmp.open("wb")
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self.count = 0

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        assert self.fh is not None
        for r in records:
            self.fh.write(orjson.dumps(r))
            self.fh.write(b"\n")
            self.count += 1

    def close(self) -> None:
        if self.fh is None:
            return
        self.fh.close()
        self.fh = None
        self.tmp.replace(self.path)


def reject_record(r: Reject) -> dict[str, Any]:
    """Dead-letter record: reason, detail, where, and the raw bytes (text if UTF-8)."""
    try:
        raw: str = r.raw.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        raw = base64.b64encode(r.raw).decode()
        encoding = "base64"
    return {"reason": r.reason, "detail": r.detail, "source": r.source, "raw": raw,
            "raw_encoding": encoding}


class DeadLetterFile(JsonlWriter):
    """Rejected records with their reason."""

    def write_rejects(self, rejects: Iterable[Reject]) -> None:
        super().write(reject_record(r) for r in rejects)

    def write(self, records: Iterable[Any]) -> None:  # type: ignore[override]
        super().write(reject_record(r) if isinstance(r, Reject) else r for r in records)


__all__ = ["DeadLetterFile", "JsonlWriter", "reject_record"]
