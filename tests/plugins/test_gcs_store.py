"""The GCS artifact store through GCSHook against a real GCS emulator (fake-gcs-server)."""

from __future__ import annotations

import threading

import pytest

from release.errors import ArtifactExists, ArtifactNotFound, IntegrityError
from release.store import ArtifactStore, next_release_counter
from tests.fixtures.manifests import make_manifest

pytestmark = pytest.mark.airflow


@pytest.fixture
def store(gcs_connection, request):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    from hailo_airflow.gcs_store import GcsArtifactStore

    bucket = f"hailo-{request.node.name.replace('_', '-')[:40]}".lower()
    storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket(bucket)
    return GcsArtifactStore(gcp_conn_id=gcs_connection, bucket=bucket)


def test_round_trip_and_publish(store, tmp_path):
    assert isinstance(store, ArtifactStore)
    src = tmp_path / "model.hef"
    src.write_bytes(b"HEF" * 100_000)
    ref = store.put_file("v1", "tcn_encoder-v1.hef", src)
    assert ref.uri == f"gs://{store.bucket_name}/releases/v1/tcn_encoder-v1.hef"
    store.put_bytes("v1", "hef_sha256sum.txt", f"{ref.sha256}  tcn_encoder-v1.hef\n".encode())
    assert store.fetch("v1", "tcn_encoder-v1.hef", tmp_path / "out.hef").read_bytes() == src.read_bytes()
    assert not store.is_published("v1") and store.list_published() == []
    store.publish("v1", make_manifest(release_tag="v1").canonical_json())
    assert store.is_published("v1") and store.list_published() == ["v1"]
    assert next_release_counter(store, "stable") == 2
    with pytest.raises(ArtifactExists):
        store.put_bytes("v1", "late.txt", b"x")
    with pytest.raises(ArtifactExists):
        store.publish("v1", b"{}")
    with pytest.raises(ArtifactNotFound):
        store.get_bytes("v1", "nope")


def test_concurrent_publishers_one_wins(store):
    results = []

    def go(i):
        try:
            store.publish("v2", f'{{"n":{i}}}'.encode())
            results.append(i)
        except ArtifactExists:
            pass

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1
    assert store.get_bytes("v2", "manifest.json") == f'{{"n":{results[0]}}}'.encode()


def test_corrupted_upload_detected(store, monkeypatch):
    original = store.hook.upload

    def corrupting_upload(**kw):
        if "data" in kw:
            kw["data"] = kw["data"] + b"!"
        return original(**kw)

    monkeypatch.setattr(store.hook, "upload", corrupting_upload)
    with pytest.raises(IntegrityError, match="read-back sha256"):
        store.put_bytes("v3", "a.txt", b"payload")
