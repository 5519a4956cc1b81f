import pytest

from release.errors import TransitionError
from release.states import TERMINAL, TRANSITIONS, ReleaseEvent, ReleaseState, transition

S, E = ReleaseState, ReleaseEvent


def test_happy_path_to_promoted():
    state = S.DRAFT
    for event in (E.VALIDATED, E.COMPILED, E.IMAGE_PUBLISHED, E.SIGNED, E.MANIFEST_WRITTEN, E.DEPLOYED,
                  E.GATE_PASS, E.PROMOTE):
        state = transition(state, event)
    assert state is S.PROMOTED


def test_gate_outcomes():
    assert transition(S.CANARY_DEPLOYED, E.GATE_FAIL) is S.ROLLED_BACK
    assert transition(S.CANARY_DEPLOYED, E.GATE_INCONCLUSIVE) is S.HELD
    assert transition(S.HELD, E.APPROVE) is S.PROMOTED


def test_inconclusive_never_promotes_silently():
    with pytest.raises(TransitionError):
        transition(S.HELD, E.PROMOTE)


def test_failure_after_deploy_means_rollback():
    assert transition(S.COMPILED, E.STEP_FAILED) is S.FAILED
    assert transition(S.CANARY_DEPLOYED, E.STEP_FAILED) is S.ROLLED_BACK


def test_illegal_transition_lists_allowed():
    with pytest.raises(TransitionError, match="allowed: .*compiled"):
        transition(S.VALIDATED, E.PROMOTE)


def test_terminal_states_have_no_exit_but_rollback_of_promoted():
    for (state, event), _ in TRANSITIONS.items():
        if state in TERMINAL:
            assert (state, event) == (S.PROMOTED, E.ROLLBACK)
