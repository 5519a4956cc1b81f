"""hailo_fleet_rollout on a real `airflow standalone` (LocalExecutor) when a device's task process is
SIGKILLed in the middle of its gate (tests/fixtures/fleet_airflow.py: the local fleet's devices).

The kill leaves the device on a provisional canary under its lease, and the store's history with
that attempt in flight. Airflow's supervisor sees its task die and retries it (retries=1): the
retry first reconciles the device (the unjudged canary restored to last-known-good, recorded as
interrupted), then runs the device's lifecycle again as attempt 2. The run completes, nothing is
left on a device ungated, and the history agrees with what every device serves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from release.history import History

pytestmark = [pytest.mark.airflow, pytest.mark.e2e]
FLEET_DAG = "hailo_fleet_rollout"
TARGET = ["pi-1", "pi-2"]  # rack r1
KILLED = "pi-1"


def _load_process(agent_root: str) -> int | None:
    """The pid of the gate's `load` on the device (the agent command with this device's windows file)."""
    needle = f"{agent_root}/gate/windows.json".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"load" in argv and needle in argv:
            return int(entry.name)
    return None


def _parent(pid: int) -> int:
    return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])


def _identity_matches_history(fleet, names: list[str]) -> dict[str, str | None]:
    history = History(fleet.store)
    running = {}
    for name in names:
        lkg = history.last_known_good(name)
        assert history.in_flight(name) is None, (name, history.in_flight(name))
        health = fleet.health(name)
        if lkg is None:
            assert health is None, (name, health)
        else:
            assert health is not None and (health["hef_sha256"], health["config_version"]) == (
                fleet.hef_of(lkg[0]), f"cfg-{lkg[0]}"), (name, lkg, health)
        running[name] = lkg[0] if lkg else None
    return running


def test_a_device_task_sigkilled_mid_gate_is_reconciled_then_retried(fleet_airflow, tmp_path):
    from release.devices import Selector
    from release.rollout import start_rollout
    from release.rollout_plan import parse_plan
    from release.rollout_run import run_rollout
    from release.trigger import AirflowClient
    from tests.fixtures.fleet_local import GATE, NEVER_ABORT

    fleet, server = fleet_airflow.fleet, fleet_airflow.server
    plan = {"waves": [{"size": "100%", "gate": GATE, "parallelism": 2}], "abort": NEVER_ABORT}
    base = fleet.canary("tk-base")  # a last-known-good on both devices first, so a restore has a target
    rid0 = start_rollout(fleet.env, fleet.store, base, parse_plan(plan), Selector.parse(selector="rack=r1"), actor="pytest")
    run_rollout(fleet.env, fleet.store, rid0, actor="pytest", say=lambda _m: None)
    before = _identity_matches_history(fleet, TARGET)
    tag = fleet.canary("tk-1")

    cid = "ADR-0007-hailo-docker-2025-08-31"
    run_id = f"{cid}__ci-70-1"  # what `trigger --ci-run 70-1` names the run
    log = tmp_path / "trigger.log"
    env = {**os.environ, "AIRFLOW_PASSWORD": server.password}
    conf = {"release_tag": tag, "selector": "rack=r1", "production": False, "plan": plan}
    with open(log, "wb") as out:
        follower = subprocess.Popen([sys.executable, "-m", "release.cli", "trigger", "--airflow-url", server.url,
                                     "--user", server.username, "--poll", "1", "--dag", FLEET_DAG, "--continuity-id", cid,
                                     "--ci-run", "70-1", "--conf", json.dumps(conf)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        agent_root = str(fleet.specs[KILLED].agent_root)
        deadline = time.monotonic() + 300
        load = None
        while load is None:  # the device's gate is under way: a canary under lease, the load running
            assert follower.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            load = _load_process(agent_root)
            time.sleep(0.1)
        task = _parent(load)
        assert b"airflow" in (Path("/proc") / str(task) / "cmdline").read_bytes(), "the load's parent is not a task"
        lease = json.loads((Path(agent_root) / "lease.json").read_text())
        assert lease["tag"] == tag
        os.kill(task, signal.SIGKILL)  # the task process only: its supervisor survives and reports it
        killed_at = time.monotonic()
        follower.wait(timeout=600)
    finally:
        if follower.poll() is None:
            follower.kill()
    output = log.read_text()
    assert follower.returncode == 0, output[-3000:]  # completed

    client = AirflowClient(server.url, server.username, server.password, say=lambda _m: None)
    tis = {(t["task_id"], t.get("map_index", -1)): t for t in client.task_instances(FLEET_DAG, run_id)}
    device_tis = {k: t for k, t in tis.items() if k[0] == "wave_1.roll_device"}
    tries = sorted(int(t["try_number"]) for t in device_tis.values())
    assert tries == [1, 2], device_tis  # the killed device's task ran twice, the other once
    history = History(fleet.store)
    rid = next(r.detail["rollout_id"] for r in history.for_tag(tag) if r.device is None and "rollout_id" in r.detail)
    records = history.device_records(tag, KILLED, rid)
    first = [r for r in records if int(r.detail.get("attempt") or 1) == 1]
    assert first[-1].detail.get("interrupted") and first[-1].to_state == "rolled_back", [(r.event, r.to_state) for r in first]
    assert first[-1].detail.get("restored") == before[KILLED]  # the unjudged canary went back to last-known-good
    assert records[-1].detail["attempt"] == 2 and records[-1].to_state in ("promoted", "rolled_back"), records[-1]
    after = _identity_matches_history(fleet, TARGET)
    for name in TARGET:
        last = history.device_records(tag, name, rid)[-1]
        assert after[name] == (tag if last.to_state == "promoted" else before[name]), (name, last.reason)
    print(f"task SIGKILLed mid-gate on {KILLED}: run completed {time.monotonic() - killed_at:.1f} s later; "
          f"outcomes {[(n, history.device_records(tag, n, rid)[-1].to_state) for n in TARGET]}")
