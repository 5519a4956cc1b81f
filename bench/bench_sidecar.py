"""Sidecar: cold start to ready, and /infer latency/throughput on the onnx backend, side by side
with bare onnxruntime (the physical floor) and a naive FastAPI + Pydantic List[List[float]] endpoint."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from bench.table import Row

N_SINGLE = 400
N_BATCH_REQ = 40
BATCH = 16

NAIVE_APP = textwrap.dedent('''
    import os
    from typing import List
    import numpy as np, onnxruntime as ort
    from fastapi import FastAPI
    from pydantic import BaseModel
    sess = ort.InferenceSession(os.environ["ONNX_PATH"], providers=["CPUExecutionProvider"])
    app = FastAPI()
    class Body(BaseModel):
        x: List[List[float]]
    @app.post("/infer")
    def infer(body: Body):
        lat, mot = sess.run(["latent", "motif_scores"], {"window": np.asarray([body.x], dtype=np.float32)})
        return {"latent": lat[0].tolist(), "motif_scores": mot[0].tolist()}
''')


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int, path: str = "/readyz", timeout: float = 30) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path)
            if c.getresponse().status in (200, 405, 404):
                return time.perf_counter() - t0
        except OSError:
            time.sleep(0.005)
    raise RuntimeError(f"server on {port} not ready")


def _drive(port: int, bodies: list[bytes], path: str = "/infer") -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    lat = []
    for body in bodies:
        t0 = time.perf_counter()
        conn.request("POST", path, body=body, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
        lat.append((time.perf_counter() - t0) * 1000)
    return lat


def rows() -> list[Row]:
    import onnxruntime as ort

    from release.sample_model import golden_windows, write_sample_model

    out: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = write_sample_model(Path(tmp) / "model.onnx")
        windows = golden_windows(64)
        singles = [json.dumps({"x": w.tolist()}).encode() for w in windows]
        batches = [json.dumps({"x": windows[i:i + BATCH].tolist()}).encode() for i in range(0, 64, BATCH)]

        # Bare onnxruntime, same thread settings as the sidecar.
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        bare = []
        for i in range(N_SINGLE):
            t0 = time.perf_counter()
            sess.run(["latent", "motif_scores"], {"window": windows[i % 64][None]})
            bare.append((time.perf_counter() - t0) * 1000)

        port = _port()
        env = {**os.environ, "INFER_MODE": "onnx", "ONNX_PATH": str(model), "HEF_PATH": str(Path(tmp) / "none"),
               "HAILO_SIDECAR_ALLOW_AMD64": "1", "PORT": str(port), "HOST": "127.0.0.1"}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "hailo_sidecar"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            cold = _wait(port) + 0 * t0
            # Model load on its own, in a fresh process: importing the runtime library plus
            # creating the session — what a bigger model or the Hailo backend changes.
            load_ms = float(subprocess.run(
                [sys.executable, "-c", "import time; t=time.perf_counter(); import onnxruntime as o; "
                 f"o.InferenceSession({str(model)!r}, providers=['CPUExecutionProvider']); "
                 "print((time.perf_counter()-t)*1000)"], capture_output=True, text=True, check=True).stdout)
            import_cost = subprocess.run([sys.executable, "-c", "import time; t=time.perf_counter(); import hailo_sidecar.app; "
                                          "print((time.perf_counter()-t)*1000)"], capture_output=True, text=True).stdout
            _drive(port, singles[:50])
            side = _drive(port, [singles[i % 64] for i in range(N_SINGLE)])
            t2 = time.perf_counter()
            _drive(port, [batches[i % len(batches)] for i in range(N_BATCH_REQ)], "/infer/batch")
            batch_wps = N_BATCH_REQ * BATCH / (time.perf_counter() - t2)
        finally:
            proc.terminate()
            proc.wait(timeout=10)

        naive_port = _port()
        app_file = Path(tmp) / "naive_app.py"
        app_file.write_text(NAIVE_APP)
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "naive_app:app", "--port", str(naive_port), "--log-level",
                                 "warning"], env={**env, "PYTHONPATH": tmp}, cwd=tmp, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            _wait(naive_port, "/docs")
            _drive(naive_port, singles[:50])
            t3 = time.perf_counter()
            naive = _drive(naive_port, [singles[i % 64] for i in range(N_SINGLE)])
            naive_wps = N_SINGLE / (time.perf_counter() - t3)
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    p95 = lambda v: float(np.percentile(v, 95))  # noqa: E731
    side_wps = N_SINGLE / (sum(side) / 1000)
    overhead = p95(side) - p95(bare)
    best_wps = max(side_wps, batch_wps)
    out += [
        Row("sidecar cold start to ready (incl. model load)", cold * 1000, "ms", "-", None, "process start → /readyz 200"),
        Row("  of which model load", load_ms, "ms", "-", None, "import onnxruntime + create session"),
        Row("  cold start excl. model load", cold * 1000 - load_ms, "ms", "< 300", cold * 1000 - load_ms < 300,
            f"app import {float(import_cost or 0):.0f} ms"),
        Row("bare onnxruntime p95 (1 window)", p95(bare), "ms", "-", None, "the physical floor"),
        Row("sidecar /infer p95 (1 window)", p95(side), "ms", "-", None, f"{side_wps:.0f} windows/s sequential"),
        Row("HTTP + validation overhead at p95", overhead, "ms", "<= 1", overhead <= 1.0),
        Row("sidecar /infer/batch throughput", batch_wps, "windows/s", "-", None, f"batches of {BATCH}"),
        Row("naive FastAPI+Pydantic /infer p95", p95(naive), "ms", "-", None, f"{naive_wps:.0f} windows/s"),
        Row("sidecar best / naive windows/s", best_wps / naive_wps, "x", ">= 3", best_wps / naive_wps >= 3,
            "single-window ratio %.1fx" % (side_wps / naive_wps)),
    ]
    return out
