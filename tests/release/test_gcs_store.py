"""release.gcs_store without Airflow, against a real GCS emulator (fake-gcs-server): the store protocol,
create-only manifests and records, read-back verification, and the on-call CLI on a gs:// store —
history, status, rollback and reconcile on a local device, every record written to the bucket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from release.errors import ArtifactExists, ArtifactNotFound, ConfigError, IntegrityError, InvalidIdentifier
from release.gcs_store import GcsArtifactStore, GcsLocation
from release.store import ArtifactStore
from tests.fixtures.manifests import make_manifest
from tests.fixtures.testbed import REPO, free_port


def _raw_bucket(name: str):
    """A plain storage client: writes 'behind the store's back'."""
    from google.cloud import storage

    return storage.Client().bucket(name)


@pytest.fixture
def bucket(gcs_emulator, monkeypatch) -> str:
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    name = f"hailo-{uuid.uuid4().hex[:16]}"
    storage.Client().create_bucket(name)
    return name


@pytest.fixture
def store(bucket) -> GcsArtifactStore:
    return GcsArtifactStore.from_url(f"gs://{bucket}/team-a/store")


@pytest.mark.parametrize("url,bucket,root", [
    ("gs://b-1", "b-1", ""), ("gs://b-1/", "b-1", ""), ("gs://my.bucket/a/b_c/", "my.bucket", "a/b_c"),
])
def test_location_grammar(url, bucket, root):
    loc = GcsLocation.parse(url)
    assert (loc.bucket, loc.root) == (bucket, root)
    assert GcsLocation.parse(str(loc)) == loc


@pytest.mark.parametrize("url", ["gs://", "gs://B", "gs://a", "gs://b-1/../x", "gs://b-1/a;b", "s3://b-1", "gs://-b/x"])
def test_bad_locations_are_refused(url):
    with pytest.raises(ConfigError):
        GcsLocation.parse(url)


def test_protocol_round_trip_under_a_root(store, bucket, tmp_path):
    assert isinstance(store, ArtifactStore)
    src = tmp_path / "model.hef"
    src.write_bytes(b"HEF" * 100_000)
    ref = store.put_file("v1", "tcn_encoder-v1.hef", src)
    assert ref.uri == f"gs://{bucket}/team-a/store/releases/v1/tcn_encoder-v1.hef" and ref.size == 300_000
    assert store.fetch("v1", "tcn_encoder-v1.hef", tmp_path / "out" / "a.hef").read_bytes() == src.read_bytes()
    store.put_bytes("v1", "reports/manifest.json", b"{}")  # an artifact, not the published marker
    assert store.exists("v1", "reports/manifest.json") and not store.is_published("v1")
    assert store.list_published() == []
    store.publish("v1", make_manifest(release_tag="v1").canonical_json())
    assert store.is_published("v1") and store.list_published() == ["v1"]
    with pytest.raises(ArtifactExists):
        store.put_bytes("v1", "late.txt", b"x")
    with pytest.raises(ArtifactExists):
        store.publish("v1", b"{}")
    with pytest.raises(ArtifactNotFound, match=f"gs://{bucket}/team-a/store/releases/v1/nope"):
        store.get_bytes("v1", "nope")
    # Another root in the same bucket is another store.
    assert GcsArtifactStore.from_url(f"gs://{bucket}/team-b").list_published() == []
    with pytest.raises(InvalidIdentifier):
        store.put_bytes("v1;rm -rf /", "a.txt", b"x")


