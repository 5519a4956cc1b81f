"""Fuzz /infer with malformed bodies: never a 5xx, never a crash."""

import json
import math

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


# Any JSON value, as json.dumps writes it (big ints included; NaN/Infinity are not JSON).
any_json = st.recursive(
    st.none() | st.booleans() | st.text(max_size=4) | st.integers(min_value=-(10**45), max_value=10**45)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=2), children, max_size=2),
    max_leaves=6,
)
cells = st.lists(st.tuples(st.integers(0, 99), st.integers(0, 8), any_json), max_size=4)


def _check_answer(r, n_windows: int | None) -> None:
    assert r.status_code < 500, r.text
    assert b"null" not in r.content or r.status_code != 200, r.text
    body = r.json()
    if r.status_code == 200:
        latents = [body["latent"]] if n_windows is None else body["latent"]
        motifs = [body["motif_scores"]] if n_windows is None else body["motif_scores"]
        assert len(latents) == len(motifs) == (n_windows or 1)
        for lat, mot in zip(latents, motifs, strict=True):
            assert len(lat) == 64 and len(mot) == 12
            assert all(isinstance(v, float) and math.isfinite(v) for v in [*lat, *mot])
    else:
        assert r.status_code in (413, 422), r.text
        assert body["error"] and body["detail"]
        if body["error"] in ("non_numeric", "nested_too_deep", "non_finite"):
            assert "row " in body["detail"] and "column " in body["detail"], body


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=cells, batch_edits=cells, which=st.integers(0, 2))
def test_arbitrary_json_values_inside_the_window(client, edits, batch_edits, which):
    """Any JSON value anywhere in a window: a 422 naming the problem, or a 200 whose outputs are all
    finite with the right lengths; never a 5xx, never null."""
    window = [[math.sin(i * 0.1 + c) for c in range(9)] for i in range(100)]
    single = [list(row) for row in window]
    for row, col, value in edits:
        single[row][col] = value
    r = client.post("/infer", content=json.dumps({"x": single}).encode(), headers={"content-type": "application/json"})
    _check_answer(r, None)
    windows = [[list(row) for row in window] for _ in range(3)]
    for row, col, value in batch_edits:
        windows[which][row][col] = value
    r = client.post("/infer/batch", content=json.dumps({"x": windows}).encode(), headers={"content-type": "application/json"})
    _check_answer(r, 3)
