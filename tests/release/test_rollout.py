"""Fleet rollout lifecycle on a local fleet of real device agents and sidecar processes (see
tests/fixtures/fleet_local.py): healthy waves, a wave-2 failure that halts and restores, preflight
skip or halt, a non-enrolled device never touched, two racing rollouts waiting per device. Every
case checks the store's history against each device's own /healthz identity."""

from __future__ import annotations

import threading

import pytest

from release.devices import Selector
from release.fleet import fleet_status
from release.history import History
from release.rollout import evaluate_wave, start_rollout
from release.rollout_plan import parse_plan
from release.rollout_run import run_rollout
from release.states import RolloutState, rollout_state
from tests.fixtures._rollout_checks import settled_by_load
from tests.fixtures.fleet_local import (
    BASE_WAVES,
    FLEET,
    GATE,
    GROUP,
    NEVER_ABORT,
    NOT_ENROLLED,
    LocalFleet,
)

pytestmark = pytest.mark.e2e

WAVES = BASE_WAVES


def _plan(**kw):
    return parse_plan({"waves": WAVES, "abort": {"max_failure_rate": 0.2, "min_finished": 3, "any_failure_in_first": 1},
                       **kw})


def _rollout(fleet: LocalFleet, tag: str, plan, selector=None) -> tuple[str, object]:
    rid = start_rollout(fleet.env, fleet.store, tag, plan, selector or Selector.parse(GROUP), actor="pytest")
    return rid, run_rollout(fleet.env, fleet.store, rid, actor="pytest", say=lambda _m: None)


@pytest.fixture
def fleet(local_fleet):
    return local_fleet


def test_healthy_rollout_of_all_waves(fleet):
    report = fleet.base_report
    assert report.state == RolloutState.COMPLETED.value, report.as_dict()
    assert [w["devices"] for w in report.waves] == [["pi-1"], ["pi-2", "pi-3"], ["pi-4", "pi-5", "pi-6"]]
    assert {d.device for d in report.devices} == set(FLEET)
    assert all(d.status == "promoted" or settled_by_load(d) for d in report.devices), report.as_dict()
    assert sum(d.status == "promoted" for d in report.devices) >= 3, report.as_dict()
    assert all(d.p95_ms is not None for d in report.devices)
    assert report.skipped == {NOT_ENROLLED: "not enrolled (no enrollment record): never touched by a rollout"}
    fleet.assert_history_matches_devices()
    history = History(fleet.store)
    for outcome in report.devices:  # what the rollout committed, per device, with the hef the canary had
        records = history.device_records(fleet.base, outcome.device, fleet.base_rollout)
        promoted = [r for r in records if r.to_state == "promoted"]
        assert len(promoted) == (outcome.status == "promoted")
        assert all(r.detail["hef_sha256"] == fleet.hef_of(fleet.base) for r in promoted)
    assert report.report_uri and report.plot_uri
    assert fleet.store.get_bytes(fleet.base_rollout, "rollout_latency.png").startswith(b"\x89PNG")
    rows = fleet_status(fleet.env, fleet.store, Selector.parse(GROUP))
    assert all(r.agrees for r in rows if r.device != NOT_ENROLLED), [r.as_dict() for r in rows]
    assert {r.device for r in rows} == {*FLEET, NOT_ENROLLED}


def test_wave_two_failures_halt_restore_touched_devices_and_leave_wave_three_untouched(fleet):
    tag = fleet.canary("bad-1")  # pi-2 hangs and pi-3 crash-loops on bad-* releases: both in wave 2
    before = fleet.assert_history_matches_devices()
    rid, report = _rollout(fleet, tag, _plan())
    assert report.state == RolloutState.HALTED.value, report.as_dict()
    outcomes = {d.device: d.status for d in report.devices}
    if outcomes["pi-1"] == "halted":  # committed in wave 1, restored by the halt
        assert outcomes["pi-2"] == "rolled_back" and outcomes["pi-3"] == "rolled_back", outcomes
        assert {r.device: r.restored_to for r in report.restored}["pi-1"] == before["pi-1"]
    else:  # a loaded host failed pi-1's gate in wave 1: the halt came before wave 2
        assert settled_by_load(report.devices[0]) and set(outcomes) == {"pi-1"}, report.as_dict()
    assert not {"pi-4", "pi-5", "pi-6"} & set(outcomes)  # wave 3 never reached
    history = History(fleet.store)
    for name in ("pi-4", "pi-5", "pi-6"):
        assert not [r for r in history.for_device(name) if r.release_tag == tag]
    assert report.abort_reasons, report.as_dict()
    assert fleet.assert_history_matches_devices() == before  # every device on its own last-known-good
    verdict = evaluate_wave(fleet.store, rid, 2)
    assert verdict.abort and verdict.failed >= 1


