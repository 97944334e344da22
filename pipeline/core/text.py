"""Untrusted text: which identity values are acceptable, and how to show any value to a person.

Identity values (namespace, app, labels, env, service account, kind) come from flow sources and
inventories that anyone on the network or with write access to a file can shape. They must not
carry control characters (NUL breaks keys, ESC/CSI sequences rewrite a terminal, bidi overrides
reorder what a reviewer reads) and must stay short (a 10k-character name multiplies the memory
of every edge, event and rule that carries it). :func:`identity_problem` says why a value is
refused; :func:`printable` and :func:`excerpt` make any value safe to print: control characters
escaped, long values cut with their length stated.
"""

from __future__ import annotations

import re

MAX_IDENTITY_CHARS = 253  # a Kubernetes DNS subdomain / qualified label key at most
MAX_LABELS = 64  # labels per workload
EXCERPT_CHARS = 60  # characters of an untrusted value echoed in a message

# C0 and C1 controls, DEL, line/paragraph separators, bidi embedding/override/isolate controls
UNSAFE_CLASS = "\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069"
_UNSAFE = re.compile(f"[{UNSAFE_CLASS}]")
# the same class in RE2 syntax (Arrow's regex engine)
UNSAFE_RE2 = ("[\\x00-\\x1f\\x7f-\\x{9f}\\x{2028}\\x{2029}\\x{202a}-\\x{202e}"
              "\\x{2066}-\\x{2069}]")


def has_unsafe_chars(text: str) -> bool:
    """True when ``text`` holds a control, separator or bidi character."""
    return _UNSAFE.search(text) is not None


def identity_problem(what: str, value: str) -> str | None:
    """Why ``value`` cannot be an identity value (one line, value excerpted), or None.

    >>> identity_problem("app", "a\\x00b")
    "app contains control characters: 'a\\\\x00b'"
    """
    if has_unsafe_chars(value):
        return f"{what} contains control characters: {excerpt(value)}"
    if len(value) > MAX_IDENTITY_CHARS:
        return f"{what} is longer than {MAX_IDENTITY_CHARS} characters: {excerpt(value)}"
    return None


def labels_problem(labels: object) -> str | None:
    """Why a labels mapping cannot identify a workload (keys and values checked), or None."""
    if not isinstance(labels, dict):
        return "labels must be an object"
    if len(labels) > MAX_LABELS:
        return f"more than {MAX_LABELS} labels ({len(labels)})"
    for k, v in labels.items():
        problem = identity_problem("label key", str(k)) or identity_problem(
            f"label {excerpt(str(k), 20)}", str(v))
        if problem:
            return problem
    return None


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: str) -> str:
    """``text`` with control, separator and bidi characters escaped (``\\x1b``, ``\\u202e``),
    for anything printed to a terminal or a log.

    >>> printable("ok\\x1b[2J\\rall clear")
    'ok\\\\x1b[2J\\\\x0dall clear'
    """
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """A quoted, printable, bounded rendering of an untrusted value for a message.

    >>> excerpt("x" * 1000, 8)
    "'xxxxxxxx'... (1000 chars)"
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return f"'{printable(text)}'"
    return f"'{printable(text[:limit])}'... ({len(text)} chars)"


__all__ = [
    "EXCERPT_CHARS",
    "MAX_IDENTITY_CHARS",
    "MAX_LABELS",
    "UNSAFE_RE2",
    "excerpt",
    "has_unsafe_chars",
    "identity_problem",
    "labels_problem",
    "printable",
]
