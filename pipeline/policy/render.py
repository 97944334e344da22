"""One entry point for every enforcement plane: ``render(format, rules, ...)`` and
``write_rendered`` (documents plus the render report) — what ``segflow rules export`` and
``segflow replay --policies --policy-format`` call.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pipeline.core.intents import CandidateRule
from pipeline.errors import ConfigError
from pipeline.policy import _common as c
from pipeline.policy import aws, azure, calico, cilium, egress, gcp, istio, networkpolicy, report
from pipeline.policy.write import write_policies

FORMATS = ("networkpolicy", "cilium", "calico", "istio", "aws-sg", "gcp-firewall", "azure-nsg",
           "terraform", "egress-allowlist")
CLOUDS = ("aws", "gcp", "azure")


def render(
    fmt: str,
    rules: Iterable[CandidateRule],
    *,
    env: str | None = None,
    cloud: str | None = None,
    allow_dns: bool = True,
    default_deny: bool = True,
    staged: bool = False,
    gcp_target: gcp.Target = "tag",
) -> c.RenderResult:
    """Render ``rules`` (of environment ``env`` when given) in format ``fmt``."""
    selected = c.for_env(rules, env)
    if fmt == "networkpolicy":
        return networkpolicy.render_networkpolicies(selected, default_deny=default_deny,
                                                    allow_dns=allow_dns)
    if fmt == "cilium":
        return cilium.render_cilium(selected, allow_dns=allow_dns, default_deny=default_deny)
    if fmt == "calico":
        return calico.render_calico(selected, allow_dns=allow_dns, default_deny=default_deny,
                                    staged=staged)
    if fmt == "istio":
        return istio.render_istio(selected, default_deny=default_deny)
    if fmt == "aws-sg":
        return aws.render_aws_sg(selected)
    if fmt == "gcp-firewall":
        return gcp.render_gcp_firewall(selected, target=gcp_target)
    if fmt == "azure-nsg":
        return azure.render_azure_nsg(selected)
    if fmt == "egress-allowlist":
        return egress.render_egress_allowlist(selected)
    if fmt == "terraform":
        if cloud == "aws":
            return aws.render_aws_terraform(selected)
        if cloud == "gcp":
            return gcp.render_gcp_terraform(selected, target=gcp_target)
        if cloud == "azure":
            return azure.render_azure_terraform(selected)
        raise ConfigError("--format terraform needs --cloud aws, gcp or azure")
    raise ConfigError(f"unknown policy format {fmt!r}; use one of {', '.join(FORMATS)}")


def write_rendered(result: c.RenderResult, out_dir: Path) -> list[Path]:
    """Write the documents (atomically, pruning stale generated YAML) and the render report."""
    written = write_policies(result, out_dir)
    written += report.write_report(result.plane, len(result.files), result.report, out_dir)
    return written


__all__ = ["CLOUDS", "FORMATS", "render", "write_rendered"]
