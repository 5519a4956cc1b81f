"""One device's part of a fleet rollout: the canary's lifecycle — deploy (provisional, under the
device's lease) → gate → commit | restore — for one device, recorded in its own scope of the history
(``states.advance_on_device``), under the device's lock (``fleet_lock``).

Resumable from the history alone: a device whose lifecycle finished in this rollout is not touched
again; one left mid-lifecycle by a dead orchestrator is reconciled first (what the device did by
itself is recorded), and if its lease undid it, it gets a new attempt. Fail safe like the canary:
any exception after the intent record restores the device's own last-known-good before it is
reported; what cannot be reached is left to the device's lease.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from release import deploy as dep
from release import fleet_lock
from release.canary import lease_expired_on_device, measure_gate, restore_last_known_good
from release.devices import DeviceSpec
from release.errors import ReleaseError, StepFailed
from release.history import History, HistoryRecord
from release.pipeline_env import PipelineEnv
from release.rollout_plan import PlanWave
from release.states import ON_DEVICE, ReleaseEvent, ReleaseState, RolloutState, advance_on_device, rollout_state
from release.store import ArtifactStore
from release.targets import connected
from release.verify import VerifyPolicy, device_bundle, signing_key, verify_release

SshFactory = Callable[[], Any] | None
# promoted: committed · rolled_back/failed: its own lifecycle undid it · skipped: preflight refused, untouched ·
# already: ran the release before · interrupted: a dead orchestrator's attempt · halted: committed, then
# restored by the rollout's halt.
Status = Literal["promoted", "rolled_back", "failed", "skipped", "already", "interrupted", "halted"]
GATE_STREAM = "rollout-gates"
# The device lock is renewed while its owner lives (fleet_lock.renewed, every quarter of the hold),
# so a slow upload never lets a second rollout in. Its hold covers what a dead owner may have left
# on the device: the activation's health wait plus the lease, and a missed renewal or two; after
# that the device's own lease has restored it, and another rollout may go on.
LOCK_MARGIN_S = 60.0
# How long a rollout waits for another one's lifecycle on a device before it counts as failed there:
# that lifecycle's upload (minutes on a Pi's link) and lease.
LOCK_WAIT_MARGIN_S = 1200.0


@dataclass(frozen=True)
class DeviceOutcome:
    device: str
    wave: int
    status: Status
    reason: str
    attempt: int
    seconds: float = 0.0
    p95_ms: float | None = None
    windows_per_s: float | None = None
    runs: str | None = None  # the release the device runs afterwards (store's view)

    @property
    def failed(self) -> bool:
        """Counts against the abort criteria (a preflight skip is reported, not counted)."""
        return self.status in ("rolled_back", "failed")

    @property
    def touched(self) -> bool:
        """Anything of this rollout's ran on the device: not a preflight skip (it never left its
        release), not an 'already' (never deployed to)."""
        return self.status in ("promoted", "rolled_back", "failed", "interrupted", "halted")

    @classmethod
    def already(cls, device: str, wave: int, tag: str) -> DeviceOutcome:
        """The outcome of a device that has ``tag`` committed already (nothing is recorded for it)."""
        return cls(device, wave, "already", f"{tag} is already committed on the device", 0, runs=tag)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _attempt_records(history: History, tag: str, device: str, rollout_id: str) -> tuple[int, list[HistoryRecord]]:
    records = history.device_records(tag, device, rollout_id)
    attempt = max((int(r.detail.get("attempt") or 1) for r in records), default=0)
    return attempt, [r for r in records if int(r.detail.get("attempt") or 1) == attempt]


def outcome_from_history(history: History, tag: str, device: str, rollout_id: str, wave: int) -> DeviceOutcome | None:
    """The device's outcome as the history says (None: not started in this rollout)."""
    attempt, own = _attempt_records(history, tag, device, rollout_id)
    if not own:
        return None
    last = own[-1]
    first = own[0]
    seconds = round((last.at - first.at).total_seconds(), 3)
    gate = next((r.detail for r in reversed(own) if "p95_ms" in r.detail), {})
    state = ReleaseState(last.to_state)
    restored = last.detail.get("restored")
    status: Status
    if state is ReleaseState.PROMOTED:
        status, restored = "promoted", tag
    elif state in ON_DEVICE:
        status, restored = "interrupted", None
    elif last.detail.get("halt"):
        status = "halted"
    elif last.detail.get("preflight"):
        status = "skipped"
    elif last.detail.get("interrupted"):  # the orchestrator died; the device's lease undid it: try again
        status = "interrupted"
    else:
        status = "rolled_back" if state is ReleaseState.ROLLED_BACK else "failed"
    return DeviceOutcome(device, wave, status, last.reason, attempt, seconds, gate.get("p95_ms"),
                         gate.get("windows_per_s"), restored)


