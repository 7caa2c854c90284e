"""The tenants' remote OpenAI-compatible APIs, one per tenant, kept in one JSON file::

    {"acme": {"base_url": "https://api.openai.com/v1", "api_key": "sk-..."}}

The trainer's ``openai_compatible`` backend fine-tunes on a tenant's remote; inference forwards the
requests for the models such a remote trained but offers no download of (external models) to the
same remote, with the same key. Both read the file again whenever they use it (:func:`remote_in`),
so a Kubernetes Secret mounted as a file can change without a restart. A key is never logged,
shown in an error or kept anywhere else: it is left out of :class:`Remote`'s ``repr`` and of
every message here.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

_log = logging.getLogger("coachforge.remotes")


@dataclass(frozen=True)
class Remote:
    """A tenant's remote API. The key is left out of the ``repr`` (and so out of logs)."""

    base_url: str
    api_key: str = field(repr=False)

    @property
    def shown_url(self) -> str:
        """The base URL without any user or password in it: safe for events, errors and the lineage."""
        return shown_url(self.base_url)


def shown_url(url: str) -> str:
    """``url`` without any user, password, query or fragment in it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class RemotesFileError(ValueError):
    """The remotes file is not a JSON object of tenants (the message never holds a key)."""


def parse_remotes(text: str) -> tuple[dict[str, Remote], list[str]]:
    """The remotes of a remotes file's content, and what is wrong with the entries left out (a
    tenant whose entry is not ``{"base_url": "http(s)://...", "api_key": "<non-empty>"}``).
    Content that is not a JSON object raises :class:`RemotesFileError`."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise RemotesFileError(f"not valid JSON ({type(err).__name__} at line {getattr(err, 'lineno', '?')})") from None
    if not isinstance(data, dict):
        raise RemotesFileError("not a JSON object of tenants")
    remotes: dict[str, Remote] = {}
    problems: list[str] = []
    for tenant, entry in data.items():
        if not isinstance(entry, dict):
            problems.append(f"{tenant}: not an object with base_url and api_key")
            continue
        base_url, api_key = entry.get("base_url"), entry.get("api_key")
        if not isinstance(base_url, str) or urlsplit(base_url).scheme not in ("http", "https") \
                or not urlsplit(base_url).hostname:
            problems.append(f"{tenant}: base_url must be an http(s) URL")
            continue
        if not isinstance(api_key, str) or not api_key.strip():
            problems.append(f"{tenant}: api_key must be a non-empty string")
            continue
        remotes[str(tenant)] = Remote(base_url=base_url.rstrip("/"), api_key=api_key.strip())
    return remotes, problems


def load_remotes(path: Path, log: logging.Logger | None = None) -> dict[str, Remote]:
    """Every tenant's remote in the file (read now); entries that are wrong are logged on ``log`` (by
    tenant and field, never with a key) and left out. A missing file has none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    remotes, problems = parse_remotes(text)
    for problem in problems:
        (log or _log).warning("remotes file %s: entry left out: %s", path, problem)
    return remotes


def _usable_remotes(path: Path, log: logging.Logger | None) -> dict[str, Remote]:
    """:func:`load_remotes`, with an unreadable or malformed file logged on ``log`` and taken as none."""
    try:
        return load_remotes(path, log)
    except (OSError, UnicodeDecodeError, RemotesFileError) as err:
        (log or _log).warning("remotes file %s cannot be used: %s", path,
                              err if isinstance(err, RemotesFileError) else type(err).__name__)
        return {}


def remote_in(path: str | Path | None, tenant_id: str | None, log: logging.Logger | None = None) -> Remote | None:
    """The tenant's remote in the file at ``path`` as it is now; ``None`` when it has none (no file
    configured or found, no entry, a wrong entry, an unreadable file: the last logged on ``log``)."""
    if not path or not tenant_id:
        return None
    return _usable_remotes(Path(path), log).get(tenant_id)


class RemotesFile:
    """:func:`remote_in` for a request path: the file is read again only when it changed (its
    modification time, size or inode), so a request costs one ``stat`` and an edit (or a Secret's
    new version swapped in by the kubelet) is seen by the next request."""

    def __init__(self, path: str | Path | None, log: logging.Logger | None = None) -> None:
        self.path = Path(path) if path else None
        self.log = log
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._remotes: dict[str, Remote] = {}

    def remote_for(self, tenant_id: str | None) -> Remote | None:
        """The tenant's remote as the file says now (``None``: none; see :func:`remote_in`)."""
        if self.path is None or not tenant_id:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as err:
            (self.log or _log).warning("remotes file %s cannot be used: %s", self.path, type(err).__name__)
            return None
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if seen != self._seen:
                self._remotes = _usable_remotes(self.path, self.log)
                self._seen = seen
            return self._remotes.get(tenant_id)
