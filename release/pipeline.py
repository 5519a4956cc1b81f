"""The canary release as a sequence of steps over the artifact store.

Each step reads its inputs from the store (``steps/<name>.json`` and the artifacts beside them),
does one job through the library module that owns it, writes its result back, and returns a
small JSON summary (what Airflow keeps as XCom). The Airflow DAG and the CLI both drive these.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from release.errors import InvalidInput, ReleaseError
from release.pipeline_env import PipelineEnv
from release.request import ReleaseRequest
from release.store import ArtifactStore

StepFn = Callable[..., dict[str, Any]]


def git_commit(repo: Path | None = None) -> str:
    """The checkout's commit, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out if len(out) == 40 else "unknown"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _steps() -> dict[str, StepFn]:
    # Imported lazily: each step module pulls in its own heavy dependencies (onnx, docker, ...).
    import release.pipeline_steps as s

    return {
        "validate": s.validate,
        "compile": s.compile_hef,
        "image": s.build_image,
        "sign": s.sign,
        "manifest": s.write_manifest,
        "deploy": s.deploy,
        "gate": s.gate,
        "promote": s.promote,
        "rollback": s.rollback,
        "hold": s.hold,
        "report": s.report,
    }


STEP_ORDER = ("validate", "compile", "image", "sign", "manifest", "deploy", "gate")


def run_step(name: str, req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, **kwargs: Any) -> dict[str, Any]:
    steps = _steps()
    if name not in steps:
        raise InvalidInput(f"unknown pipeline step {name!r}; known: {', '.join(steps)}")
    return steps[name](req, env, store, **kwargs)


def record_failure(env: PipelineEnv, params: dict[str, Any], *, task_id: str, run_id: str, reason: str) -> None:
    import release.pipeline_steps as pipeline_steps

    pipeline_steps.record_failure(env, params, task_id=task_id, run_id=run_id, reason=reason)


def run_all(
    req: ReleaseRequest,
    env: PipelineEnv,
    store: ArtifactStore,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The whole release without Airflow (CLI `hailo-release run`): same steps, same order."""
    summaries: dict[str, Any] = {}
    for name in STEP_ORDER:
        say(f"→ {name}")
        try:
            summaries[name] = run_step(name, req, env, store)
        except ReleaseError as exc:
            record_failure(env, req.model_dump(mode="json"), task_id=name, run_id=req.triggered_by, reason=str(exc))
            raise
    verdict = summaries["gate"].get("verdict")
    outcome = {"pass": "promote", "fail": "rollback"}.get(str(verdict), "hold")
    say(f"→ {outcome} (gate verdict: {verdict})")
    summaries[outcome] = run_step(outcome, req, env, store)
    summaries["report"] = run_step("report", req, env, store)
    return summaries


def rollback_device(env: PipelineEnv, store: ArtifactStore, **kwargs: Any) -> dict[str, Any]:
    """On-call rollback of a device to a tag or 'previous' (see pipeline_steps.rollback_device)."""
    import release.pipeline_steps as pipeline_steps

    return pipeline_steps.rollback_device(env, store, **kwargs)


def decide_held(env: PipelineEnv, store: ArtifactStore, **kwargs: Any) -> dict[str, Any]:
    """A human approves or rejects a held release (see pipeline_steps.decide_held)."""
    import release.pipeline_steps as pipeline_steps

    return pipeline_steps.decide_held(env, store, **kwargs)


def attest_release(env: PipelineEnv, store: ArtifactStore, **kwargs: Any) -> dict[str, Any]:
    """Countersign a published release (see pipeline_steps.attest_release)."""
    import release.pipeline_steps as pipeline_steps

    return pipeline_steps.attest_release(env, store, **kwargs)
