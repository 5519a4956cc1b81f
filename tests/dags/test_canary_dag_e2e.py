"""dag.test() runs of hailo_canary_release on the loopback testbed: the real sshd plays the Pi,
with the device agent and a real sidecar process behind it. A good release is promoted; a bad
one (outputs drift) is rolled back and the device ends on the good release."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from release.ledger import Ledger
from release.store import LocalArtifactStore
from tests.fixtures.testbed import free_port

pytestmark = [pytest.mark.airflow, pytest.mark.ssh, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"


@pytest.fixture
def pipeline_root(tmp_path, monkeypatch, sshd_server):
    port = free_port()
    root = tmp_path / "artifacts"
    agent_root = tmp_path / "pi" / "hailo"
    restart = [sys.executable, "-m", "release.local_sidecar", "restart", "--release-dir", "{release_dir}",
               "--state-dir", str(agent_root / "sidecar"), "--port", str(port),
               "--module", "tests.doubles.faulty_sidecars drift bad-1", "--env", f"PYTHONPATH={REPO}",
               "--env", "HAILO_RELEASE_TAG={tag}"]
    devices = {"devices": {"testpi": {
        "transport": "ssh", "host": sshd_server.host, "port": sshd_server.port, "user": sshd_server.user,
        "key_file": str(sshd_server.key_file), "known_hosts": str(sshd_server.known_hosts),
        "agent_root": str(agent_root), "agent_python": sys.executable,
        "gate_url": f"http://127.0.0.1:{port}", "health_url": f"http://127.0.0.1:{port}",
        "restart_command": restart, "health_timeout_s": 30,
    }}}
    (tmp_path / "devices.yaml").write_text(yaml.safe_dump(devices))
    monkeypatch.setenv("HAILO_PIPELINE_ROOT", str(root))
    monkeypatch.setenv("HAILO_DEVICES_FILE", str(tmp_path / "devices.yaml"))
    for var in ("HAILO_ARTIFACT_ROOT", "HAILO_WORK_ROOT", "HAILO_KEYS_DIR", "HAILO_LEDGER_DIR", "HAILO_REGISTRY"):
        monkeypatch.delenv(var, raising=False)
    yield root, port
    from release.local_sidecar import _stop

    _stop(agent_root / "sidecar")


def _run(tag, device="testpi"):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS)).dags["hailo_canary_release"]
    conf = {"continuity_id": "ADR-0007-hailo-docker-2025-08-31", "release_tag": tag, "onnx_location": "sample",
            "config_version": f"cfg-{tag}", "device": device, "gate_overrides": {"duration_s": 5}, "production": False}
    return dag.test(run_conf=conf)


def _task_states(run):
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def test_good_release_promoted_then_bad_release_rolled_back(airflow_db, pipeline_root):
    root, port = pipeline_root
    store = LocalArtifactStore(root / "store")

    run = _run("good-1")
    assert run.state == "success"
    states = _task_states(run)
    assert states["promote"] == "success" and states["rollback"] == "skipped"
    manifest = json.loads(store.get_bytes("good-1", "manifest.json"))
    assert manifest["state"] == "promoted" and manifest["gate"]["verdict"] == "pass"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
        health = json.loads(r.read())
    # The contract: the manifest's identity is what the canary reports.
    assert health["hef_sha256"] == manifest["hef"]["hef_sha256"]
    assert health["config_version"] == manifest["config_version"] == "cfg-good-1"
    assert {s["name"]: s["status"] for s in manifest["steps"]}["compile"] == "placeholder"

    run = _run("bad-1")
    assert run.state == "success"
    states = _task_states(run)
    assert states["rollback"] == "success" and states["promote"] == "skipped"
    bad = json.loads(store.get_bytes("bad-1", "manifest.json"))
    assert bad["state"] == "rolled_back" and bad["gate"]["verdict"] == "fail"
    assert any("parity" in r for r in bad["gate"]["reasons"])
    assert bad["previous_release_tag"] == "good-1" and bad["release_counter"] == manifest["release_counter"] + 1
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
        assert json.loads(r.read())["config_version"] == "cfg-good-1"
    ledger = Ledger(root / "ledger")
    assert ledger.verify("testpi") >= 4
    events = [(e.event, e.tag) for e in ledger.entries("testpi")]
    assert ("promote", "good-1") in events and ("rollback", "good-1") in events
    assert "parity" in ledger.entries("testpi")[-1].reason

    # A release manager cannot "approve" a release the gate already rejected: the decision DAG runs
    # the library's transition table and fails with its message; the device is left alone.
    from airflow.dag_processing.dagbag import DagBag

    decision = DagBag(dag_folder=str(DAGS)).dags["hailo_release_decision"]
    run = decision.test(run_conf={"device": "testpi", "release_tag": "bad-1", "decision": "approve",
                                  "reason": "looks fine to me"})
    assert run.state == "failed"
    assert "rolled_back cannot take event approve" in ledger.entries("testpi")[-1].reason
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
        assert json.loads(r.read())["config_version"] == "cfg-good-1"


def test_bad_params_fail_before_anything_runs(airflow_db, pipeline_root):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import ParamValidationError

    dag = DagBag(dag_folder=str(DAGS)).dags["hailo_canary_release"]
    with pytest.raises(ParamValidationError):
        dag.test(run_conf={"release_tag": "x;rm -rf /"})
