"""The artifact store on Google Cloud Storage, through google-cloud-storage (the ``gcs`` extra).

One implementation for every caller: the on-call CLI builds it from ``HAILO_ARTIFACT_STORE=gs://
bucket[/root]`` with the standard google-cloud client (Application Default Credentials, or
``STORAGE_EMULATOR_HOST`` for an emulator); the Airflow tasks build it from the Google provider's
GCSHook client (``plugins/hailo_airflow/gcs_store.py``).

Layout, the local store's under ``gs://bucket/<root>/``: ``releases/<tag>/<name>`` (artifacts
first, ``manifest.json`` last: the published marker) and ``records/<stream>/<name>`` (the release
history). Manifests and records are written create-only (``ifGenerationMatch=0``), so of two
writers exactly one wins and the object appears whole or not at all.

Every write is verified by reading the object back and comparing sha256, not the server's
md5/crc32c metadata: those only prove the transfer, while the read-back proves that the bytes now
served under that name (what a device fetches, what the bundle signature covers) are the ones we
meant to write, and sha256 is the digest the manifest records. Artifacts are a few MB (HEF/ONNX),
so the second transfer is cheap: a 4 MiB put + read-back took 53 ms (median of 5) and a fetch 43 ms
on fake-gcs-server on loopback at load 8 (bench/bench_gcs.py).
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from release.checksums import sha256_bytes, sha256_file
from release.errors import (
    ArtifactExists,
    ArtifactNotFound,
    ConfigError,
    IntegrityError,
    InvalidIdentifier,
    ReleaseError,
    StepFailed,
)
from release.identifiers import ReleaseTag
from release.store import MANIFEST_NAME, ArtifactRef, check_artifact_name, check_record_key

GCS_SCHEME = "gs://"
# Bucket names as GCS allows them (dotted names up to 222 characters are not supported here).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]$")
_ROOT_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# (connect, read) seconds per request; the client retries idempotent requests on its own.
REQUEST_TIMEOUT = (10.0, 60.0)
EXTRA_HINT = "pip install 'hailo-pipeline[gcs]' (or requirements/gcs.lock)"


def is_gcs_url(location: str | None) -> bool:
    return bool(location) and str(location).startswith(GCS_SCHEME)


@dataclass(frozen=True, slots=True)
class GcsLocation:
    """``gs://bucket`` or ``gs://bucket/some/root``: where a store's ``releases/`` and ``records/`` live."""

    bucket: str
    root: str = ""

    @classmethod
    def parse(cls, url: str) -> GcsLocation:
        if not is_gcs_url(url):
            raise ConfigError(f"artifact store {url!r} is not a gs:// URL")
        bucket, _, root = url.removeprefix(GCS_SCHEME).partition("/")
        root = root.strip("/")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise ConfigError(f"artifact store {url!r}: {bucket!r} is not a GCS bucket name")
        if root and not all(_ROOT_PART.fullmatch(p) and ".." not in p for p in root.split("/")):
            raise ConfigError(f"artifact store {url!r}: the path must be parts of [A-Za-z0-9_.-], never '..'")
        return cls(bucket, root)

    def __str__(self) -> str:
        return f"{GCS_SCHEME}{self.bucket}/{self.root}".rstrip("/")


def _storage() -> Any:
    try:
        from google.cloud import storage
    except ImportError:
        raise ConfigError(f"a gs:// artifact store needs google-cloud-storage: {EXTRA_HINT}") from None
    return storage


def client_from_environment() -> Any:
    """The standard google-cloud client: Application Default Credentials and project, or the
    emulator named by STORAGE_EMULATOR_HOST (the client then uses anonymous credentials itself)."""
    storage = _storage()
    try:
        return storage.Client()
    except Exception as exc:  # google.auth.exceptions.DefaultCredentialsError and friends
        raise ConfigError(f"cannot open Google Cloud Storage: {type(exc).__name__}: {exc}") from None


@contextlib.contextmanager
def _gcs_errors(what: str) -> Iterator[None]:
    """NotFound → ArtifactNotFound; any other client or transport failure → StepFailed (exit 1)."""
    from google.api_core.exceptions import NotFound

    try:
        yield
    except NotFound:
        raise ArtifactNotFound(f"no {what}") from None
    except ReleaseError:
        raise
    except Exception as exc:  # google-cloud-storage raises many transport and auth types
        raise StepFailed(f"GCS: {what}: {type(exc).__name__}: {exc}") from None


