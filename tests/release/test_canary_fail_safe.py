"""release.canary.fail_safe where the `local` device is not: a failure handled in another process on
another host (Airflow runs a heartbeat-timeout callback on the dag-processor) says so, instead of
"the device could not be reached", and records nothing it cannot know."""

from __future__ import annotations

import pytest

from release.canary import fail_safe
from release.errors import StepFailed
from release.history import History
from release.states import ReleaseEvent, advance, create, current_state


def test_a_local_device_without_its_agent_here_is_named_not_called_unreachable(testbed):
    history = History(testbed.store)
    tag = "v1"
    create(history, tag, device="local", actor="pytest")
    for event in (ReleaseEvent.VALIDATED, ReleaseEvent.COMPILED, ReleaseEvent.IMAGE_PUBLISHED, ReleaseEvent.SIGNED,
                  ReleaseEvent.MANIFEST_WRITTEN, ReleaseEvent.DEPLOYED):
        advance(history, tag, event, actor="pytest")
    before = current_state(history, tag)
    with pytest.raises(StepFailed, match="no agent of the `local` device local at .* on this host") as info:
        fail_safe(testbed.request(tag), testbed.env, testbed.store, step="latency_gate", error=RuntimeError("killed"))
    assert "dag-processor" in str(info.value) and "reconcile --device local" in str(info.value)
    assert current_state(History(testbed.store), tag) is before  # nothing recorded that this host cannot know
