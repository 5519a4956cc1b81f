"""A held release (inconclusive gate) waits for a human: `decide approve` promotes it, `decide reject`
rolls the device back. Real pipeline steps, a real device agent and real sidecar processes; the held
canary is a sidecar double that serves correct outputs but has no /metrics, so the gate cannot
cross-check its client timings and must not pass it silently."""

from __future__ import annotations

import json
import urllib.request

import pytest
import yaml

from release.errors import InvalidInput, TransitionError
from release.history import History
from release.manifest import ReleaseManifest
from release.operations import decide_held, status
from release.pipeline import run_all
from release.pipeline_env import PipelineEnv
from release.store import MANIFEST_NAME
from tests.fixtures.testbed import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def held_bed(testbed):
    port = free_port()
    spec = testbed.device("pi-held", "local", port, module="tests.doubles.faulty_sidecars nometrics held-*")
    # The double strips /metrics only for releases tagged held-*; v1 is served normally.
    devices = {"devices": {"pi-held": spec.model_dump(mode="json", exclude_none=True, exclude={"name"})}}
    (testbed.root / "devices.yaml").write_text(yaml.safe_dump(devices))
    testbed.env = PipelineEnv(**{**testbed.env.model_dump(), "devices_file": testbed.root / "devices.yaml"})
    return testbed, spec


def _release(bed, tag: str):
    req = bed.request(tag, config_version=f"cfg-{tag}", device="pi-held", gate_overrides={"duration_s": 5})
    return run_all(req, bed.env, bed.store, say=lambda _msg: None)


def _gate(outcome) -> dict:
    return outcome.results["gate"].gate.model_dump()


def _health(spec) -> dict:
    with urllib.request.urlopen(f"{spec.gate_url}/healthz", timeout=3) as r:
        return json.loads(r.read())


def _manifest(bed, tag: str) -> ReleaseManifest:
    return ReleaseManifest.from_json(bed.store.get_bytes(tag, MANIFEST_NAME))


def test_held_release_rejected_then_another_approved(held_bed):
    bed, spec = held_bed
    first = _release(bed, "v1")
    assert first.state.value == "promoted" and first.exit_code == 0, _gate(first)

    held = _release(bed, "held-1")
    assert _gate(held)["verdict"] == "inconclusive"
    assert any("server-side histogram" in r for r in _gate(held)["reasons"])
    assert held.state.value == "held" and held.exit_code == 11
    assert _health(spec)["config_version"] == "cfg-held-1"  # the held canary keeps serving
    device = status(bed.env, bed.store, "pi-held")
    assert device.agrees, device.disagreements
    # Its lease now runs to the hold window: a human has a day, not the gate's margin.
    assert device.device_view["lease"]["lease_s"] == 86400

    with pytest.raises(InvalidInput, match="needs a reason"):
        decide_held(bed.env, bed.store, device="pi-held", tag="held-1", decision="reject", reason=" ", decided_by="t")
    with pytest.raises(InvalidInput, match="tag"):
        decide_held(bed.env, bed.store, device="pi-held", tag="held-1;reboot", decision="reject", reason="x",
                    decided_by="t")
    with pytest.raises(TransitionError, match="promoted cannot take event approve"):
        decide_held(bed.env, bed.store, device="pi-held", tag="v1", decision="approve", reason="x", decided_by="t")

    rejected = decide_held(bed.env, bed.store, device="pi-held", tag="held-1", decision="reject",
                           reason="no metrics, cannot trust the latency numbers", decided_by="pytest:rm")
    assert rejected["state"] == "rolled_back"
    assert _health(spec)["config_version"] == "cfg-v1"
    entry_tag = rejected["decision_manifest"].rsplit("/", 2)[-2]
    entry = _manifest(bed, entry_tag)
    assert entry.kind == "decision" and entry.points_to_release_tag == "held-1" and entry.state.value == "rolled_back"
    assert entry.release_counter > _manifest(bed, "held-1").release_counter
    assert _manifest(bed, "held-1").state.value == "held"  # published manifests are never rewritten
    with pytest.raises(TransitionError, match="rolled_back cannot take event approve"):
        decide_held(bed.env, bed.store, device="pi-held", tag="held-1", decision="approve", reason="x", decided_by="t")

    _release(bed, "held-2")
    approved = decide_held(bed.env, bed.store, device="pi-held", tag="held-2", decision="approve",
                           reason="metrics exporter known broken, latency checked by hand", decided_by="pytest:rm")
    assert approved["state"] == "promoted"
    assert _health(spec)["config_version"] == "cfg-held-2"

    history = History(bed.store)
    ledger = [(r.release_tag, r.event, r.to_state) for r in history.for_device("pi-held")]
    assert ("held-1", "rollback", "rolled_back") in ledger and ledger[-1] == ("held-2", "approve", "promoted")
    rejected_record = next(r for r in history.for_tag("held-1") if r.event == "rollback")
    assert rejected_record.detail["restored"] == "v1"
    # The approved release is now last-known-good: the next candidate's baseline points at it.
    assert history.last_known_good("pi-held")[0] == "held-2"
    assert status(bed.env, bed.store, "pi-held").agrees


def test_decision_refused_when_device_moved_on(held_bed):
    bed, _spec = held_bed
    _release(bed, "v1")
    _release(bed, "held-1")
    # On-call rolled the device back before the release manager answered.
    from release.operations import rollback_device

    rollback_device(bed.env, bed.store, device="pi-held", to="v1", reason="on-call", triggered_by="t")
    assert History(bed.store).state_of("held-1") == "rolled_back"
    with pytest.raises(TransitionError, match="rolled_back cannot take event approve"):
        decide_held(bed.env, bed.store, device="pi-held", tag="held-1", decision="approve", reason="ok", decided_by="t")
    assert status(bed.env, bed.store, "pi-held").agrees
