"""The hailo_fleet_rollout DAG's params, and their second check on the worker.

The JSON schemas come from the library's own grammars and models: the release tag's grammar
(release.identifiers), the rollout plan's pydantic model (release.rollout_plan.RolloutPlan, so a bad
inline plan is refused by the REST API with the model's bounds), the group/label grammar of
release.devices. ``parse_fleet_params`` then builds the same library objects the CLI builds
(``parse_plan``/``load_plan``, ``Selector.parse``), so both entry points refuse the same input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from release.identifiers import TAG_BODY, json_schema_pattern

LABEL_BODY = r"[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?"  # release.devices._LABEL without its anchors
PLAN_FILE_VARIABLE = "HAILO_ROLLOUT_PLAN"  # the plan in the repository, when a run names none


def _plan_schema() -> dict[str, Any]:
    from release.identifiers import anchor_schema_patterns
    from release.rollout_plan import RolloutPlan

    schema: dict[str, Any] = anchor_schema_patterns(RolloutPlan.model_json_schema())
    return {"anyOf": [schema, {"type": "null"}]} | ({"$defs": schema.pop("$defs")} if "$defs" in schema else {})


FLEET_PARAMS: dict[str, dict[str, Any]] = {
    "release_tag": {
        "type": "string", "pattern": json_schema_pattern(TAG_BODY), "not": {"pattern": r"\.\."},
        "description": "the promoted release to roll out (its canary passed)",
    },
    "group": {
        "default": None, "type": ["string", "null"], "pattern": json_schema_pattern(LABEL_BODY),
        "description": "target: the enrolled devices of this inventory group",
    },
    "selector": {
        "default": None, "type": ["string", "null"], "maxLength": 500,
        "pattern": json_schema_pattern(rf"{LABEL_BODY}={LABEL_BODY}(,{LABEL_BODY}={LABEL_BODY})*"),
        "description": "target: label selector key=value[,key=value]",
    },
    "plan": {"default": None, **_plan_schema(), "description": "the rollout plan inline (docs/rollout.example.yaml's fields)"},
    "plan_file": {
        "default": None, "type": ["string", "null"], "maxLength": 1000, "pattern": json_schema_pattern(r"/[^\x00\n]*"),
        "description": f"absolute path of a rollout plan YAML on the workers (default: ${PLAN_FILE_VARIABLE})",
    },
    "production": {"default": False, "type": "boolean", "description": "refuse devices without pinned host keys"},
    "rollout_id": {
        "default": None, "type": ["string", "null"], "maxLength": 200,
        "pattern": json_schema_pattern(rf"{TAG_BODY}\.rollout-[0-9]{{8}}T[0-9]{{6}}-[0-9a-f]{{6}}"),
        "description": "resume this rollout (after a pause, an approval or a restart) instead of starting one",
    },
}


@dataclass(frozen=True)
class FleetParams:
    release_tag: str
    plan: Any  # release.rollout_plan.RolloutPlan
    selector: Any  # release.devices.Selector
    production: bool
    rollout_id: str | None


def parse_fleet_params(params: dict[str, Any]) -> FleetParams:
    """The run's params as library objects; InvalidInput / ConfigError name what is wrong."""
    from release.devices import Selector
    from release.errors import InvalidInput
    from release.identifiers import ReleaseTag
    from release.rollout_plan import load_plan, parse_plan

    tag = ReleaseTag(str(params.get("release_tag") or "")).value
    rollout_id = params.get("rollout_id") or None
    if rollout_id is not None:  # a resume: plan, target and tag are the recorded ones
        return FleetParams(tag, None, None, bool(params.get("production")), str(rollout_id))
    inline, path = params.get("plan"), params.get("plan_file") or os.environ.get(PLAN_FILE_VARIABLE)
    if inline is not None and params.get("plan_file"):
        raise InvalidInput("give the plan inline (plan) or as a file (plan_file), not both")
    if inline is not None:
        plan = parse_plan(inline, "plan param")
    elif path:
        plan = load_plan(Path(str(path)))
    else:
        raise InvalidInput(f"no rollout plan: set the plan or plan_file param, or ${PLAN_FILE_VARIABLE} on the workers")
    selector = Selector.parse(params.get("group") or None, params.get("selector") or None)
    return FleetParams(tag, plan, selector, bool(params.get("production")), None)
