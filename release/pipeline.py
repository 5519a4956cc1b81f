"""The whole canary release without Airflow (`hailo-release run`): the same steps as the DAG, in the
same order, with the same fail-safe: whatever fails after the canary may be on the device is undone
there before the error is reported, and the outcome maps to the CLI's exit codes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from release import build_steps, canary
from release.errors import ReleaseError, StepFailed
from release.history import History
from release.pipeline_env import PipelineEnv
from release.request import ReleaseRequest
from release.states import ReleaseState, current_state
from release.step_results import FinalResult, StepResult
from release.store import ArtifactStore

BUILD_STEPS: tuple[tuple[str, Callable[..., StepResult]], ...] = (
    ("validate", build_steps.validate),
    ("compile", build_steps.compile_hef),
    ("image", build_steps.build_image),
    ("sign", build_steps.sign),
    ("manifest", build_steps.write_manifest),
)
CANARY_STEPS: tuple[tuple[str, Callable[..., StepResult]], ...] = (("deploy", canary.deploy), ("gate", canary.gate))
OUTCOMES: dict[str, Callable[..., FinalResult]] = {
    "promote": canary.promote, "rollback": canary.rollback, "hold": canary.hold,
}


class ReleaseFailed(StepFailed):
    """A step failed; the device (if touched) is back on last-known-good and the failure is recorded."""


@dataclass(frozen=True)
class RunOutcome:
    state: ReleaseState
    results: dict[str, StepResult]

    @property
    def exit_code(self) -> int:
        return canary.EXIT_CODES.get(self.state, 1)


def run_all(
    req: ReleaseRequest,
    env: PipelineEnv,
    store: ArtifactStore,
    say: Callable[[str], None] = print,
    ssh_client_factory: Callable[[], Any] | None = None,
) -> RunOutcome:
    results: dict[str, StepResult] = {}
    device_kwargs: dict[str, Any] = {"ssh_client_factory": ssh_client_factory}
    steps = [*BUILD_STEPS, *CANARY_STEPS]
    name = "validate"
    try:
        for name, step in steps:
            say(f"→ {name}")
            results[name] = step(req, env, store, **(device_kwargs if name in ("deploy", "gate") else {}))
        name = canary.outcome_for(current_state(History(store), req.release_tag))
        say(f"→ {name}")
        results[name] = OUTCOMES[name](req, env, store, **device_kwargs)
    except BaseException as exc:
        say(f"✗ {name} failed ({type(exc).__name__}: {exc}); making the device safe")
        final = canary.fail_safe(req, env, store, step=name, error=exc, ssh_client_factory=ssh_client_factory)
        if final is not None:
            results["fail_safe"] = final
            say(f"→ recorded as {final.state}: {final.manifest_uri}")
        if isinstance(exc, ReleaseError | KeyboardInterrupt | SystemExit):
            raise
        raise ReleaseFailed(f"{name} failed: {type(exc).__name__}: {exc}") from exc
    state = current_state(History(store), req.release_tag) or ReleaseState.FAILED
    return RunOutcome(state, results)


def report(req: ReleaseRequest, store: ArtifactStore) -> dict[str, Any]:
    """What a person wants to read after a run: verdict, figures, where things are, how each step ran."""
    from release.manifest import ReleaseManifest
    from release.store import MANIFEST_NAME

    manifest = ReleaseManifest.from_json(store.get_bytes(req.release_tag, MANIFEST_NAME))
    return {
        "release_tag": manifest.release_tag, "release_counter": manifest.release_counter, "state": manifest.state.value,
        "verdict": manifest.gate.verdict, "reasons": list(manifest.gate.reasons),
        "p95_ms": manifest.gate.measured.get("p95_ms"), "windows_per_s": manifest.gate.measured.get("windows_per_s"),
        "lease_s": manifest.lease_s, "hef_sha256": manifest.hef.hef_sha256, "config_version": manifest.config_version,
        "image_digest": manifest.image.digest, "manifest_uri": store.uri(req.release_tag, MANIFEST_NAME),
        "gate_report_uri": manifest.gate.report_uri, "gate_histogram_uri": manifest.gate.histogram_uri,
        "steps": {s.name: f"{s.status}: {s.reason}" for s in manifest.steps},
    }