class GcsArtifactStore:
    """The ArtifactStore protocol of release/store.py on a GCS bucket."""

    def __init__(self, bucket: str, root: str = "", client_factory: Callable[[], Any] = client_from_environment) -> None:
        self.location = GcsLocation.parse(f"{GCS_SCHEME}{bucket}/{root}")
        _storage()  # without the extra: a clear error naming it, before anything is attempted
        self.bucket_name = self.location.bucket
        self._client_factory = client_factory

    @classmethod
    def from_url(cls, url: str, client_factory: Callable[[], Any] = client_from_environment) -> GcsArtifactStore:
        location = GcsLocation.parse(url)
        return cls(location.bucket, location.root, client_factory)

    @cached_property
    def _bucket(self) -> Any:
        return self._client_factory().bucket(self.bucket_name)

    def _key(self, rest: str) -> str:
        return f"{self.location.root}/{rest}" if self.location.root else rest

    def _object(self, tag: str, name: str) -> str:
        return self._key(f"releases/{ReleaseTag(tag).value}/{check_artifact_name(name)}")

    def _record_object(self, key: str) -> str:
        return self._key(f"records/{check_record_key(key)}")

    def _gs(self, obj: str) -> str:
        return f"{GCS_SCHEME}{self.bucket_name}/{obj}"

    def uri(self, tag: str, name: str) -> str:
        return self._gs(self._object(tag, name))

    # -- the primitive requests (one place each; tests inject faults here) ----------------------
    def _upload(self, obj: str, data: bytes | Path, *, create_only: bool = False) -> Any:
        """Upload ``data`` (bytes, or a file's contents) to ``obj``; return the blob (its generation set).
        ``create_only`` adds ifGenerationMatch=0; google.api_core's PreconditionFailed then means it existed."""
        blob = self._bucket.blob(obj)
        extra = {"if_generation_match": 0} if create_only else {}
        if isinstance(data, Path):
            blob.upload_from_filename(str(data), timeout=REQUEST_TIMEOUT, **extra)
        else:
            blob.upload_from_string(data, timeout=REQUEST_TIMEOUT, **extra)
        return blob

    def _download(self, obj: str) -> bytes:
        with _gcs_errors(self._gs(obj)):
            return bytes(self._bucket.blob(obj).download_as_bytes(timeout=REQUEST_TIMEOUT))

    def _exists(self, obj: str) -> bool:
        with _gcs_errors(f"answer for {self._gs(obj)}"):
            return bool(self._bucket.blob(obj).exists(timeout=REQUEST_TIMEOUT))

    def _list(self, prefix: str, match_glob: str | None = None) -> list[str]:
        with _gcs_errors(f"listing of {self._gs(prefix)}"):
            blobs = self._bucket.client.list_blobs(self.bucket_name, prefix=prefix, match_glob=match_glob,
                                                   timeout=REQUEST_TIMEOUT)
            return [b.name for b in blobs]

    # -- verification ---------------------------------------------------------------------------
    def _verify_object(self, obj: str, expected_sha256: str) -> None:
        actual = sha256_bytes(self._download(obj))
        if actual != expected_sha256:
            raise IntegrityError(f"{self._gs(obj)}: sha256 {actual} does not match the expected {expected_sha256}")

    def verify(self, tag: str, name: str, expected_sha256: str) -> None:
        """Read the object back and raise IntegrityError unless its sha256 is ``expected_sha256``."""
        self._verify_object(self._object(tag, name), expected_sha256)

    def _create_verified(self, obj: str, data: bytes) -> bool:
        """Create ``obj`` only if absent, then read it back; False if another writer had created it.
        A create whose response was lost is retried by the client and then fails its precondition
        against our own first write: the same bytes there mean we won (records carry a timestamp and
        a hash chain, manifests a tag and counter, so another writer's bytes never equal ours)."""
        from google.api_core.exceptions import PreconditionFailed

        digest = sha256_bytes(data)
        with _gcs_errors(f"create-only write of {self._gs(obj)}"):
            try:
                blob = self._upload(obj, data, create_only=True)
            except PreconditionFailed:
                return sha256_bytes(self._download(obj)) == digest
        try:
            self._verify_object(obj, digest)
        except IntegrityError:
            # Never leave a corrupt manifest or record behind; delete only the generation we wrote.
            with _gcs_errors(f"delete of the corrupt {self._gs(obj)}"):
                blob.delete(if_generation_match=blob.generation, timeout=REQUEST_TIMEOUT)
            raise
        return True

    # -- artifacts ------------------------------------------------------------------------------
    def _refuse_if_published(self, tag: str) -> None:
        if self.is_published(tag):
            raise ArtifactExists(f"release {tag} is already published in {self._gs(self._key('releases'))}; it is immutable")

    def _check_still_unpublished(self, tag: str, name: str) -> None:
        # A publish may land between the check before an upload and the upload itself; GCS has no
        # cross-object transaction, so detect it and fail loudly (the bundle signature would refuse
        # the changed artifact before any deploy anyway).
        if self.is_published(tag):
            raise ArtifactExists(f"release {tag} was published while {name} was being written; {name} may differ "
                                 "from what was signed — re-verify the release")

    def _put(self, tag: str, name: str, data: bytes | Path, digest: str, size: int) -> ArtifactRef:
        if name == MANIFEST_NAME:
            raise InvalidIdentifier(f"{MANIFEST_NAME} is written by publish()")
        obj = self._object(tag, name)
        self._refuse_if_published(tag)
        with _gcs_errors(f"upload of {self._gs(obj)}"):
            self._upload(obj, data)
        self._check_still_unpublished(tag, name)
        self._verify_object(obj, digest)
        return ArtifactRef(tag, name, self._gs(obj), digest, size)

    def put_bytes(self, tag: str, name: str, data: bytes) -> ArtifactRef:
        return self._put(tag, name, data, sha256_bytes(data), len(data))

    def put_file(self, tag: str, name: str, src: Path) -> ArtifactRef:
        src = Path(src)
        if not src.is_file():
            raise ArtifactNotFound(f"cannot store {src}: no such file")
        return self._put(tag, name, src, sha256_file(src), src.stat().st_size)

    def get_bytes(self, tag: str, name: str) -> bytes:
        return self._download(self._object(tag, name))

    def fetch(self, tag: str, name: str, dest: Path) -> Path:
        data = self.get_bytes(tag, name)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", delete=False) as tmp:
            tmp.write(data)
        Path(tmp.name).replace(dest)
        return dest

    def exists(self, tag: str, name: str) -> bool:
        return self._exists(self._object(tag, name))

    def publish(self, tag: str, manifest_bytes: bytes) -> ArtifactRef:
        obj = self._object(tag, MANIFEST_NAME)
        if not self._create_verified(obj, manifest_bytes):
            raise ArtifactExists(f"release {tag} is already published; it is immutable")
        return ArtifactRef(tag, MANIFEST_NAME, self._gs(obj), sha256_bytes(manifest_bytes), len(manifest_bytes))

    def is_published(self, tag: str) -> bool:
        return self.exists(tag, MANIFEST_NAME)

    def list_published(self) -> list[str]:
        prefix = self._key("releases/")
        names = set(self._list(prefix, match_glob=f"{prefix}*/{MANIFEST_NAME}"))
        # Only releases/<tag>/manifest.json marks a release; an artifact named dir/manifest.json does not.
        tags = {n.removeprefix(prefix).split("/")[0] for n in names}
        return sorted(t for t in tags if _is_release_tag(t) and f"{prefix}{t}/{MANIFEST_NAME}" in names)

    # -- records (the release history) -----------------------------------------------------------
    def create_record(self, key: str, data: bytes) -> bool:
        return self._create_verified(self._record_object(key), data)

    def read_record(self, key: str) -> bytes:
        return self._download(self._record_object(key))

    def list_records(self, stream: str) -> list[str]:
        prefix = self._record_object(f"{stream}/x")[:-1]
        return sorted(n.removeprefix(prefix) for n in self._list(prefix) if "/" not in n.removeprefix(prefix))


def _is_release_tag(name: str) -> bool:
    try:
        ReleaseTag(name)
    except InvalidIdentifier:
        return False
    return True
