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
from tests.fixtures.fleet_local import GATE, NEVER_ABORT

pytestmark = [pytest.mark.airflow, pytest.mark.e2e]
CID = "ADR-0007-hailo-docker-2025-08-31"
FLEET_DAG = "hailo_fleet_rollout"
TARGET = ["pi-1", "pi-2"]  # rack r1
KILLED = "pi-1"


def _load_process(agent_root: str, spared: set[int]) -> int | None:
    """The pid of the gate's `load` on the device (the agent command with this device's windows file)."""
    needle = f"{agent_root}/gate/windows.json".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spared:
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


def _kill_task_at_its_gate(agent_root: str, follower: subprocess.Popen[bytes], log: Path, spared: set[int]) -> int:
    """SIGKILL the Airflow task process whose gate `load` runs on this device; returns that load's pid.
    A load in ``spared`` (an earlier, killed try's, orphaned and finishing on its own) is not it."""
    deadline = time.monotonic() + 300
    while True:
        assert follower.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        load = _load_process(agent_root, spared)
        if load is not None:
            try:
                task = _parent(load)
                argv = (Path("/proc") / str(task) / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if task != 1 and b"airflow" in argv:
                os.kill(task, signal.SIGKILL)  # the task process only: its supervisor survives and reports it
                return load
        time.sleep(0.1)


def _follow(server, tmp_path: Path, ci_run: str, conf: dict) -> tuple[subprocess.Popen[bytes], Path]:
    """`hailo-release trigger --dag hailo_fleet_rollout` in the background, as the release workflow runs it."""
    log = tmp_path / f"trigger-{ci_run}.log"
    env = {**os.environ, "AIRFLOW_PASSWORD": server.password}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "release.cli", "trigger", "--airflow-url", server.url, "--user",
                                 server.username, "--poll", "1", "--dag", FLEET_DAG, "--continuity-id", CID,
                                 "--ci-run", ci_run, "--conf", json.dumps(conf)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    return proc, log


def _base_release(fleet, plan: dict) -> dict[str, str | None]:
    """A last-known-good on both target devices (a restore needs a target); returns it."""
    from release.devices import Selector
    from release.rollout import start_rollout
    from release.rollout_plan import parse_plan
    from release.rollout_run import run_rollout

    if any(History(fleet.store).last_known_good(n) is None for n in TARGET):
        base = fleet.canary("tk-base")
        rid = start_rollout(fleet.env, fleet.store, base, parse_plan(plan), Selector.parse(selector="rack=r1"),
                            actor="pytest")
        run_rollout(fleet.env, fleet.store, rid, actor="pytest", say=lambda _m: None)
    return _identity_matches_history(fleet, TARGET)


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
    from release.trigger import AirflowClient

    fleet, server = fleet_airflow.fleet, fleet_airflow.server
    plan = {"waves": [{"size": "100%", "gate": GATE, "parallelism": 2}], "abort": NEVER_ABORT}
    before = _base_release(fleet, plan)
    tag = fleet.canary("tk-1")

    run_id = f"{CID}__ci-70-1"  # what `trigger --ci-run 70-1` names the run
    follower, log = _follow(server, tmp_path, "70-1", {"release_tag": tag, "selector": "rack=r1", "production": False,
                                                       "plan": plan})
    try:
        _kill_task_at_its_gate(str(fleet.specs[KILLED].agent_root), follower, log, set())
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


def test_a_device_task_killed_on_its_retry_too_counts_as_failed_and_the_halt_restores_every_touched_device(
        fleet_airflow, tmp_path):
    """Both tries of pi-1's task SIGKILLed at the gate: the task fails for good, the wave's check counts
    the device without an outcome as a failure (any failure in the first 1 aborts), and the halt puts
    every touched device back on its own last-known-good: pi-1 (its unjudged canary) and pi-2, which
    committed the release meanwhile. The run ends halted (exit 10), the history agrees with the devices."""
    fleet, server = fleet_airflow.fleet, fleet_airflow.server
    plan = {"waves": [{"size": "100%", "gate": GATE, "parallelism": 2}],
            "abort": {"max_failure_rate": 0.0, "min_finished": 1, "any_failure_in_first": 1}}
    before = _base_release(fleet, {**plan, "abort": NEVER_ABORT})
    tag = fleet.canary("tk-2")
    follower, log = _follow(server, tmp_path, "71-1", {"release_tag": tag, "selector": "rack=r1", "production": False,
                                                       "plan": plan})
    agent_root = str(fleet.specs[KILLED].agent_root)
    try:
        first = _kill_task_at_its_gate(agent_root, follower, log, set())
        _kill_task_at_its_gate(agent_root, follower, log, {first})  # its retry, at the same point
        follower.wait(timeout=600)
    finally:
        if follower.poll() is None:
            follower.kill()
    output = log.read_text()
    assert follower.returncode == 10, output[-3000:]  # halted: touched devices restored
    assert "halt reason:" in output and "pi-1" in output, output[-3000:]
    history = History(fleet.store)
    rid = next(r.detail["rollout_id"] for r in history.for_tag(tag) if r.device is None and "rollout_id" in r.detail)
    assert [r.event for r in history.rollout_records(rid) if r.device is None][-1] == "rollout_halted"
    after = _identity_matches_history(fleet, TARGET)
    assert after == before, (before, after)  # every touched device on its own last-known-good again
    killed = history.device_records(tag, KILLED, rid)
    assert killed[-1].to_state == "rolled_back" and killed[-1].detail.get("interrupted"), killed[-1]
