import threading

import pytest

from release.errors import ArtifactExists, ArtifactNotFound, InvalidIdentifier
from release.store import ArtifactStore, LocalArtifactStore
from tests.fixtures.manifests import make_manifest


@pytest.fixture
def store(tmp_path):
    return LocalArtifactStore(tmp_path / "store")


def test_is_an_artifact_store(store):
    assert isinstance(store, ArtifactStore)


def test_put_get_fetch(store, tmp_path):
    src = tmp_path / "m.hef"
    src.write_bytes(b"x" * 3_000_000)
    ref = store.put_file("v1", "model.hef", src)
    assert ref.size == 3_000_000 and ref.uri.startswith("file://")
    assert store.get_bytes("v1", "model.hef") == src.read_bytes()
    dest = store.fetch("v1", "model.hef", tmp_path / "out" / "m.hef")
    assert dest.read_bytes() == src.read_bytes()
    store.put_bytes("v1", "logs/allocator.log", b"log")
    assert store.exists("v1", "logs/allocator.log")
    assert not list((tmp_path / "store").rglob("*.tmp"))


def test_not_published_until_manifest(store):
    store.put_bytes("v1", "a.txt", b"a")
    assert not store.is_published("v1")
    assert store.list_published() == []
    store.publish("v1", make_manifest().canonical_json())
    assert store.is_published("v1")
    assert store.list_published() == ["v1"]


def test_published_release_is_immutable(store):
    store.put_bytes("v1", "a.txt", b"a")
    store.publish("v1", b"{}")
    with pytest.raises(ArtifactExists):
        store.put_bytes("v1", "a.txt", b"b")
    with pytest.raises(ArtifactExists):
        store.publish("v1", b"{}")
    assert store.get_bytes("v1", "a.txt") == b"a"
    assert store.get_bytes("v1", "manifest.json") == b"{}"


def test_concurrent_publishers_only_one_wins(store):
    results = []

    def publish(i):
        try:
            store.publish("v2", f'{{"n":{i}}}'.encode())
            results.append(("ok", i))
        except ArtifactExists:
            results.append(("lost", i))

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for kind, i in results if kind == "ok"]
    assert len(winners) == 1
    assert store.get_bytes("v2", "manifest.json") == f'{{"n":{winners[0]}}}'.encode()


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b/c", "manifest.json", "..", "a;b"])
def test_bad_names_refused(store, name):
    with pytest.raises(InvalidIdentifier):
        store.put_bytes("v1", name, b"x")


def test_bad_tag_refused(store):
    with pytest.raises(InvalidIdentifier):
        store.put_bytes("../v1", "a", b"x")


def test_missing_artifact(store, tmp_path):
    with pytest.raises(ArtifactNotFound):
        store.get_bytes("v1", "nope")
    with pytest.raises(ArtifactNotFound):
        store.put_file("v1", "a", tmp_path / "nope")

