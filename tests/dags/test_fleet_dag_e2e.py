"""dag.test() runs of hailo_fleet_rollout on the fleet testbed (tests/fixtures/fleet.py: six devices,
each its own network namespace, sshd and sidecar, behind the 20 ± 15 ms lab relay).

One release after another, as a fleet lives: v1's canary is promoted on pi-01 and a healthy 2-wave
rollout takes it to the `early` group (pi-02, then pi-03); v2's canary passes on pi-01 but pi-03's
sidecar dies under load with v2, so the 3-wave rollout of v2 to the whole `fleet` group halts in
wave 2: pi-03 restored by its own failed gate, pi-02 (committed in wave 1) restored by the halt,
pi-04..pi-06 (wave 3) never touched. Every device's history in the store is checked against the
identity its sidecar serves (/healthz). Two device lifecycles per rollout keep the CI time down
(one lifecycle over the lab relay is ~25 s on a loaded 2-core box).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from release.history import History
from release.rollout_report import REPORT_NAME
from release.store import LocalArtifactStore
from tests.fixtures.fleet_lab import check_store_against_devices

pytestmark = [pytest.mark.airflow, pytest.mark.ssh, pytest.mark.e2e]
DAGS = Path(__file__).resolve().parents[2] / "dags"
GATE = {"duration_s": 5, "lease_margin_s": 30}


@pytest.fixture
def fleet_pipeline(fleet, tmp_path, monkeypatch):
    root = tmp_path / "artifacts"
    monkeypatch.setenv("HAILO_PIPELINE_ROOT", str(root))
    monkeypatch.setenv("HAILO_DEVICES_FILE", str(fleet.write_inventory(tmp_path / "devices.yaml")))
    for var in ("HAILO_ARTIFACT_ROOT", "HAILO_ARTIFACT_STORE", "HAILO_WORK_ROOT", "HAILO_KEYS_DIR", "HAILO_REGISTRY",
                "HAILO_ROLLOUT_PLAN"):
        monkeypatch.delenv(var, raising=False)
    return root


def _canary(tag: str) -> None:
    """The release's canary on pi-01, through the library (the canary DAG is tested on its own)."""
    from release.pipeline import run_all
    from release.pipeline_env import PipelineEnv
    from release.request import ReleaseRequest
    from release.states import ReleaseState
    from release.store import LocalArtifactStore

    env = PipelineEnv.from_env()
    req = ReleaseRequest(continuity_id="ADR-0007-hailo-docker-2025-08-31", release_tag=tag, onnx_location="sample",
                         config_version=f"cfg-{tag}", device="pi-01", gate_overrides=GATE, triggered_by="pytest")
    outcome = run_all(req, env, LocalArtifactStore(env.store_root), say=lambda _line: None)
    assert outcome.state is ReleaseState.PROMOTED, outcome.state


def _rollout(tag: str, group: str, plan: dict[str, object]):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS)).dags["hailo_fleet_rollout"]
    return dag.test(run_conf={"release_tag": tag, "group": group, "plan": plan})


def _approve_when_waiting(store, wave: int, stop: threading.Event, approved: list[str]) -> None:
    """A release manager: once a rollout waits for wave ``wave``'s approval, approve it with what
    `hailo-release rollout approve ID --wave N` calls (the DAG's sensor reads that record)."""
    from release.rollout import approve
    from release.states import RolloutState, rollout_state

    history = History(store)  # reads only the records added since its last look
    while not stop.wait(1.0):
        for rid in {r.detail.get("rollout_id") for r in history.records() if r.event == "rollout_wait"}:
            if rid and rollout_state(history, rid) is RolloutState.WAITING and rid not in approved:
                approve(store, rid, wave, actor="pytest:release-manager")
                approved.append(rid)


def _states(run) -> dict[str, str]:
    out: dict[str, str] = {}
    for ti in run.get_task_instances():
        key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        out[key] = ti.state
    return out