def test_preflight_failure_halts_or_is_skipped_with_a_reason_as_the_plan_says(fleet):
    tag = fleet.canary("pf-1")  # pi-5 identifies as another architecture for pf-* releases
    before = fleet.assert_history_matches_devices()
    others = [n for n in FLEET if n != "pi-5"]
    for policy in ("halt", "skip"):  # the same release: halted first, then rolled out skipping pi-5
        plan = parse_plan({"waves": [{"size": "100%", "gate": GATE, "parallelism": 6}], "on_preflight_failure": policy,
                           "abort": NEVER_ABORT})
        _, report = _rollout(fleet, tag, plan)
        outcomes = {d.device: d for d in report.devices}
        assert outcomes["pi-5"].status == "skipped", report.as_dict()
        assert "preflight" in outcomes["pi-5"].reason and "hailo15h" in outcomes["pi-5"].reason.lower()
        runs = fleet.assert_history_matches_devices()
        assert runs["pi-5"] == before["pi-5"]  # refused before anything stopped: never left its release
        if policy == "halt":
            assert report.state == RolloutState.HALTED.value, report.as_dict()
            assert any("preflight" in r for r in report.abort_reasons)
            assert all(runs[n] == before[n] for n in others)  # the halt restored every device it had touched
        else:
            assert report.state == RolloutState.COMPLETED.value, report.as_dict()
            for n in others:
                if outcomes[n].status == "promoted":
                    assert runs[n] == tag
                else:  # a gate the machine's load failed: restored by its own lifecycle
                    assert settled_by_load(outcomes[n]) and runs[n] == before[n], report.as_dict()


def test_two_rollouts_racing_on_overlapping_groups_wait_per_device(fleet):
    tag_a, tag_b = fleet.canary("race-a"), fleet.canary("race-b")
    plan = parse_plan({"waves": [{"size": "100%", "gate": GATE, "parallelism": 6}], "abort": NEVER_ABORT})
    ids: dict[str, str] = {}
    reports: dict[str, object] = {}

    def run(name: str, tag: str, selector: Selector) -> None:
        ids[name] = start_rollout(fleet.env, fleet.store, tag, plan, selector, actor=f"pytest-{name}")
        reports[name] = run_rollout(fleet.env, fleet.store, ids[name], actor=f"pytest-{name}", say=lambda _m: None)

    threads = [threading.Thread(target=run, args=("a", tag_a, Selector.parse(GROUP))),
               threading.Thread(target=run, args=("b", tag_b, Selector.parse(selector="rack=r1")))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert reports["a"].state == reports["b"].state == RolloutState.COMPLETED.value, [r.as_dict() for r in reports.values()]
    history = History(fleet.store)
    for device in ("pi-1", "pi-2"):  # in both rollouts: their lifecycles on the device never overlap
        spans = {}
        for rid in ids.values():
            own = [r.seq for r in history.rollout_records(rid) if r.device == device]
            spans[rid] = (min(own), max(own))
        (a0, a1), (b0, b1) = spans.values()
        assert a1 < b0 or b1 < a0, spans
    runs = fleet.assert_history_matches_devices()
    for report in reports.values():
        for outcome in report.devices:
            assert outcome.status in ("promoted", "already") or settled_by_load(outcome), report.as_dict()
    promoted = {(rid, d.device) for rid, r in zip(ids.values(), reports.values(), strict=True) for d in r.devices
                if d.status == "promoted"}
    for device in FLEET:  # each device runs the release of whichever rollout committed there last
        last = max((r for r in history.for_device(device) if r.to_state == "promoted"), key=lambda r: r.seq)
        assert runs[device] == last.release_tag
    assert promoted, "neither rollout committed anything"


def test_a_finished_rollout_resumed_redoes_nothing(fleet):
    before = len(History(fleet.store).records())
    report = run_rollout(fleet.env, fleet.store, fleet.base_rollout, actor="pytest", say=lambda _m: None)
    assert report.state == RolloutState.COMPLETED.value
    assert len(History(fleet.store).records()) == before
    assert rollout_state(History(fleet.store), fleet.base_rollout) is RolloutState.COMPLETED
