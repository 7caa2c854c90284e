"""Artifact storage through fsspec: a local directory in the all-in-one mode, S3-compatible object
storage (``s3://bucket/prefix`` through s3fs, with an endpoint URL for MinIO, Ceph RGW, ...) in
Kubernetes, ``memory://`` in tests."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

CHUNK = 1 << 20


@dataclass(frozen=True)
class ArtifactFile:
    """One file of an artifact: path relative to the artifact's root, sha256, size in bytes."""

    path: str
    sha256: str
    size: int


def export_key(tenant_id: str, export_id: str) -> str:
    """Where a model export's file lies in the store: ``<tenant>/exports/<export id>/<file name>``."""
    return f"{tenant_id}/exports/{export_id}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def manifest(local_dir: Path) -> list[ArtifactFile]:
    """Every regular file under ``local_dir`` (sorted), with its checksum and size."""
    files = []
    for p in sorted(local_dir.rglob("*")):
        if p.is_file() and not p.is_symlink():
            files.append(ArtifactFile(p.relative_to(local_dir).as_posix(), sha256_file(p), p.stat().st_size))
    return files


def manifest_digest(files: list[ArtifactFile]) -> str:
    """One digest over the whole artifact: sha256 of "<sha256>  <path>" lines, like sha256sum."""
    return hashlib.sha256("".join(f"{f.sha256}  {f.path}\n" for f in files).encode()).hexdigest()


class ArtifactStore:
    """Stores adapter directories under ``url`` (one folder per key) and removes them.

    ``options`` go to the fsspec filesystem (for s3fs: ``endpoint_url``, ``key``, ``secret``,
    ``client_kwargs``, ...); without credentials s3fs finds them the way botocore does
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an IAM role)."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **dict(options or {}))
        self.root = root.rstrip("/")

    @property
    def is_local(self) -> bool:
        """True when engines on this machine can read stored artifacts by path."""
        return isinstance(self.fs, LocalFileSystem)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key.strip('/')}"

    def uri(self, key: str) -> str:
        """Where ``key`` lies: a plain path for a local store, a URL otherwise."""
        path = self._path(key)
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def _strip(self, uri: str) -> str:
        return uri if self.is_local else self.fs._strip_protocol(uri)

    def put_dir(self, local_dir: Path, key: str, files: list[ArtifactFile]) -> str:
        """Copy the listed files of ``local_dir`` under ``key`` and check every stored copy's sha256."""
        dest = self._path(key)
        try:
            for f in files:
                target = f"{dest}/{f.path}"
                if self.is_local:  # object stores have no folders (and s3fs would create a missing bucket)
                    self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(local_dir / f.path), target)
            problem = self.verify(self.uri(key), files)
            if problem:
                raise OSError(f"stored copy: {problem}")
        except BaseException:
            self.remove(self.uri(key))
            raise
        return self.uri(key)

    def verify(self, uri: str, files: list[ArtifactFile]) -> str | None:
        """The first problem of a stored artifact (a file missing or not matching its sha256), or None."""
        root = self._strip(uri)
        self.fs.invalidate_cache(root)  # listings cached by an object-store client may be stale
        for f in files:
            path = f"{root}/{f.path}"
            if not self.fs.exists(path):
                return f"artifact file {f.path} is missing"
            if self._sha256(path) != f.sha256:
                return f"artifact file {f.path} does not match its recorded sha256"
        return None

    def _sha256(self, path: str) -> str:
        h = hashlib.sha256()
        with self.fs.open(path, "rb") as stored:
            while chunk := stored.read(CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def put_file(self, local_file: Path, key: str, sha256: str) -> str:
        """Copy one file to ``key`` and check the stored copy's sha256; its URI."""
        target = self._path(key)
        try:
            if self.is_local:
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(local_file), target)
            self.fs.invalidate_cache(target)
            if self._sha256(target) != sha256:
                raise OSError("stored copy does not match its sha256")
        except BaseException:
            self.remove(self.uri(key))
            raise
        return self.uri(key)

    def get_dir(self, uri: str, files: list[ArtifactFile], local_dir: Path) -> None:
        """Copy the listed files of a stored artifact into ``local_dir``, each checked against its
        sha256 (``OSError`` when one is missing or does not match)."""
        root = self._strip(uri)
        self.fs.invalidate_cache(root)
        for f in files:
            target = local_dir / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f"{root}/{f.path}", str(target))
            if sha256_file(target) != f.sha256:
                raise OSError(f"artifact file {f.path} does not match its recorded sha256")

    def open(self, uri: str) -> IO[bytes]:
        """A stored file, open for reading."""
        stream: IO[bytes] = self.fs.open(self._strip(uri), "rb")
        return stream

    def local_path(self, uri: str) -> Path | None:
        """Where a stored file lies on this machine (a local store), else None."""
        return Path(uri) if self.is_local else None

    def exists(self, uri: str) -> bool:
        return bool(self.fs.exists(self._strip(uri)))

    def remove(self, uri: str) -> None:
        """Remove a stored artifact (nothing if it is already gone)."""
        path = self._strip(uri)
        self.fs.invalidate_cache(path)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
