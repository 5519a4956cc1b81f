"""Fuzz /infer with malformed bodies: never a 5xx, never a crash."""

import json

import orjson
import pytest
from fastapi.testclient import TestClient
from hailo_sidecar.app import create_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=40,
)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from hailo_sidecar.config import SidecarConfig

    from release.sample_model import write_sample_model

    d = tmp_path_factory.mktemp("fuzz-models")
    write_sample_model(d / "model.onnx")
    cfg = SidecarConfig.from_env({"MODEL_DIR": str(d), "INFER_MODE": "onnx", "HAILO_SIDECAR_ALLOW_AMD64": "1"})
    with TestClient(create_app(cfg)) as c:
        yield c


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(json_values.map(lambda v: {"x": v}), json_values))
def test_json_bodies_never_5xx(client, body):
    for path in ("/infer", "/infer/batch"):
        r = client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        assert r.status_code < 500, (path, r.status_code, r.text)
        if r.status_code >= 400:
            assert "error" in r.json() and "detail" in r.json()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_raw_bytes_never_5xx(client, raw):
    r = client.post("/infer", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(0, 120), cols=st.integers(0, 12), value=st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_shapes_near_the_contract(client, rows, cols, value):
    r = client.post("/infer", content=orjson.dumps({"x": [[value] * cols] * rows}), headers={"content-type": "application/json"})
    if (rows, cols) == (100, 9):
        assert r.status_code == 200
    else:
        assert r.status_code == 422 and r.json()["error"] == "wrong_shape"
