"""The core's settings, declared once: default, range and help text per field.

Everything that configures the core reads this one declaration: ``segflow replay`` and
``segflow demo`` derive their flags from it (``--audit-days``, …), the streaming worker its
``core`` config section and ``SEGFLOW_CORE__*`` env vars (:mod:`pipeline.config`), and
``docs/settings.md`` its table (generated; a test keeps it current). Adding a setting is
adding one field here with :func:`setting`; the flag, env var and docs row follow.

Plain dataclasses (no pydantic) keep the core free of configuration libraries; the worker
wraps :data:`SETTINGS` in a pydantic model for its config file and env vars.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from pipeline.core.incidents import parse_criticality
from pipeline.core.inventory import DEFAULT_INTERNAL_CIDRS
from pipeline.core.normalize import parse_time_text

Kind = Literal["float", "int", "bool", "time", "cidrs", "labels", "text"]


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """One core setting as every front end sees it (see :data:`SETTINGS`)."""

    name: str
    kind: Kind
    default: Any
    help: str
    low: float | None = None  # inclusive bounds unless *_open
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""  # appended to a range error, e.g. the recommended values
    metavar: str | None = None
    aliases: tuple[str, ...] = ()  # extra CLI spellings kept for compatibility
    default_text: str | None = None  # how the docs and --help show the default

    @property
    def flag(self) -> str:
        """The CLI flag: ``--`` and the name with dashes."""
        return "--" + self.name.replace("_", "-")

    def describe_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, float) and self.default.is_integer():
            return f"{int(self.default):,}" if self.default >= 10_000 else str(int(self.default))
        if isinstance(self.default, int):
            return f"{self.default:,}" if self.default >= 10_000 else str(self.default)
        return str(self.default)

    def describe_range(self) -> str:
        """``(0, 366]``, ``>= 1``, … or '' when any value of the type is allowed."""
        if self.low is not None and self.high is not None:
            return (f"{'(' if self.low_open else '['}{_num(self.low)}, "
                    f"{_num(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return ""

    def parse(self, text: str) -> Any:
        """A value from text (a flag, an env var): numbers, ``true``/``false``, epoch
        seconds or RFC 3339 times, comma-separated or JSON lists. ValueError if invalid."""
        s = text.strip()
        if self.kind == "text":
            return self.check(s)
        if self.kind == "bool":
            low = s.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"'{text}' is not true or false")
        if self.kind == "cidrs":
            if s.startswith("["):
                try:
                    items = json.loads(s)
                except json.JSONDecodeError:
                    raise ValueError(f"'{text}' is not a JSON list of CIDRs") from None
            else:
                items = [c for c in s.split(",") if c.strip()]
            return self.check(items)
        if self.kind == "labels":
            if s.startswith("["):
                try:
                    items = json.loads(s)
                except json.JSONDecodeError:
                    raise ValueError(f"'{text}' is not a JSON list of key=value:points"
                                     ) from None
            else:
                items = [c for c in s.split(",") if c.strip()]
            return self.check(items)
        if self.kind == "time":
            if s.lower() in ("", "none", "null"):
                return None
            t = parse_time_text(s)
            if t is None:
                raise ValueError(f"'{text}' is not epoch seconds or an RFC 3339 time")
            return self.check(t)
        try:
            value: float = int(s) if self.kind == "int" else float(s)
        except ValueError:
            raise ValueError(f"'{text}' is not {'an integer' if self.kind == 'int' else 'a number'}"
                             ) from None
        return self.check(value)

    def check(self, value: Any) -> Any:
        """``value`` of the right type and in range, normalised (ints as int, lists as
        tuples); ValueError saying what is allowed otherwise."""
        if self.kind == "text":
            if not isinstance(value, str):
                raise ValueError(f"must be text, got {value!r}")
            return value.strip()
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, got {value!r}")
            return value
        if self.kind == "cidrs":
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise ValueError(f"must be a list of CIDRs, got {value!r}")
            out = []
            for c in value:
                try:
                    ipaddress.ip_network(str(c).strip(), strict=False)
                except ValueError:
                    raise ValueError(f"'{c}' is not a CIDR") from None
                out.append(str(c).strip())
            return tuple(out)
        if self.kind == "labels":
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise ValueError(f"must be a list of key=value:points, got {value!r}")
            items = tuple(str(v).strip() for v in value)
            parse_criticality(items)
            return items
        if value is None and self.kind == "time":
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, got {value!r}")
        if self.kind == "int":
            if value != int(value):
                raise ValueError(f"must be an integer, got {value!r}")
            value = int(value)
        elif not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        else:
            value = float(value)
        too_low = self.low is not None and (value <= self.low if self.low_open
                                            else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open
                                              else value > self.high)
        if too_low or too_high:
            rng = self.describe_range()
            where = f"be in {rng}" if rng.startswith(("(", "[")) else f"be {rng}"
            note = f"; {self.note}" if self.note else ""
            raise ValueError(f"must {where}, got {_num(value)}{note}")
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def setting(default: Any, help: str, *, kind: Kind | None = None, **info: Any) -> Any:
    """A dataclass field carrying its :class:`SettingInfo` (minus name, filled in later)."""
    if kind is None:
        kind = ("bool" if isinstance(default, bool) else "int" if isinstance(default, int)
                else "float")
    return field(default=default, metadata={"setting": {"kind": kind, "help": help, **info}})


@dataclass(frozen=True, slots=True)
class CoreSettings:
    """Parameters of the core. Construct with keywords; a bad value raises ValueError
    naming the field and what it accepts."""

    audit_days: float = setting(
        30.0, "length of the audit (learning) phase in event-time days",
        low=0, low_open=True, high=366, note="30–90 is recommended", metavar="DAYS")
    audit_start: float | None = setting(
        None, "audit start, epoch s or RFC 3339 (replay: the first flow's time; the worker "
        "agrees one on its control topic)", kind="time", metavar="TIME",
        default_text="first flow")
    suppress_window: float = setting(
        3600.0, "one violation per (type, edge) per window of this many event-time seconds",
        low=0, low_open=True, metavar="SECONDS", aliases=("--suppress",))
    lateness: float = setting(
        300.0, "how far behind the newest flow (s) a violation window may still change",
        low=0, metavar="SECONDS")
    detection_lateness: float = setting(
        30.0, "a violation is emitted once event time is this many seconds past its first "
        "flow (flows this much out of order still give the same events)", low=0, high=60,
        metavar="SECONDS")
    scan_threshold: int = setting(
        20, "distinct new targets from one workload within a window that make a scan",
        low=1, metavar="N")
    max_edges: int = setting(500_000, "learned edges at most (more are refused, counted)",
                             low=1, metavar="N")
    max_edges_per_workload: int = setting(
        4_096, "learned edges per client and per server workload at most (the workload is "
        "then marked saturated)", low=1, metavar="N")
    max_open_violations: int = setting(
        100_000, "open violation windows at most (the oldest close early)", low=1, metavar="N")
    off_hours_max_active: int = setting(
        16, "edges active in more UTC hours of the day than this are 24/7 (no off_hours)",
        low=0, high=24, metavar="HOURS")
    off_hours_min_days: int = setting(
        3, "days of evidence an edge needs before its hours are trusted for off_hours",
        low=0, metavar="DAYS")
    volume_min_bytes: float = setting(
        1e6, "a volume_spike needs at least this many bytes in the hour", low=0,
        metavar="BYTES", default_text="1e6")
    # rejected flows from outside the internal ranges are internet background noise that a
    # firewall already stopped: aggregated, but not alerted (unless this is set)
    alert_rejected_external: bool = setting(
        False, "also alert on rejected flows from outside the internal ranges (internet noise "
        "a firewall already stopped)")
    trust_min_days: int = setting(
        3, "distinct days an edge must be seen on during the audit to be trusted (allow "
        "rule); capped at the audit's whole weeks, at least 1, so a weekly job is trusted",
        low=1, metavar="DAYS")
    trust_min_flows: int = setting(
        3, "flows an edge needs during the audit to be trusted; weaker edges stay provisional "
        "(no allow rule, listed for review, provisional_edge alert if they recur)", low=1,
        metavar="N")
    audit_scan_warmup: float = setting(
        86400.0, "audit scan findings are not looked for in the audit's first SECONDS (every "
        "edge is new then); capped at a quarter of the audit", low=0, metavar="SECONDS")
    readiness_max_new_edges: int = setting(
        1, "an audit day on which an app gained at most this many new edges is quiet", low=0,
        metavar="N")
    readiness_days: int = setting(
        7, "an app is ready to enforce after this many quiet audit days in a row; capped at "
        "half the audit, at least 1", low=1, metavar="DAYS")
    internal_cidrs: tuple[str, ...] = setting(
        DEFAULT_INTERNAL_CIDRS, "internal address ranges, comma-separated (addresses inside "
        "with no inventory entry are unknown:<ip>, outside are world)", kind="cidrs",
        metavar="CIDRS", default_text="RFC 1918, CGNAT, IPv6 ULA and link-local")
    incident_window: float = setting(
        3600.0, "one incident per source (client workload, or address without identity) per "
        "window of this many event-time seconds", low=0, low_open=True, metavar="SECONDS")
    criticality_labels: tuple[str, ...] = setting(
        ("tier=db:15", "tier=database:15", "criticality=high:15", "criticality=critical:25"),
        "inventory labels that make a workload a critical asset, comma-separated "
        "key=value:points; an incident touching one gets that many severity points (0-100)",
        kind="labels", metavar="LABELS",
        default_text="tier=db:15, tier=database:15, criticality=high:15, criticality=critical:25")
    max_open_incidents: int = setting(
        100_000, "open incidents at most (the oldest close early)", low=1, metavar="N")
    # per-source-host behaviour (pipeline.core.hostdetect)
    host_window: float = setting(
        3600.0, "per-source-host window (s): fan-out, failed connections, host volume and the "
        "behaviour features are counted per host and window", low=60, high=86400,
        metavar="SECONDS")
    host_fan_out_min: int = setting(
        8, "a fan_out needs more distinct destination addresses on one port in a host window "
        "than this (and than twice the audit's q99)", low=1, metavar="N")
    host_failures_min: int = setting(
        10, "a failed_connections finding needs more rejected/unanswered flows of one host in "
        "a window than this (and than twice the audit's q99)", low=1, metavar="N")
    beacon_min_beats: int = setting(
        8, "regular intervals a (host, peer, port) series needs before it is a beacon",
        low=3, high=12, metavar="N")
    beacon_max_jitter: float = setting(
        0.15, "largest std/mean of a beacon's last intervals", low=0, low_open=True, high=1.5,
        metavar="RATIO")
    max_hosts: int = setting(
        65_536, "source hosts tracked per host window at most (flows of further hosts are "
        "counted, not scored)", low=1, metavar="N")
    behaviour_model: str = setting(
        "", "per-host behaviour model: empty fits one on this run's audit windows, 'off' "
        "disables it, or a folder saved by the notebook (behaviour.skops + manifest.json)",
        kind="text", metavar="PATH|off", default_text="fit on the audit")

    def __post_init__(self) -> None:
        for info in SETTINGS:
            value = getattr(self, info.name)
            try:
                checked = info.check(value)
            except ValueError as exc:
                raise ValueError(f"{info.name}: {exc}") from None
            if checked is not value:
                object.__setattr__(self, info.name, checked)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> CoreSettings:
        """Settings from a mapping (a manifest, a config section); text values are parsed,
        unknown names are a ValueError."""
        unknown = sorted(set(data) - set(BY_NAME))
        if unknown:
            raise ValueError(f"unknown core setting {unknown[0]!r}; known: {', '.join(BY_NAME)}")
        values = {}
        for name, value in data.items():
            info = BY_NAME[name]
            try:
                values[name] = info.parse(value) if isinstance(value, str) else info.check(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples as lists), for manifests."""
        return {i.name: list(v) if isinstance(v := getattr(self, i.name), tuple) else v
                for i in SETTINGS}


def _infos() -> tuple[SettingInfo, ...]:
    out = []
    for f in fields(CoreSettings):
        assert f.default is not MISSING and "setting" in f.metadata, f"{f.name}: use setting()"
        out.append(SettingInfo(name=f.name, default=f.default, **f.metadata["setting"]))
    return tuple(out)


SETTINGS: tuple[SettingInfo, ...] = _infos()
"""Every core setting, in declaration order."""
BY_NAME: dict[str, SettingInfo] = {i.name: i for i in SETTINGS}

__all__ = ["BY_NAME", "SETTINGS", "CoreSettings", "SettingInfo", "setting"]
