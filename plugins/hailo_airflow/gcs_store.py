"""The artifact store on Google Cloud Storage, through the Google provider's GCSHook.

Layout: gs://<bucket>/<prefix>/<tag>/<name>, manifests and checksums beside the artifacts.
Artifacts are written first; `manifest.json` last, with the precondition ifGenerationMatch=0, so
it appears whole or not at all and two publishers cannot both win. Every upload is verified
after the fact by reading the object back and comparing sha256: GCS's own md5/crc32c cover
transport, but only a read-back proves the published bytes are the ones we signed.
"""

from __future__ import annotations

import tempfile
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from release.checksums import sha256_bytes, sha256_file
from release.errors import ArtifactExists, ArtifactNotFound, IntegrityError, InvalidIdentifier, StepFailed
from release.identifiers import ReleaseTag
from release.store import MANIFEST_NAME, ArtifactRef, check_artifact_name

if TYPE_CHECKING:
    from airflow.providers.google.cloud.hooks.gcs import GCSHook


class GcsArtifactStore:
    def __init__(self, gcp_conn_id: str, bucket: str, prefix: str = "releases") -> None:
        if not bucket or "/" in bucket:
            raise InvalidIdentifier(f"GCS bucket {bucket!r} is invalid")
        self.gcp_conn_id = gcp_conn_id
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")

    @cached_property
    def hook(self) -> GCSHook:
        from airflow.providers.google.cloud.hooks.gcs import GCSHook

        return GCSHook(gcp_conn_id=self.gcp_conn_id)

    @cached_property
    def _bucket(self) -> Any:
        return self.hook.get_conn().bucket(self.bucket_name)

    def _object(self, tag: str, name: str) -> str:
        return f"{self.prefix}/{ReleaseTag(tag).value}/{check_artifact_name(name)}"

    def uri(self, tag: str, name: str) -> str:
        return f"gs://{self.bucket_name}/{self._object(tag, name)}"

    def _refuse_if_published(self, tag: str) -> None:
        if self.is_published(tag):
            raise ArtifactExists(f"release {tag} is already published in gs://{self.bucket_name}; it is immutable")

    def _verify(self, obj: str, expected_sha256: str) -> None:
        data = self._bucket.blob(obj).download_as_bytes()
        if sha256_bytes(data) != expected_sha256:
            raise IntegrityError(f"gs://{self.bucket_name}/{obj}: read-back sha256 does not match the upload")

    def put_bytes(self, tag: str, name: str, data: bytes) -> ArtifactRef:
        if name == MANIFEST_NAME:
            raise InvalidIdentifier(f"{MANIFEST_NAME} is written by publish()")
        self._refuse_if_published(tag)
        obj = self._object(tag, name)
        self.hook.upload(bucket_name=self.bucket_name, object_name=obj, data=data)
        digest = sha256_bytes(data)
        self._verify(obj, digest)
        return ArtifactRef(tag, name, self.uri(tag, name), digest, len(data))

    def put_file(self, tag: str, name: str, src: Path) -> ArtifactRef:
        if name == MANIFEST_NAME:
            raise InvalidIdentifier(f"{MANIFEST_NAME} is written by publish()")
        if not Path(src).is_file():
            raise ArtifactNotFound(f"cannot store {src}: no such file")
        self._refuse_if_published(tag)
        obj = self._object(tag, name)
        self.hook.upload(bucket_name=self.bucket_name, object_name=obj, filename=str(src))
        digest = sha256_file(src)
        self._verify(obj, digest)
        return ArtifactRef(tag, name, self.uri(tag, name), digest, Path(src).stat().st_size)

    def get_bytes(self, tag: str, name: str) -> bytes:
        obj = self._object(tag, name)
        if not self.hook.exists(bucket_name=self.bucket_name, object_name=obj):
            raise ArtifactNotFound(f"no artifact gs://{self.bucket_name}/{obj}")
        return bytes(self.hook.download(bucket_name=self.bucket_name, object_name=obj))

    def fetch(self, tag: str, name: str, dest: Path) -> Path:
        data = self.get_bytes(tag, name)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
            tmp.write(data)
        Path(tmp.name).replace(dest)
        return dest

    def exists(self, tag: str, name: str) -> bool:
        return bool(self.hook.exists(bucket_name=self.bucket_name, object_name=self._object(tag, name)))

    def publish(self, tag: str, manifest_bytes: bytes) -> ArtifactRef:
        from google.api_core.exceptions import PreconditionFailed

        obj = self._object(tag, MANIFEST_NAME)
        try:
            self._bucket.blob(obj).upload_from_string(manifest_bytes, content_type="application/json", if_generation_match=0)
        except PreconditionFailed:
            raise ArtifactExists(f"release {tag} is already published; it is immutable") from None
        except Exception as exc:  # google-cloud-storage raises many transport types
            raise StepFailed(f"publishing {obj}: {exc}") from None
        digest = sha256_bytes(manifest_bytes)
        self._verify(obj, digest)
        return ArtifactRef(tag, MANIFEST_NAME, self.uri(tag, MANIFEST_NAME), digest, len(manifest_bytes))

    def is_published(self, tag: str) -> bool:
        return self.exists(tag, MANIFEST_NAME)

    def list_published(self) -> list[str]:
        names = self.hook.list(bucket_name=self.bucket_name, prefix=f"{self.prefix}/", match_glob=f"**/{MANIFEST_NAME}")
        return sorted({n.split("/")[-2] for n in names if n.endswith(f"/{MANIFEST_NAME}")})