def reconcile_device(env: PipelineEnv, store: ArtifactStore, tag: str, spec: DeviceSpec, rollout_id: str, *,
                     actor: str, ssh_client_factory: SshFactory = None) -> HistoryRecord | None:
    """Record what the device did on its own while nobody watched (a dead orchestrator), for an
    attempt the history still has on the device. The device decides; the store observes."""
    history = History(store)
    attempt, own = _attempt_records(history, tag, spec.name, rollout_id)
    if not own or ReleaseState(own[-1].to_state) not in ON_DEVICE:
        return None
    prior = own[0].detail
    restored = {"restored": prior.get("prior"), "restored_hef_sha256": prior.get("prior_hef_sha256")}
    with connected(spec, ssh_client_factory) as transport:
        view = dep.status(transport, spec)
        if view.get("current") == tag and view.get("lease"):
            # Still provisional and nobody will judge it now: restore it (not a verdict on the release).
            restored = restore_last_known_good(history, spec, transport)
            event, why = ReleaseEvent.ROLLBACK, "reconcile: an unjudged canary left by a dead orchestrator, restored"
        elif view.get("committed") == tag:
            if ReleaseState(own[-1].to_state) is ReleaseState.GATE_PASSED:
                return advance_on_device(history, tag, spec.name, ReleaseEvent.PROMOTE, rollout_id=rollout_id,
                                         attempt=attempt, actor=actor, reason="observed: the device committed it",
                                         detail={"hef_sha256": own[-1].detail.get("hef_sha256")})
            restored = restore_last_known_good(history, spec, transport)  # a commit the gate never allowed
            event, why = ReleaseEvent.ROLLBACK, "reconcile: committed without a passed gate, restored"
        else:
            expired = lease_expired_on_device(view, tag)
            event = ReleaseEvent.LEASE_EXPIRED if expired else ReleaseEvent.ROLLBACK
            why = expired or f"observed: the device runs {view.get('current')} (interrupted switch undone)"
    return advance_on_device(history, tag, spec.name, event, rollout_id=rollout_id, attempt=attempt, actor=actor,
                             reason=why, detail={**restored, "interrupted": True})


def _gate_detail(report: Any) -> dict[str, Any]:
    return {"p95_ms": report.p95_ms, "p50_ms": report.p50_ms, "windows_per_s": round(report.windows_per_s, 3),
            "error_rate": report.error_rate, "samples": report.samples, "verdict": report.verdict.value}


def _save_gate(store: ArtifactStore, rollout_id: str, device: str, attempt: int, report: Any) -> None:
    body = {**_gate_detail(report), "reasons": list(report.reasons), "latencies_ms": list(report.latencies_ms),
            "mode": report.mode}
    store.create_record(f"{GATE_STREAM}/{rollout_id}.{device}.{attempt}.json", json.dumps(body).encode())


def load_gate(store: ArtifactStore, rollout_id: str, device: str, attempt: int) -> dict[str, Any] | None:
    from release.errors import ArtifactNotFound

    try:
        body: dict[str, Any] = json.loads(store.read_record(f"{GATE_STREAM}/{rollout_id}.{device}.{attempt}.json"))
    except ArtifactNotFound:
        return None
    return body


