"""Fleet rollouts on the lab testbed (tests/fixtures/fleet.py: six devices, each its own network
namespace with its own sshd, agent and sidecar, reached only through the 20 ± 15 ms lab relay),
the cases the DAG test (tests/dags/test_fleet_dag_e2e.py: healthy waves, a wave-2 halt) does not
run there:

- a device whose preflight fails (driver mismatch): skipped with its reason, or the rollout halts,
  as the plan says; a non-enrolled device is never touched, not even over SSH;
- the orchestrator (a `hailo-release rollout` process) SIGKILLed mid-wave: each touched device's
  own lease brings it back to its last-known-good, and `rollout resume` finishes the rollout
  without redoing a finished device;
- two rollouts racing on overlapping selections: the shared device takes them one after the other.

Every case checks the store's history against each device's /healthz identity.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from release.history import History
from tests.fixtures._rollout_checks import NEVER_ABORT, assert_resumed_without_redoing, settled_by_load
from tests.fixtures.fleet_lab import GATE, FleetLab

pytestmark = [pytest.mark.ssh, pytest.mark.e2e]
FLEET = ["pi-02", "pi-03", "pi-04", "pi-05", "pi-06"]  # the `fleet` group; pi-01 is the canary device


def _lease(lab: FleetLab, name: str) -> dict:
    """The device agent's lease file as the device's own disk has it ({} when there is none)."""
    try:
        return json.loads((lab.fleet.devices[name].agent_root / "lease.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _lease_expired_event(lab: FleetLab, name: str, tag: str) -> bool:
    """The device's events.jsonl has its lease_expired for ``tag`` (written just after the lease file
    goes: waited for briefly)."""
    log = lab.fleet.devices[name].agent_root / "events.jsonl"
    until = time.monotonic() + 10
    while time.monotonic() < until:
        events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if any(e.get("event") == "lease_expired" and e.get("tag") == tag for e in events):
            return True
        time.sleep(0.2)
    return False


def _serves(lab: FleetLab, name: str) -> str | None:
    """The config version the device's sidecar serves now (None: nothing answers)."""
    health = lab.fleet.healthz(name)
    return health["config_version"] if health else None


def _config(lab: FleetLab, tag: str | None) -> str | None:
    """A release's config version (None for no release: a device whose first gate the load failed)."""
    return lab.config_of(tag) if tag else None


def _outcomes(report) -> dict[str, dict]:
    return {d["device"]: d for d in report.as_dict()["devices"]}


