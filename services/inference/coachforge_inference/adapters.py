"""Adapters kept in object storage (``s3://…``) are fetched once into a local cache before an
engine loads them: vLLM's ``/v1/load_lora_adapter`` reads a directory path, not a URL.

Local paths pass through untouched (the all-in-one mode). In Kubernetes the cache directory must
be a volume the engines see at the same path (a ReadWriteMany volume mounted into the inference
and engine pods), since the engine, not this service, opens the files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec

from coachforge_shared.errors import Unavailable
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.inference.adapters")

_LOCAL = {None, "file", "local"}


def is_remote(uri: str) -> bool:
    """True for a URL of an fsspec filesystem other than the local one (``s3://``, ``gs://``, …)."""
    protocol, _ = fsspec.core.split_protocol(uri)
    return protocol not in _LOCAL


class AdapterCache:
    """Downloads remote adapter folders into ``cache_dir`` (one folder per URI, written to a temporary
    folder and renamed into place, so an engine never sees half a download) and returns local paths."""

    def __init__(self, cache_dir: Path, options: Mapping[str, Any] | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.options = dict(options or {})
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def local_path(self, uri: str) -> str:
        """A path the engines can load ``uri`` from; downloads it on first use."""
        if not is_remote(uri):
            return uri.removeprefix("file://")
        target = self.cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:32]
        if (target / "adapter_config.json").is_file():
            return str(target)
        with self._guard:
            lock = self._locks.setdefault(str(target), threading.Lock())
        with lock:  # one download per adapter, however many requests wait for it
            if not (target / "adapter_config.json").is_file():
                self._download(uri, target)
        return str(target)

    def _download(self, uri: str, target: Path) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=self.cache_dir))
        try:
            fs, root = fsspec.core.url_to_fs(uri, **self.options)
            root = root.rstrip("/")
            names = [p for p in fs.find(root) if not p.endswith("/")]
            if f"{root}/adapter_config.json" not in names:
                raise Unavailable(f"Adapter {uri} cannot be fetched: no adapter_config.json there.")
            for remote in names:
                local = staging / remote[len(root) + 1:]
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(local))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
            log.info("adapter fetched", uri=uri, path=str(target), files=len(names))
        except Unavailable:
            raise
        except Exception as err:  # network, credentials, missing bucket: the caller decides (fallback or 503)
            raise Unavailable(f"Adapter {uri} cannot be fetched: {type(err).__name__}: {err}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
