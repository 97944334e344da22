"""File outputs of a run: JSONL event files, the dead-letter file and staged artifacts.

Every file is written under a temporary name next to its target and renamed into place only
when the whole run succeeded (:class:`Outputs`): a crashed, interrupted or failed re-run
leaves the previous run's files exactly as they were, never half-written or truncated, and
a successful re-run replaces rather than appends.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson

from pipeline.core.columns import Reject
from pipeline.errors import InputError


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _open_temp(path: Path) -> tuple[Path, IO[bytes]]:
    tmp = _temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tmp, tmp.open("wb")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _finish(fh: IO[bytes], path: Path) -> None:
    try:
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
    except OSError as exc:
        fh.close()
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed into place."""
    tmp, fh = _open_temp(path)
    try:
        fh.write(data)
        _finish(fh, path)
        tmp.replace(path)
    except BaseException:
        fh.close()
        tmp.unlink(missing_ok=True)
        raise


class JsonlWriter:
    """One JSON object per line into a temporary file; :meth:`commit` puts it in place.

    :meth:`close` commits (for standalone use); inside :class:`Outputs` the set commits.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp, fh = _open_temp(path)
        self.fh: IO[bytes] | None = fh
        self.count = 0

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        assert self.fh is not None
        for r in records:
            self.fh.write(orjson.dumps(r))
            self.fh.write(b"\n")
            self.count += 1

    def finish(self) -> None:
        """Flush and close the temporary file (it stays under its temporary name)."""
        if self.fh is not None:
            fh, self.fh = self.fh, None
            _finish(fh, self.path)

    def commit(self) -> None:
        self.finish()
        if self.tmp.exists():
            self.tmp.replace(self.path)

    def abort(self) -> None:
        """Drop what was written; the file at ``path`` (if any) stays as it was."""
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        self.tmp.unlink(missing_ok=True)

    def close(self) -> None:
        self.commit()


class Outputs:
    """A run's output files, put in place together only if the run succeeds.

    As a context manager it commits on a normal exit and aborts on any exception (including
    ``KeyboardInterrupt``). :meth:`commit` first runs the deferred writers (the policy
    directory, which is written file by file), then renames every staged file into place;
    :meth:`abort` deletes the temporary files. A crash between two renames can leave some
    files from the new run and some from the old one, each complete.
    """

    def __init__(self) -> None:
        self._files: list[JsonlWriter] = []
        self._staged: list[tuple[Path, Path]] = []  # (temporary, target)
        self._deferred: list[Callable[[], None]] = []
        self.done = False

    def jsonl(self, path: Path) -> JsonlWriter:
        w = JsonlWriter(path)
        self._files.append(w)
        return w

    def dead_letter(self, path: Path) -> DeadLetterFile:
        w = DeadLetterFile(path)
        self._files.append(w)
        return w

    def stage(self, path: Path, data: bytes) -> None:
        """Write ``data`` now under a temporary name; it replaces ``path`` on commit."""
        tmp, fh = _open_temp(path)
        self._staged.append((tmp, path))
        try:
            fh.write(data)
            _finish(fh, path)
        except BaseException:
            fh.close()
            raise

    def defer(self, write: Callable[[], None]) -> None:
        """Run ``write`` at commit time, before the staged files are renamed."""
        self._deferred.append(write)

    def commit(self) -> None:
        try:
            for w in self._files:
                w.finish()
            for write in self._deferred:
                write()
            for w in self._files:
                w.commit()
            for tmp, path in self._staged:
                tmp.replace(path)
        except BaseException:
            self.abort()
            raise
        self.done = True

    def abort(self) -> None:
        for w in self._files:
            w.abort()
        for tmp, _ in self._staged:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        self.done = True

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.done:
            return
        if et is None:
            self.commit()
        else:
            self.abort()


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


__all__ = ["DeadLetterFile", "JsonlWriter", "Outputs", "reject_record", "write_atomic"]