def test_preflight_skip_or_halt_as_the_plan_says_and_a_non_enrolled_device_is_never_touched(fleet_lab):
    lab = fleet_lab
    lab.fleet.enroll("pi-06", False)
    lab.write_inventory()
    lab.fleet.driver_mismatch("pi-04")  # the device's HailoRT driver is 4.20.0; the release needs 4.23.0
    pi06_ssh, pi06_gate = lab.fleet.devices["pi-06"].ssh_relay, lab.fleet.devices["pi-06"].gate_relay
    reached_pi06 = pi06_ssh.connections + pi06_gate.connections
    v1 = lab.canary("v1")
    t0 = time.monotonic()
    rid, report = lab.rollout(v1, {"waves": [{"size": "100%", "gate": GATE, "parallelism": 4}],
                                   "on_preflight_failure": "skip", "abort": NEVER_ABORT}, group="fleet")
    skip_s = time.monotonic() - t0
    assert report.state == "rollout_completed", report.as_dict()
    assert report.skipped == {"pi-06": "not enrolled (no enrollment record): never touched by a rollout"}
    outcomes = _outcomes(report)
    assert set(outcomes) == {"pi-02", "pi-03", "pi-04", "pi-05"}
    assert outcomes["pi-04"]["status"] == "skipped" and "preflight" in outcomes["pi-04"]["reason"]
    assert "4.20.0" in outcomes["pi-04"]["reason"], outcomes["pi-04"]
    for name in ("pi-02", "pi-03", "pi-05"):
        assert outcomes[name]["status"] == "promoted" or settled_by_load(outcomes[name]), outcomes[name]
    assert any(outcomes[n]["status"] == "promoted" for n in ("pi-02", "pi-03", "pi-05")), report.as_dict()
    running = lab.check_store_against_devices()
    assert running["pi-04"] is None and lab.fleet.healthz("pi-04") is None  # refused before anything started
    history = History(lab.store)
    pi04 = history.device_records(v1, "pi-04", rid)
    assert pi04 and pi04[-1].detail.get("preflight") == "skip", [(r.event, r.to_state, r.detail) for r in pi04]

    # The same driver mismatch with `on_preflight_failure: halt`: v2's wave 1 (pi-02) commits, wave 2
    # meets pi-04's preflight and halts; every device the rollout touched is back on its own
    # last-known-good (v1, or nothing where a loaded gate left none).
    before = running
    v2 = lab.canary("v2")
    t0 = time.monotonic()
    _, halted = lab.rollout(v2, {"waves": [{"size": 1, "gate": GATE}, {"size": "100%", "gate": GATE, "parallelism": 3}],
                                    "on_preflight_failure": "halt", "abort": NEVER_ABORT}, group="fleet")
    halt_s = time.monotonic() - t0
    assert halted.state == "rollout_halted", halted.as_dict()
    assert any("preflight" in r for r in halted.abort_reasons), halted.abort_reasons
    outcomes = _outcomes(halted)
    assert outcomes["pi-04"]["status"] == "skipped" and "4.20.0" in outcomes["pi-04"]["reason"]
    assert outcomes["pi-02"]["wave"] == 1, outcomes
    assert "pi-04" not in {r.device for r in halted.restored}  # refused by its preflight: nothing to restore
    after = lab.check_store_against_devices()
    assert {n: after[n] for n in FLEET} == {n: before[n] for n in FLEET}, (before, after)
    assert after["pi-01"] == v2  # the canary device is not in the group
    assert not [r for r in history.for_device("pi-06")], "the non-enrolled device has history"
    assert not lab.fleet.devices["pi-06"].agent_root.exists() and lab.fleet.healthz("pi-06") is None
    assert pi06_ssh.connections + pi06_gate.connections == reached_pi06, "a rollout connected to a non-enrolled device"
    print(f"skip-policy rollout of 4 devices {skip_s:.1f} s; halt-policy rollout {halt_s:.1f} s "
          f"(restored {[r.device for r in halted.restored]}); load {os.getloadavg()[0]:.1f}")


def test_orchestrator_killed_mid_wave_leases_restore_and_resume_finishes(fleet_lab):
    lab = fleet_lab
    v1 = lab.canary("v1")
    _, base = lab.rollout(v1, {"waves": [{"size": "100%", "gate": GATE, "parallelism": 5}], "abort": NEVER_ABORT},
                          group="fleet")
    assert base.state == "rollout_completed", base.as_dict()
    before = lab.check_store_against_devices()
    v2 = lab.canary("v2")
    plan = lab.plan_file("kill", {"waves": [{"size": 1, "gate": GATE}, {"size": "100%", "gate": GATE, "parallelism": 4}],
                                  "abort": NEVER_ABORT})
    log = lab.root / "rollout.log"
    proc = lab.cli_background(log, "rollout", "start", "--tag", v2, "--plan", str(plan), "--group", "fleet")
    try:
        deadline = time.monotonic() + 300
        while True:  # kill once a wave-2 device runs v2 under its lease (read on the device's own disk)
            rid = next((r.detail["rollout_id"] for r in History(lab.store).for_tag(v2)
                        if r.device is None and "rollout_id" in r.detail), None)
            leased = [n for n in FLEET[1:] if _lease(lab, n).get("tag") == v2]
            if rid and leased:
                break
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rid is not None
    history = History(lab.store)
    in_flight = {n for n in FLEET if history.in_flight(n) == v2}
    assert in_flight, "the kill came after every device had finished"
    # Nobody is left to roll back: each leased device's own watchdog restores it at the deadline. Only
    # the device's disk is read meanwhile (an agent command would itself check the lease).
    leased = {n: float(_lease(lab, n)["deadline"]) for n in FLEET if _lease(lab, n).get("tag") == v2}
    assert leased, "no device held v2 under a lease at the kill"
    deadline = time.monotonic() + GATE["duration_s"] + GATE["lease_margin_s"] + 60
    while time.monotonic() < deadline:
        held = {n: _lease(lab, n) for n in leased}
        # The deadline first covers start-up (health time-out + lease), then moves to healthy + lease.
        leased.update({n: float(lease["deadline"]) for n, lease in held.items() if lease})
        if not any(held.values()):
            break
        time.sleep(0.2)
    restored_s = time.monotonic() - killed_at
    late_s = time.time() - max(leased.values())
    for name in leased:
        assert not _lease(lab, name), (name, _lease(lab, name))
        assert _serves(lab, name) == _config(lab, before[name]), name
        assert _lease_expired_event(lab, name, v2), name  # the watchdog's own account
    lab.wait_settled(FLEET, timeout=60)  # and the others (killed before or during activation): journal recovery
    for name in in_flight:
        assert _serves(lab, name) == _config(lab, before[name]), name

    promoted_before = {r.device for r in History(lab.store).rollout_records(rid) if r.to_state == "promoted"}
    resumed = lab.cli("rollout", "resume", rid)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    outcomes = assert_resumed_without_redoing(json.loads(resumed.stdout), FLEET, History(lab.store), v2, rid,
                                              promoted_before, in_flight)
    after = lab.check_store_against_devices()
    assert {n: after[n] for n in FLEET} == {n: v2 if outcomes[n]["status"] == "promoted" else before[n] for n in FLEET}
    print(f"SIGKILL with {sorted(in_flight)} in flight, {sorted(leased)} under a lease → restored by their leases "
          f"{restored_s:.1f} s after the kill ({late_s:.1f} s after the last deadline); load {os.getloadavg()[0]:.1f}")