def run_device(
    env: PipelineEnv, store: ArtifactStore, *, rollout_id: str, tag: str, spec: DeviceSpec, wave_index: int,
    plan_wave: PlanWave, on_preflight_failure: str, actor: str, lock_wait_s: float,
    ssh_client_factory: SshFactory = None,
) -> DeviceOutcome:
    """Deploy → gate → commit | restore on one device; the outcome is what the history then says."""
    history = History(store)
    done = outcome_from_history(history, tag, spec.name, rollout_id, wave_index)
    if done is not None and done.status != "interrupted":
        return done  # finished in an earlier run of this rollout: never redone
    settings = plan_wave.settings()
    lease_s = settings.lease_s()
    # Wait for another rollout's lifecycle on this device (its upload and lease), never fail on it early.
    wait_s = lock_wait_s or (lease_s + LOCK_WAIT_MARGIN_S)
    hold_s = spec.health_timeout_s + lease_s + LOCK_MARGIN_S
    fleet_lock.acquire(store, spec.name, rollout_id, hold_s, wait_s=wait_s)
    with fleet_lock.renewed(store, spec.name, rollout_id, hold_s):
        reconcile_device(env, store, tag, spec, rollout_id, actor=actor, ssh_client_factory=ssh_client_factory)
        attempt = _attempt_records(history, tag, spec.name, rollout_id)[0] + 1
        lkg = history.last_known_good(spec.name)
        if lkg is not None and lkg[0] == tag:
            return DeviceOutcome.already(spec.name, wave_index, tag)
        return _lifecycle(env, store, history, rollout_id, tag, spec, wave_index, attempt, settings, lkg,
                          on_preflight_failure, actor, ssh_client_factory)


