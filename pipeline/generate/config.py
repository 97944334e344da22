"""Knobs of the synthetic estate, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigError

DAY = 86_400.0
HOUR = 3_600.0
DEFAULT_START = 1_767_571_200.0  # 2026-01-05T00:00:00Z, a Monday
CLASSIC_KINDS = ("lateral_movement", "port_scan", "new_listener", "exfiltration", "off_hours")
ATTACK_KINDS = (*CLASSIC_KINDS, "worm", "beacon", "slow_scan", "host_exfiltration",
                "audit_attack")


@dataclass(frozen=True)
class GenerateConfig:
    """Size, length and randomness of a synthetic estate.

    ``flows_per_day`` is the mean number of client→server flows per day over a week of the
    cloud estate (the response records of ``reverse_share``, the office and the episodes come
    on top). ``workstations`` adds a flat office network (workstations, file server, domain
    controllers, an EDR console their agents report to, the internet they browse).
    ``attack_kinds`` picks the attack episodes (:data:`CLASSIC_KINDS` by default; see
    :data:`ATTACK_KINDS`); they are placed after the first ``audit_days`` days, except
    ``audit_attack`` (an attack during the audit), and only when there is room for them.
    """

    seed: int = 7
    apps: int = 12
    days: int = 35
    audit_days: int = 30
    start: float = DEFAULT_START
    flows_per_day: int = 30_000
    reverse_share: float = 0.15
    attacks: bool = True
    workstations: int = 0
    attack_kinds: tuple[str, ...] = ()  # () = CLASSIC_KINDS

    def __post_init__(self) -> None:
        if not 3 <= self.apps <= 200:
            raise ConfigError(f"apps={self.apps} is out of range; use 3..200")
        if not 1 <= self.days <= 1_000:
            raise ConfigError(f"days={self.days} is out of range; use 1..1000")
        if not 0 <= self.audit_days <= self.days:
            raise ConfigError(f"audit_days={self.audit_days} must be within 0..days ({self.days})")
        if not 0 <= self.flows_per_day <= 50_000_000:
            raise ConfigError(f"flows_per_day={self.flows_per_day} is out of range; use 0..5e7")
        if not 0.0 <= self.reverse_share <= 1.0:
            raise ConfigError(f"reverse_share={self.reverse_share} must be within 0..1")
        if self.start % HOUR != 0 or self.start < 0:
            raise ConfigError(f"start={self.start} must be a whole UTC hour (epoch seconds)")
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed} must be >= 0")
        if not 0 <= self.workstations <= 800:
            raise ConfigError(f"workstations={self.workstations} is out of range; use 0..800")
        unknown = sorted(set(self.attack_kinds) - set(ATTACK_KINDS))
        if unknown:
            raise ConfigError(f"unknown attack kind(s) {', '.join(unknown)}; "
                              f"choose from {', '.join(ATTACK_KINDS)}")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The attack kinds this estate gets."""
        return self.attack_kinds or CLASSIC_KINDS

    @property
    def end(self) -> float:
        """Epoch seconds just after the last generated day."""
        return self.start + self.days * DAY

    @property
    def audit_end(self) -> float:
        """Epoch seconds where the audit (learning) phase ends."""
        return self.start + self.audit_days * DAY


__all__ = ["ATTACK_KINDS", "CLASSIC_KINDS", "DAY", "DEFAULT_START", "HOUR", "GenerateConfig"]
