"""The transition table and advance(): the main path is one the table allows, every state is reachable,
and every change lands in the store's history."""

import pytest

from release.errors import TransitionError
from release.history import History
from release.states import (
    ON_DEVICE,
    TERMINAL,
    TRANSITIONS,
    ReleaseEvent,
    ReleaseState,
    advance,
    create,
    current_state,
    transition,
)
from release.store import LocalArtifactStore

S, E = ReleaseState, ReleaseEvent
MAIN_PATH = (E.VALIDATED, E.COMPILED, E.IMAGE_PUBLISHED, E.SIGNED, E.MANIFEST_WRITTEN, E.DEPLOYED, E.GATE_PASS, E.PROMOTE)


def test_happy_path_to_promoted():
    state = S.DRAFT
    for event in MAIN_PATH:
        state = transition(state, event)
    assert state is S.PROMOTED


def test_gate_outcomes():
    assert transition(S.CANARY_DEPLOYED, E.GATE_FAIL) is S.GATE_FAILED
    assert transition(S.GATE_FAILED, E.ROLLBACK) is S.ROLLED_BACK
    assert transition(S.CANARY_DEPLOYED, E.GATE_INCONCLUSIVE) is S.HELD
    assert transition(S.HELD, E.APPROVE) is S.PROMOTED


def test_a_failed_gate_can_never_be_promoted():
    for event in (E.PROMOTE, E.APPROVE):
        with pytest.raises(TransitionError):
            transition(S.GATE_FAILED, event)


def test_every_state_on_the_device_can_be_undone_and_fails_only_into_failed():
    for state in ON_DEVICE:
        assert transition(state, E.ROLLBACK) is S.ROLLED_BACK
        assert transition(state, E.LEASE_EXPIRED) is S.ROLLED_BACK
        assert transition(state, E.STEP_FAILED) is S.FAILED
    assert transition(S.COMPILED, E.STEP_FAILED) is S.FAILED


def test_every_state_is_reachable_from_draft():
    reached, frontier = {S.DRAFT}, [S.DRAFT]
    while frontier:
        state = frontier.pop()
        for (src, _event), dst in TRANSITIONS.items():
            if src is state and dst not in reached:
                reached.add(dst)
                frontier.append(dst)
    assert reached == set(ReleaseState)


def test_illegal_transition_lists_allowed():
    with pytest.raises(TransitionError, match="allowed: .*compiled"):
        transition(S.VALIDATED, E.PROMOTE)


def test_terminal_states_have_no_exit_but_rollback_of_promoted():
    for (state, event), _ in TRANSITIONS.items():
        if state in TERMINAL:
            assert (state, event) == (S.PROMOTED, E.ROLLBACK)


def test_advance_records_every_step_and_refuses_the_forbidden(tmp_path):
    history = History(LocalArtifactStore(tmp_path))
    first = create(history, "v1", device="pi-1", actor="t")
    assert first.release_counter == 1 and first.to_state == "draft"
    for event in MAIN_PATH[:-2]:
        advance(history, "v1", event, actor="t")
    with pytest.raises(TransitionError, match="canary_deployed cannot take event promote"):
        advance(history, "v1", E.PROMOTE, actor="t")
    advance(history, "v1", E.GATE_PASS, actor="t")
    advance(history, "v1", E.GATE_PASS, actor="t")  # an Airflow retry of the same step: recorded once
    advance(history, "v1", E.PROMOTE, actor="t", detail={"hef_sha256": "a" * 64})
    records = History(LocalArtifactStore(tmp_path)).for_tag("v1")  # a second reader, as another host
    assert [r.to_state for r in records] == ["draft", *[transition_state.value for transition_state in (
        S.VALIDATED, S.COMPILED, S.IMAGE_PUBLISHED, S.SIGNED, S.MANIFEST_WRITTEN, S.CANARY_DEPLOYED, S.GATE_PASSED,
        S.PROMOTED)]]
    assert current_state(history, "v1") is S.PROMOTED
    assert history.last_known_good("pi-1") == ("v1", "a" * 64)


def test_advance_needs_a_created_release(tmp_path):
    with pytest.raises(TransitionError, match="never created"):
        advance(History(LocalArtifactStore(tmp_path)), "v9", E.VALIDATED, actor="t")
