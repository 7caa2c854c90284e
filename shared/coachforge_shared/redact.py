"""Server paths kept from clients: error texts without them (what a client may be shown of an
exception whose message names files: an ``OSError``, a library's "cannot load /models/...", a
traceback line), and the check that a client's name may be joined to a folder at all."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~>-])(?:/[\w.@+~-]+)+/?")
"""An absolute POSIX path not inside a URL (``https://host/x``) or a relative one (``a/b``)."""


def redact_paths(text: str, known: Mapping[str, Path | str | None] | None = None) -> str:
    """``text`` with every absolute path replaced: one inside a folder of ``known`` (a label for
    each folder) by ``<label>/`` and the part inside it, any other by ``<path>``."""
    roots: list[tuple[str, str]] = []
    for label, folder in (known or {}).items():
        if folder:
            for form in {str(folder).rstrip("/"), os.path.realpath(folder).rstrip("/")}:
                if form:
                    roots.append((form, label))
    for root, label in sorted(roots, key=lambda r: -len(r[0])):
        text = re.sub(re.escape(root) + r"(?=/|\b|$)", f"<{label}>", text)
    return _ABSOLUTE_PATH.sub("<path>", text)


def plain_name(name: str) -> bool:
    """Whether ``name`` is one plain folder name (no separator, not '.' or '..', no NUL): safe to
    join to a folder such as the models folder."""
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\x00")
