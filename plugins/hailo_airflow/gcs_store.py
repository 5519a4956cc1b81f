"""The artifact store on Google Cloud Storage, through the Google provider's GCSHook.

Layout: gs://<bucket>/<prefix>/<tag>/<name>, manifests and checksums beside the artifacts.
Artifacts are written first; `manifest.json` last — the published marker — with the precondition
ifGenerationMatch=0, so it appears whole or not at all and of two publishers exactly one wins.
(GCSHook.upload has no precondition parameter, so publish uses the hook's storage client.)

Every upload is verified by reading the object back and comparing sha256, not by comparing the
server's md5/crc32c metadata: those only prove the transfer, while the read-back proves that the
bytes now served under that name — what the device will fetch and what the bundle signature
covers — are the ones we meant to publish, and sha256 is the digest the manifest records.
Artifacts are small (HEF/ONNX: a few MB), so the second transfer is cheap.
"""

from __future__ import annotations

import tempfile
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from release.checksums import sha256_bytes, sha256_file
from release.errors import ArtifactExists, ArtifactNotFound, IntegrityError, InvalidIdentifier, StepFailed
from release.identifiers import ReleaseTag
from release.store import MANIFEST_NAME, ArtifactRef, check_artifact_name, check_record_key

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

    def verify(self, tag: str, name: str, expected_sha256: str) -> None:
        """Read the object back and raise IntegrityError unless its sha256 is `expected_sha256`."""
        obj = self._object(tag, name)
        actual = sha256_bytes(self.get_bytes(tag, name))
        if actual != expected_sha256:
            raise IntegrityError(f"gs://{self.bucket_name}/{obj}: sha256 {actual} does not match the expected {expected_sha256}")

    def _check_still_unpublished(self, tag: str, name: str) -> None:
        # A publish may land between the check before an upload and the upload itself; GCS offers
        # no cross-object transaction, so detect it and fail loudly (the bundle signature would
        # refuse the changed artifact before any deploy anyway).
        if self.is_published(tag):
            raise ArtifactExists(f"release {tag} was published while {name} was being written; {name} may differ "
                                 "from what was signed — re-verify the release")

    def put_bytes(self, tag: str, name: str, data: bytes) -> ArtifactRef:
        if name == MANIFEST_NAME:
            raise InvalidIdentifier(f"{MANIFEST_NAME} is written by publish()")
        self._refuse_if_published(tag)
        obj = self._object(tag, name)
        self.hook.upload(bucket_name=self.bucket_name, object_name=obj, data=data)
        self._check_still_unpublished(tag, name)
        digest = sha256_bytes(data)
        self.verify(tag, name, digest)
        return ArtifactRef(tag, name, self.uri(tag, name), digest, len(data))

    def put_file(self, tag: str, name: str, src: Path) -> ArtifactRef:
        if name == MANIFEST_NAME:
            raise InvalidIdentifier(f"{MANIFEST_NAME} is written by publish()")
        if not Path(src).is_file():
            raise ArtifactNotFound(f"cannot store {src}: no such file")
        self._refuse_if_published(tag)
        obj = self._object(tag, name)
        digest = sha256_file(src)
        self.hook.upload(bucket_name=self.bucket_name, object_name=obj, filename=str(src))
        self._check_still_unpublished(tag, name)
        self.verify(tag, name, digest)
        return ArtifactRef(tag, name, self.uri(tag, name), digest, Path(src).stat().st_size)

    def get_bytes(self, tag: str, name: str) -> bytes:
        from google.api_core.exceptions import NotFound

        obj = self._object(tag, name)
        try:
            return bytes(self.hook.download(bucket_name=self.bucket_name, object_name=obj))
        except NotFound:
            raise ArtifactNotFound(f"no artifact gs://{self.bucket_name}/{obj}") from None

    def fetch(self, tag: str, name: str, dest: Path) -> Path:
        data = self.get_bytes(tag, name)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", delete=False) as tmp:
            tmp.write(data)
        Path(tmp.name).replace(dest)
        return dest

    def exists(self, tag: str, name: str) -> bool:
        return bool(self.hook.exists(bucket_name=self.bucket_name, object_name=self._object(tag, name)))

    def publish(self, tag: str, manifest_bytes: bytes) -> ArtifactRef:
        from google.api_core.exceptions import PreconditionFailed

        obj = self._object(tag, MANIFEST_NAME)
        blob = self._bucket.blob(obj)
        try:
            blob.upload_from_string(manifest_bytes, content_type="application/json", if_generation_match=0)
        except PreconditionFailed:
            raise ArtifactExists(f"release {tag} is already published; it is immutable") from None
        except Exception as exc:  # google-cloud-storage raises many transport types
            raise StepFailed(f"publishing {obj}: {type(exc).__name__}: {exc}") from None
        digest = sha256_bytes(manifest_bytes)
        try:
            self.verify(tag, MANIFEST_NAME, digest)
        except IntegrityError:
            # Never leave a corrupt manifest published; delete only the generation we wrote.
            blob.delete(if_generation_match=blob.generation)
            raise
        return ArtifactRef(tag, MANIFEST_NAME, self.uri(tag, MANIFEST_NAME), digest, len(manifest_bytes))

    def is_published(self, tag: str) -> bool:
        return self.exists(tag, MANIFEST_NAME)

    def list_published(self) -> list[str]:
        names = self.hook.list(bucket_name=self.bucket_name, prefix=f"{self.prefix}/", match_glob=f"**/{MANIFEST_NAME}")
        # Only <prefix>/<tag>/manifest.json marks a release; an artifact named dir/manifest.json does not.
        depth = self.prefix.count("/") + 3
        return sorted({n.split("/")[-2] for n in names if n.count("/") + 1 == depth and n.endswith(f"/{MANIFEST_NAME}")})

    # -- records (the release history): create-only objects, ifGenerationMatch=0 --------------
    def _record_object(self, key: str) -> str:
        return f"records/{check_record_key(key)}"

    def create_record(self, key: str, data: bytes) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        blob = self._bucket.blob(self._record_object(key))
        try:
            blob.upload_from_string(data, content_type="application/json", if_generation_match=0)
        except PreconditionFailed:
            return False
        except Exception as exc:  # google-cloud-storage raises many transport types
            raise StepFailed(f"writing record {key}: {type(exc).__name__}: {exc}") from None
        return True

    def read_record(self, key: str) -> bytes:
        from google.api_core.exceptions import NotFound

        try:
            return bytes(self.hook.download(bucket_name=self.bucket_name, object_name=self._record_object(key)))
        except NotFound:
            raise ArtifactNotFound(f"no record gs://{self.bucket_name}/{self._record_object(key)}") from None

    def list_records(self, stream: str) -> list[str]:
        prefix = self._record_object(f"{stream}/x")[:-1]
        return sorted(n.removeprefix(prefix) for n in self.hook.list(bucket_name=self.bucket_name, prefix=prefix))