def _lifecycle(
    env: PipelineEnv, store: ArtifactStore, history: History, rollout_id: str, tag: str, spec: DeviceSpec,
    wave_index: int, attempt: int, settings: Any, lkg: tuple[str, str | None] | None, on_preflight_failure: str,
    actor: str, ssh_client_factory: SshFactory,
) -> DeviceOutcome:
    name = spec.name
    prior = {"prior": lkg[0] if lkg else None, "prior_hef_sha256": lkg[1] if lkg else None}
    restored_prior = {"restored": prior["prior"], "restored_hef_sha256": prior["prior_hef_sha256"]}

    def record(event: ReleaseEvent, reason: str, detail: dict[str, Any] | None = None) -> HistoryRecord:
        return advance_on_device(history, tag, name, event, rollout_id=rollout_id, attempt=attempt, actor=actor,
                                 reason=reason, detail=detail)

    def outcome() -> DeviceOutcome:
        result = outcome_from_history(history, tag, name, rollout_id, wave_index)
        assert result is not None
        return result

    work = env.work_dir(tag, f"fleet-{name}")
    _, pub = signing_key(env, production=False)
    verified = verify_release(store, tag, VerifyPolicy(pub), work)
    bundle = device_bundle(store, tag, verified.hef_name, work / "bundle")
    # Intent first: from here on the release may be on the device, and the store says so.
    record(ReleaseEvent.DEPLOYED, f"wave {wave_index}: activating under a {settings.lease_s():.0f}s lease", prior)
    try:
        try:
            with connected(spec, ssh_client_factory) as transport:
                dep.deploy_canary(transport, spec, bundle, tag, pub, settings.lease_s())
        except dep.PreflightRefused as exc:
            # The agent refused before stopping anything: the device never left its release.
            why = f"preflight failed: {exc}"
            record(ReleaseEvent.STEP_FAILED, why, {**restored_prior, "preflight": on_preflight_failure})
            return outcome()
        except dep.Unhealthy as exc:
            record(ReleaseEvent.ROLLBACK, f"never became healthy: {exc}", restored_prior)
            return outcome()
        if rollout_state(history, rollout_id) is RolloutState.HALTING:
            return _restore_for_halt(history, spec, record, outcome, "the rollout is halting: not gated", {},
                                     ssh_client_factory)
        report = measure_gate(store, tag, spec, settings, None, ssh_client_factory)
        _save_gate(store, rollout_id, name, attempt, report)
        gate = _gate_detail(report)
        reasons = "; ".join(report.reasons) or report.verdict.value
        if report.verdict.value == "pass":
            record(ReleaseEvent.GATE_PASS, reasons, {**gate, "hef_sha256": verified.candidate.hef.hef_sha256})
            if rollout_state(history, rollout_id) is RolloutState.HALTING:
                # Aborted while this device was gated: restore instead of committing (the halt would
                # only undo the commit a moment later).
                return _restore_for_halt(history, spec, record, outcome, "the rollout is halting: not committed", gate,
                                         ssh_client_factory)
            with connected(spec, ssh_client_factory) as transport:
                try:
                    dep.commit(transport, spec, tag)
                except dep.LeaseExpired as exc:
                    record(ReleaseEvent.LEASE_EXPIRED, str(exc), restored_prior)
                    return outcome()
                view = dep.status(transport, spec)
            hef = verified.candidate.hef.hef_sha256
            if view.get("committed") != tag or view.get("current_hef_sha256") not in (None, hef):
                raise StepFailed(f"device {name}: after the commit it reports {view.get('committed')} / "
                                 f"{view.get('current_hef_sha256')}, not {tag} / {hef}")
            record(ReleaseEvent.PROMOTE, f"wave {wave_index}: gate passed; committed on the device",
                   {**gate, "hef_sha256": hef})
            return outcome()
        # A fleet never holds a device for a human: an inconclusive gate is undone like a failed one.
        event = ReleaseEvent.GATE_FAIL if report.verdict.value == "fail" else ReleaseEvent.GATE_INCONCLUSIVE
        record(event, reasons, gate)
        with connected(spec, ssh_client_factory) as transport:
            restored = restore_last_known_good(history, spec, transport)
        record(ReleaseEvent.ROLLBACK, f"wave {wave_index}: gate {report.verdict.value}: {reasons}", {**restored, **gate})
        return outcome()
    except BaseException as exc:
        _fail_safe(history, spec, tag, rollout_id, attempt, actor, exc, ssh_client_factory)
        raise


def _restore_for_halt(history: History, spec: DeviceSpec, record: Callable[..., HistoryRecord],
                      outcome: Callable[[], DeviceOutcome], why: str, gate: dict[str, Any],
                      ssh_client_factory: SshFactory) -> DeviceOutcome:
    t0 = time.monotonic()
    with connected(spec, ssh_client_factory) as transport:
        restored = restore_last_known_good(history, spec, transport)
    record(ReleaseEvent.ROLLBACK, why, {**restored, **gate, "halt": True, "seconds": round(time.monotonic() - t0, 3)})
    return outcome()


def _fail_safe(history: History, spec: DeviceSpec, tag: str, rollout_id: str, attempt: int, actor: str,
               error: BaseException, ssh_client_factory: SshFactory) -> None:
    """After any failure mid-lifecycle: restore the device's last-known-good, then record it."""
    _, own = _attempt_records(history, tag, spec.name, rollout_id)
    if not own or ReleaseState(own[-1].to_state) not in ON_DEVICE:
        return
    why = f"{type(error).__name__}: {error}"
    try:
        with connected(spec, ssh_client_factory) as transport:
            restored = restore_last_known_good(history, spec, transport)
    except (ReleaseError, OSError) as exc:
        raise StepFailed(f"device {spec.name}: {why}; unreachable to roll back ({exc}): its lease restores "
                         f"last-known-good by itself and `hailo-release rollout resume {rollout_id}` records it") from error
    advance_on_device(history, tag, spec.name, ReleaseEvent.STEP_FAILED, rollout_id=rollout_id, attempt=attempt,
                      actor=actor, reason=why, detail=restored)
