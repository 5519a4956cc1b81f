"""Build the library objects a task needs from its Airflow context, lazily."""

from __future__ import annotations

from typing import Any

from release.pipeline_env import PipelineEnv
from release.request import ReleaseRequest
from release.store import ArtifactStore, LocalArtifactStore

GCS_PREFIX = "gs://"


def request_from(value: dict[str, Any] | ReleaseRequest) -> ReleaseRequest:
    return value if isinstance(value, ReleaseRequest) else ReleaseRequest.parse(value)


def artifact_store(env: PipelineEnv, store_uri: str | None = None, gcp_conn_id: str = "google_cloud_default") -> ArtifactStore:
    """The local store (embedded default) or GCS when HAILO_ARTIFACT_STORE=gs://bucket[/root]."""
    uri = store_uri or env.artifact_store or ""
    if uri.startswith(GCS_PREFIX):
        from hailo_airflow.gcs_store import GcsArtifactStore

        return GcsArtifactStore.for_url(uri, gcp_conn_id=gcp_conn_id)
    return LocalArtifactStore(env.store_root)
