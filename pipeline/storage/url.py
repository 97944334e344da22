"""Store URLs: where segflow keeps its tables.

Accepted forms::

    chdb://var/segflow            embedded chdb, path relative to the current directory
    chdb:///abs/path              embedded chdb, absolute path
    var/segflow  |  /abs/path     a plain path means chdb too
    http://[user:password@]host[:port][/database]    ClickHouse server (port 8123)
    https://[user:password@]host[:port][/database]   ClickHouse server over TLS (port 8443)

The database defaults to ``segflow``; ``chdb://PATH?database=NAME`` picks another one.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from pipeline.core.text import printable
from pipeline.errors import ConfigError

DEFAULT_DATABASE = "segflow"
DEFAULT_PORTS = {"http": 8123, "https": 8443}
ACCEPTED_FORMS = (
    "chdb://PATH, chdb:///ABS/PATH, a plain directory path, "
    "or http(s)://[user:password@]host[:port][/database]"
)
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Scheme = Literal["chdb", "http", "https"]


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store location; ``str()`` and ``repr()`` never show the password."""

    scheme: Scheme
    database: str = DEFAULT_DATABASE
    path: Path | None = None  # chdb only: absolute data directory
    host: str = ""  # server only
    port: int = 0
    username: str = ""
    password: str = field(default="", repr=False)

    @property
    def is_embedded(self) -> bool:
        """True for an in-process chdb store."""
        return self.scheme == "chdb"

    @property
    def secure(self) -> bool:
        return self.scheme == "https"

    def __str__(self) -> str:
        if self.scheme == "chdb":
            suffix = "" if self.database == DEFAULT_DATABASE else f"?database={self.database}"
            return f"chdb://{self.path}{suffix}"
        auth = ""
        if self.username:
            auth = quote(self.username, safe="")
            auth += ":***@" if self.password else "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{auth}{host}:{self.port}/{self.database}"


def _bad(url: str, why: str) -> ConfigError:
    return ConfigError(redact(f"bad store URL {url!r} ({why}): use {ACCEPTED_FORMS}"))


# scheme, optional "//" and user name, then ":password@" up to the token's last "@" (passwords
# may hold "/", "@" or ":" unencoded); "http:user:secret@host" (no "//") is covered too
_USERINFO = re.compile(r"""(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*:(?://)?[^\s:@/'"<>]*):"""
                       r"""[^\s'"<>]*@""")
REDACTED = "***"


def redact(text: str, *secrets: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` URL in it, and every
    literal ``secrets`` value, replaced by ``***``. The one redaction used for messages, logs
    and summaries.

    >>> redact("http://user:pa/ss@host:1/db and http:u:secret@h/db")
    'http://user:***@host:1/db and http:u:***@h/db'
    """
    out = _USERINFO.sub(rf"\g<head>:{REDACTED}@", text)
    for secret in secrets:
        if secret:
            out = out.replace(secret, REDACTED)
    return out


def _check_db(url: str, name: str) -> str:
    if not _DB_NAME.match(name):
        raise _bad(url, f"database name {name!r} must match [A-Za-z_][A-Za-z0-9_]*")
    return name


def _parse_chdb(url: str, rest: str) -> StoreURL:
    database = DEFAULT_DATABASE
    if "?" in rest:
        rest, query = rest.split("?", 1)
        params = parse_qs(query, keep_blank_values=True)
        unknown = set(params) - {"database"}
        if unknown:
            raise _bad(url, f"unknown parameter {sorted(unknown)[0]!r}")
        if "database" in params:
            database = _check_db(url, params["database"][-1])
    if not rest.strip():
        raise _bad(url, "empty path")
    path = Path(unquote(rest)).expanduser()
    return StoreURL(scheme="chdb", database=database, path=path.resolve())


def _parse_server(url: str, scheme: Scheme) -> StoreURL:
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise _bad(url, "query strings and fragments are not supported")
    try:
        host = parts.hostname or ""
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:  # port out of range or not a number
        raise _bad(url, "port must be a number 1-65535") from exc
    if not host:
        raise _bad(url, "missing host")
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) > 1:
        raise _bad(url, "the path may only name the database")
    database = _check_db(url, unquote(segments[0])) if segments else DEFAULT_DATABASE
    return StoreURL(
        scheme=scheme,
        database=database,
        host=host,
        port=port,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
    )


def parse_store_url(url: str | Path) -> StoreURL:
    """Parse a store URL or plain path; raises :class:`ConfigError` naming the accepted forms."""
    text = str(url).strip()
    if not text:
        raise _bad(text, "empty")
    if "://" not in text:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text) and not Path(text).exists():
            raise _bad(text, "missing '//' after the scheme")
        return _parse_chdb(text, text)
    scheme = text.split("://", 1)[0].lower()
    if scheme == "chdb":
        return _parse_chdb(text, text.split("://", 1)[1])
    if scheme in ("http", "https"):
        return _parse_server(text, "https" if scheme == "https" else "http")
    raise _bad(text, f"unsupported scheme {scheme!r}")


CHDB_MARKER = "metadata"  # every chdb/ClickHouse data directory has its catalog folder


def check_chdb_dir(path: Path) -> None:
    """ConfigError unless ``path`` is absent, an empty folder, or already a chdb store, so a
    mistyped ``--store`` never fills a folder of other files with chdb's folders."""
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError(f"store path {path} is a file, not a folder; pass a new or empty "
                          "folder (or an existing segflow store)")
    if (path / CHDB_MARKER).is_dir():
        return
    try:
        names = sorted(p.name for p in path.iterdir())
    except OSError as exc:
        raise ConfigError(f"cannot read store folder {path}: {exc.strerror or exc}") from exc
    if names:
        shown = ", ".join(ascii(n)[1:-1] for n in names[:3]) + (", ..." if len(names) > 3 else "")
        raise ConfigError(f"store folder {path} is not empty and not a segflow store (it holds "
                          f"{shown}); pass a new or empty folder")


class RedactingFilter(logging.Filter):
    """Logging filter (put it on handlers) that passes every record through :func:`redact`,
    so a password a library echoes in a URL never reaches a log, and escapes control
    characters in the message (names from flows and inventories end up in log lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a library's bad format string: log it as is
            return True
        clean = printable(redact(message))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


__all__ = [
    "CHDB_MARKER",
    "DEFAULT_DATABASE",
    "REDACTED",
    "RedactingFilter",
    "StoreURL",
    "check_chdb_dir",
    "parse_store_url",
    "redact",
]
