"""The committed JSON schemas, the DAG params and the device agent's copy of the tag grammar are all
generated from (or checked against) one set of types and bounds; these tests fail when any two drift."""

from __future__ import annotations

import json
from typing import Any

import annotated_types
import pytest
from pydantic import Field

from release.gate_settings import GateSettings, LoadProfile, overrides_type, settings_with_overrides
from release.identifiers import RESERVED_TAGS, TAG_BODY
from release.request import HeldDecisionRequest, ReleaseRequest, RollbackRequest
from release.schemas import DATA_DIR, drifted, main, param_specs, render, schema_models, write

jsonschema = pytest.importorskip("jsonschema")  # what Airflow's Param validates with

# Keys that describe a param for a person, not what it accepts.
_PRESENTATION = {"default", "description", "title"}


def _dag_params() -> dict[str, tuple[dict[str, dict[str, Any]], type]]:
    from hailo_airflow.params import CANARY_PARAMS, DECISION_PARAMS, ROLLBACK_PARAMS

    return {"hailo_canary_release": (CANARY_PARAMS, ReleaseRequest), "hailo_rollback": (ROLLBACK_PARAMS, RollbackRequest),
            "hailo_release_decision": (DECISION_PARAMS, HeldDecisionRequest)}


def param_mismatches(params: dict[str, dict[str, Any]], model: type) -> list[str]:
    """Every param whose accepted values (schema minus presentation) differ from the model's field."""
    specs = param_specs(model)
    out = []
    for name, spec in params.items():
        want = {k: v for k, v in specs.get(name, {}).items() if k not in _PRESENTATION}
        got = {k: v for k, v in spec.items() if k not in _PRESENTATION}
        if name not in specs or got != want:
            out.append(name)
    return out


def test_committed_schemas_are_what_the_models_generate_byte_for_byte():
    assert drifted() == [], "run: python -m release.schemas write"
    assert main(["check"]) == 0


def test_dag_params_accept_what_the_request_models_accept():
    for dag_id, (params, model) in _dag_params().items():
        assert param_mismatches(params, model) == [], dag_id
        # Every field a trigger may set is a param (triggered_by is set by the worker from the run).
        assert set(model.model_fields) - {"triggered_by"} == set(params), dag_id


def _bounds_from_fields(model: type, field: str) -> dict[str, float]:
    """ge/le/gt/lt straight from the field's metadata (not from its JSON schema)."""
    names = {annotated_types.Ge: ("ge", "minimum"), annotated_types.Le: ("le", "maximum"),
             annotated_types.Gt: ("gt", "exclusiveMinimum"), annotated_types.Lt: ("lt", "exclusiveMaximum")}
    out = {}
    for meta in model.model_fields[field].metadata:
        for cls, (attr, key) in names.items():
            if isinstance(meta, cls):
                out[key] = float(getattr(meta, attr))
    return out


_OVERRIDE_FIELDS = {"p95_ms": (GateSettings, "p95_ms"), "min_windows_per_s": (GateSettings, "min_windows_per_s"),
                    "max_error_rate": (GateSettings, "max_error_rate"), "duration_s": (LoadProfile, "duration_s"),
                    "rate_windows_per_s": (LoadProfile, "rate_windows_per_s"),
                    "lease_margin_s": (GateSettings, "lease_margin_s"), "hold_lease_s": (GateSettings, "hold_lease_s")}


def test_gate_override_bounds_in_the_params_are_the_gate_settings_bounds():
    from hailo_airflow.params import CANARY_PARAMS

    props = CANARY_PARAMS["gate_overrides"]["properties"]
    assert set(props) == set(_OVERRIDE_FIELDS)
    for key, (model, field) in _OVERRIDE_FIELDS.items():
        bounds = {k: float(v) for k, v in props[key].items() if k in {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}}
        assert bounds == _bounds_from_fields(model, field), key


@pytest.mark.parametrize("key", sorted(_OVERRIDE_FIELDS))
def test_schema_and_worker_agree_at_each_override_bound(key):
    """Just outside a bound both refuse; at an inclusive bound both accept (unless another setting
    makes the combination invalid: then only the worker refuses, the schema being necessary, not sufficient)."""
    from hailo_airflow.params import CANARY_PARAMS

    schema = CANARY_PARAMS["gate_overrides"]
    bounds = _bounds_from_fields(*_OVERRIDE_FIELDS[key])
    for kind, bound in bounds.items():
        outside = bound - 1e-6 if "inimum" in kind else bound + 1e-6
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({key: outside}, schema)
        with pytest.raises(Exception, match="gate overrides rejected"):
            settings_with_overrides({key: outside})
        if not kind.startswith("exclusive"):
            jsonschema.validate({key: bound}, schema)
            try:
                settings_with_overrides({key: bound})
            except Exception as exc:  # only a cross-field rule may refuse a value inside the bounds
                assert "could never pass" in str(exc) or "nothing would be scored" in str(exc), (key, bound, exc)


def test_the_device_agents_copy_of_the_tag_grammar_is_the_same():
    from release import device_checks

    assert device_checks.TAG_RE.pattern == f"^{TAG_BODY}$"
    assert device_checks.RESERVED == RESERVED_TAGS


def _modified_request() -> type[ReleaseRequest]:
    """ReleaseRequest as it would be if someone changed one gate bound (duration_s <= 300, not 600)."""

    class ShorterLoad(LoadProfile):
        duration_s: float = Field(10.0, ge=1, le=300)

    class ShorterGate(GateSettings):
        load: ShorterLoad = ShorterLoad()

    class ModifiedRequest(ReleaseRequest):
        gate_overrides: overrides_type(ShorterGate) = Field(default_factory=dict)  # type: ignore[valid-type]

    ModifiedRequest.__name__ = ReleaseRequest.__name__
    return ModifiedRequest


def test_a_changed_bound_fails_the_byte_comparison_and_the_params_comparison(tmp_path):
    models = {**schema_models(), "release-request.schema.json": _modified_request()}
    assert drifted(DATA_DIR, models) == ["release-request.schema.json"]
    text = render(models["release-request.schema.json"])
    assert json.loads(text)["properties"]["gate_overrides"]["properties"]["duration_s"]["maximum"] == 300
    # The params of the real DAG no longer match the modified model.
    from hailo_airflow.params import CANARY_PARAMS

    assert param_mismatches(CANARY_PARAMS, _modified_request()) == ["gate_overrides"]
    # And the modified model validates with its own bound, not the schema file's.
    with pytest.raises(Exception, match="less than or equal to 300"):
        _modified_request().parse({"continuity_id": "ADR-0007-a-2025-08-31", "release_tag": "v1",
                                   "config_version": "c1", "gate_overrides": {"duration_s": 400}})


def test_write_then_check_round_trips_and_check_names_a_stale_file(tmp_path, capsys):
    write(tmp_path)
    assert main(["check", "--data-dir", str(tmp_path)]) == 0
    path = tmp_path / "rollback-request.schema.json"
    path.write_text(path.read_text().replace('"maxLength": 500', '"maxLength": 501'))
    assert main(["check", "--data-dir", str(tmp_path)]) == 1
    assert "rollback-request.schema.json: differs" in capsys.readouterr().err
