"""The release manifest: one signed JSON document per release tag.

Fields follow ``shared/contract.md``. Serialisation is RFC 8785 (JSON Canonicalization
Scheme, via the ``rfc8785`` package) so the bytes that get signed are stable across
Python versions and key orders. Loading checks the schema version before anything else,
then validates strictly (unknown fields are errors: a field we do not understand in a signed
document must not be silently dropped).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import rfc8785
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from release.errors import ManifestError
from release.identifiers import HwArch, anchor_schema_patterns
from release.states import ReleaseState
from release.validated import ChannelStr, ConfigVersionStr, ContinuityIdStr, DeviceStr, TagStr

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ImageDigest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
StepStatus = Literal["real", "double", "skipped", "placeholder", "failed"]
Verdict = Literal["pending", "pass", "fail", "inconclusive"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    name: str = Field(min_length=1)
    shape: tuple[int, ...]
    dtype: str = "float32"


class OnnxArtifact(_Frozen):
    uri: str = Field(min_length=1)
    sha256: Sha256Hex
    size: int = Field(ge=1)
    opset: int = Field(ge=1)
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)


class HefArtifact(_Frozen):
    uri: str = Field(min_length=1)
    hef_sha256: Sha256Hex
    size: int = Field(ge=1)
    hw_arch: HwArch
    dfc_version: str | None
    hailort_version: str | None
    calibration_sha256: Sha256Hex | None
    model_script_sha256: Sha256Hex | None
    real_compile: bool
    placeholder: bool
    compiler_image: str | None = Field(
        None, min_length=1,
        description="the compiler container image the DFC ran in: its registry digest (repo@sha256:...) or local "
        "image ID (sha256:...); null when the DFC ran on the host or no DFC ran (placeholder)",
    )

    @field_validator("placeholder")
    @classmethod
    def _placeholder_is_not_real(cls, v: bool, info: Any) -> bool:
        if v and info.data.get("real_compile"):
            raise ValueError("a HEF cannot be both a real compile and a placeholder")
        return v


class SignatureRef(_Frozen):
    kind: Literal["cosign-image", "cosign-keyless", "model-signing-bundle", "manifest-ecdsa"]
    ref: str = Field(min_length=1, description="where the signature lives (registry tag, file name, bundle URI)")
    key_id: str | None = Field(None, description="sha256 of the public key (key mode) or the signer identity (keyless)")


class RuntimeImage(_Frozen):
    repository: str = Field(min_length=1)
    digest: ImageDigest | None
    platform: Literal["linux/arm64", "linux/amd64"]
    signature: SignatureRef | None
    builder: str = Field(description="buildx | docker-build | none")
    pushed: bool
    hailort_version: str | None = Field(
        None, description="HailoRT (hailo_platform) installed in the image; None = onnx fallback only"
    )


class GateRecord(_Frozen):
    thresholds: dict[str, float]
    measured: dict[str, float | None] = Field(default_factory=dict)
    verdict: Verdict = "pending"
    reasons: tuple[str, ...] = ()
    report_uri: str | None = None
    histogram_uri: str | None = None
    # Optional, so manifests written before the gate had two modes still load (schema version 1).
    mode: Literal["device", "orchestrator"] | None = Field(
        None, description="where the gate's load was generated: 'device' (the device agent, against the sidecar "
        "EdgeInfer calls) or 'orchestrator' (across the network to gate_url); null when nothing was measured",
    )
    timings_include_network: bool | None = Field(
        None, description="whether the measured client timings include the network round trip between the "
        "orchestrator and the device (true only for the orchestrator mode); null when nothing was measured",
    )

    @model_validator(mode="after")
    def _network_follows_mode(self) -> GateRecord:
        expected = None if self.mode is None else self.mode == "orchestrator"
        if self.timings_include_network is not expected:
            raise ValueError(f"gate mode {self.mode!r} means timings_include_network={expected}")
        return self


class StepRecord(_Frozen):
    name: str = Field(min_length=1)
    status: StepStatus
    reason: str = ""
    duration_s: float | None = Field(None, ge=0)


class ReleaseManifest(_Frozen):
    schema_version: Literal[1] = 1
    release_tag: TagStr
    release_counter: int = Field(ge=1)
    channel: ChannelStr = "stable"
    device: DeviceStr | None = None
    continuity_id: ContinuityIdStr
    config_version: ConfigVersionStr
    git_commit: str = Field(pattern=r"^([0-9a-f]{40}|unknown)$")
    created_at: dt.datetime
    onnx: OnnxArtifact
    hef: HefArtifact
    image: RuntimeImage
    gate: GateRecord
    previous_release_tag: TagStr | None
    lease_s: float | None = Field(
        None, gt=0, description="seconds the canary may run uncommitted once healthy before the device restores "
        "its last-known-good by itself (gate duration + margin)",
    )
    state: ReleaseState = ReleaseState.MANIFEST_WRITTEN
    kind: Literal["release", "rollback", "decision"] = "release"
    points_to_release_tag: TagStr | None = Field(
        None,
        description="for a rollback entry: the earlier release whose artifacts it re-activates; "
        "for a decision entry: the held release a human approved or rejected",
    )
    signatures: tuple[SignatureRef, ...] = ()
    steps: tuple[StepRecord, ...] = ()

    @field_validator("created_at")
    @classmethod
    def _aware_utc(cls, v: dt.datetime) -> dt.datetime:
        if v.tzinfo is None:
            raise ValueError("created_at must carry a timezone")
        return v.astimezone(dt.UTC)

    def canonical_json(self) -> bytes:
        """RFC 8785 canonical bytes: what gets signed, hashed and stored."""
        return bytes(rfc8785.dumps(self.model_dump(mode="json")))

    @classmethod
    def from_json(cls, data: bytes | str) -> ReleaseManifest:
        try:
            raw = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: object) -> ReleaseManifest:
        if not isinstance(raw, dict):
            raise ManifestError(f"manifest must be a JSON object, got {type(raw).__name__}")
        version = raw.get("schema_version")
        if version is None:
            raise ManifestError("manifest has no schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise ManifestError(
                f"unknown manifest schema_version {version!r}; this build reads {sorted(SUPPORTED_SCHEMA_VERSIONS)}"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"]) or "<root>"
                problems.append(f"{loc}: {err['msg']}")
            raise ManifestError("invalid manifest: " + "; ".join(problems)) from None

    @classmethod
    def load(cls, path: Path) -> ReleaseManifest:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc.strerror}") from None
        return cls.from_json(data)

    def with_updates(self, **changes: Any) -> ReleaseManifest:
        """A validated copy with ``changes`` applied (frozen models are never mutated)."""
        return type(self).from_dict({**self.model_dump(), **changes})


def json_schema() -> dict[str, Any]:
    # Patterns with \A…\z semantics: a JSON-schema validator's `^…$` would accept a trailing newline.
    schema: dict[str, Any] = anchor_schema_patterns(ReleaseManifest.model_json_schema())
    return schema


def write_json_schema(path: Path) -> Path:
    path.write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
