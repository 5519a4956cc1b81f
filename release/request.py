"""What a release run is asked to do: the typed form of the DAG's params / the CLI's flags.

The Airflow DAG validates params with JSON schema before anything runs (a bad trigger is a
400 from the API); this model validates the same values again on the worker, with the
library's own grammars, because a params schema is no substitute for the tag grammar that
guards paths, image references and remote commands.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from release.errors import InvalidInput
from release.identifiers import CONTINUITY_BODY, CONTINUITY_ID_MAX_LEN, DEVICE_BODY, TAG_BODY, json_schema_pattern
from release.validated import ContinuityIdStr, DeviceStr, TagStr

# Gate overrides a trigger may set, with the bounds that keep them safe: limits may only be
# tightened relative to the product targets (p95 < 50 ms, >= 20 windows/s).
GATE_OVERRIDE_BOUNDS: dict[str, tuple[float, float]] = {
    "p95_ms": (1.0, 50.0),
    "min_windows_per_s": (20.0, 1000.0),
    "max_error_rate": (0.0, 0.05),
    "duration_s": (5.0, 600.0),
    "rate_windows_per_s": (1.0, 1000.0),
    "lease_margin_s": (5.0, 3600.0),
    "hold_lease_s": (60.0, 7 * 86400.0),
}
SAMPLE_MODEL = "sample"
_ONNX_LOCATION = re.compile(r"^(sample|gs://[a-z0-9][a-z0-9._-]{1,220}/[A-Za-z0-9_./-]+\.onnx|/[A-Za-z0-9_./-]+\.onnx)$")


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    continuity_id: ContinuityIdStr
    release_tag: TagStr
    onnx_location: str = SAMPLE_MODEL
    config_version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    device: DeviceStr = "local"
    gate_overrides: dict[str, float] = Field(default_factory=dict)
    production: bool = False
    triggered_by: str = Field("unknown", max_length=200)

    @field_validator("onnx_location")
    @classmethod
    def _onnx(cls, v: str) -> str:
        if not _ONNX_LOCATION.fullmatch(v) or ".." in v:
            raise ValueError(
                "must be 'sample', an absolute path to a .onnx file, or gs://BUCKET/PATH.onnx "
                "(no '..', no spaces or shell metacharacters)"
            )
        return v

    @field_validator("gate_overrides")
    @classmethod
    def _gate(cls, v: dict[str, float]) -> dict[str, float]:
        for key, value in v.items():
            if key not in GATE_OVERRIDE_BOUNDS:
                raise ValueError(f"unknown gate override {key!r}; allowed: {sorted(GATE_OVERRIDE_BOUNDS)}")
            lo, hi = GATE_OVERRIDE_BOUNDS[key]
            if not lo <= float(value) <= hi:
                raise ValueError(f"gate override {key}={value} is outside the safe range [{lo}, {hi}]")
        return v

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> ReleaseRequest:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()]
            raise InvalidInput("invalid release request: " + "; ".join(problems)) from None


def params_json_schema() -> dict[str, Any]:
    """JSON-schema fragments for the DAG's Params, derived from the same grammars.

    Every pattern has \\A…\\z semantics (see identifiers.json_schema_pattern): Airflow validates
    Params with `jsonschema`, whose `^…$` would otherwise accept a trailing newline.
    """
    return {
        "continuity_id": {
            "type": "string",
            "pattern": json_schema_pattern(CONTINUITY_BODY),
            "maxLength": CONTINUITY_ID_MAX_LEN,
            "description": "e.g. ADR-0007-hailo-docker-2025-08-31",
        },
        "release_tag": {
            "type": "string",
            "pattern": json_schema_pattern(TAG_BODY),
            "not": {"pattern": r"\.\."},
        },
        "onnx_location": {"type": "string", "pattern": json_schema_pattern(_ONNX_LOCATION.pattern[1:-1])},
        "config_version": {"type": "string", "pattern": json_schema_pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")},
        "device": {"type": "string", "pattern": json_schema_pattern(DEVICE_BODY)},
        "gate_overrides": {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: {"type": "number", "minimum": lo, "maximum": hi} for k, (lo, hi) in GATE_OVERRIDE_BOUNDS.items()},
        },
    }
