"""On-call operations: roll a device back, answer a held release, attest, record a failure, and see
(``status``) or settle (``reconcile``) what a device runs against what the store's history says.

None of them needs Airflow: the CLI and the DAGs call the same functions.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from release.canary import fail_safe, lease_expired_on_device, publish_final, restore_last_known_good
from release.errors import InvalidInput, StepFailed, TransitionError
from release.history import History
from release.identifiers import ReleaseTag
from release.manifest import ReleaseManifest, StepRecord
from release.pipeline_env import PipelineEnv
from release.request import ReleaseRequest
from release.states import (
    ON_DEVICE,
    ReleaseEvent,
    ReleaseState,
    advance,
    advance_for_device,
    current_state,
    state_on_device,
    transition,
)
from release.store import MANIFEST_NAME, ArtifactStore
from release.targets import connected, inventory
from release.verify import VerifyPolicy, publish_signed, signing_key, verify_release

if TYPE_CHECKING:
    from release.bundle_signing import BundleSigner

SshFactory = Callable[[], Any] | None
Decision = Literal["approve", "reject"]


def _entry(store: ArtifactStore, env: PipelineEnv, base: ReleaseManifest, entry_tag: str, counter: int, **changes: Any) -> str:
    """Publish a signed rollback/decision entry (a new, higher-numbered manifest pointing at a release)."""
    priv, _ = signing_key(env, production=False)
    entry = base.with_updates(release_tag=entry_tag, release_counter=counter, created_at=dt.datetime.now(dt.UTC), **changes)
    publish_signed(store, entry_tag, entry, priv)
    return store.uri(entry_tag, MANIFEST_NAME)


def _was_committed(history: History, store: ArtifactStore, tag: str) -> bool:
    if any(r.to_state == ReleaseState.PROMOTED.value for r in history.for_tag(tag)):
        return True
    return store.is_published(tag) and ReleaseManifest.from_json(store.get_bytes(tag, MANIFEST_NAME)).state is ReleaseState.PROMOTED


def previous_committed(history: History, device: str) -> str | None:
    """On-call's "previous": the committed release before the current last-known-good (or the
    last-known-good itself while an undecided canary runs)."""
    lkg = history.last_known_good(device)
    if history.in_flight(device) is not None:
        return lkg[0] if lkg else None
    seen = [lkg[0]] if lkg else []
    for record in reversed(history.for_device(device)):
        tag = record.detail.get("restored") if "restored" in record.detail else (
            record.release_tag if record.to_state == ReleaseState.PROMOTED.value else None)
        if tag and tag not in seen:
            return str(tag)
    return None


def _request_for(manifest: ReleaseManifest, device: str, actor: str) -> ReleaseRequest:
    """The request a stored candidate was made from, enough to settle and publish it."""
    return ReleaseRequest.parse({"continuity_id": manifest.continuity_id, "release_tag": manifest.release_tag,
                                 "device": device, "config_version": manifest.config_version, "triggered_by": actor})


def rollback_device(
    env: PipelineEnv, store: ArtifactStore, *, device: str, to: str, reason: str, triggered_by: str,
    ssh_client_factory: SshFactory = None,
) -> dict[str, Any]:
    """On-call rollback: verify the target's signatures, re-activate it, record a rollback entry."""
    from release import deploy as dep

    t0 = time.monotonic()
    history = History(store)
    spec = inventory(env).get(device)
    target = previous_committed(history, device) if to == "previous" else ReleaseTag(to).value
    if target is None:
        raise StepFailed(f"device {device}: no earlier committed release to roll back to")
    _, pub = signing_key(env, production=False)
    verified = verify_release(store, target, VerifyPolicy(pub, published=True), env.work_dir(target, f"rollback-{device}"))
    if not _was_committed(history, store, target):
        raise InvalidInput(f"{target} was never committed (promoted) on any device: it cannot be a rollback target")
    lkg = history.last_known_good(device)
    from_tag = history.in_flight(device) or (lkg[0] if lkg else None)
    if from_tag is not None and from_tag != target:  # refuse before acting
        transition(state_on_device(history, from_tag, device) or ReleaseState.FAILED, ReleaseEvent.ROLLBACK)
    hef = verified.candidate.hef.hef_sha256
    with connected(spec, ssh_client_factory) as transport:
        dep.install_agent(transport, spec, pub)
        reply = dep.rollback(transport, spec, target, expect_hef=hef)
    seconds = time.monotonic() - t0
    counter = history.allocate_counter()  # a group rollback runs devices in threads and processes
    detail = {"restored": target, "restored_hef_sha256": hef, "seconds": round(seconds, 3), "entry_counter": counter}
    if from_tag is not None and from_tag != target:
        advance_for_device(history, from_tag, device, ReleaseEvent.ROLLBACK, actor=triggered_by, reason=reason,
                           detail=detail)
    rb_tag = ReleaseTag(f"{target}-rb{counter}").value
    base = verified.published or verified.candidate
    uri = _entry(store, env, base, rb_tag, counter, kind="rollback", points_to_release_tag=target,
                 state=ReleaseState.ROLLED_BACK, previous_release_tag=reply.body.get("from"),
                 steps=(StepRecord(name="rollback", status="real", reason=reason, duration_s=round(seconds, 3)),))
    return {"device": device, "rolled_back_to": target, "from": reply.body.get("from"),
            "seconds_to_healthy": round(seconds, 3), "rollback_manifest": uri}


