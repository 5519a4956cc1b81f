"""The canary lifecycle: deploy (provisional, under the device's lease) → gate → commit | roll back | hold.

Commit or roll back (Mender): the device keeps a canary only when it is told to commit it in time;
otherwise it restores its last-known-good by itself. On top of that the orchestrator undoes every
failure it survives: ``fail_safe()`` puts the device back on the last-known-good release from the
store's history and records the failure as a signed manifest entry. What it cannot survive
(SIGKILL, a cut connection, a dead host) the lease covers, and ``operations.reconcile`` records
what the device did once it is observed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from release.devices import DeviceSpec
from release.errors import ReleaseError, StepFailed
from release.faults import fault_point
from release.history import History
from release.manifest import GateRecord, ReleaseManifest, StepRecord
from release.pipeline_env import PipelineEnv
from release.request import ReleaseRequest
from release.states import BEFORE_DEVICE, ON_DEVICE, TERMINAL, ReleaseEvent, ReleaseState, advance, current_state
from release.step_results import DeployResult, FinalResult, GateResult, load_result, save_result
from release.store import MANIFEST_NAME, ArtifactStore
from release.targets import connected, inventory, open_transport
from release.verify import CANDIDATE, VerifyPolicy, device_bundle, publish_signed, signing_key, verify_release

SshFactory = Callable[[], Any] | None
EXIT_CODES = {ReleaseState.PROMOTED: 0, ReleaseState.ROLLED_BACK: 10, ReleaseState.HELD: 11, ReleaseState.FAILED: 1}


def _timed(name: str, status: str, reason: str, t0: float) -> StepRecord:
    return StepRecord(name=name, status=status, reason=reason[:2000], duration_s=round(time.monotonic() - t0, 3))


def _gate_settings(req: ReleaseRequest) -> Any:
    from release.gate_settings import settings_with_overrides

    return settings_with_overrides(req.gate_overrides)


# -- the device's last-known-good -------------------------------------------------------------
def restore_last_known_good(history: History, spec: DeviceSpec, transport: Any) -> dict[str, Any]:
    """Put ``spec`` back on the release the store says it last committed (explicit tag, hef checked).

    Returns the history detail: what runs now. A device already there, with no lease, is left alone.
    """
    from release import deploy as dep

    lkg = history.last_known_good(spec.name)
    tag, hef = lkg if lkg else (None, None)
    status = dep.status(transport, spec)
    if status.get("current") == tag and status.get("committed") == tag and not status.get("lease"):
        return {"restored": tag, "restored_hef_sha256": hef, "seconds": 0.0, "already": True}
    reply = dep.rollback(transport, spec, tag, expect_hef=hef)
    return {"restored": tag, "restored_hef_sha256": hef, "seconds": round(reply.seconds, 3)}


def lease_expired_on_device(status: dict[str, Any], tag: str) -> str | None:
    """The device's own account of a lease that ran out on ``tag``, if it has one."""
    for event in reversed(status.get("events") or []):
        if event.get("tag") == tag and event.get("event") == "lease_expired":
            return str(event.get("detail"))
    return None


