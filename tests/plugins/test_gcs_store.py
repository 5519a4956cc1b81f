"""The GCS artifact store as Airflow tasks build it (release.gcs_store on GCSHook's client, credentials from the
Airflow connection) against a real GCS emulator (fake-gcs-server)."""

from __future__ import annotations

import threading
import uuid

import pytest

from release.checksums import sha256_bytes
from release.errors import ArtifactExists, ArtifactNotFound, IntegrityError, InvalidIdentifier
from release.store import ArtifactStore
from tests.fixtures.manifests import make_manifest

pytestmark = pytest.mark.airflow


def _raw_client():
    """A plain storage client: writes 'behind the store's back'."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="test", credentials=AnonymousCredentials())


@pytest.fixture
def store(gcs_connection):
    from hailo_airflow.gcs_store import GcsArtifactStore

    bucket = f"hailo-{uuid.uuid4().hex[:16]}"
    _raw_client().create_bucket(bucket)
    return GcsArtifactStore(gcp_conn_id=gcs_connection, bucket=bucket)


def test_round_trip_and_publish(store, tmp_path):
    assert isinstance(store, ArtifactStore)
    src = tmp_path / "model.hef"
    src.write_bytes(b"HEF" * 100_000)
    ref = store.put_file("v1", "tcn_encoder-v1.hef", src)
    assert ref.uri == f"gs://{store.bucket_name}/releases/v1/tcn_encoder-v1.hef"
    store.put_bytes("v1", "hef_sha256sum.txt", f"{ref.sha256}  tcn_encoder-v1.hef\n".encode())
    assert store.fetch("v1", "tcn_encoder-v1.hef", tmp_path / "out.hef").read_bytes() == src.read_bytes()
    store.put_bytes("v1", "reports/manifest.json", b"{}")  # an artifact, not the published marker
    assert not store.is_published("v1") and store.list_published() == []
    store.publish("v1", make_manifest(release_tag="v1").canonical_json())
    assert store.is_published("v1") and store.list_published() == ["v1"]
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
    original = store._upload

    def corrupting_upload(obj, data, **kw):
        return original(obj, data + b"!" if isinstance(data, bytes) else data, **kw)

    monkeypatch.setattr(store, "_upload", corrupting_upload)
    with pytest.raises(IntegrityError, match=r"releases/v3/a.txt: sha256 .* does not match"):
        store.put_bytes("v3", "a.txt", b"payload")


def test_object_replaced_behind_the_stores_back_fails_verify(store):
    ref = store.put_bytes("v4", "model.onnx", b"the real model")
    store.verify("v4", "model.onnx", ref.sha256)
    _raw_client().bucket(store.bucket_name).blob("releases/v4/model.onnx").upload_from_string(b"an evil model")
    with pytest.raises(IntegrityError, match=r"releases/v4/model.onnx: sha256 .* does not match"):
        store.verify("v4", "model.onnx", ref.sha256)
    with pytest.raises(ArtifactNotFound):
        store.verify("v4", "absent.bin", sha256_bytes(b""))


def test_publish_landing_during_an_upload_is_reported(store, monkeypatch):
    original = store._upload

    def upload_then_someone_publishes(obj, data, **kw):
        original(obj, data, **kw)
        _raw_client().bucket(store.bucket_name).blob("releases/v5/manifest.json").upload_from_string(b"{}")

    monkeypatch.setattr(store, "_upload", upload_then_someone_publishes)
    with pytest.raises(ArtifactExists, match="published while late.txt was being written"):
        store.put_bytes("v5", "late.txt", b"x")


@pytest.mark.parametrize("tag,name", [("v1;rm -rf /", "a.txt"), ("v1", "../x"), ("v1", "manifest.json")])
def test_bad_tags_and_names_are_refused(store, tag, name):
    with pytest.raises(InvalidIdentifier):
        store.put_bytes(tag, name, b"x")


def test_signed_bundle_published_to_gcs_and_verified_after_fetch(store, tmp_path, sample_onnx_path):
    """The release as the device sees it: signed locally, published to GCS, fetched back, verified;
    an artifact swapped in the bucket afterwards is refused by the bundle signature."""
    import shutil

    from release.bundle_signing import KeyBundleSigner, verify_bundle
    from release.checksums import write_sha256sum
    from release.keys import generate_dev_keypair

    priv, pub = generate_dev_keypair(tmp_path / "keys")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(sample_onnx_path, src / "model.onnx")
    (src / "tcn_encoder-v6.hef").write_bytes(b"\x01HEF" * 4096)
    write_sha256sum([src / "tcn_encoder-v6.hef"], src / "hef_sha256sum.txt")
    (src / "manifest.json").write_bytes(make_manifest(release_tag="v6").canonical_json())
    KeyBundleSigner(priv).sign(src, tmp_path / "bundle.sig")
    names = ["model.onnx", "tcn_encoder-v6.hef", "hef_sha256sum.txt"]
    for name in names:
        store.put_file("v6", name, src / name)
    store.put_file("v6", "bundle.sig", tmp_path / "bundle.sig")
    store.publish("v6", (src / "manifest.json").read_bytes())

    def fetch_all(dest):
        for name in [*names, "manifest.json"]:
            store.fetch("v6", name, dest / name)
        return dest, store.fetch("v6", "bundle.sig", dest.parent / f"{dest.name}.sig")

    verify_bundle(*fetch_all(tmp_path / "fetched"), pub)
    _raw_client().bucket(store.bucket_name).blob("releases/v6/tcn_encoder-v6.hef").upload_from_string(b"\x01HEF evil")
    with pytest.raises(IntegrityError, match=r"\(changed: tcn_encoder-v6.hef\)"):
        verify_bundle(*fetch_all(tmp_path / "fetched2"), pub)


def test_release_history_in_gcs_is_shared_and_create_only(store):
    """The history on GCS: records are create-only (ifGenerationMatch=0), so racing workers on other
    hosts never overwrite one another, and a second reader sees exactly the same chain."""
    from release.history import History
    from release.states import ReleaseEvent, advance, create

    assert store.create_record("history/x.json", b"{}") is True
    assert store.create_record("history/x.json", b"{\"other\": 1}") is False
    assert store.read_record("history/x.json") == b"{}"
    _raw_client().bucket(store.bucket_name).blob("records/history/x.json").delete()

    def worker(i: int) -> None:
        create(History(store), f"v{i}", device="pi", actor=f"worker-{i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    advance(History(store), "v0", ReleaseEvent.VALIDATED, actor="t")
    records = History(store).records()
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert sorted(r.release_counter for r in records[:4]) == [1, 2, 3, 4]
    with pytest.raises(ArtifactNotFound):
        store.read_record("history/none.json")
