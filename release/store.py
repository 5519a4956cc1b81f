"""Artifact stores: where release artifacts and manifests are published.

Layout (every implementation): ``releases/<tag>/<name>``. Artifacts are written first;
``manifest.json`` is written last and atomically, and its presence is what makes a release
*published*. After that the release is immutable: any further write raises ArtifactExists.
The GCS implementation is ``release/gcs_store.py`` (google-cloud-storage, the ``gcs`` extra; the
Airflow tasks give it the Google provider's client, ``plugins/hailo_airflow/gcs_store.py``).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from release.checksums import sha256_bytes, sha256_file
from release.errors import ArtifactExists, ArtifactNotFound, IntegrityError, InvalidIdentifier
from release.identifiers import ReleaseTag

MANIFEST_NAME = "manifest.json"
_NAME_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# Records: small create-only objects outside any release (the release history and its keys).
_RECORD_KEY = re.compile(r"^[a-z][a-z-]{0,31}/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def check_record_key(key: str) -> str:
    """Record keys: 'stream/name' — a lowercase stream and one name part, never '..'."""
    if not isinstance(key, str) or not _RECORD_KEY.fullmatch(key) or ".." in key:
        raise InvalidIdentifier(f"record key {key!r} is invalid; expected 'stream/name'")
    return key


def check_artifact_name(name: str) -> str:
    """Artifact names: one or two path parts of [A-Za-z0-9_.-], never '..' or absolute."""
    parts = name.split("/") if isinstance(name, str) else []
    if not 1 <= len(parts) <= 2 or not all(_NAME_PART.fullmatch(p) and ".." not in p for p in parts):
        raise InvalidIdentifier(
            f"artifact name {name!r} is invalid; expected 'file' or 'dir/file' of [A-Za-z0-9_.-]"
        )
    return name


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    tag: str
    name: str
    uri: str
    sha256: str
    size: int


@runtime_checkable
class ArtifactStore(Protocol):
    def uri(self, tag: str, name: str) -> str: ...
    def put_file(self, tag: str, name: str, src: Path) -> ArtifactRef: ...
    def put_bytes(self, tag: str, name: str, data: bytes) -> ArtifactRef: ...
    def get_bytes(self, tag: str, name: str) -> bytes: ...
    def fetch(self, tag: str, name: str, dest: Path) -> Path: ...
    def exists(self, tag: str, name: str) -> bool: ...
    def publish(self, tag: str, manifest_bytes: bytes) -> ArtifactRef: ...
    def is_published(self, tag: str) -> bool: ...
    def list_published(self) -> list[str]: ...
    def create_record(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist yet (atomic); False if it already did."""
        ...
    def read_record(self, key: str) -> bytes: ...
    def list_records(self, stream: str) -> list[str]:
        """The names (not keys) under ``stream``, sorted."""
        ...


class LocalArtifactStore:
    """Filesystem store (the embedded default). Writes are temp file + fsync + rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _release_dir(self, tag: str) -> Path:
        return self.root / "releases" / ReleaseTag(tag).value

    def _path(self, tag: str, name: str) -> Path:
        return self._release_dir(tag) / check_artifact_name(name)

    def uri(self, tag: str, name: str) -> str:
        return self._path(tag, name).as_uri()

    def _refuse_if_published(self, tag: str) -> None:
        if self.is_published(tag):
            raise ArtifactExists(f"release {tag} is already published at {self._release_dir(tag)}; it is immutable")

    @contextlib.contextmanager
    def _atomic_target(self, dest: Path) -> Iterator[Path]:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, tag: str, name: str, data: bytes) -> ArtifactRef:
        if name == MANIFEST_NAME:
            raise InvalidIdentifier(f"{MANIFEST_NAME} is written by publish(), not put_bytes()")
        self._refuse_if_published(tag)
        dest = self._path(tag, name)
        with self._atomic_target(dest) as tmp:
            tmp.write_bytes(data)
        return ArtifactRef(tag, name, dest.as_uri(), sha256_bytes(data), len(data))

    def put_file(self, tag: str, name: str, src: Path) -> ArtifactRef:
        if name == MANIFEST_NAME:
            raise InvalidIdentifier(f"{MANIFEST_NAME} is written by publish(), not put_file()")
        self._refuse_if_published(tag)
        src = Path(src)
        if not src.is_file():
            raise ArtifactNotFound(f"cannot store {src}: no such file")
        expected = sha256_file(src)
        dest = self._path(tag, name)
        with self._atomic_target(dest) as tmp:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                while chunk := fin.read(1 << 20):
                    fout.write(chunk)
            actual = sha256_file(tmp)
            if actual != expected:
                raise IntegrityError(f"copy of {src} to {dest} has sha256 {actual}, expected {expected}")
        return ArtifactRef(tag, name, dest.as_uri(), expected, dest.stat().st_size)

    def get_bytes(self, tag: str, name: str) -> bytes:
        path = self._path(tag, name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFound(f"no artifact {name!r} in release {tag} ({path})") from None

    def fetch(self, tag: str, name: str, dest: Path) -> Path:
        data = self.get_bytes(tag, name)
        with self._atomic_target(Path(dest)) as tmp:
            tmp.write_bytes(data)
        return Path(dest)

    def exists(self, tag: str, name: str) -> bool:
        return self._path(tag, name).is_file()

    def publish(self, tag: str, manifest_bytes: bytes) -> ArtifactRef:
        dest = self._release_dir(tag) / MANIFEST_NAME
        # Create-only: two publishers cannot both win, and the manifest appears complete or not at all.
        if not _create_only(dest, manifest_bytes):
            raise ArtifactExists(f"release {tag} is already published; it is immutable")
        return ArtifactRef(tag, MANIFEST_NAME, dest.as_uri(), sha256_bytes(manifest_bytes), len(manifest_bytes))

    def is_published(self, tag: str) -> bool:
        return (self._release_dir(tag) / MANIFEST_NAME).is_file()

    def list_published(self) -> list[str]:
        base = self.root / "releases"
        if not base.is_dir():
            return []
        return sorted(p.parent.name for p in base.glob(f"*/{MANIFEST_NAME}"))


    # -- records --------------------------------------------------------------------------
    def _record_path(self, key: str) -> Path:
        return self.root / "records" / check_record_key(key)

    def create_record(self, key: str, data: bytes) -> bool:
        return _create_only(self._record_path(key), data)

    def read_record(self, key: str) -> bytes:
        try:
            return self._record_path(key).read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFound(f"no record {key!r} in {self.root / 'records'}") from None

    def list_records(self, stream: str) -> list[str]:
        base = self.root / "records" / check_record_key(f"{stream}/x").split("/")[0]
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if not p.name.startswith("."))


def _create_only(dest: Path, data: bytes) -> bool:
    """Write ``dest`` whole (temp file + fsync + link) only if it does not exist; False if it did.
    link() fails on an existing target, so of two writers exactly one wins."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp_name, dest)
        except FileExistsError:
            return False
        _fsync_dir(dest.parent)
        return True
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