# -- deploy -----------------------------------------------------------------------------------
def deploy(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, ssh_client_factory: SshFactory = None) -> DeployResult:
    from release import deploy as dep

    t0 = time.monotonic()
    tag = req.release_tag
    _, pub = signing_key(env, req.production)
    verified = verify_release(store, tag, VerifyPolicy(pub), env.work_dir(tag, "deploy"))
    if req.production:
        from release.compile import assert_deployable

        assert_deployable(store.fetch(tag, verified.hef_name, env.work_dir(tag, "deploy") / "check.hef"), production=True)
        if not verified.candidate.image.digest:
            raise StepFailed("production releases need a pushed, signed runtime image; the image step was skipped")
    device = inventory(env).get(req.device)
    lease_s = verified.candidate.lease_s or _gate_settings(req).lease_s()
    bundle = device_bundle(store, tag, verified.hef_name, env.work_dir(tag, "deploy") / "bundle")
    history = History(store)
    # Intent first: from here on the canary may be on the device, and the store says so.
    advance(history, tag, ReleaseEvent.DEPLOYED, actor=req.triggered_by, device=device.name,
            reason=f"activating as a provisional canary under a {lease_s:.0f}s lease")
    fault_point("deploy")
    try:
        with connected(device, ssh_client_factory) as transport:
            dep.deploy_canary(transport, device, bundle, tag, pub, lease_s)
        healthy, detail = True, "healthy, provisional"
    except dep.Unhealthy as exc:
        healthy, detail = False, str(exc)
    fault_point("deploy_health")
    if not healthy:
        lkg = history.last_known_good(device.name)
        advance(history, tag, ReleaseEvent.ROLLBACK, actor=req.triggered_by, device=device.name,
                reason=f"canary never became healthy: {detail}",
                detail={"restored": lkg[0] if lkg else None, "restored_hef_sha256": lkg[1] if lkg else None})
    result = DeployResult(step=_timed("deploy", "real", f"{device.transport} transport: {detail}", t0),
                          device=device.name, healthy=healthy, active_tag=tag if healthy else None, detail=detail)
    save_result(store, tag, result)
    return result


# -- gate -------------------------------------------------------------------------------------
def measure_gate(store: ArtifactStore, tag: str, device: DeviceSpec, settings: Any, baseline: Any,
                 ssh_client_factory: SshFactory = None) -> Any:
    """Run the latency gate of release ``tag`` on ``device`` (its sidecar) and return the GateReport;
    the canary and every fleet device use this one measurement."""
    import io

    import numpy as np

    from release.gate import run_gate

    ref = np.load(io.BytesIO(store.get_bytes(tag, "reference_outputs.npz")))
    reference = {"latent": ref["latent"], "motif_scores": ref["motif_scores"]}
    if device.gate_mode == "orchestrator":  # timings include the network: labelled so in the report
        return run_gate(device.gate_url, settings, windows=ref["windows"], reference=reference, baseline_latencies=baseline)
    # The agent generates the load on the device, against the sidecar EdgeInfer calls.
    from release import deploy as dep
    from release.gate_device import run_device_gate

    start = dep.device_loader(device, lambda: open_transport(device, ssh_client_factory))
    return run_device_gate(start, settings, windows=ref["windows"], reference=reference, baseline_latencies=baseline)


def gate(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, ssh_client_factory: SshFactory = None) -> GateResult:
    from release.gate import GateReport, write_histogram_png

    t0 = time.monotonic()
    tag = req.release_tag
    deployed = load_result(store, tag, "deploy", DeployResult)
    settings = _gate_settings(req)
    if not deployed.healthy:
        record = GateRecord(thresholds=settings.thresholds(), verdict="fail",
                            reasons=(f"canary never became healthy: {deployed.detail}",))
        result = GateResult(step=_timed("gate", "skipped", "canary unhealthy", t0), gate=record)
        save_result(store, tag, result)
        return result
    device = inventory(env).get(req.device)
    baseline = None
    previous = ReleaseManifest.from_json(store.get_bytes(tag, CANDIDATE)).previous_release_tag
    if previous and store.exists(previous, "gate_report.json"):
        baseline = GateReport.model_validate_json(store.get_bytes(previous, "gate_report.json")).latencies_ms
    report = measure_gate(store, tag, device, settings, baseline, ssh_client_factory)
    work = env.work_dir(tag, "gate")
    (work / "gate_report.json").write_text(report.model_dump_json(indent=2))
    write_histogram_png(report, work / "gate_histogram.png")
    store.put_file(tag, "gate_report.json", work / "gate_report.json")
    store.put_file(tag, "gate_histogram.png", work / "gate_histogram.png")
    record = report.to_record(store.uri(tag, "gate_report.json"), store.uri(tag, "gate_histogram.png"))
    result = GateResult(step=_timed("gate", "real", f"verdict {report.verdict.value}", t0), gate=record)
    save_result(store, tag, result)
    event = {"pass": ReleaseEvent.GATE_PASS, "fail": ReleaseEvent.GATE_FAIL}.get(record.verdict, ReleaseEvent.GATE_INCONCLUSIVE)
    advance(History(store), tag, event, actor=req.triggered_by, device=req.device, reason="; ".join(record.reasons))
    return result


