"""The GCS artifact store for Airflow tasks: release.gcs_store's store on the Google provider's client.

The store itself (layout, create-only manifests and records, read-back sha256) is
``release/gcs_store.py``, the same one the on-call CLI uses. This adapter only takes the storage
client from GCSHook, so the credentials come from the Airflow connection (``gcp_conn_id``).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from release.gcs_store import GcsArtifactStore as _ReleaseGcsStore
from release.gcs_store import GcsLocation

if TYPE_CHECKING:
    from airflow.providers.google.cloud.hooks.gcs import GCSHook


class GcsArtifactStore(_ReleaseGcsStore):
    def __init__(self, gcp_conn_id: str, bucket: str, root: str = "") -> None:
        super().__init__(bucket, root, client_factory=self._hook_client)
        self.gcp_conn_id = gcp_conn_id

    @classmethod
    def for_url(cls, url: str, gcp_conn_id: str) -> GcsArtifactStore:
        """``gs://bucket[/root]`` (HAILO_ARTIFACT_STORE) with the connection's credentials."""
        location = GcsLocation.parse(url)
        return cls(gcp_conn_id, location.bucket, location.root)

    @cached_property
    def hook(self) -> GCSHook:
        from airflow.providers.google.cloud.hooks.gcs import GCSHook

        return GCSHook(gcp_conn_id=self.gcp_conn_id)

    def _hook_client(self) -> Any:
        return self.hook.get_conn()
