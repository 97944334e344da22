"""Issue 10 item 12: ``--store chdb://DIR`` refuses a folder that is neither empty nor a store."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.commands import cli
from pipeline.errors import ConfigError
from pipeline.storage import open_store


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_non_empty_folder_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    with pytest.raises(ConfigError, match=r"not empty and not a segflow store .*passwd"):
        open_store(f"chdb://{etc}")
    assert _listing(etc) == ["hosts", "passwd"]  # nothing created


def test_file_as_store_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        open_store(f"chdb://{f}")


def test_new_empty_and_existing_store_folders_are_accepted(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (tmp_path / "new" / "store", empty):
        with open_store(f"chdb://{path}", migrate=True):
            pass
        with open_store(f"chdb://{path}") as again:  # reopening a store is fine
            assert again.migrate() == []


def test_cli_gives_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "passwd").write_text("x")
    assert cli.main(["migrate", "--store", f"chdb://{tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a segflow store" in err
    assert _listing(tmp_path) == ["passwd"]
