"""The canary DAG's params: JSON schemas derived from the library's grammars, so the REST API
rejects a bad trigger (400 with the reason) before anything runs."""

from __future__ import annotations

from typing import Any

from release.identifiers import TAG_BODY, json_schema_pattern
from release.request import params_json_schema

_SCHEMA = params_json_schema()

CANARY_PARAMS: dict[str, dict[str, Any]] = {
    "continuity_id": {
        "default": "ADR-0007-hailo-docker-2025-08-31",
        **_SCHEMA["continuity_id"],
    },
    "release_tag": {
        "default": "demo-1",
        "description": "release tag: [A-Za-z0-9][A-Za-z0-9_.-]*, no '..'; also the OCI tag",
        **_SCHEMA["release_tag"],
    },
    "onnx_location": {
        "default": "sample",
        "description": "'sample' (the built-in TCN encoder), an absolute .onnx path, or gs://BUCKET/PATH.onnx",
        **_SCHEMA["onnx_location"],
    },
    "config_version": {"default": "cfg-2026.11.0", **_SCHEMA["config_version"]},
    "device": {"default": "local", "description": "target device from the device inventory", **_SCHEMA["device"]},
    "gate_overrides": {
        "default": {},
        "description": "tighten gate limits: p95_ms <= 50, min_windows_per_s >= 20, ...",
        **_SCHEMA["gate_overrides"],
    },
    "production": {"default": False, "type": "boolean", "description": "production target: refuse placeholders"},
}

ROLLBACK_PARAMS: dict[str, dict[str, Any]] = {
    "device": {"default": "local", **_SCHEMA["device"]},
    "to": {
        "default": "previous",
        "type": "string",
        "pattern": json_schema_pattern(f"previous|{TAG_BODY}"),
        "not": {"pattern": r"\.\."},
        "description": "release tag to roll back to, or 'previous' (the committed release before the device's "
                       "last-known-good, from the store's history)",
    },
    "reason": {"default": "on-call rollback", "type": "string", "maxLength": 500},
}

DECISION_PARAMS: dict[str, dict[str, Any]] = {
    "device": {"default": "local", **_SCHEMA["device"]},
    "release_tag": {"description": "the held release tag", **_SCHEMA["release_tag"]},
    "decision": {"type": "string", "enum": ["approve", "reject"],
                 "description": "approve promotes the held canary; reject rolls the device back"},
    "reason": {"type": "string", "minLength": 1, "maxLength": 500, "description": "recorded in the history and the decision manifest"},
}
