"""The DAGs' params: the JSON schema properties of the library's request models (release.request,
via release.schemas.param_specs), so the REST API rejects a bad trigger (400 with the reason)
before anything runs, by the same grammars and gate bounds the worker checks again. Only the demo
defaults of the required fields are added here; no pattern or bound is written in this file."""

from __future__ import annotations

from typing import Any

from release.request import HeldDecisionRequest, ReleaseRequest, RollbackRequest
from release.schemas import param_specs

# Set by the worker from the DAG run (``airflow:<run id>``), never by a trigger.
_WORKER_SET = {"triggered_by"}

# A fresh clone's `./scripts/release.sh` triggers with no conf: these make that a valid demo run.
CANARY_DEMO_DEFAULTS: dict[str, Any] = {
    "continuity_id": "ADR-0007-hailo-docker-2025-08-31",
    "release_tag": "demo-1",
    "config_version": "cfg-2026.11.0",
}


def _params(specs: dict[str, dict[str, Any]], defaults: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    out = {}
    for name, spec in specs.items():
        if name in _WORKER_SET:
            continue
        out[name] = {**spec, **({"default": defaults[name]} if defaults and name in defaults else {})}
    return out


CANARY_PARAMS: dict[str, dict[str, Any]] = _params(param_specs(ReleaseRequest), CANARY_DEMO_DEFAULTS)
ROLLBACK_PARAMS: dict[str, dict[str, Any]] = _params(param_specs(RollbackRequest))
# No defaults for the tag, the decision or the reason: a trigger that forgets one is refused
# rather than approving anything.
DECISION_PARAMS: dict[str, dict[str, Any]] = _params(param_specs(HeldDecisionRequest))