def test_create_only_records_one_writer_wins_per_key(store, bucket):
    """Two hosts (two clients) create the same record at once: exactly one wins, its bytes stay."""
    other = GcsArtifactStore.from_url(f"gs://{bucket}/team-a/store")
    barrier = threading.Barrier(2)
    won: dict[str, bool] = {}

    def write(name: str, s: GcsArtifactStore) -> None:
        barrier.wait()
        won[name] = s.create_record("history/0000000001.json", f'{{"by": "{name}"}}'.encode())

    threads = [threading.Thread(target=write, args=(n, s)) for n, s in (("a", store), ("b", other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won.values()) == [False, True]
    winner = next(n for n, ok in won.items() if ok)
    assert store.read_record("history/0000000001.json") == f'{{"by": "{winner}"}}'.encode()
    assert store.list_records("history") == ["0000000001.json"]
    blob = _raw_bucket(bucket).get_blob("team-a/store/records/history/0000000001.json")
    assert blob is not None and blob.generation


def test_history_appends_racing_from_two_hosts_take_each_seq_once(store, bucket):
    from release.history import History
    from release.states import create

    hosts = [store, GcsArtifactStore.from_url(f"gs://{bucket}/team-a/store")]
    barrier = threading.Barrier(4)

    def worker(i: int) -> None:
        barrier.wait()
        create(History(hosts[i % 2]), f"v{i}", device="pi", actor=f"host-{i % 2}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = History(GcsArtifactStore.from_url(f"gs://{bucket}/team-a/store")).records()  # chain checked
    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert sorted(r.release_tag for r in records) == ["v0", "v1", "v2", "v3"]
    assert sorted(r.release_counter for r in records) == [1, 2, 3, 4]


def test_a_create_retried_after_its_response_was_lost_still_wins(store, monkeypatch):
    """The client retries a create-only upload whose response was lost; the retry fails its
    precondition against our own first write. Same bytes there: we won, not lost."""
    original = store._upload

    def lost_response_then_retry(obj, data, **kw):
        original(obj, data, **kw)
        return original(obj, data, **kw)  # the retry: PreconditionFailed

    monkeypatch.setattr(store, "_upload", lost_response_then_retry)
    assert store.create_record("history/0000000001.json", b'{"mine": 1}') is True
    monkeypatch.undo()
    assert store.create_record("history/0000000001.json", b'{"theirs": 1}') is False
    assert store.read_record("history/0000000001.json") == b'{"mine": 1}'


def test_corrupt_writes_are_detected_and_no_corrupt_record_stays(store, monkeypatch):
    original = store._upload

    def corrupting(obj, data, **kw):
        return original(obj, data + b"!" if isinstance(data, bytes) else data, **kw)

    monkeypatch.setattr(store, "_upload", corrupting)
    with pytest.raises(IntegrityError, match=r"releases/v3/a.txt: sha256 .* does not match"):
        store.put_bytes("v3", "a.txt", b"payload")
    with pytest.raises(IntegrityError, match=r"records/history/0000000001.json: sha256"):
        store.create_record("history/0000000001.json", b"{}")
    with pytest.raises(IntegrityError):
        store.publish("v3", b"{}")
    monkeypatch.undo()
    assert store.list_records("history") == [] and not store.is_published("v3")  # our corrupt generations deleted


def test_object_replaced_behind_the_stores_back_fails_verify(store, bucket):
    ref = store.put_bytes("v4", "model.onnx", b"the real model")
    store.verify("v4", "model.onnx", ref.sha256)
    _raw_bucket(bucket).blob("team-a/store/releases/v4/model.onnx").upload_from_string(b"an evil model")
    with pytest.raises(IntegrityError, match="does not match"):
        store.verify("v4", "model.onnx", ref.sha256)


def test_without_google_cloud_storage_the_error_names_the_extra(tmp_path):
    probe = ("import sys; sys.modules['google.cloud.storage'] = None\n"
             "from release.cli import main\n"
             "raise SystemExit(main(['history']))")
    env = {**os.environ, "HAILO_ARTIFACT_STORE": "gs://some-bucket/x", "HAILO_PIPELINE_ROOT": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60, cwd=REPO)
    assert res.returncode == 2, res.stderr
    assert "hailo-pipeline[gcs]" in res.stderr and "google-cloud-storage" in res.stderr


# -- the on-call CLI on a gs:// store -------------------------------------------------------------
GATE = ["--gate-override=duration_s=5", "--gate-override=lease_margin_s=20", "--gate-override=rate_windows_per_s=22"]


def _records(bucket: str, root: str) -> list[str]:
    from google.cloud import storage

    return sorted(b.name for b in storage.Client().list_blobs(bucket, prefix=f"{root}/records/history/"))


@pytest.mark.e2e
def test_oncall_cli_reads_and_writes_a_gs_store(bucket, gcs_emulator, tmp_path):
    port = free_port()
    root = "oncall"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAILO_", "AIRFLOW"))}
    env.update(HAILO_PIPELINE_ROOT=str(tmp_path), HAILO_LOCAL_SIDECAR_PORT=str(port), STORAGE_EMULATOR_HOST=gcs_emulator,
               HAILO_ARTIFACT_STORE=f"gs://{bucket}/{root}", PYTHONPATH=str(REPO))

    def cli(*argv: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "release.cli", *argv], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=tmp_path, **kw)

    def status() -> tuple[int, dict]:
        res = cli("status", "--device", "local", timeout=60)
        return res.returncode, json.loads(res.stdout)

    base = ["--continuity-id", "ADR-0007-hailo-docker-2025-08-31", "--device", "local", *GATE]
    try:
        for tag in ("r1", "r2"):
            res = cli("run", "--tag", tag, "--config-version", f"cfg-{tag}", *base, timeout=300)
            assert res.returncode == 0, res.stderr[-3000:]
        assert not (tmp_path / "store").exists()  # nothing went to a local store
        code, view = status()
        assert code == 0 and view["device_runs"]["committed"] == view["store_last_known_good"] == "r2", view

        before = _records(bucket, root)
        res = cli("rollback", "--device", "local", "--to", "r1", "--reason", "pager: p95 alarms")
        assert res.returncode == 0, res.stderr[-3000:]
        assert json.loads(res.stdout)["rolled_back_to"] == "r1"
        written = _records(bucket, root)[len(before):]
        assert written, "the rollback wrote no history record to the bucket"
        code, view = status()
        assert code == 0 and view["device_runs"]["current"] == view["store_last_known_good"] == "r1", view
        history = [json.loads(line) for line in cli("history", "--device", "local").stdout.splitlines()]
        assert len(history) == len(before) + len(written)
        assert history[-1]["detail"]["restored"] == "r1" and history[-1]["actor"].startswith("cli:")

        # The orchestrator dies mid-canary (SIGKILL): the device's lease restores r1 on its own, and the
        # on-call `reconcile` records it in the bucket; `status` then agrees again.
        marker = tmp_path / "fault.marker"
        proc = subprocess.Popen([sys.executable, "-m", "release.cli", "run", "--tag", "r3", "--config-version", "cfg-r3",
                                 *base], env={**env, "HAILO_FAULT_AT": "gate_load:pause", "HAILO_FAULT_MARKER": str(marker),
                                              "HAILO_FAULT_PAUSE_S": "300"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert marker.exists(), f"the canary never reached its gate (exit {proc.returncode})"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        code, view = status()
        # A canary in flight under its lease: device and store agree.
        assert code == 0 and view["store_in_flight"] == "r3" and view["device_runs"]["current"] == "r3", view
        assert view["device_runs"]["lease"]["tag"] == "r3"
        deadline = time.monotonic() + 25 + 60  # the lease (5 s gate + 20 s margin), start-up and a restart
        while (view["device_runs"]["current"] != "r1" or view["device_runs"]["lease"]) and time.monotonic() < deadline:
            time.sleep(1)
            _, view = status()
        assert view["device_runs"]["current"] == "r1" and not view["device_runs"]["lease"], view
        res = cli("reconcile", "--device", "local")
        assert res.returncode == 0, res.stdout + res.stderr[-3000:]
        result = json.loads(res.stdout)
        assert result["in_flight"] == "r3" and result["recorded"] == "lease_expired", result
        assert result["status"]["agrees"] is True
        r3 = [json.loads(line) for line in cli("history", "--tag", "r3").stdout.splitlines()]
        assert r3[-1]["to_state"] == "rolled_back" and r3[-1]["event"] == "lease_expired"
    finally:
        from release.local_sidecar import _stop

        _stop(tmp_path / "device" / "local" / "sidecar")


def test_store_selection_by_url(bucket, monkeypatch, tmp_path):
    from release.cli import _env_and_store
    from release.store import LocalArtifactStore

    monkeypatch.setenv("HAILO_PIPELINE_ROOT", str(tmp_path))
    monkeypatch.delenv("HAILO_ARTIFACT_STORE", raising=False)
    assert isinstance(_env_and_store()[1], LocalArtifactStore)
    monkeypatch.setenv("HAILO_ARTIFACT_STORE", f"gs://{bucket}/x/y")
    gcs = _env_and_store()[1]
    assert isinstance(gcs, GcsArtifactStore) and gcs.location == GcsLocation(bucket, "x/y")
    assert gcs.list_published() == [] and not Path(tmp_path / "store").exists()
