"""Validation of untrusted names, labels and CIDRs before they reach a policy document.

Namespaces, app names and selector labels come from flow data and inventories, so they are
checked against Kubernetes syntax here; every check returns ``None`` when the value is fine
and a short, single-line reason otherwise. Reasons quote at most a few escaped characters of
the offending value, never the raw value.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

from pipeline.core.intents import Peer, Workload

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_LABEL_NAME_RE = re.compile(_LABEL_NAME)
_DNS_LABEL_RE = re.compile(_DNS_LABEL)
_DNS_SUBDOMAIN_RE = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_RULE_ID_RE = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.:]{0,127}")

MAX_NAME = 63
MAX_PREFIX = 253
MAX_FQDN = 253
MAX_L7_ITEMS = 64
_FQDN_RE = re.compile(rf"(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})+")
_METHOD_RE = re.compile(r"[A-Z]{1,16}")
_PATH_RE = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]{0,254}")
# plain scalars that some YAML reader (1.1: PyYAML, go-yaml v2; 1.2 core: go-yaml v3, ruamel)
# resolves to something other than a string
_YAML_NON_STRING = re.compile(
    r"""(?x)
    ~|null|Null|NULL|
    y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF|
    [-+]?(?:0|[1-9][0-9_]*)|[-+]?0[0-7_]+|[-+]?0o[0-7_]+|[-+]?0x[0-9a-fA-F_]+|[-+]?0b[01_]+|
    [-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?|
    [-+]?(?:\.[0-9_]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|
    [-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)|
    =|<<"""
)

# Workload kinds whose pods a selector can pick. A "service" counts only with an explicit
# selector (its pods' labels); vm/external/unknown are never protected by pod policies.
POD_KINDS = frozenset({"pod", "service"})


def show(value: object, limit: int = 24) -> str:
    """A short, escaped, single-line rendering of an untrusted value for a reason string."""
    text = ascii(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(str(value))} chars)"


def _name_error(what: str, value: object, pattern: re.Pattern[str], limit: int) -> str | None:
    if not isinstance(value, str):
        return f"{what} is not a string: {show(value)}"
    if not value:
        return f"{what} is empty"
    if len(value) > limit:
        return f"{what} longer than {limit} chars: {show(value)}"
    if not value.isascii() or pattern.fullmatch(value) is None:
        return f"{what} has invalid characters: {show(value)}"
    return None


def yaml_needs_quotes(text: str) -> bool:
    """True when ``text`` written as a plain YAML scalar would be read as another type
    (``1e3``, ``yes``, ``y``, ``null``, ``0x1F``, ``010``, ``1:20``, ``.inf``) by a YAML 1.1
    or 1.2 reader, or is empty; such values must be written quoted."""
    return text == "" or _YAML_NON_STRING.fullmatch(text) is not None


def fqdn_error(name: object) -> str | None:
    """Check a DNS name (optionally ``*.``-prefixed): lower-case labels, at least two."""
    if not isinstance(name, str):
        return f"dns name is not a string: {show(name)}"
    text = name.rstrip(".")
    if not text or len(text) > MAX_FQDN:
        return f"dns name is empty or longer than {MAX_FQDN} chars: {show(name)}"
    if not text.isascii() or _FQDN_RE.fullmatch(text.lower()) is None or any(
        len(part) > MAX_NAME for part in text.split(".")
    ):
        return f"dns name has invalid characters: {show(name)}"
    return None


def service_account_error(name: object) -> str | None:
    """Check a Kubernetes service account name (a DNS-1123 subdomain), empty allowed."""
    if name == "":
        return None
    return _name_error("service account", name, _DNS_SUBDOMAIN_RE, MAX_PREFIX)


def l7_error(methods: object, paths: object) -> str | None:
    """Check HTTP methods (upper-case tokens) and path prefixes (``/…``, URL characters)."""
    for what, values, pattern in (("method", methods, _METHOD_RE), ("path", paths, _PATH_RE)):
        if not isinstance(values, tuple) or len(values) > MAX_L7_ITEMS:
            return f"http {what}s are not a tuple of at most {MAX_L7_ITEMS}: {show(values)}"
        for v in values:
            if not isinstance(v, str) or not v.isascii() or pattern.fullmatch(v) is None:
                return f"http {what} is invalid: {show(v)}"
    return None


def label_key_error(key: object) -> str | None:
    """Check a label key: optional ``dns.subdomain/`` prefix (<= 253) and a name (<= 63)."""
    if not isinstance(key, str):
        return f"label key is not a string: {show(key)}"
    prefix, sep, name = key.rpartition("/")
    if sep and (err := _name_error("label key prefix", prefix, _DNS_SUBDOMAIN_RE, MAX_PREFIX)):
        return f"{err} (key {show(key)})"
    return _name_error("label key name", name, _LABEL_NAME_RE, MAX_NAME)


def label_value_error(value: object) -> str | None:
    """Check a label value: empty, or <= 63 chars of ``[A-Za-z0-9._-]`` with alnum ends."""
    if value == "":
        return None
    return _name_error("label value", value, _LABEL_NAME_RE, MAX_NAME)


def namespace_error(namespace: object) -> str | None:
    """Check a namespace name (a DNS-1123 label)."""
    return _name_error("namespace", namespace, _DNS_LABEL_RE, MAX_NAME)


def app_name_error(app: object) -> str | None:
    """Check an app name; it may become the ``app`` label value, so it must be one."""
    return _name_error("app name", app, _LABEL_NAME_RE, MAX_NAME)


def rule_id_error(rule_id: object) -> str | None:
    """Check a rule id (it is echoed into annotations)."""
    return _name_error("rule id", rule_id, _RULE_ID_RE, 128)


def selector_error(selector: object) -> str | None:
    """Check a selector given as ``((key, value), ...)``; duplicate keys are an error."""
    if not isinstance(selector, tuple):
        return f"selector is not a tuple: {show(selector)}"
    seen: set[str] = set()
    for item in selector:
        if not (isinstance(item, tuple) and len(item) == 2):
            return f"selector item is not a (key, value) pair: {show(item)}"
        key, value = item
        if err := label_key_error(key) or label_value_error(value):
            return err
        if key in seen:
            return f"selector repeats label key {show(key)}"
        seen.add(key)
    return None


def pod_selector(workload: Workload) -> tuple[tuple[str, str], ...] | None:
    """The (sorted) labels selecting ``workload``'s pods, or None when it has no pods."""
    if workload.kind not in POD_KINDS:
        return None
    if workload.selector:
        return tuple(sorted(workload.selector))
    return (("app", workload.app),) if workload.kind == "pod" else None


def workload_error(workload: object, *, need_namespace: bool = True) -> str | None:
    """Check a workload's namespace, app name, selector, service account, env and tier."""
    if not isinstance(workload, Workload):
        return f"not a Workload: {show(workload)}"
    if (need_namespace or workload.namespace) and (err := namespace_error(workload.namespace)):
        return err
    return (
        app_name_error(workload.app)
        or selector_error(workload.selector)
        or service_account_error(workload.service_account)
        or (label_value_error(workload.env) and f"env: {label_value_error(workload.env)}")
        or (label_value_error(workload.tier) and f"tier: {label_value_error(workload.tier)}")
    )


def parse_cidr(text: object) -> IPNetwork | None:
    """Parse a CIDR (host bits are masked off); None if it is not one."""
    if not isinstance(text, str) or not text.isascii() or len(text) > 64 or "/" not in text:
        return None
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def except_error(net: IPNetwork, excepts: tuple[IPNetwork, ...]) -> str | None:
    """Every ``except`` must be a strict subnet of ``net`` (as Kubernetes requires)."""
    for ex in excepts:
        if ex.version != net.version or not ex.subnet_of(net) or ex == net:  # type: ignore[arg-type]
            return f"except {ex} is not a strict subnet of {net}"
    return None


def peer_error(peer: object) -> str | None:
    """Check the untrusted parts of a peer (names, labels, CIDRs)."""
    if not isinstance(peer, Peer):
        return f"not a Peer: {show(peer)}"
    if peer.kind not in ("workload", "namespace", "cidr", "world"):
        return f"unknown peer kind {show(peer.kind)}"
    if not isinstance(peer.fqdns, tuple) or len(peer.fqdns) > MAX_L7_ITEMS:
        return f"peer dns names are not a tuple of at most {MAX_L7_ITEMS}"
    for name in peer.fqdns:
        if err := fqdn_error(name):
            return err
    if peer.cidr is not None and parse_cidr(peer.cidr) is None and peer.kind != "world":
        return f"peer cidr is not a CIDR: {show(peer.cidr)}"
    for ex in peer.except_cidrs:
        if parse_cidr(ex) is None:
            return f"peer except is not a CIDR: {show(ex)}"
    if peer.kind == "namespace":
        if peer.workload is None:
            return "namespace peer has no workload (namespace)"
        return namespace_error(peer.workload.namespace)
    if peer.kind == "workload":
        if peer.workload is None:
            return "workload peer has no workload"
        is_pod = peer.workload.kind in POD_KINDS
        return workload_error(peer.workload, need_namespace=is_pod)
    if peer.kind == "cidr" and peer.cidr is None:
        return "cidr peer has no cidr"
    return None


def dns_label(raw: str, *, prefix: str = "", reserved: frozenset[str] = frozenset()) -> str:
    """``prefix + raw`` as a DNS-1123 label (<= 63 chars).

    Used as-is when already valid; otherwise lower-cased, invalid runs replaced by ``-``,
    truncated, and suffixed with a stable 8-hex hash of ``raw`` so distinct inputs stay distinct.
    """
    candidate = prefix + raw
    if (
        len(candidate) <= MAX_NAME
        and _DNS_LABEL_RE.fullmatch(candidate)
        and candidate not in reserved
    ):
        return candidate
    digest = hashlib.sha256(raw.encode("utf-8", "backslashreplace")).hexdigest()[:8]
    body = re.sub(r"[^a-z0-9]+", "-", candidate.lower()).strip("-")
    body = body[: MAX_NAME - len(digest) - 1].rstrip("-")
    return f"{body}-{digest}" if body else digest


__all__ = [
    "POD_KINDS",
    "IPNetwork",
    "app_name_error",
    "dns_label",
    "except_error",
    "fqdn_error",
    "l7_error",
    "label_key_error",
    "label_value_error",
    "namespace_error",
    "parse_cidr",
    "peer_error",
    "pod_selector",
    "rule_id_error",
    "selector_error",
    "service_account_error",
    "show",
    "workload_error",
    "yaml_needs_quotes",
]