def decide_held(
    env: PipelineEnv, store: ArtifactStore, *, device: str, tag: str, decision: Decision, reason: str,
    decided_by: str, ssh_client_factory: SshFactory = None,
) -> dict[str, Any]:
    """A human's answer to a held release (inconclusive gate): approve → commit, reject → roll back.

    The held manifest's signatures are verified first and the change goes through the transition
    table, so only a held release can be decided, once. The answer is a new signed manifest entry
    (higher counter) pointing at the held release: history stays append-only.
    """
    from release import deploy as dep

    t0 = time.monotonic()
    tag = ReleaseTag(tag).value
    if not reason.strip():
        raise InvalidInput("a decision on a held release needs a reason (it goes into the history and the manifest)")
    history = History(store)
    spec = inventory(env).get(device)
    _, pub = signing_key(env, production=False)
    verified = verify_release(store, tag, VerifyPolicy(pub, published=True), env.work_dir(tag, "decide"))
    held = verified.published
    assert held is not None
    if held.device not in (None, device):
        raise InvalidInput(f"release {tag} was a canary on device {held.device}, not {device}")
    event = ReleaseEvent.APPROVE if decision == "approve" else ReleaseEvent.ROLLBACK
    state = current_state(history, tag) or held.state
    new_state = transition(state, event)
    with connected(spec, ssh_client_factory) as transport:
        current = dep.status(transport, spec).get("current")
        if current != tag:
            raise StepFailed(f"device {device} no longer runs the held release {tag} (it runs {current}); nothing to decide")
        if decision == "approve":
            dep.commit(transport, spec, tag)
            detail: dict[str, Any] = {"hef_sha256": held.hef.hef_sha256}
            note = f"committed {tag}"
        else:
            detail = restore_last_known_good(history, spec, transport)
            note = f"restored {detail['restored'] or 'nothing'} in {detail['seconds']:.1f}s"
    seconds = time.monotonic() - t0
    counter = history.allocate_counter()
    advance(history, tag, event, actor=decided_by, device=device, reason=f"held release {decision}d: {reason}",
            detail={**detail, "entry_counter": counter})
    uri = _entry(store, env, held, ReleaseTag(f"{tag}-{decision}{counter}").value, counter, kind="decision",
                 points_to_release_tag=tag, state=new_state,
                 steps=(StepRecord(name=decision, status="real", reason=f"{decided_by}: {reason} ({note})",
                                   duration_s=round(seconds, 3)),))
    return {"device": device, "release_tag": tag, "decision": decision, "state": new_state.value, "detail": note,
            "seconds": round(seconds, 3), "decision_manifest": uri}


