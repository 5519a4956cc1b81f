"""Release states and the one transition table every state change goes through."""

from __future__ import annotations

from enum import StrEnum

from release.errors import TransitionError


class ReleaseState(StrEnum):
    DRAFT = "draft"
    VALIDATED = "validated"
    COMPILED = "compiled"
    IMAGE_PUBLISHED = "image_published"
    SIGNED = "signed"
    MANIFEST_WRITTEN = "manifest_written"
    CANARY_DEPLOYED = "canary_deployed"
    GATE_PASSED = "gate_passed"
    HELD = "held"  # gate inconclusive: waits for a human, never a silent pass
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class ReleaseEvent(StrEnum):
    VALIDATED = "validated"
    COMPILED = "compiled"
    IMAGE_PUBLISHED = "image_published"
    SIGNED = "signed"
    MANIFEST_WRITTEN = "manifest_written"
    DEPLOYED = "deployed"
    GATE_PASS = "gate_pass"  # noqa: S105 - an event name, not a password
    GATE_FAIL = "gate_fail"
    GATE_INCONCLUSIVE = "gate_inconclusive"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    APPROVE = "approve"  # a human accepts a held release
    STEP_FAILED = "step_failed"


S, E = ReleaseState, ReleaseEvent

TRANSITIONS: dict[tuple[ReleaseState, ReleaseEvent], ReleaseState] = {
    (S.DRAFT, E.VALIDATED): S.VALIDATED,
    (S.VALIDATED, E.COMPILED): S.COMPILED,
    (S.COMPILED, E.IMAGE_PUBLISHED): S.IMAGE_PUBLISHED,
    (S.IMAGE_PUBLISHED, E.SIGNED): S.SIGNED,
    (S.SIGNED, E.MANIFEST_WRITTEN): S.MANIFEST_WRITTEN,
    (S.MANIFEST_WRITTEN, E.DEPLOYED): S.CANARY_DEPLOYED,
    (S.CANARY_DEPLOYED, E.GATE_PASS): S.GATE_PASSED,
    (S.CANARY_DEPLOYED, E.GATE_FAIL): S.ROLLED_BACK,
    (S.CANARY_DEPLOYED, E.GATE_INCONCLUSIVE): S.HELD,
    # A deploy that does not come up healthy is rolled back by the device agent itself.
    (S.CANARY_DEPLOYED, E.ROLLBACK): S.ROLLED_BACK,
    (S.MANIFEST_WRITTEN, E.ROLLBACK): S.ROLLED_BACK,
    (S.GATE_PASSED, E.PROMOTE): S.PROMOTED,
    (S.GATE_PASSED, E.ROLLBACK): S.ROLLED_BACK,
    (S.HELD, E.APPROVE): S.PROMOTED,
    (S.HELD, E.ROLLBACK): S.ROLLED_BACK,
    # On-call may roll back a promoted release later.
    (S.PROMOTED, E.ROLLBACK): S.ROLLED_BACK,
}

TERMINAL: frozenset[ReleaseState] = frozenset({S.PROMOTED, S.ROLLED_BACK, S.FAILED})

# Any step before the canary is live may fail outright; after that, failure means rollback.
for _state in (S.DRAFT, S.VALIDATED, S.COMPILED, S.IMAGE_PUBLISHED, S.SIGNED, S.MANIFEST_WRITTEN):
    TRANSITIONS[(_state, E.STEP_FAILED)] = S.FAILED
for _state in (S.CANARY_DEPLOYED, S.GATE_PASSED, S.HELD):
    TRANSITIONS[(_state, E.STEP_FAILED)] = S.ROLLED_BACK


def transition(current: ReleaseState, event: ReleaseEvent) -> ReleaseState:
    """The state after ``event`` in ``current``; raises TransitionError if the table forbids it."""
    try:
        return TRANSITIONS[(ReleaseState(current), ReleaseEvent(event))]
    except (KeyError, ValueError):
        allowed = sorted(e.value for (s, e) in TRANSITIONS if s == current)
        raise TransitionError(
            f"release in state {current!s} cannot take event {event!s}; allowed: {', '.join(allowed) or 'none'}"
        ) from None
