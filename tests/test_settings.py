"""One declaration of the core settings reaches every front end: replay/demo flags, the
worker's config file and env vars, and docs/settings.md. The tests walk ``SETTINGS``, so a
field added to ``CoreSettings`` is covered without touching them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.commands.cli import _settings, build_parser
from pipeline.config import MOVED, env_name, load_settings, settings_markdown
from pipeline.core.settings import SETTINGS, CoreSettings, SettingInfo
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def other_value(info: SettingInfo) -> Any:
    """A valid value that is not the default."""
    if info.kind == "bool":
        return not info.default
    if info.kind == "time":
        return 1767571200.0
    if info.kind == "cidrs":
        return ("10.0.0.0/8", "fd00::/8")
    if info.kind == "labels":
        return ("tier=db:10", "pci=yes:30")
    if info.kind == "text":
        return "off"
    value = info.default + 1
    if info.high is not None and value > info.high:
        value = info.default - 1
    return int(value) if info.kind == "int" else float(value)


def as_text(info: SettingInfo, value: Any) -> str:
    if info.kind in ("cidrs", "labels"):
        return ",".join(value)
    if info.kind == "bool":
        return "true" if value else "false"
    return str(value)


def invalid_text(info: SettingInfo) -> str | None:
    """Text outside the setting's range (None when every value of the type is allowed)."""
    if info.kind == "cidrs":
        return "10.0.0.0/33"
    if info.kind == "labels":
        return "tier=db:101"
    if info.low is not None:
        return str(info.low if info.low_open else info.low - 1)
    if info.high is not None:
        return str(info.high + 1)
    return None


@pytest.fixture(autouse=True)
def _no_segflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for var in list(os.environ):
        if var.startswith("SEGFLOW_"):
            monkeypatch.delenv(var)


def test_defaults_are_declared_once() -> None:
    args = build_parser().parse_args(["replay", "x", "--inventory", "i"])
    assert _settings(args) == CoreSettings()
    assert load_settings().core_settings() == CoreSettings()


@pytest.mark.parametrize("command", ["replay", "demo"])
@pytest.mark.parametrize("info", SETTINGS, ids=lambda i: i.name)
def test_every_core_setting_is_a_flag(command: str, info: SettingInfo) -> None:
    base = ["replay", "x", "--inventory", "i"] if command == "replay" else ["demo"]
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    helps = {a.dest: a.help or "" for a in sub._actions}
    assert info.help in helps[info.name] and info.describe_default() in helps[info.name]
    value = other_value(info)
    if info.kind == "bool":
        argv = [info.flag if value else f"--no-{info.flag[2:]}"]
    else:
        argv = [info.flag, as_text(info, value)]
    got = _settings(parser.parse_args([*base, *argv]))
    assert getattr(got, info.name) == value
    assert got == CoreSettings(**{info.name: value})


@pytest.mark.parametrize("info", SETTINGS, ids=lambda i: i.name)
def test_every_core_setting_is_a_worker_env_var_and_config_key(
        info: SettingInfo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    value = other_value(info)
    monkeypatch.setenv(env_name(f"core.{info.name}"), as_text(info, value))
    assert load_settings().core_settings() == CoreSettings(**{info.name: value})
    monkeypatch.delenv(env_name(f"core.{info.name}"))
    cfg = tmp_path / "w.json"
    cfg.write_text(json.dumps({"core": {info.name: list(value) if isinstance(value, tuple)
                                        else value}}))
    assert load_settings(cfg).core_settings() == CoreSettings(**{info.name: value})


@pytest.mark.parametrize("info", [i for i in SETTINGS if invalid_text(i) is not None],
                         ids=lambda i: i.name)
def test_an_invalid_value_gives_the_same_reason_everywhere(
        info: SettingInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    text = invalid_text(info)
    assert text is not None
    with pytest.raises(ValueError) as core:
        info.parse(text)
    reason = str(core.value)
    with pytest.raises(ConfigError) as cli:
        build_parser().parse_args(["replay", "x", "--inventory", "i", info.flag, text])
    assert f"argument {info.flag}" in str(cli.value) and reason in str(cli.value)
    monkeypatch.setenv(env_name(f"core.{info.name}"), text)
    with pytest.raises(ConfigError) as env:
        load_settings()
    assert str(env.value) == f"setting 'core.{info.name}': {reason}"
    with pytest.raises(ValueError, match=f"^{info.name}: "):
        CoreSettings(**{info.name: (text,) if info.kind in ("cidrs", "labels")
                        else float(text)})


def test_bad_types_are_refused() -> None:
    with pytest.raises(ValueError, match="scan_threshold: must be an integer"):
        CoreSettings(scan_threshold=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="audit_start: must be a finite number"):
        CoreSettings(audit_start=float("nan"))
    with pytest.raises(ValueError, match="alert_rejected_external: must be true or false"):
        CoreSettings(alert_rejected_external=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown core setting 'audit_dayz'"):
        CoreSettings.from_mapping({"audit_dayz": 3})
    s = CoreSettings.from_mapping({"internal_cidrs": ["10.0.0.0/8"], "audit_start": "2026-01-05"})
    assert s.internal_cidrs == ("10.0.0.0/8",) and s.audit_start == 1767571200.0
    assert CoreSettings.from_mapping(s.to_dict()) == s


@pytest.mark.parametrize("old", list(MOVED))
def test_old_keys_are_refused_with_the_new_name(
        old: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    section, _, key = old.rpartition(".")
    data: dict[str, Any] = {section: {key: 1}} if section else {key: 1}
    cfg = tmp_path / "old.json"
    cfg.write_text(json.dumps(data))
    expected = f"is now '{MOVED[old]}'" if MOVED[old] else "was removed"
    with pytest.raises(ConfigError, match=expected) as file_err:
        load_settings(cfg)
    assert f"'{old}'" in str(file_err.value) and "\n" not in str(file_err.value)
    monkeypatch.setenv(env_name(old), "1")
    with pytest.raises(ConfigError, match=expected) as env_err:
        load_settings()
    assert env_name(old) in str(env_err.value)


def test_unknown_section_key_in_env_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGFLOW_CORE__AUDIT_DAYZ", "3")
    with pytest.raises(ConfigError, match="'core' has no setting 'audit_dayz'"):
        load_settings()


def test_env_overrides_one_key_of_a_file_section(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text('[kafka]\nbootstrap = "k:1"\nsession_timeout = 7\n'
                   '[core]\naudit_days = 12\nscan_threshold = 9\n')
    monkeypatch.setenv("SEGFLOW_KAFKA__BOOTSTRAP", "env:2")
    monkeypatch.setenv("SEGFLOW_CORE__AUDIT_DAYS", "5")
    s = load_settings(cfg)
    assert (s.kafka.bootstrap, s.kafka.session_timeout) == ("env:2", 7.0)
    assert (s.core_settings().audit_days, s.core_settings().scan_threshold) == (5.0, 9)


def test_docs_settings_table_is_current() -> None:
    doc = REPO / "docs" / "settings.md"
    assert doc.read_text() == settings_markdown(), \
        "docs/settings.md is stale: run `python -m pipeline.config > docs/settings.md`"
    text = doc.read_text()
    for info in SETTINGS:
        assert f"`{info.flag}`" in text and env_name(f"core.{info.name}") in text
    assert "(settings.md)" in (REPO / "docs" / "deploy.md").read_text()
