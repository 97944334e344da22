"""Write rendered policies to a directory atomically and prune stale generated files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath

import yaml

from pipeline.errors import InputError
from pipeline.policy._common import GENERATED_BY, GENERATED_BY_KEY, RenderResult

SUFFIXES = (".yaml", ".yml")
MAX_SCAN_BYTES = 4 * 1024 * 1024


def _target(out_dir: Path, rel: str) -> Path:
    """``out_dir / rel``, refusing paths that could escape ``out_dir``."""
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        raise InputError(f"refusing to write policy file {rel!r}: not a plain relative path")
    return out_dir.joinpath(*parts)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    if path.is_file() and not path.is_symlink() and path.read_bytes() == data:
        return  # unchanged: keep the mtime
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_generated(path: Path) -> bool:
    """True if ``path`` holds a YAML document carrying segflow's generated-by annotation."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_SCAN_BYTES:
            return False
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    for doc in docs:
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        ann = meta.get("annotations") if isinstance(meta, dict) else None
        if isinstance(ann, dict) and ann.get(GENERATED_BY_KEY) == GENERATED_BY:
            return True
    return False


def _prune(out_dir: Path, keep: set[Path]) -> None:
    """Remove generated YAML files not in ``keep``, then directories that this emptied."""
    emptied: set[Path] = set()
    for root, dirs, names in os.walk(out_dir, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if name.endswith(SUFFIXES) and path not in keep and is_generated(path):
                path.unlink()
                emptied.add(path.parent)
    for parent in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        while parent != out_dir and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def write_policies(result: RenderResult, out_dir: Path) -> list[Path]:
    """Write ``result.files`` under ``out_dir`` (temp file + rename each) and return the paths.

    YAML files under ``out_dir`` that segflow generated earlier but ``result`` no longer
    produces are removed; other files are never touched.
    """
    out_dir = Path(out_dir)
    targets = {rel: _target(out_dir, rel) for rel in result.files}
    out_dir.mkdir(parents=True, exist_ok=True)
    for rel, path in sorted(targets.items()):
        _write_atomic(path, result.files[rel])
    written = sorted(targets.values())
    _prune(out_dir, set(written))
    return written


__all__ = ["is_generated", "write_policies"]
