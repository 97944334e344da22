"""Render candidate rules (intents) into enforcement-plane policy files.

Renderers are pure functions from rules to a :class:`RenderResult` (relative path -> text,
plus the rules that could not be rendered and why); :func:`write_policies` puts the files
on disk.
"""

from __future__ import annotations

from pipeline.policy._common import GENERATED_BY, GENERATED_BY_KEY, RenderResult
from pipeline.policy.cilium import render_cilium
from pipeline.policy.networkpolicy import render_networkpolicies
from pipeline.policy.write import write_policies

__all__ = [
    "GENERATED_BY",
    "GENERATED_BY_KEY",
    "RenderResult",
    "render_cilium",
    "render_networkpolicies",
    "write_policies",
]
