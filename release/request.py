"""What a run is asked to do: the typed form of the DAGs' params and the CLI's flags.

The Airflow DAGs validate params with JSON schema before anything runs (a bad trigger is a 400
from the API); these models validate the same values again on the worker, with the library's own
grammars, because a params schema is no substitute for the tag grammar that guards paths, image
references and remote commands. Both come from here: the DAG params and the committed
``release/data/*-request.schema.json`` are generated from these models (release.schemas), whose
field types carry the grammars of release.identifiers and the gate bounds of release.gate_settings.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from release.errors import InvalidInput
from release.gate_settings import GateOverrides
from release.identifiers import ROLLBACK_PREVIOUS, SAMPLE_MODEL
from release.validated import (
    ConfigVersionStr,
    ContinuityIdStr,
    DeviceStr,
    OnnxLocationStr,
    RollbackTargetStr,
    TagStr,
)

__all__ = ["SAMPLE_MODEL", "HeldDecisionRequest", "ReleaseRequest", "RollbackRequest"]

REASON_MAX_LEN = 500




class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    what: ClassVar[str] = "request"

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Self:
        """Validate ``raw``; any problem is one InvalidInput naming every bad field."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()]
            raise InvalidInput(f"invalid {cls.what}: " + "; ".join(problems)) from None


class ReleaseRequest(_Request):
    """A canary release: the hailo_canary_release DAG's params, `hailo-release run`'s flags."""

    what: ClassVar[str] = "release request"

    continuity_id: ContinuityIdStr = Field(description="e.g. ADR-0007-hailo-docker-2025-08-31")
    release_tag: TagStr = Field(description="release tag: [A-Za-z0-9][A-Za-z0-9_.-]*, no '..'; also the OCI tag")
    onnx_location: OnnxLocationStr = Field(
        SAMPLE_MODEL, description="'sample' (the built-in TCN encoder), an absolute .onnx path, or gs://BUCKET/PATH.onnx"
    )
    config_version: ConfigVersionStr
    device: DeviceStr = Field("local", description="target device from the device inventory")
    gate_overrides: GateOverrides = Field(
        default_factory=dict, description="tighten gate limits: p95_ms <= 50, min_windows_per_s >= 20, ..."
    )
    production: bool = Field(False, description="production target: refuse placeholders")
    triggered_by: str = Field("unknown", max_length=200)


class RollbackRequest(_Request):
    """An on-call rollback: the hailo_rollback DAG's params, `hailo-release rollback`'s flags."""

    what: ClassVar[str] = "rollback request"

    device: DeviceStr = "local"
    to: RollbackTargetStr = Field(
        ROLLBACK_PREVIOUS,
        description="release tag to roll back to, or 'previous' (the committed release before the device's "
                    "last-known-good, from the store's history)",
    )
    reason: str = Field("on-call rollback", max_length=REASON_MAX_LEN)


class HeldDecisionRequest(_Request):
    """A release manager's answer to a held canary: the hailo_release_decision DAG's params."""

    what: ClassVar[str] = "decision request"

    device: DeviceStr = "local"
    release_tag: TagStr = Field(description="the held release tag")
    decision: Literal["approve", "reject"] = Field(
        description="approve promotes the held canary; reject rolls the device back"
    )
    reason: str = Field(
        min_length=1, max_length=REASON_MAX_LEN, description="recorded in the history and the decision manifest"
    )