def attest_release(env: PipelineEnv, store: ArtifactStore, tag: str, output_dir: Path, signer: BundleSigner) -> dict[str, Any]:
    """Countersign a promoted release's bundle with ``signer`` (in GitHub Actions: keyless, the
    workflow's OIDC identity) after verifying its own signatures; the store is not written."""
    import json
    import shutil

    from release.checksums import sha256_file

    tag = ReleaseTag(tag).value
    _, pub = signing_key(env, production=False)
    work = env.work_dir(tag, "attest")
    verified = verify_release(store, tag, VerifyPolicy(pub, published=True, check_image=False), work)
    published = verified.published
    assert published is not None
    state = current_state(History(store), tag) or published.state
    if published.kind != "release" or state is not ReleaseState.PROMOTED:
        # An attestation says "this release passed its canary": never for a rolled-back or held one.
        raise InvalidInput(f"{tag} is a {published.kind} entry in state {state.value}; only a promoted release is attested")
    output_dir.mkdir(parents=True, exist_ok=True)
    signature = signer.sign(verified.signed_dir, work / f"{tag}.sigstore.json")
    shutil.copyfile(signature, output_dir / signature.name)
    covered = {p.name: sha256_file(p) for p in sorted(verified.signed_dir.iterdir())}
    summary = {"release_tag": tag, "state": state.value, "signature": signature.name, "files_sha256": covered}
    (output_dir / f"{tag}.attestation.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return {**summary, "output_dir": str(output_dir)}


def record_failure(
    env: PipelineEnv, store: ArtifactStore, params: dict[str, Any], *, task_id: str, run_id: str, reason: str,
    ssh_client_factory: SshFactory = None,
) -> None:
    """A task failed for good (Airflow's failure callback): make the device safe and record it, once
    per task and run however often the callback runs."""
    tag = params.get("release_tag")
    if not tag:
        return
    req = ReleaseRequest.parse({**params, "triggered_by": f"airflow:{run_id}"})
    fail_safe(req, env, store, step=task_id, error=StepFailed(reason), ssh_client_factory=ssh_client_factory,
              idempotency_key=f"{run_id}:{task_id}:failed")


# -- status and reconcile ---------------------------------------------------------------------
@dataclass
class DeviceStatus:
    device: str
    device_view: dict[str, Any]
    last_known_good: str | None
    in_flight: str | None
    in_flight_state: str | None
    disagreements: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.disagreements

    def as_dict(self) -> dict[str, Any]:
        view = {k: self.device_view.get(k) for k in ("current", "committed", "previous", "healthy", "lease")}
        return {"device": self.device, "device_runs": view, "store_last_known_good": self.last_known_good,
                "store_in_flight": self.in_flight, "store_in_flight_state": self.in_flight_state,
                "agrees": self.agrees, "disagreements": self.disagreements}


def status(env: PipelineEnv, store: ArtifactStore, device: str, ssh_client_factory: SshFactory = None) -> DeviceStatus:
    """What the device runs, its last-known-good and lease, beside what the store's history says."""
    from release import deploy as dep

    history = History(store)
    spec = inventory(env).get(device)
    with connected(spec, ssh_client_factory) as transport:
        view = dep.status(transport, spec)
    lkg = history.last_known_good(device)
    flight = history.in_flight_record(device)
    in_flight = flight.release_tag if flight else None
    result = DeviceStatus(device, view, lkg[0] if lkg else None, in_flight, flight.to_state if flight else None)
    current, committed, lease = view.get("current"), view.get("committed"), view.get("lease") or {}
    if committed != result.last_known_good:
        result.disagreements.append(f"device's committed release is {committed}, the store's last-known-good is "
                                    f"{result.last_known_good}")
    if current != committed and not (current == in_flight and lease.get("tag") == current):
        result.disagreements.append(f"device runs {current}, which is neither its committed release nor the "
                                    f"store's in-flight canary ({in_flight}) under a lease")
    if in_flight is not None and current != in_flight:
        result.disagreements.append(f"the store has canary {in_flight} in flight ({result.in_flight_state}) but the "
                                    f"device runs {current}: run `hailo-release reconcile --device {device}`")
    return result


def publish_missing_finals(env: PipelineEnv, store: ArtifactStore, history: History, device: str, actor: str) -> list[str]:
    """A settled release whose final manifest never landed (the orchestrator died between recording
    the outcome and publishing it) gets it now, from the history: nothing settled stays unpublished."""
    done = []
    for tag in dict.fromkeys(r.release_tag for r in history.for_device(device)):
        state = current_state(history, tag)
        if state in (ReleaseState.PROMOTED, ReleaseState.ROLLED_BACK, ReleaseState.FAILED, ReleaseState.HELD) and (
            store.exists(tag, "manifest.candidate.json") and not store.is_published(tag)
        ):
            manifest = ReleaseManifest.from_json(store.get_bytes(tag, "manifest.candidate.json"))
            publish_final(_request_for(manifest, device, actor), env, store, [StepRecord(name="reconcile", status="real",
                                                       reason=f"final manifest published late, from the history ({state})")])
            done.append(tag)
    return done


def reconcile(env: PipelineEnv, store: ArtifactStore, device: str, *, actor: str,
              ssh_client_factory: SshFactory = None) -> dict[str, Any]:
    """Record what the device did on its own (commit kept, lease ran out, interrupted switch undone)
    for the canary the store still has in flight. The device decides; the store observes."""
    from release import deploy as dep

    history = History(store)
    repaired = publish_missing_finals(env, store, history, device, actor)
    flight = history.in_flight_record(device)
    if flight is None:
        return {"device": device, "in_flight": None, "recorded": None, "published": repaired}
    tag = flight.release_tag
    spec = inventory(env).get(device)
    if flight.detail.get("rollout_id"):  # a fleet rollout's device: recorded in that rollout's scope
        from release.rollout_device import reconcile_device

        record = reconcile_device(env, store, tag, spec, str(flight.detail["rollout_id"]), actor=actor,
                                  ssh_client_factory=ssh_client_factory)
        return {"device": device, "in_flight": tag, "recorded": record.event if record else None,
                "state": record.to_state if record else flight.to_state, "rollout_id": flight.detail["rollout_id"]}
    with connected(spec, ssh_client_factory) as transport:
        view = dep.status(transport, spec)
    manifest = ReleaseManifest.from_json(store.get_bytes(tag, "manifest.candidate.json"))
    req = _request_for(manifest, device, actor)
    now = time.monotonic()
    detail: dict[str, Any]
    if view.get("committed") == tag:
        event, detail, why = ReleaseEvent.PROMOTE, {"hef_sha256": manifest.hef.hef_sha256}, "observed: the device committed it"
    elif view.get("current") != tag:
        expired = lease_expired_on_device(view, tag)
        event = ReleaseEvent.LEASE_EXPIRED if expired else ReleaseEvent.ROLLBACK
        why = expired or f"observed: the device runs {view.get('current')} (interrupted switch undone)"
        detail = {"restored": view.get("committed"), "restored_hef_sha256": view.get("current_hef_sha256")}
    else:
        return {"device": device, "in_flight": tag, "recorded": None, "lease": view.get("lease")}
    state = current_state(history, tag)
    if state not in ON_DEVICE:
        raise TransitionError(f"{tag} is {state}; nothing to reconcile")
    if event is ReleaseEvent.PROMOTE and state is not ReleaseState.GATE_PASSED and state is not ReleaseState.HELD:
        event = ReleaseEvent.ROLLBACK  # a commit the gate never allowed cannot stand: restore below
    if event is ReleaseEvent.ROLLBACK and view.get("committed") == tag:
        with connected(spec, ssh_client_factory) as transport:
            detail = restore_last_known_good(history, spec, transport)
    advance(history, tag, event, actor=actor, device=device, reason=why, detail=detail)
    final = publish_final(req, env, store, [StepRecord(name="reconcile", status="real", reason=why,
                                                       duration_s=round(time.monotonic() - now, 3))])
    return {"device": device, "in_flight": tag, "recorded": event.value, "state": final.state, "reason": why}
