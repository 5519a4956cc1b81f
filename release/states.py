"""Release states, the one transition table, and ``advance()``: the only way a release changes state.

Every change is checked against the table and appended to the release history in the artifact
store (``release.history``), so the state of a release is whatever its last history record says,
on every host. The main path:

    draft → validated → compiled → image_published → signed → manifest_written
          → canary_deployed (provisional, under the device's lease)
          → gate_passed → promoted            (committed on the device: its new last-known-good)
          → gate_failed → rolled_back         (the device restored its last-known-good)
          → held → promoted | rolled_back     (a human decided)

Before anything touches a device a failure ends in ``failed``. After activation every failure is
first undone on the device (rolled back to last-known-good), then recorded as ``failed``; a lease
that ran out on the device is recorded as ``rolled_back`` once observed.

Fleet rollouts (``release.rollout``) use the same table per device: each device's lifecycle of a
release within a rollout starts at ``manifest_written`` and is advanced by ``advance_on_device``;
``advance_for_device`` picks the right scope for on-call. The rollout itself has its own small
machine (``RolloutState``), advanced by ``advance_rollout``:

    planned → running ⇄ waiting (pause, manual approval) → completed
            running | waiting → halting (abort criteria tripped) → halted
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from release.errors import TransitionError

if TYPE_CHECKING:
    from release.history import History, HistoryRecord


class ReleaseState(StrEnum):
    DRAFT = "draft"
    VALIDATED = "validated"
    COMPILED = "compiled"
    IMAGE_PUBLISHED = "image_published"
    SIGNED = "signed"
    MANIFEST_WRITTEN = "manifest_written"
    CANARY_DEPLOYED = "canary_deployed"
    GATE_PASSED = "gate_passed"
    GATE_FAILED = "gate_failed"
    HELD = "held"  # gate inconclusive: waits for a human, never a silent pass
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class ReleaseEvent(StrEnum):
    CREATED = "created"
    VALIDATED = "validated"
    COMPILED = "compiled"
    IMAGE_PUBLISHED = "image_published"
    SIGNED = "signed"
    MANIFEST_WRITTEN = "manifest_written"
    DEPLOYED = "deployed"
    GATE_PASS = "gate_pass"  # noqa: S105 - an event name, not a password
    GATE_FAIL = "gate_fail"
    GATE_INCONCLUSIVE = "gate_inconclusive"
    PROMOTE = "promote"  # the device committed the canary
    ROLLBACK = "rollback"  # the device restored its last-known-good on our request
    LEASE_EXPIRED = "lease_expired"  # the device restored its last-known-good by itself (observed)
    APPROVE = "approve"  # a human accepts a held release
    STEP_FAILED = "step_failed"


S, E = ReleaseState, ReleaseEvent
ON_DEVICE = (S.CANARY_DEPLOYED, S.GATE_PASSED, S.GATE_FAILED, S.HELD)
BEFORE_DEVICE = (S.DRAFT, S.VALIDATED, S.COMPILED, S.IMAGE_PUBLISHED, S.SIGNED, S.MANIFEST_WRITTEN)

TRANSITIONS: dict[tuple[ReleaseState, ReleaseEvent], ReleaseState] = {
    (S.DRAFT, E.VALIDATED): S.VALIDATED,
    (S.VALIDATED, E.COMPILED): S.COMPILED,
    (S.COMPILED, E.IMAGE_PUBLISHED): S.IMAGE_PUBLISHED,
    (S.IMAGE_PUBLISHED, E.SIGNED): S.SIGNED,
    (S.SIGNED, E.MANIFEST_WRITTEN): S.MANIFEST_WRITTEN,
    (S.MANIFEST_WRITTEN, E.DEPLOYED): S.CANARY_DEPLOYED,
    (S.CANARY_DEPLOYED, E.GATE_PASS): S.GATE_PASSED,
    (S.CANARY_DEPLOYED, E.GATE_FAIL): S.GATE_FAILED,
    (S.CANARY_DEPLOYED, E.GATE_INCONCLUSIVE): S.HELD,
    (S.GATE_PASSED, E.PROMOTE): S.PROMOTED,
    (S.HELD, E.APPROVE): S.PROMOTED,
    # A commit the device made that the orchestrator could not record (it died right after).
    (S.HELD, E.PROMOTE): S.PROMOTED,
    # On-call may roll back a promoted release later.
    (S.PROMOTED, E.ROLLBACK): S.ROLLED_BACK,
}
for _state in ON_DEVICE:
    TRANSITIONS[(_state, E.ROLLBACK)] = S.ROLLED_BACK
    TRANSITIONS[(_state, E.LEASE_EXPIRED)] = S.ROLLED_BACK
    TRANSITIONS[(_state, E.STEP_FAILED)] = S.FAILED  # recorded only once the device is safe again
# A deploy whose canary never became healthy: the agent restored last-known-good before answering.
TRANSITIONS[(S.MANIFEST_WRITTEN, E.ROLLBACK)] = S.ROLLED_BACK
for _state in BEFORE_DEVICE:
    TRANSITIONS[(_state, E.STEP_FAILED)] = S.FAILED

TERMINAL: frozenset[ReleaseState] = frozenset({S.PROMOTED, S.ROLLED_BACK, S.FAILED})


def transition(current: ReleaseState, event: ReleaseEvent) -> ReleaseState:
    """The state after ``event`` in ``current``; raises TransitionError if the table forbids it."""
    try:
        return TRANSITIONS[(ReleaseState(current), ReleaseEvent(event))]
    except (KeyError, ValueError):
        allowed = sorted(e.value for (s, e) in TRANSITIONS if s == current)
        raise TransitionError(
            f"release in state {current!s} cannot take event {event!s}; allowed: {', '.join(allowed) or 'none'}"
        ) from None


def create(history: History, tag: str, *, device: str | None, actor: str, reason: str = "") -> HistoryRecord:
    """Start a release as a draft and allocate its counter, once: a re-run returns the first record."""
    existing = history.for_tag(tag)
    if existing:
        return existing[0]
    return history.append(release_tag=tag, device=device, event=E.CREATED.value, from_state=None,
                          to_state=S.DRAFT.value, new_counter=True, actor=actor, reason=reason,
                          idempotency_key=f"{tag}:created")


def current_state(history: History, tag: str) -> ReleaseState | None:
    state = history.state_of(tag)
    return ReleaseState(state) if state is not None else None


def advance(
    history: History,
    tag: str,
    event: ReleaseEvent,
    *,
    actor: str,
    device: str | None = None,
    reason: str = "",
    detail: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> HistoryRecord:
    """Apply ``event`` to release ``tag`` through the table and record it in the history.

    Idempotent for retries: the same event again, right after it was recorded, returns that record
    (an Airflow retry of a step that already finished), and so does a repeated ``idempotency_key``.
    """
    own = history.release_records(tag)
    if not own:
        raise TransitionError(f"release {tag} has no history: it was never created")
    last = own[-1]
    if idempotency_key is not None:
        for record in own:
            if record.idempotency_key == idempotency_key:
                return record
    if last.event == ReleaseEvent(event).value and (device is None or last.device == device):
        return last
    new_state = transition(ReleaseState(last.to_state), event)
    return history.append(
        release_tag=tag, device=device if device is not None else last.device, event=ReleaseEvent(event).value,
        from_state=last.to_state, to_state=new_state.value, release_counter=last.release_counter,
        actor=actor, reason=reason, detail=detail or {}, idempotency_key=idempotency_key,
    )


# -- one device's lifecycle of a release within a fleet rollout --------------------------------
DEVICE_START = S.MANIFEST_WRITTEN  # a fleet device starts where a canary starts: signed, not yet deployed



def advance_on_device(
    history: History, tag: str, device: str, event: ReleaseEvent, *, rollout_id: str, attempt: int, actor: str,
    reason: str = "", detail: dict[str, Any] | None = None,
) -> HistoryRecord:
    """Apply ``event`` to ``tag`` on ``device`` within one rollout attempt, through the same table as a
    canary. Idempotent: the key (rollout, device, attempt, event) is written once."""
    key = f"{rollout_id}:{device}:{attempt}:{ReleaseEvent(event).value}"
    own = [r for r in history.device_records(tag, device, rollout_id) if r.detail.get("attempt") == attempt]
    for record in own:
        if record.idempotency_key == key:
            return record
    current = ReleaseState(own[-1].to_state) if own else DEVICE_START
    new_state = transition(current, event)
    return history.append(
        release_tag=tag, device=device, event=ReleaseEvent(event).value, from_state=current.value,
        to_state=new_state.value, release_counter=history.counter_of(tag), actor=actor, reason=reason,
        detail={**(detail or {}), "rollout_id": rollout_id, "attempt": attempt}, idempotency_key=key,
    )


def advance_for_device(
    history: History, tag: str, device: str, event: ReleaseEvent, *, actor: str, reason: str = "",
    detail: dict[str, Any] | None = None, idempotency_key: str | None = None,
) -> HistoryRecord:
    """On-call's change of ``tag`` on ``device``: in the rollout that put it there when a fleet
    rollout did, otherwise on the release itself (its canary)."""
    latest = next((r for r in reversed(history.for_device(device)) if r.release_tag == tag), None)
    rollout_id = latest.detail.get("rollout_id") if latest is not None else None
    if latest is None or rollout_id is None:
        return advance(history, tag, event, actor=actor, device=device, reason=reason, detail=detail,
                       idempotency_key=idempotency_key)
    return advance_on_device(history, tag, device, event, rollout_id=str(rollout_id),
                             attempt=int(latest.detail.get("attempt") or 1), actor=actor, reason=reason, detail=detail)


def state_on_device(history: History, tag: str, device: str) -> ReleaseState | None:
    """The state of ``tag`` as far as ``device`` is concerned (its rollout's scope, else the release's)."""
    latest = next((r for r in reversed(history.for_device(device)) if r.release_tag == tag), None)
    if latest is not None and latest.detail.get("rollout_id") is not None:
        return ReleaseState(latest.to_state)
    return current_state(history, tag)


# -- the rollout's own machine -----------------------------------------------------------------
class RolloutState(StrEnum):
    PLANNED = "rollout_planned"
    RUNNING = "rollout_running"
    WAITING = "rollout_waiting"  # a pause between waves, or a wave waiting for a human's approval
    HALTING = "rollout_halting"  # abort criteria tripped: touched devices going back to their own last-known-good
    HALTED = "rollout_halted"
    COMPLETED = "rollout_completed"


class RolloutEvent(StrEnum):
    PLANNED = "rollout_planned"
    START = "rollout_start"
    WAVE_DONE = "rollout_wave_done"
    WAIT = "rollout_wait"
    APPROVE = "rollout_approve"
    CONTINUE = "rollout_continue"
    ABORT = "rollout_abort"
    HALTED = "rollout_halted"
    COMPLETE = "rollout_complete"


R, RE = RolloutState, RolloutEvent
ROLLOUT_TRANSITIONS: dict[tuple[RolloutState, RolloutEvent], RolloutState] = {
    (R.PLANNED, RE.START): R.RUNNING,
    (R.RUNNING, RE.WAVE_DONE): R.RUNNING,
    (R.RUNNING, RE.WAIT): R.WAITING,
    (R.RUNNING, RE.APPROVE): R.RUNNING,  # approved ahead of reaching the wave
    (R.WAITING, RE.APPROVE): R.WAITING,  # recorded; the run continues with CONTINUE
    (R.WAITING, RE.CONTINUE): R.RUNNING,
    (R.RUNNING, RE.ABORT): R.HALTING,
    (R.WAITING, RE.ABORT): R.HALTING,
    (R.HALTING, RE.HALTED): R.HALTED,
    (R.RUNNING, RE.COMPLETE): R.COMPLETED,
}
ROLLOUT_TERMINAL = frozenset({R.HALTED, R.COMPLETED})


def rollout_state(history: History, rollout_id: str) -> RolloutState | None:
    own = [r for r in history.rollout_records(rollout_id) if r.device is None]
    return RolloutState(own[-1].to_state) if own else None


def advance_rollout(
    history: History, rollout_id: str, tag: str, event: RolloutEvent, *, actor: str, reason: str = "",
    detail: dict[str, Any] | None = None, key: str | None = None,
) -> HistoryRecord:
    """Apply ``event`` to the rollout through its table and record it; ``key`` (default: the event)
    makes the record once-only, so a resumed run never records a wave twice."""
    idempotency_key = f"{rollout_id}:{key or RolloutEvent(event).value}"
    own = [r for r in history.rollout_records(rollout_id) if r.device is None]
    for record in own:
        if record.idempotency_key == idempotency_key:
            return record
    if event is RolloutEvent.PLANNED:
        if own:
            raise TransitionError(f"rollout {rollout_id} already exists")
        current, new_state = None, RolloutState.PLANNED
    else:
        if not own:
            raise TransitionError(f"rollout {rollout_id} has no history: it was never planned")
        current = RolloutState(own[-1].to_state)
        try:
            new_state = ROLLOUT_TRANSITIONS[(current, RolloutEvent(event))]
        except KeyError:
            allowed = sorted(e.value for (st, e) in ROLLOUT_TRANSITIONS if st == current)
            raise TransitionError(f"rollout {rollout_id} in state {current.value} cannot take {event!s}; "
                                  f"allowed: {', '.join(allowed) or 'none'}") from None
    return history.append(
        release_tag=tag, device=None, event=RolloutEvent(event).value, from_state=current.value if current else None,
        to_state=new_state.value, actor=actor, reason=reason, detail={**(detail or {}), "rollout_id": rollout_id},
        idempotency_key=idempotency_key,
    )
