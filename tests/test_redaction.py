"""Issue 10 item 8: the store password never appears in messages, logs or the summary."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from pipeline.commands import cli
from pipeline.commands.replay import ReplaySummary
from pipeline.commands.summary import print_replay_summary
from pipeline.errors import ConfigError, StorageError
from pipeline.storage import open_store, parse_store_url
from pipeline.storage.store import translate
from pipeline.storage.url import RedactingFilter, redact

SECRET = "s3cr3t"
URLS = [
    f"http://user:pa/{SECRET}@host:1/db",  # unencoded '/' in the password
    f"http:user:{SECRET}@host/db",  # missing '//'
    f"http://user:{SECRET}@host:99999/db",
    f"http://user:{SECRET}@host/a/b",
    f"http://user:{SECRET}@host/db?x=1",
    f"https://user:p@{SECRET}@host/bad-db",
    f"ftp://user:{SECRET}@host/db",
    f"clickhouse://u:{SECRET}@h/db",
    f"http://user:{SECRET}@/db",
    f"http://:{SECRET}@host/db",
    f"https://user:{SECRET}:x@host:8443/db",
]


@pytest.mark.parametrize("url", URLS)
def test_parse_errors_and_parsed_urls_hide_the_password(url: str) -> None:
    try:
        parsed = parse_store_url(url)
    except ConfigError as exc:
        assert SECRET not in str(exc)
        assert "***" in str(exc) or "user" not in url
        return
    assert SECRET not in str(parsed) and SECRET not in repr(parsed)


@pytest.mark.parametrize("url", URLS)
def test_redact_hides_every_form(url: str) -> None:
    assert SECRET not in redact(f"failed on {url}; retrying")
    assert SECRET not in redact(f"'{url}'")


def test_redact_keeps_urls_without_a_password() -> None:
    for text in ("http://host:8123/db", "chdb:///var/x", "ns/app:8080", "a: b@c"):
        assert redact(text) == text
    assert redact("boom secret here", "secret") == "boom *** here"


def test_cli_errors_hide_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    for url in URLS:
        assert cli.main(["migrate", "--store", url]) == 2
        err = capsys.readouterr().err
        assert SECRET not in err and err.startswith("segflow: error:")


def test_migrate_success_message_hides_the_password(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    class FakeStore:
        def migrate(self) -> list[str]:
            return ["001"]

    @contextmanager
    def fake_open(url: str, **_: Any) -> Iterator[FakeStore]:
        yield FakeStore()

    monkeypatch.setattr("pipeline.storage.open_store", fake_open)
    assert cli.main(["migrate", "--store", f"http://user:{SECRET}@127.0.0.1:8123/db"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and "user:***@127.0.0.1" in out


def test_replay_summary_hides_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    print_replay_summary(ReplaySummary(), store_url=f"https://user:{SECRET}@ch.example:8443/db")
    out = capsys.readouterr().out
    assert SECRET not in out and "user:***@ch.example" in out


def test_driver_messages_and_unreachable_server_hide_the_password() -> None:
    url = parse_store_url(f"http://user:{SECRET}@127.0.0.1:1/db")
    err = translate(RuntimeError(f"bad auth for {SECRET} at http://user:{SECRET}@x/db"), url, "q")
    assert SECRET not in str(err)
    with pytest.raises(StorageError) as exc:
        open_store(f"http://user:{SECRET}@127.0.0.1:1/db", connect_timeout=1)
    assert SECRET not in str(exc.value)


def test_logs_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("segflow.test.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("connecting to %s", f"http://user:{SECRET}@host/db")
        try:
            raise RuntimeError(f"driver says http://u:{SECRET}@h/db")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert SECRET not in text and "user:***@host" in text and "RuntimeError" in text
