"""dag.test() runs of hailo_canary_release on the loopback testbed: the real sshd plays the Pi,
with the device agent and a real sidecar process behind it. A good release is promoted; a bad
one (outputs drift) is rolled back and the device ends on the good release; an unexpected error
after activation, and a task process killed during latency_gate, both end on the good release too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from release.history import History
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
        "stop_command": [sys.executable, "-m", "release.local_sidecar", "stop", "--state-dir", str(agent_root / "sidecar")],
    }}}
    (tmp_path / "devices.yaml").write_text(yaml.safe_dump(devices))
    monkeypatch.setenv("HAILO_PIPELINE_ROOT", str(root))
    monkeypatch.setenv("HAILO_DEVICES_FILE", str(tmp_path / "devices.yaml"))
    for var in ("HAILO_ARTIFACT_ROOT", "HAILO_WORK_ROOT", "HAILO_KEYS_DIR", "HAILO_LEDGER_DIR", "HAILO_REGISTRY"):
        monkeypatch.delenv(var, raising=False)
    yield root, port
    from release.local_sidecar import _stop

    _stop(agent_root / "sidecar")


GATE = {"duration_s": 5, "lease_margin_s": 20}  # lease 25 s once healthy


def _conf(tag, device="testpi"):
    return {"continuity_id": "ADR-0007-hailo-docker-2025-08-31", "release_tag": tag, "onnx_location": "sample",
            "config_version": f"cfg-{tag}", "device": device, "gate_overrides": GATE, "production": False}


def _run(tag, device="testpi"):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS)).dags["hailo_canary_release"]
    return dag.test(run_conf=_conf(tag, device))


def _health(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
        return json.loads(r.read())


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
    history = History(store)
    ledger = [(r.release_tag, r.event, r.to_state) for r in history.for_device("testpi")]
    assert ("good-1", "promote", "promoted") in ledger and ("bad-1", "rollback", "rolled_back") in ledger
    assert "parity" in history.for_tag("bad-1")[-1].reason
    assert history.for_tag("bad-1")[-1].detail["restored"] == "good-1"

    # A release manager cannot "approve" a release the gate already rejected: the decision DAG runs
    # the library's transition table and fails with its message; the device is left alone.
    from airflow.dag_processing.dagbag import DagBag

    decision = DagBag(dag_folder=str(DAGS)).dags["hailo_release_decision"]
    run = decision.test(run_conf={"device": "testpi", "release_tag": "bad-1", "decision": "approve",
                                  "reason": "looks fine to me"})
    assert run.state == "failed"
    assert History(store).state_of("bad-1") == "rolled_back"  # the table refused: nothing recorded
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
        assert json.loads(r.read())["config_version"] == "cfg-good-1"

    # An unexpected error right after activation: the task rolls the device back before failing,
    # the failure is recorded once (task + callback + ensure_safe), and the run fails.
    os.environ["HAILO_FAULT_AT"] = "deploy_health:raise"
    try:
        run = _run("boom-1")
    finally:
        del os.environ["HAILO_FAULT_AT"]
    assert run.state == "failed"
    states = _task_states(run)
    assert states["canary_deploy"] == "failed" and states["ensure_safe"] == "failed"
    assert _health(port)["config_version"] == "cfg-good-1"
    records = History(store).for_tag("boom-1")
    assert [r.to_state for r in records if r.to_state == "failed"] == ["failed"]
    assert "injected fault" in records[-1].reason
    assert json.loads(store.get_bytes("boom-1", "manifest.json"))["state"] == "failed"


def test_bad_params_fail_before_anything_runs(airflow_db, pipeline_root):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import ParamValidationError

    dag = DagBag(dag_folder=str(DAGS)).dags["hailo_canary_release"]
    with pytest.raises(ParamValidationError):
        dag.test(run_conf={"release_tag": "x;rm -rf /"})


def test_task_process_killed_during_latency_gate(airflow_db, pipeline_root, tmp_path):
    """SIGKILL the process running latency_gate (dag.test runs tasks in-process): nothing of the
    orchestrator survives, the device's lease restores the good release, reconcile records it."""
    from release.operations import reconcile, status
    from release.pipeline_env import PipelineEnv

    root, port = pipeline_root
    assert _run("good-2").state == "success"
    marker = tmp_path / "marker"
    script = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"dag = DagBag(dag_folder={str(DAGS)!r}).dags['hailo_canary_release']\n"
        "dag.test(run_conf=json.loads(sys.argv[1]))\n"
    )
    env = {**os.environ, "HAILO_FAULT_AT": "gate_load:pause", "HAILO_FAULT_MARKER": str(marker),
           "HAILO_FAULT_PAUSE_S": "300", "PYTHONPATH": f"{REPO}:{REPO / 'plugins'}"}
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(_conf("killed-1"))], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "dagtest.log", "wb"), start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "dagtest.log").read_text()[-3000:]
            time.sleep(0.2)
        assert _health(port)["config_version"] == "cfg-killed-1"  # the provisional canary serves
        os.killpg(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    while True:
        try:
            if _health(port)["config_version"] == "cfg-good-2":
                break
        except OSError:
            pass  # the sidecar is between releases while the agent restores
        assert time.monotonic() - killed_at < 25 + 30, "lease + 30 s passed without the device restoring itself"
        time.sleep(0.5)
    env_ = PipelineEnv.from_env()
    store = LocalArtifactStore(root / "store")
    assert History(store).state_of("killed-1") == "canary_deployed"  # nobody was left to record anything
    assert not status(env_, store, "testpi").agrees
    result = reconcile(env_, store, "testpi", actor="pytest")
    assert result["recorded"] == "lease_expired"
    assert status(env_, store, "testpi").agrees
    assert json.loads(store.get_bytes("killed-1", "manifest.json"))["state"] == "rolled_back"