def test_two_rollouts_racing_on_overlapping_selections_wait_per_device(fleet_lab):
    lab = fleet_lab
    v1, v2 = lab.canary("v1"), lab.canary("v2")
    plan = {"waves": [{"size": "100%", "gate": GATE, "parallelism": 3}], "abort": NEVER_ABORT}
    reports: dict[str, object] = {}
    ids: dict[str, str] = {}
    errors: list[BaseException] = []

    def run(key: str, tag: str, group: str | None, selector: str | None) -> None:
        try:
            ids[key], reports[key] = lab.rollout(tag, plan, group=group, selector=selector, actor=f"pytest-{key}")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    # `early` is pi-02 and pi-03; site lab-a is pi-01 (already on v2), pi-02 and pi-04: pi-02 is in both.
    threads = [threading.Thread(target=run, args=("a", v1, "early", None)),
               threading.Thread(target=run, args=("b", v2, None, "site=lab-a"))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    race_s = time.monotonic() - t0
    assert not errors, errors
    for report in reports.values():
        assert report.state == "rollout_completed", report.as_dict()
        for outcome in report.as_dict()["devices"]:
            assert outcome["status"] in ("promoted", "already") or settled_by_load(outcome), outcome
    # pi-01 ran v2 as its canary: rollout b reports it as already there, and never redeploys it.
    assert _outcomes(reports["b"])["pi-01"]["status"] == "already", reports["b"].as_dict()
    history = History(lab.store)
    assert not history.device_records(v2, "pi-01", ids["b"])
    spans = {}
    for key, rid in ids.items():  # the shared device's two lifecycles never overlap
        own = [r.seq for r in history.rollout_records(rid) if r.device == "pi-02"]
        assert own, (key, rid)
        spans[key] = (min(own), max(own))
    (a0, a1), (b0, b1) = spans.values()
    assert a1 < b0 or b1 < a0, spans
    running = lab.check_store_against_devices()
    for device in ("pi-02", "pi-03", "pi-04"):  # each runs the release of whichever rollout committed there last
        promoted = [r for r in history.for_device(device) if r.to_state == "promoted"]
        assert running[device] == (max(promoted, key=lambda r: r.seq).release_tag if promoted else None)
    assert running["pi-05"] is running["pi-06"] is None  # in neither selection
    print(f"two racing rollouts (pi-02 in both) finished in {race_s:.1f} s; load {os.getloadavg()[0]:.1f}")
