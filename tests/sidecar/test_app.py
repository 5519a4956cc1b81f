import math

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from fastapi.testclient import TestClient
from hailo_sidecar.app import create_app

from release.sample_model import golden_windows


@pytest.fixture
def client(make_config):
    with TestClient(create_app(make_config())) as c:
        yield c


def _post(client, body, path="/infer", ctype="application/json"):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(path, content=data, headers={"content-type": ctype})


def test_infer_matches_onnxruntime(client, sample_onnx_path):
    w = golden_windows(1)
    r = _post(client, {"x": w[0].tolist()})
    assert r.status_code == 200
    body = r.json()
    assert len(body["latent"]) == 64 and len(body["motif_scores"]) == 12
    sess = ort.InferenceSession(str(sample_onnx_path), providers=["CPUExecutionProvider"])
    ref = sess.run(["latent"], {"window": w})[0][0]
    assert np.allclose(body["latent"], ref, atol=1e-5)


def test_batch(client):
    w = golden_windows(5)
    r = _post(client, {"x": w.tolist()}, "/infer/batch")
    assert r.status_code == 200
    assert np.asarray(r.json()["latent"]).shape == (5, 64)
    assert np.asarray(r.json()["motif_scores"]).shape == (5, 12)
    single = _post(client, {"x": w[3].tolist()}).json()["latent"]
    assert np.allclose(r.json()["latent"][3], single, atol=1e-5)


def test_healthz_readyz_metrics(client, model_dir):
    import hashlib

    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["backend"] == "onnx"
    assert h["hef_sha256"] == hashlib.sha256((model_dir / "model.hef").read_bytes()).hexdigest()
    assert h["config_version"] == "cfg-test"
    assert h["output_shapes"] == {"latent": [64], "motif_scores": [12]}
    assert client.get("/readyz").status_code == 200
    _post(client, {"x": golden_windows(1)[0].tolist()})
    _post(client, {"x": [[1.0]]})
    text = client.get("/metrics").text
    assert 'sidecar_requests_total{endpoint="/infer",status="200"} 1.0' in text
    assert 'sidecar_requests_total{endpoint="/infer",status="422"} 1.0' in text
    assert 'le="0.05"' in text and 'le="0.0475"' in text
    assert f'hef_sha256="{h["hef_sha256"]}"' in text and 'config_version="cfg-test"' in text


GOOD = golden_windows(1)[0].tolist()


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{not json", 400, "invalid_json"),
        ([1, 2], 422, "invalid_body"),
        ({}, 422, "missing_key"),
        ({"x": GOOD, "y": 1}, 422, "unknown_keys"),
        ({"x": GOOD[:99]}, 422, "wrong_shape"),
        ({"x": [row[:8] for row in GOOD]}, 422, "wrong_shape"),
        ({"x": [row[:8] if i == 5 else row for i, row in enumerate(GOOD)]}, 422, "ragged"),
        ({"x": [["a"] * 9] * 100}, 422, "non_numeric"),
        ({"x": [[True] * 9] * 100}, 422, "non_numeric"),
        ({"x": [[None] * 9] * 100}, 422, "non_numeric"),
        ({"x": [[1e39] * 9] * 100}, 422, "non_finite"),
        ({"x": 3.0}, 422, "wrong_shape"),
    ],
)
def test_bad_input_is_4xx_with_reason(client, body, status, error):
    r = _post(client, body)
    assert r.status_code == status, r.text
    assert r.json()["error"] == error
    assert r.json()["detail"]


def test_nan_literal_and_content_type(client):
    r = _post(client, b'{"x": [[NaN]]}')
    assert r.status_code == 400
    r = _post(client, {"x": GOOD}, ctype="text/plain")
    assert r.status_code == 415


def test_oversized_body(make_config):
    with TestClient(create_app(make_config(MAX_BODY_BYTES="2048"))) as c:
        r = _post(c, {"x": GOOD})
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"


def test_batch_limits(make_config):
    with TestClient(create_app(make_config(MAX_BATCH="2"))) as c:
        assert _post(c, {"x": golden_windows(3).tolist()}, "/infer/batch").status_code == 413
        assert _post(c, {"x": []}, "/infer/batch").status_code == 422


def test_refuses_mismatched_hef_checksum(make_config):
    with pytest.raises(RuntimeError, match="expected HEF_SHA256"), TestClient(create_app(make_config(HEF_SHA256="0" * 64))):
        pass


def test_stub_backend_is_deterministic(make_config):
    with TestClient(create_app(make_config(INFER_MODE="stub"))) as c:
        a = _post(c, {"x": GOOD}).json()
        b = _post(c, {"x": GOOD}).json()
        assert a == b and len(a["latent"]) == 64
        assert c.get("/healthz").json()["backend"] == "stub"
        assert not any(math.isnan(v) for v in a["motif_scores"])