# -- outcomes ---------------------------------------------------------------------------------
def publish_final(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, extra: list[StepRecord]) -> FinalResult:
    """Publish the signed final manifest in the state the history says (once; a re-run only reports)."""
    tag = req.release_tag
    state = current_state(History(store), tag) or ReleaseState.FAILED
    uri = store.uri(tag, MANIFEST_NAME)
    if store.is_published(tag):
        return FinalResult(step=extra[-1], state=ReleaseManifest.from_json(store.get_bytes(tag, MANIFEST_NAME)).state.value,
                           manifest_uri=uri)
    candidate = ReleaseManifest.from_json(store.get_bytes(tag, CANDIDATE))
    steps = list(candidate.steps)
    gate_record = candidate.gate
    for name, kind in (("deploy", DeployResult), ("gate", GateResult)):
        if store.exists(tag, f"steps/{name}.json"):
            loaded = load_result(store, tag, name, kind)
            steps.append(loaded.step)
            if isinstance(loaded, GateResult):
                gate_record = loaded.gate
    final = candidate.with_updates(state=state, gate=gate_record, steps=(*steps, *extra))
    priv, _ = signing_key(env, req.production)
    fault_point("publish")
    publish_signed(store, tag, final, priv)  # the final step records live in the manifest itself
    return FinalResult(step=extra[-1], state=state.value, manifest_uri=uri)


def promote(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, ssh_client_factory: SshFactory = None) -> FinalResult:
    """Commit the canary on the device (it becomes last-known-good), record it, publish."""
    from release import deploy as dep

    t0 = time.monotonic()
    history = History(store)
    tag = req.release_tag
    if current_state(history, tag) is ReleaseState.GATE_PASSED:
        device = inventory(env).get(req.device)
        candidate = ReleaseManifest.from_json(store.get_bytes(tag, CANDIDATE))
        try:
            with connected(device, ssh_client_factory) as transport:
                fault_point("promote")
                dep.commit(transport, device, tag)
        except dep.LeaseExpired as exc:
            lkg = history.last_known_good(device.name)
            advance(history, tag, ReleaseEvent.LEASE_EXPIRED, actor=req.triggered_by, device=device.name,
                    reason=str(exc), detail={"restored": lkg[0] if lkg else None,
                                             "restored_hef_sha256": lkg[1] if lkg else None})
            return publish_final(req, env, store, [_timed("promote", "real", f"too late to commit: {exc}", t0)])
        advance(history, tag, ReleaseEvent.PROMOTE, actor=req.triggered_by, device=device.name,
                reason="gate passed; committed on the device", detail={"hef_sha256": candidate.hef.hef_sha256})
    return publish_final(req, env, store, [_timed("promote", "real", "gate passed; committed on the device", t0)])


def rollback(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, ssh_client_factory: SshFactory = None) -> FinalResult:
    """The gate failed: restore the device's last-known-good (from the store), record it, publish."""
    t0 = time.monotonic()
    history = History(store)
    tag = req.release_tag
    reason = "; ".join(load_result(store, tag, "gate", GateResult).gate.reasons) or "gate failed"
    detail = "already rolled back"
    if current_state(history, tag) in ON_DEVICE:
        device = inventory(env).get(req.device)
        with connected(device, ssh_client_factory) as transport:
            restored = restore_last_known_good(history, device, transport)
        advance(history, tag, ReleaseEvent.ROLLBACK, actor=req.triggered_by, device=device.name,
                reason=f"canary {tag} rejected: {reason}", detail=restored)
        detail = f"restored {restored['restored'] or 'nothing (first release)'} in {restored['seconds']:.1f}s"
    return publish_final(req, env, store, [_timed("rollback", "real", detail, t0)])