def test_healthy_rollout_then_a_halting_one(airflow_db, fleet, fleet_pipeline):
    store = LocalArtifactStore(fleet_pipeline / "store")
    t0 = time.monotonic()
    _canary("v1")
    canary_s = time.monotonic() - t0

    # A healthy rollout in 2 waves: the group's canary (1 device), then the rest 2 at a time once a
    # person approved wave 2 (the DAG's sensor waits for the approval record in the store).
    stop, approved = threading.Event(), []
    manager = threading.Thread(target=_approve_when_waiting, args=(store, 2, stop, approved), daemon=True)
    manager.start()
    t0 = time.monotonic()
    try:
        run = _rollout("v1", "early", {"waves": [{"size": 1, "gate": GATE},
                                                 {"size": "100%", "gate": GATE, "parallelism": 2, "approval": True}]})
    finally:
        stop.set()
        manager.join(10)
    healthy_s = time.monotonic() - t0
    states = _states(run)
    assert run.state == "success", states
    assert states["wave_1.roll_device[0]"] == states["wave_2.roll_device[0]"] == "success"
    assert states["wave_3.roll_device"] == states["wave_4.roll_device"] == "skipped"  # the plan has 2 waves
    report = run.get_task_instance("report").xcom_pull(task_ids="report")
    assert report["state"] == "rollout_completed" and report["report_uri"]
    rollout_id = report["rollout_id"]
    assert approved == [rollout_id]
    events = [r.event for r in History(store).rollout_records(rollout_id) if r.device is None]
    assert events.index("rollout_wait") < events.index("rollout_approve") < events.index("rollout_continue")
    assert json.loads(store.get_bytes(rollout_id, REPORT_NAME))["state"] == "rollout_completed"
    running = check_store_against_devices(fleet, store)
    assert running == {"pi-01": "v1", "pi-02": "v1", "pi-03": "v1", "pi-04": None, "pi-05": None, "pi-06": None}
    print(f"canary v1 {canary_s:.1f} s; healthy 2-wave rollout of 2 devices {healthy_s:.1f} s")
    first = {n: [r.event for r in History(store).device_records("v1", n, rollout_id)] for n in ("pi-02", "pi-03")}
    assert all(events[-1] == "promote" for events in first.values()), first

    # v2: its canary passes on pi-01, but pi-03's sidecar dies under the gate's load with it (after
    # activation). Abort once 2 have finished with a failure.
    _canary("v2")
    fleet.crash("pi-03", tags="v2", after_infers=3)
    t0 = time.monotonic()
    run = _rollout("v2", "fleet", {"waves": [{"size": 1, "gate": GATE}, {"size": 2, "gate": GATE}, {"size": "100%", "gate": GATE}],
                          "abort": {"max_failure_rate": 0.2, "min_finished": 2, "any_failure_in_first": 1}})
    halting_s = time.monotonic() - t0
    states = _states(run)
    assert run.state == "success", states  # a halt is a safe, expected end, not a failed run
    check = run.get_task_instance("wave_2.check").xcom_pull(task_ids="wave_2.check")
    assert check["halted"] is True and "failure rate 1/2" in "; ".join(check["reasons"]), check
    assert check["restored"] == {"pi-02": "v1", "pi-03": "v1"}
    assert states["wave_3.roll_device"] == "skipped"  # wave 3 never starts
    report = run.get_task_instance("report").xcom_pull(task_ids="report")
    assert report["state"] == "rollout_halted"
    rid = report["rollout_id"]
    history = History(store)
    for name in ("pi-04", "pi-05", "pi-06"):  # wave 3: never touched, nothing running there
        assert history.device_records("v2", name, rid) == [] and fleet.healthz(name) is None
    assert history.device_records("v2", "pi-02", rid)[-1].detail.get("halt") is True
    assert history.device_records("v2", "pi-03", rid)[-1].to_state == "rolled_back"
    running = check_store_against_devices(fleet, store)
    assert running == {"pi-01": "v2", "pi-02": "v1", "pi-03": "v1", "pi-04": None, "pi-05": None, "pi-06": None}
    # A resume of the finished v1 rollout (a re-triggered run with rollout_id, or a retried task after a
    # restart) redoes nothing: the task bodies read each device's outcome from the history.
    from hailo_airflow.fleet_steps import roll_device, start_or_resume

    before = len(History(store).records())
    resumed = start_or_resume({"params": {"release_tag": "v1", "rollout_id": rollout_id}}, 4)
    assert resumed["waves"] == [{"index": 1, "devices": ["pi-02"]}, {"index": 2, "devices": ["pi-03"]}]
    again = roll_device(resumed, 1, "pi-02", {})
    assert again["status"] == "promoted" and again["runs"] == "v1"
    assert len(History(store).records()) == before  # nothing recorded, nothing sent to the device
    print(f"halting rollout {halting_s:.1f} s (wave 2 halted in {check['halt_s']:.1f} s); load {os.getloadavg()[0]:.1f}")


def test_bad_params_are_refused_before_anything_runs(airflow_db, fleet_pipeline):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import ParamValidationError

    dag = DagBag(dag_folder=str(DAGS)).dags["hailo_fleet_rollout"]
    for conf in ({"release_tag": "v1;reboot", "group": "fleet"}, {"release_tag": "v1", "group": "Fleet A"},
                 {"release_tag": "v1", "selector": "site"}, {"release_tag": "v1", "plan": {"waves": "all"}}):
        with pytest.raises(ParamValidationError):
            dag.test(run_conf=conf)
    # What the JSON schema cannot say (a wave of 0 devices) the plan model refuses in prepare: nothing is recorded.
    run = dag.test(run_conf={"release_tag": "v1", "group": "fleet", "plan": {"waves": [{"size": 0}, {"size": "100%"}]}})
    assert run.state == "failed"
    assert _states(run)["prepare"] == "failed"
    assert not (fleet_pipeline / "store" / "records").exists() or not list((fleet_pipeline / "store" / "records").rglob("*rollout*"))
