"""Typed results of the pipeline's steps, stored beside the artifacts as ``steps/<name>.json``.

Every step reads what it needs from the artifact store (never from another worker's disk), so
build tasks on the ``hailo-builder`` queue and deploy tasks on the ``edge`` queue can run on
different hosts. XCom carries only the small summaries.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from release.errors import ArtifactNotFound, ManifestError
from release.manifest import GateRecord, HefArtifact, OnnxArtifact, RuntimeImage, SignatureRef, StepRecord
from release.store import ArtifactStore


class StepResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    step: StepRecord


class ValidateResult(StepResult):
    onnx: OnnxArtifact
    onnx_name: str
    report_name: str
    reference_name: str | None


class CompileResult(StepResult):
    hef: HefArtifact
    hef_name: str
    sums_name: str


class ImageResult(StepResult):
    image: RuntimeImage


class SignResult(StepResult):
    signatures: tuple[SignatureRef, ...]


class ManifestResult(StepResult):
    manifest_name: str
    signature_name: str | None
    manifest_sha256: str
    release_counter: int


class DeployResult(StepResult):
    device: str
    healthy: bool
    active_tag: str | None
    detail: str


class GateResult(StepResult):
    gate: GateRecord


class FinalResult(StepResult):
    state: str
    manifest_uri: str


R = TypeVar("R", bound=StepResult)


def step_name(step: str) -> str:
    return f"steps/{step}.json"


def save_result(store: ArtifactStore, tag: str, result: StepResult) -> None:
    store.put_bytes(tag, step_name(result.step.name), result.model_dump_json(indent=2).encode())


def load_result(store: ArtifactStore, tag: str, step: str, kind: type[R]) -> R:
    try:
        raw = store.get_bytes(tag, step_name(step))
    except ArtifactNotFound:
        raise ArtifactNotFound(f"release {tag}: step {step!r} has not run (no {step_name(step)} in the store)") from None
    try:
        return kind.model_validate_json(raw)
    except ValueError as exc:
        raise ManifestError(f"release {tag}: step record {step_name(step)} is invalid: {exc}") from None
