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
    own = history.for_tag(tag)
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
