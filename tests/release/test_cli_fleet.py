"""`hailo-release rollout|fleet|rollback --group` as on-call and CI run them: separate processes
against the local fleet (tests/fixtures/fleet_local.py). The orchestrator is SIGKILLed mid-wave:
the devices' leases restore what it touched, and `rollout resume` finishes without redoing a
finished device. Every case checks the store's history against each device's /healthz identity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from release import deploy as dep
from release.history import History
from release.transport import LocalTransport
from tests.fixtures._rollout_checks import assert_resumed_without_redoing
from tests.fixtures.fleet_local import FLEET, GATE, GROUP, NEVER_ABORT

pytestmark = pytest.mark.e2e


def _cli(fleet, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "release.cli", *args], env=fleet.cli_env(), cwd=fleet.bed.root,
                          capture_output=True, text=True, timeout=timeout)


def _rollout_of(fleet, tag: str) -> str:
    ids = {r.detail["rollout_id"] for r in History(fleet.store).for_tag(tag) if r.device is None and "rollout_id" in r.detail}
    assert len(ids) == 1, ids
    return ids.pop()


def _wait_settled(fleet, names, timeout: float) -> None:
    """Until each device runs its committed release with no lease (asked on the device itself)."""
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            view = dep.status(LocalTransport(), fleet.specs[name])
            if view["current"] == view["committed"] and not view["lease"] and not view["journal"]:
                pending.discard(name)
        time.sleep(0.5)
    assert not pending, {n: dep.status(LocalTransport(), fleet.specs[n]) for n in pending}


def test_approval_kill_mid_wave_then_resume_finishes(local_fleet):
    fleet = local_fleet
    tag = fleet.canary("kill-1")
    before = fleet.assert_history_matches_devices()
    plan = fleet.plan_file("kill", {"waves": [{"size": 1, "gate": GATE},
                                              {"size": "100%", "gate": GATE, "parallelism": 5, "approval": True}],
                                    "abort": NEVER_ABORT})
    started = _cli(fleet, "rollout", "start", "--tag", tag, "--plan", str(plan), "--group", GROUP)
    assert started.returncode == 12, started.stderr[-3000:]  # waits for a human before wave 2
    rid = json.loads(started.stdout)["rollout_id"]
    assert json.loads(started.stdout)["state"] == "rollout_waiting"
    assert _cli(fleet, "rollout", "approve", rid, "--wave", "3").returncode == 2  # no such wave
    approved = _cli(fleet, "rollout", "approve", rid, "--wave", "2")
    assert approved.returncode == 0, approved.stderr

    log = open(fleet.bed.root / "resume.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "release.cli", "rollout", "resume", rid], env=fleet.cli_env(),
                            cwd=fleet.bed.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:  # kill once a wave-2 device passed its gate or is being gated: touched, not finished
            records = [r for r in History(fleet.store).rollout_records(rid) if r.device and r.device != "pi-1"]
            if any(r.to_state in ("canary_deployed", "gate_passed") for r in records) and \
                    not all(any(r.device == n and r.to_state == "promoted" for r in records) for n in FLEET[1:]):
                break
            assert proc.poll() is None and time.monotonic() < deadline, (fleet.bed.root / "resume.log").read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    history = History(fleet.store)
    touched = {r.device for r in history.rollout_records(rid) if r.device}
    in_flight = {n for n in touched if history.in_flight(n) == tag}
    assert in_flight, "the kill came after every device had finished"
    # Nobody is left to roll back: each device's own lease restores its last-known-good.
    _wait_settled(fleet, FLEET, timeout=30 + GATE["duration_s"] + GATE["lease_margin_s"])
    for name in in_flight:
        assert fleet.health(name)["hef_sha256"] == fleet.hef_of(before[name]), name

    promoted_before = {r.device for r in History(fleet.store).rollout_records(rid) if r.to_state == "promoted"}
    resumed = _cli(fleet, "rollout", "resume", rid)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    outcomes = assert_resumed_without_redoing(json.loads(resumed.stdout), FLEET, History(fleet.store), tag, rid,
                                              promoted_before, in_flight)
    runs = fleet.assert_history_matches_devices()
    assert runs == {n: tag if outcomes[n]["status"] == "promoted" else before[n] for n in FLEET}
    status = _cli(fleet, "rollout", "status", rid)
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "rollout_completed"


def _roll_out(fleet, name: str, selector: str) -> str:
    """A new release through the canary and onto the selected devices (one wave): gives them a
    previous committed release when a test runs on its own."""
    from release.devices import Selector
    from release.rollout import start_rollout
    from release.rollout_plan import parse_plan
    from release.rollout_run import run_rollout

    tag = fleet.canary(name)
    plan = parse_plan({"waves": [{"size": "100%", "gate": GATE, "parallelism": 6}]})
    target = Selector.parse(selector=selector) if "=" in selector else Selector.parse(selector)
    rid = start_rollout(fleet.env, fleet.store, tag, plan, target, actor="pytest")
    assert run_rollout(fleet.env, fleet.store, rid, actor="pytest", say=lambda _m: None).state == "rollout_completed"
    return tag


def _another_committed_release(fleet, device: str, current: str) -> str:
    """A release committed on ``device`` before ``current`` (its bundle is still on the device)."""
    def find() -> str | None:
        return next((r.release_tag for r in reversed(History(fleet.store).for_device(device))
                     if r.to_state == "promoted" and r.release_tag != current), None)

    if find() is None:
        _roll_out(fleet, "st-1", "rack=r2")
        return current
    other = find()
    assert other is not None
    return other


def test_fleet_status_flags_a_device_that_disagrees_with_the_store(local_fleet):
    fleet = local_fleet
    other = _another_committed_release(fleet, "pi-6", fleet.assert_history_matches_devices()["pi-6"])
    ok = _cli(fleet, "fleet", "status", "--group", GROUP)
    assert ok.returncode == 0, ok.stdout[-3000:]
    rows = {r["device"]: r for r in json.loads(ok.stdout)}
    runs = fleet.assert_history_matches_devices()
    for name in FLEET:
        assert rows[name]["runs"] == rows[name]["last_known_good"] == runs[name]
        assert rows[name]["last_gate_p95_ms"] is not None and rows[name]["lease"] is None
    assert rows["pi-7"]["enrolled"] is False
    # Someone restarts pi-6 on another release behind the store's back.
    dep.rollback(LocalTransport(), fleet.specs["pi-6"], other, expect_hef=fleet.hef_of(other))
    try:
        bad = _cli(fleet, "fleet", "status", "--selector", "rack=r2")
        assert bad.returncode == 3, bad.stdout[-3000:]
        flagged = {r["device"]: r for r in json.loads(bad.stdout)}
        assert not flagged["pi-6"]["agrees"] and all(flagged[n]["agrees"] for n in ("pi-3", "pi-4", "pi-5"))
        assert "pi-1" not in flagged  # rack r1
    finally:
        dep.rollback(LocalTransport(), fleet.specs["pi-6"], runs["pi-6"], expect_hef=fleet.hef_of(runs["pi-6"]))
    assert _cli(fleet, "fleet", "status", "--group", GROUP).returncode == 0


def test_group_rollback_in_one_command_verified_per_device(local_fleet):
    fleet = local_fleet
    from release.operations import previous_committed

    if any(previous_committed(History(fleet.store), n) is None for n in FLEET):
        _roll_out(fleet, "gr-1", GROUP)  # run on its own: the devices have only their first release
    runs = fleet.assert_history_matches_devices()
    bad = _cli(fleet, "rollback", "--group", GROUP, "--device", "pi-1")
    assert bad.returncode == 2 and "not both" in bad.stderr
    result = _cli(fleet, "rollback", "--group", GROUP, "--reason", "pytest: group rollback")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["device"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(FLEET)  # pi-7 is not enrolled: not touched
    for name in FLEET:
        assert rows[name]["verified"] and rows[name]["rolled_back_to"] != runs[name], rows[name]
        assert 0 < rows[name]["time_to_healthy_s"] < 120
        assert f"{name}: {rows[name]['rolled_back_to']} (" in result.stderr  # time to healthy printed per device
    after = fleet.assert_history_matches_devices()
    assert after == {n: rows[n]["rolled_back_to"] for n in FLEET}
