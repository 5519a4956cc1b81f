"""Progressive fleet rollout: waves of devices, each device through the canary's lifecycle, abort
criteria evaluated as results arrive, a halt that restores every touched device to its own
last-known-good. Plain library: the CLI (``hailo-release rollout …``) and the Airflow DAG call these.

Public API (everything reads its state from the store's history, never from process memory):

- ``plan_waves(inventory, plan, selector, *, production=False) -> (list[Wave], skipped)``
  deterministic wave assignment: enrolled devices matching the selector, sorted by name, cut at
  each wave's cumulative size; ``skipped`` says which matching devices are left out and why.
- ``start_rollout(env, store, tag, plan, selector, *, actor, production=False) -> str`` records the
  rollout (plan, waves, skipped devices) and returns its id. ``tag`` must be a promoted release.
- ``run_wave_device(env, store, rollout_id, tag, device, wave_index, *, actor, ssh_client_factory=None)
  -> DeviceOutcome``: one device's deploy → gate → commit | restore (an Airflow mapped task).
- ``evaluate_wave(store, rollout_id, wave_index) -> WaveVerdict``: the abort criteria over what has
  finished so far (all waves up to ``wave_index``).
- ``halt(env, store, rollout_id, *, actor, reason) -> list[RestoreResult]``: every device this
  rollout touched back on its own prior last-known-good, in parallel, verified per device. The
  abort is recorded the moment the criteria trip: a device still in its gate then restores itself
  instead of committing, and no further device starts (``run_wave_device`` refuses).
- ``approve(store, rollout_id, wave_index, *, actor)``: a human's approval of a wave that needs one.
- ``release.rollout_run.run_rollout(env, store, rollout_id, *, actor, …) -> RolloutReport``: the whole
  rollout, or the rest of it after a pause, an approval or an orchestrator restart (``rollout resume``);
  ``rollout_run.wave_done`` / ``ready_for_wave`` (approval given, pause over) for a scheduler's sensor.
- ``release.rollout_report.build_report(store, rollout_id) -> RolloutReport`` (+ ``write_report``: JSON
  and per-device latency PNG in the store) and ``release.fleet.fleet_status`` for humans.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from release import deploy as dep
from release import fleet_lock
from release.devices import Inventory, Selector
from release.errors import InvalidInput, StepFailed, TransitionError
from release.history import History
from release.pipeline_env import PipelineEnv
from release.rollout_device import DeviceOutcome, SshFactory, outcome_from_history, reconcile_device, run_device
from release.rollout_plan import RolloutPlan
from release.states import (
    ReleaseEvent,
    ReleaseState,
    RolloutEvent,
    RolloutState,
    advance_on_device,
    advance_rollout,
    current_state,
    rollout_state,
)
from release.store import ArtifactStore
from release.targets import connected, inventory

Say = Callable[[str], None]


@dataclass(frozen=True)
class Wave:
    index: int  # 1-based, as the plan and `rollout approve --wave N` count
    devices: tuple[str, ...]
    parallelism: int
    approval: bool


@dataclass(frozen=True)
class WaveVerdict:
    abort: bool
    reasons: tuple[str, ...]
    finished: int
    failed: int


@dataclass(frozen=True)
class RestoreResult:
    device: str
    restored_to: str | None
    hef_sha256: str | None
    time_to_healthy_s: float
    verified: bool
    detail: str


@dataclass
class RolloutInfo:
    rollout_id: str
    tag: str
    plan: RolloutPlan
    waves: list[Wave]
    skipped: dict[str, str]
    selector: str


@dataclass
class RolloutReport:
    rollout_id: str
    tag: str
    state: str
    waves: list[dict[str, Any]]
    devices: list[DeviceOutcome]
    skipped: dict[str, str]
    restored: list[RestoreResult] = field(default_factory=list)
    abort_reasons: list[str] = field(default_factory=list)
    report_uri: str | None = None
    plot_uri: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"rollout_id": self.rollout_id, "tag": self.tag, "state": self.state, "waves": self.waves,
                "devices": [d.as_dict() for d in self.devices], "skipped": self.skipped,
                "restored": [asdict(r) for r in self.restored], "abort_reasons": self.abort_reasons,
                "report_uri": self.report_uri, "plot_uri": self.plot_uri}


# -- planning ---------------------------------------------------------------------------------
def plan_waves(inv: Inventory, plan: RolloutPlan, selector: Selector, *, production: bool = False
               ) -> tuple[list[Wave], dict[str, str]]:
    selection = inv.select(selector, production=production)
    names = [d.name for d in selection.devices]
    if not names:
        raise InvalidInput(f"no enrolled device matches {selector.describe()}; left out: {selection.skipped or 'none'}")
    waves: list[Wave] = []
    covered = 0
    for i, plan_wave in enumerate(plan.waves, start=1):
        upto = max(covered, plan_wave.cumulative(len(names)))
        if upto > covered:
            waves.append(Wave(i, tuple(names[covered:upto]), plan_wave.parallelism, plan_wave.approval))
        covered = upto
    return waves, selection.skipped


def _new_rollout_id(tag: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{tag[:80]}.rollout-{stamp}-{secrets.token_hex(3)}"


def start_rollout(env: PipelineEnv, store: ArtifactStore, tag: str, plan: RolloutPlan, selector: Selector, *,
                  actor: str, production: bool = False) -> str:
    history = History(store)
    state = current_state(history, tag)
    if state is not ReleaseState.PROMOTED:
        raise InvalidInput(f"release {tag} is {state.value if state else 'unknown'}: a fleet rollout follows a promoted canary")
    waves, skipped = plan_waves(inventory(env), plan, selector, production=production)
    rollout_id = _new_rollout_id(tag)
    detail = {"plan": plan.to_json_dict(), "waves": [asdict(w) for w in waves], "skipped": skipped,
              "selector": selector.describe(), "production": production}
    advance_rollout(history, rollout_id, tag, RolloutEvent.PLANNED, actor=actor,
                    reason=f"{sum(len(w.devices) for w in waves)} devices in {len(waves)} waves", detail=detail)
    advance_rollout(history, rollout_id, tag, RolloutEvent.START, actor=actor)
    return rollout_id


def load_rollout(store: ArtifactStore, rollout_id: str) -> RolloutInfo:
    history = History(store)
    own = [r for r in history.rollout_records(rollout_id) if r.device is None]
    if not own:
        raise InvalidInput(f"no rollout {rollout_id!r} in the store's history")
    first = own[0].detail
    waves = [Wave(w["index"], tuple(w["devices"]), w["parallelism"], w["approval"]) for w in first["waves"]]
    return RolloutInfo(rollout_id, own[0].release_tag, RolloutPlan.model_validate(first["plan"]), waves,
                       dict(first["skipped"]), str(first["selector"]))


def _wave(info: RolloutInfo, wave_index: int) -> Wave:
    for wave in info.waves:
        if wave.index == wave_index:
            return wave
    raise InvalidInput(f"rollout {info.rollout_id} has no wave {wave_index}; waves: {[w.index for w in info.waves]}")


# -- one device -------------------------------------------------------------------------------
def run_wave_device(env: PipelineEnv, store: ArtifactStore, rollout_id: str, tag: str, device: str, wave_index: int,
                    *, actor: str, ssh_client_factory: SshFactory = None) -> DeviceOutcome:
    info = load_rollout(store, rollout_id)
    if info.tag != tag or device not in _wave(info, wave_index).devices:
        raise InvalidInput(f"device {device} is not in wave {wave_index} of rollout {rollout_id} ({info.tag})")
    state = rollout_state(History(store), rollout_id)
    if state is not RolloutState.RUNNING:
        done = outcome_from_history(History(store), tag, device, rollout_id, wave_index)
        if done is not None:
            return done
        raise TransitionError(f"rollout {rollout_id} is {state.value if state else 'unknown'}: device {device} is not started")
    return run_device(env, store, rollout_id=rollout_id, tag=tag, spec=inventory(env).get(device), wave_index=wave_index,
                      plan_wave=info.plan.waves[wave_index - 1], on_preflight_failure=info.plan.on_preflight_failure,
                      actor=actor, lock_wait_s=0, ssh_client_factory=ssh_client_factory)


def _outcomes(store: ArtifactStore, info: RolloutInfo, upto_wave: int) -> list[DeviceOutcome]:
    history = History(store)
    found = []
    for wave in info.waves:
        if wave.index > upto_wave:
            break
        for name in wave.devices:
            outcome = outcome_from_history(history, info.tag, name, info.rollout_id, wave.index)
            if outcome is not None:
                found.append(outcome)
    return found


def evaluate_wave(store: ArtifactStore, rollout_id: str, wave_index: int) -> WaveVerdict:
    """The abort criteria over every device finished so far in waves 1..``wave_index`` (in the
    order the history recorded them finishing)."""
    info = load_rollout(store, rollout_id)
    history = History(store)
    finished: list[tuple[int, DeviceOutcome]] = []
    for outcome in _outcomes(store, info, wave_index):
        if outcome.status in ("interrupted", "already"):
            continue
        last = history.device_records(info.tag, outcome.device, rollout_id)[-1]
        finished.append((last.seq, outcome))
    finished.sort(key=lambda pair: pair[0])
    done = [o for _, o in finished]
    failures = [o for o in done if o.failed]
    criteria = info.plan.abort
    reasons = []
    first = done[: criteria.any_failure_in_first]
    if any(o.failed for o in first):
        names = ", ".join(o.device for o in first if o.failed)
        reasons.append(f"a failure among the first {criteria.any_failure_in_first} finished device(s): {names}")
    counted = [o for o in done if o.status != "skipped"]
    # As results arrived: the rate is checked after each finished device, so a limit crossed once
    # stays crossed however many successes finish after it (an abort is final).
    for n in range(criteria.min_finished, len(counted) + 1):
        failed_n = sum(1 for o in counted[:n] if o.failed)
        if failed_n / n > criteria.max_failure_rate:
            reasons.append(f"failure rate {failed_n}/{n} exceeds {criteria.max_failure_rate:.0%} "
                           f"(over at least {criteria.min_finished} finished)")
            break
    halting = [o for o in done if o.status == "skipped" and info.plan.on_preflight_failure == "halt"]
    if halting:
        reasons.append(f"preflight failed on {', '.join(o.device for o in halting)} and the plan says halt")
    return WaveVerdict(bool(reasons), tuple(reasons), len(done), len(failures))


# -- halt -------------------------------------------------------------------------------------
# A restore is one rollback (a health wait, seconds) under the device lock, renewed while it runs;
# it waits for a racing rollout's lifecycle on the device to end first (its upload and lease).
RESTORE_LOCK_HOLD_S = 120.0
RESTORE_LOCK_WAIT_S = 900.0


def _restore_one(env: PipelineEnv, store: ArtifactStore, info: RolloutInfo, device: str, actor: str, reason: str,
                 ssh_client_factory: SshFactory) -> RestoreResult:
    history = History(store)
    spec = inventory(env).get(device)
    fleet_lock.acquire(store, device, info.rollout_id, RESTORE_LOCK_HOLD_S, wait_s=RESTORE_LOCK_WAIT_S)
    with fleet_lock.renewed(store, device, info.rollout_id, RESTORE_LOCK_HOLD_S):
        # A device left mid-lifecycle (dead orchestrator): record what it did by itself first.
        reconcile_device(env, store, info.tag, spec, info.rollout_id, actor=actor, ssh_client_factory=ssh_client_factory)
        records = history.device_records(info.tag, device, info.rollout_id)
        first = next(r for r in records if r.event == ReleaseEvent.DEPLOYED.value)
        to, hef = first.detail.get("prior"), first.detail.get("prior_hef_sha256")
        last = records[-1]
        lkg = history.last_known_good(device)
        if last.to_state != ReleaseState.PROMOTED.value or (lkg and lkg[0] != info.tag):
            # Never committed here (its own lifecycle already restored it), or another release was
            # committed since: nothing of this rollout's is left on the device to undo.
            own_s = float(last.detail.get("seconds") or 0.0) if last.detail.get("halt") else 0.0
            return RestoreResult(device, lkg[0] if lkg else None, lkg[1] if lkg else None, own_s, True,
                                 "restored itself when the halt began" if own_s else f"nothing to undo ({last.to_state})")
        if to is None:
            return RestoreResult(device, None, None, 0.0, False, "no release was committed before this rollout: "
                                 "nothing to restore to (enroll devices with a base release)")
        t0 = time.monotonic()
        with connected(spec, ssh_client_factory) as transport:
            dep.rollback(transport, spec, to, expect_hef=hef)
            view = dep.status(transport, spec)
        seconds = time.monotonic() - t0
        verified = view.get("current") == to and (hef is None or view.get("current_hef_sha256") in (None, hef))
        advance_on_device(history, info.tag, device, ReleaseEvent.ROLLBACK, rollout_id=info.rollout_id,
                          attempt=int(last.detail.get("attempt") or 1), actor=actor, reason=f"rollout halted: {reason}",
                          detail={"restored": to, "restored_hef_sha256": hef, "seconds": round(seconds, 3), "halt": True})
        return RestoreResult(device, to, hef, round(seconds, 3), verified,
                             f"device reports {view.get('current')} / {view.get('current_hef_sha256')}")


def halt(env: PipelineEnv, store: ArtifactStore, rollout_id: str, *, actor: str, reason: str,
         ssh_client_factory: SshFactory = None,
         factory_for: Callable[[str], SshFactory] | None = None) -> list[RestoreResult]:
    """Restore every device this rollout committed to its own prior last-known-good, in parallel;
    devices not yet reached stay untouched. Records the rollout ``halted`` once all are verified.
    ``factory_for(device)`` gives each device its own SSH client factory (Airflow: the device's
    connection, if it has one); otherwise every device uses ``ssh_client_factory``."""
    info = load_rollout(store, rollout_id)
    history = History(store)
    if rollout_state(history, rollout_id) in (RolloutState.RUNNING, RolloutState.WAITING):
        advance_rollout(history, rollout_id, info.tag, RolloutEvent.ABORT, actor=actor, reason=reason)
    touched = [o.device for o in _outcomes(store, info, len(info.plan.waves)) if o.touched]
    with cf.ThreadPoolExecutor(max_workers=max(1, len(touched))) as pool:
        futures = [pool.submit(_restore_one, env, store, info, d, actor, reason,
                               factory_for(d) if factory_for else ssh_client_factory) for d in touched]
        results = [f.result() for f in futures]
    unverified = [r.device for r in results if not r.verified]
    if unverified:
        raise StepFailed(f"rollout {rollout_id}: restore not verified on {', '.join(unverified)}; run halt again")
    advance_rollout(history, rollout_id, info.tag, RolloutEvent.HALTED, actor=actor,
                    reason=f"{len(results)} touched device(s) on their own last-known-good",
                    detail={"restored": {r.device: r.restored_to for r in results},
                            "time_to_healthy_s": {r.device: r.time_to_healthy_s for r in results}})
    return results


def approve(store: ArtifactStore, rollout_id: str, wave_index: int, *, actor: str) -> None:
    info = load_rollout(store, rollout_id)
    if not _wave(info, wave_index).approval:
        raise InvalidInput(f"wave {wave_index} of rollout {rollout_id} needs no approval")
    advance_rollout(History(store), rollout_id, info.tag, RolloutEvent.APPROVE, actor=actor,
                    reason=f"wave {wave_index} approved", detail={"wave": wave_index}, key=f"approve-{wave_index}")


def approved(store: ArtifactStore, rollout_id: str, wave_index: int) -> bool:
    return any(r.event == RolloutEvent.APPROVE.value and r.detail.get("wave") == wave_index
               for r in History(store).rollout_records(rollout_id))

