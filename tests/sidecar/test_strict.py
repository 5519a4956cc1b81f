"""Strict input (only JSON numbers, named row and column), checked outputs, warm-up, OpenAPI, logs."""

import json
import logging
from pathlib import Path

import hailo_sidecar
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from hailo_sidecar.__main__ import JsonFormatter
from hailo_sidecar.app import create_app
from hailo_sidecar.openapi_gen import build_documents
from hailo_sidecar.runtimes import golden_windows as sidecar_golden

from release.sample_model import golden_windows

GOOD = golden_windows(1)[0].tolist()


@pytest.fixture
def client(make_config):
    with TestClient(create_app(make_config())) as c:
        yield c


def _post(client, body, path="/infer"):
    return client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def _with(window, row, col, value):
    w = [list(r) for r in window]
    w[row][col] = value
    return w


@pytest.mark.parametrize(("value", "what"), [(True, "boolean (true)"), (False, "boolean (false)"), ("1.5", "string"),
                                             (None, "null"), ({"a": 1}, "object")])
def test_non_number_named_by_row_and_column(client, value, what):
    r = _post(client, {"x": _with(GOOD, 37, 4, value)})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "non_numeric"
    assert "row 37, column 4" in r.json()["detail"] and what in r.json()["detail"]
    batch = [GOOD, _with(GOOD, 99, 8, value)]
    r = _post(client, {"x": batch}, "/infer/batch")
    assert r.status_code == 422 and r.json()["error"] == "non_numeric"
    assert "window 1, row 99, column 8" in r.json()["detail"]


def test_booleans_never_pass_as_numbers(client):
    """np.asarray([True, 0.5]) is [1.0, 0.5]: the bug the issue found. One bool anywhere is refused."""
    r = _post(client, {"x": _with(GOOD, 0, 0, True)})
    assert r.status_code == 422 and r.json()["error"] == "non_numeric"


def test_nested_too_deep(client):
    deep: object = 1.0
    for _ in range(500):
        deep = [deep]
    for path, x in (("/infer", _with(GOOD, 3, 2, deep)), ("/infer", deep), ("/infer/batch", [_with(GOOD, 3, 2, [1.0])])):
        r = _post(client, {"x": x}, path)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "nested_too_deep" and "nested too deep" in r.json()["detail"]


def test_ragged_and_shape_messages(client):
    r = _post(client, {"x": [row[:8] if i == 5 else row for i, row in enumerate(GOOD)]})
    assert r.json()["error"] == "ragged" and "row 5" in r.json()["detail"]
    r = _post(client, {"x": "abc"})
    assert r.json()["error"] == "wrong_shape" and "a string" in r.json()["detail"]


def test_non_finite_output_is_an_explicit_error_and_counted(client):
    """3e38 is a finite float32, but the sample model overflows on it: the answer is a 422 saying
    so (orjson would have written null), and /metrics counts it."""
    huge = [[3e38] * 9] * 100
    r = _post(client, {"x": huge})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "output_non_finite" and "outside the model's numeric range" in r.json()["detail"]
    r = _post(client, {"x": [GOOD, huge, GOOD]}, "/infer/batch")
    assert r.status_code == 422 and "windows [1]" in r.json()["detail"]
    assert b"null" not in r.content
    text = client.get("/metrics").text
    assert "sidecar_nonfinite_outputs_total 2.0" in text
    assert 'sidecar_errors_total{kind="non_finite_output"} 2.0' in text
    assert _post(client, {"x": GOOD}).status_code == 200


def test_metrics_keep_their_names_and_buckets(client):
    _post(client, {"x": GOOD})
    text = client.get("/metrics").text
    for needle in ('sidecar_request_latency_seconds_bucket{endpoint="/infer",le="0.0475"} 1.0',
                   "sidecar_inference_latency_seconds_count 1.0", "sidecar_windows_total 1.0",
                   'sidecar_model_info{backend="onnx",config_version="cfg-test"',
                   'sidecar_backend_info{backend="onnx",hef_status="hef",mode="onnx",reason="INFER_MODE=onnx"} 1.0'):
        assert needle in text, needle


def test_openapi_served_equals_generated_from_source(client):
    docs = build_documents()
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.content == docs["openapi.json"], "stale: run python -m hailo_sidecar.openapi_gen"
    assert set(r.json()["paths"]) == {"/infer", "/infer/batch", "/healthz", "/readyz", "/metrics"}
    assert client.get("/docs").content == docs["docs.html"]


def test_unknown_route_and_method(client):
    assert client.get("/nope").status_code == 404
    r = client.get("/infer")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_sidecar_golden_windows_equal_the_release_ones():
    """The prebuilt golden.npy, and the generator behind it, match release.sample_model's windows."""
    assert np.array_equal(sidecar_golden(8), golden_windows(8))
    assert np.array_equal(sidecar_golden(8, prebuilt=False), golden_windows(8))
    assert build_documents()["golden.npy"] == (Path(hailo_sidecar.__file__).parent / "golden.npy").read_bytes()


def test_json_formatter_keeps_tracebacks():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("t").makeRecord("t", logging.ERROR, __file__, 1, '{"event": "x"}', (), None)
        import sys

        record.exc_info = sys.exc_info()
    out = json.loads(JsonFormatter().format(record))
    assert out["event"] == "x" and out["error_type"] == "ValueError"
    assert "Traceback" in out["traceback"] and "boom" in out["traceback"]


def test_body_orjson_roundtrip_of_big_ints(client):
    """Integers beyond 64 bits are JSON numbers too: accepted, converted, range-checked."""
    assert orjson.loads(json.dumps([10**30])) == [1e30]
    r = _post(client, {"x": _with(GOOD, 0, 0, 10**30)})
    assert r.status_code == 200
    r = _post(client, {"x": _with(GOOD, 0, 0, 10**40)})
    assert r.status_code == 422 and r.json()["error"] == "non_finite" and "row 0, column 0" in r.json()["detail"]


@pytest.mark.parametrize(("mode", "absent"), [
    ("stub", ["numpy", "onnxruntime", "fastapi", "starlette", "pydantic", "prometheus_client", "websockets", "click"]),
    ("onnx", ["fastapi", "starlette", "pydantic", "prometheus_client", "websockets", "hailo_platform"]),
])
def test_cold_path_imports_only_what_the_backend_needs(model_dir, mode, absent):
    """Structural guard for the cold start (timings live in bench/): a stub start loads no numpy,
    no mode loads FastAPI/Starlette/pydantic, and prometheus_client waits for the first /metrics."""
    import subprocess
    import sys

    code = (
        "import sys, json\n"
        "from hailo_sidecar.config import SidecarConfig\n"
        "from hailo_sidecar.app import create_app, load\n"
        "app = create_app(SidecarConfig.from_env()); load(app.sidecar)\n"
        "from hailo_sidecar.__main__ import _uvicorn\n"
        "config, server = _uvicorn()\n"
        "config(app, lifespan='off', ws='none', log_config=None, proxy_headers=False).load()\n"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))\n"
    )
    env = {"MODEL_DIR": str(model_dir), "INFER_MODE": mode, "HAILO_SIDECAR_ALLOW_AMD64": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = set(json.loads(res.stdout.splitlines()[-1]))
    assert not loaded & set(absent), sorted(loaded & set(absent))