def hold(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, ssh_client_factory: SshFactory = None) -> FinalResult:
    """Inconclusive gate: the canary keeps serving, its lease extended to the hold window, for a human."""
    from release import deploy as dep

    t0 = time.monotonic()
    settings = _gate_settings(req)
    reason = "; ".join(load_result(store, req.release_tag, "gate", GateResult).gate.reasons)
    device = inventory(env).get(req.device)
    with connected(device, ssh_client_factory) as transport:
        dep.extend_lease(transport, device, req.release_tag, settings.hold_lease_s)
    note = f"waiting for a human up to {settings.hold_lease_s:.0f}s, then the device restores last-known-good: {reason}"
    return publish_final(req, env, store, [_timed("hold", "real", note, t0)])


# -- failures ---------------------------------------------------------------------------------
def fail_safe(
    req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, *, step: str, error: BaseException,
    ssh_client_factory: SshFactory = None, idempotency_key: str | None = None,
) -> FinalResult | None:
    """After any failure: put the device back on last-known-good if the canary may be on it, then
    record the failure (state ``failed``) with a signed manifest entry. Returns None when nothing
    could be recorded because the device could not be reached (its lease restores it by itself)."""
    from release import deploy as dep

    t0 = time.monotonic()
    history = History(store)
    tag = req.release_tag
    state = current_state(history, tag)
    why = f"{step} failed: {type(error).__name__}: {error}"
    if state is None:
        return None
    if state in ON_DEVICE:
        device = inventory(env).get(req.device)
        if device.transport == "local" and not Path(device.agent_root).is_dir():
            # Airflow runs a heartbeat-timeout callback on the dag-processor, not on the device's worker:
            # a `local` device is not on that host, and "could not be reached" would mislead.
            raise StepFailed(f"{why}; no agent of the `local` device {req.device} at {device.agent_root} on this "
                             f"host: the deploy never reached it, or this runs on another host than the device's "
                             f"worker (a heartbeat-timeout callback runs on the dag-processor). A canary there restores "
                             f"last-known-good by its lease; `ensure_safe` or `hailo-release reconcile --device "
                             f"{req.device}` on the device's host records it") from error
        try:
            with connected(device, ssh_client_factory) as transport:
                status = dep.status(transport, device)
                expired = lease_expired_on_device(status, tag)
                restored = restore_last_known_good(history, device, transport)
        except (ReleaseError, OSError) as exc:
            # The device is out of reach: its lease restores last-known-good without us, and
            # `hailo-release reconcile` records that once it answers again.
            raise StepFailed(f"{why}; the device could not be reached to roll back ({exc}): its lease "
                             f"restores last-known-good by itself — run `hailo-release reconcile --device {req.device}`") from error
        event = ReleaseEvent.LEASE_EXPIRED if expired else ReleaseEvent.STEP_FAILED
        advance(history, tag, event, actor=req.triggered_by, device=device.name, reason=expired or why,
                detail=restored, idempotency_key=idempotency_key)
        note = f"{why}; device restored to {restored['restored'] or 'nothing (first release)'}"
    elif state in BEFORE_DEVICE:
        advance(history, tag, ReleaseEvent.STEP_FAILED, actor=req.triggered_by, device=req.device, reason=why,
                idempotency_key=idempotency_key)
        note = why
    else:
        note = f"{why} (release already {state.value})"
    if not store.exists(tag, CANDIDATE):
        return None
    return publish_final(req, env, store, [_timed("fail_safe", "failed", note, t0)])


def outcome_for(state: ReleaseState | None) -> str:
    """The step that finishes a release in ``state`` after its gate."""
    if state is ReleaseState.GATE_PASSED:
        return "promote"
    if state is ReleaseState.HELD:
        return "hold"
    return "rollback"


def is_settled(state: ReleaseState | None) -> bool:
    return state in TERMINAL or state is ReleaseState.HELD
