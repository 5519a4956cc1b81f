"""Pydantic field types that run the grammars of `release.identifiers`, with their JSON schema.

One place for "this string field is a release tag / device name / continuity ID / config version
/ channel / ONNX location", so every model validates them the same way and every generated JSON
schema (manifest, request, DAG params: see release.schemas) carries the same pattern. No pattern
is written here: each comes from identifiers.py (which stays free of pydantic: the PR-title check
runs on a bare python3).

Identifier types keep their own checks (ReleaseTag etc. name the offending characters); their
JSON schema is given explicitly because a validator function has none. Plain pattern grammars use
StringConstraints (pydantic-core's Rust regex: ``$`` matches only at the very end, so a trailing
newline is refused) and get the same ``\\A…\\z`` pattern in the JSON schema.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, StringConstraints, WithJsonSchema

from release.identifiers import (
    CHANNEL_BODY,
    CONFIG_VERSION_BODY,
    CONTINUITY_BODY,
    CONTINUITY_ID_MAX_LEN,
    DEVICE_BODY,
    ONNX_LOCATION_BODY,
    ONNX_LOCATION_FORBIDDEN,
    RESERVED_TAGS,
    ROLLBACK_PREVIOUS,
    TAG_BODY,
    ContinuityId,
    DeviceName,
    ReleaseTag,
    json_schema_pattern,
)


def _string_schema(body: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "pattern": json_schema_pattern(body), **extra}


TAG_SCHEMA = _string_schema(TAG_BODY, **{"not": {"anyOf": [{"pattern": r"\.\."}, {"enum": sorted(RESERVED_TAGS)}]}})
DEVICE_SCHEMA = _string_schema(DEVICE_BODY)
CONTINUITY_ID_SCHEMA = _string_schema(CONTINUITY_BODY, maxLength=CONTINUITY_ID_MAX_LEN)


def _pattern_str(body: str, **extra: Any) -> Any:
    return Annotated[str, StringConstraints(pattern=f"^(?:{body})$"), WithJsonSchema(_string_schema(body, **extra))]


def _rollback_target(value: str) -> str:
    return value if value == ROLLBACK_PREVIOUS else ReleaseTag(value).value


def _no_parent_dir(value: str) -> str:
    if ONNX_LOCATION_FORBIDDEN in value:
        raise ValueError(f"must not contain {ONNX_LOCATION_FORBIDDEN!r}")
    return value


TagStr = Annotated[str, AfterValidator(lambda v: ReleaseTag(v).value), WithJsonSchema(TAG_SCHEMA)]
DeviceStr = Annotated[str, AfterValidator(lambda v: DeviceName(v).value), WithJsonSchema(DEVICE_SCHEMA)]
ContinuityIdStr = Annotated[
    str, AfterValidator(lambda v: ContinuityId.parse(v).value), WithJsonSchema(CONTINUITY_ID_SCHEMA)
]
ConfigVersionStr = _pattern_str(CONFIG_VERSION_BODY)
ChannelStr = _pattern_str(CHANNEL_BODY)
OnnxLocationStr = Annotated[
    str,
    StringConstraints(pattern=f"^(?:{ONNX_LOCATION_BODY})$"),
    AfterValidator(_no_parent_dir),
    WithJsonSchema(_string_schema(ONNX_LOCATION_BODY, **{"not": {"pattern": r"\.\."}})),
]
RollbackTargetStr = Annotated[
    str, AfterValidator(_rollback_target),
    WithJsonSchema({"type": "string", "anyOf": [{"const": ROLLBACK_PREVIOUS}, TAG_SCHEMA]}),
]
