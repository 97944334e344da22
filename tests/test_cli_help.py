"""Help text and defaults for every option, --version, and the messages for empty or fully
rejected input (one line, non-zero exit when nothing at all was accepted)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from pipeline.commands.cli import build_parser, main
from tests.test_cli import segflow

HUBBLE = Path(__file__).parent / "fixtures" / "sources" / "hubble" / "basic-sample-10-flows.json"


def _parsers(p: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield p.prog, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_of_every_command_has_help_and_says_its_default() -> None:
    root = build_parser()
    walked = dict(_parsers(root))
    assert {"segflow replay", "segflow generate", "segflow demo", "segflow migrate",
            "segflow worker"} <= set(walked)
    missing, no_default = [], []
    for prog, parser in walked.items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{prog} {c.dest}" for c in action._choices_actions if not c.help]
                continue
            name = f"{prog} {'/'.join(action.option_strings) or action.dest}"
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(name)
                continue
            flag_only = action.nargs == 0  # store_true, --version, -h
            if action.option_strings and not flag_only and action.default is not None:
                text = action.help % {"default": action.default, "prog": prog}
                if "default" not in text.lower():
                    no_default.append(name)
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"options whose help does not say their default: {no_default}"


def test_top_level_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    r = segflow("--help")
    assert r.returncode == 0 and "``" not in r.stdout
    assert "replay" in r.stdout and "--version" in r.stdout
    r = segflow("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"segflow {metadata.version('segflow')}"
    for command in ("replay", "generate", "demo", "migrate", "report", "query", "worker"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        text = capsys.readouterr().out
        assert exit_.value.code == 0 and f"usage: segflow {command}" in text
        assert "``" not in text, command


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``segflow ARGS`` in this process (the subprocess form is in test_cli.py)."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_error_line(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, out, err = run(capsys, *args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("segflow: error: ")
    return lines[0]


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
@pytest.mark.parametrize("fmt", [[], ["--format", "canonical"], ["--format", "aws-vpc"]])
def test_an_empty_input_file_says_it_is_empty(tmp_path: Path, content: bytes, fmt: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "flows.jsonl"
    empty.write_bytes(content)
    line = _one_error_line(capsys, "replay", str(empty), *fmt, "--no-store")
    assert line.endswith("flows.jsonl is empty: no flow records to replay"), line
    assert "cannot tell" not in line


def test_an_empty_gzip_file_says_it_is_empty(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import gzip

    empty = tmp_path / "flows.jsonl.gz"
    empty.write_bytes(gzip.compress(b""))
    line = _one_error_line(capsys, "replay", str(empty), "--no-store")
    assert "flows.jsonl.gz is empty" in line


def test_an_empty_file_among_others_is_skipped_with_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.json").write_bytes(b"")
    code, out, err = run(capsys, "replay", str(HUBBLE), str(tmp_path / "empty.json"),
                         "--no-store", "--audit-days", "1")
    assert code == 0, err
    assert "segflow: warning: " in err and "empty.json is empty: skipped" in err
    assert "empty files            1 skipped" in out


@pytest.mark.parametrize("fmt", ["aws-vpc", "zeek", "suricata"])
def test_fully_rejected_input_exits_non_zero_with_one_line(
        tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    inv = tmp_path / "inv.jsonl"
    inv.write_text('{"cidr": "10.0.0.0/8", "app": "any"}\n')
    dead = tmp_path / "dead.jsonl"
    line = _one_error_line(capsys, "replay", str(HUBBLE), "--format", fmt, "--inventory",
                           str(inv), "--no-store", "--dead-letter", str(dead),
                           "--progress", "off")
    if fmt == "suricata":  # lines without event_type are not flow records to it: skipped
        assert "no flow record found in 1 file(s) read as suricata, nothing accepted: " \
            "check --format" in line
        return
    assert "none of the 10 records was accepted (" in line and "check --format" in line
    assert f"rejects in {dead}" in line
    assert len(dead.read_text().splitlines()) == 10
