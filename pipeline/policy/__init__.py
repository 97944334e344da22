"""Render candidate rules (intents) into enforcement-plane documents.

Renderers are pure functions from rules to a :class:`RenderResult` (relative path -> text,
the rules that could not be rendered and why, and the render report entries);
:func:`render` picks one by format name and :func:`write_rendered` puts the files and the
render report on disk. Planes: Kubernetes NetworkPolicy, Cilium, Calico (and its staged
variant), Istio AuthorizationPolicy, AWS security groups, GCP VPC firewall, Azure NSG (each
cloud also as Terraform), and an internet egress allow-list.
"""

from __future__ import annotations

from pipeline.policy._common import GENERATED_BY, GENERATED_BY_KEY, RenderResult
from pipeline.policy.aws import render_aws_sg, render_aws_terraform
from pipeline.policy.azure import render_azure_nsg, render_azure_terraform
from pipeline.policy.calico import render_calico
from pipeline.policy.cilium import render_cilium
from pipeline.policy.egress import render_egress_allowlist
from pipeline.policy.gcp import render_gcp_firewall, render_gcp_terraform
from pipeline.policy.istio import render_istio
from pipeline.policy.networkpolicy import render_networkpolicies
from pipeline.policy.render import CLOUDS, FORMATS, render, write_rendered
from pipeline.policy.write import write_policies

__all__ = [
    "CLOUDS",
    "FORMATS",
    "GENERATED_BY",
    "GENERATED_BY_KEY",
    "RenderResult",
    "render",
    "render_aws_sg",
    "render_aws_terraform",
    "render_azure_nsg",
    "render_azure_terraform",
    "render_calico",
    "render_cilium",
    "render_egress_allowlist",
    "render_gcp_firewall",
    "render_gcp_terraform",
    "render_istio",
    "render_networkpolicies",
    "write_policies",
    "write_rendered",
]
