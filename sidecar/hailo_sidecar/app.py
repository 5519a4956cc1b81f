"""The sidecar's HTTP API (contract: shared/contract.md).

POST /infer        {"x": [[float x 9] x 100]}            → {"latent": [64], "motif_scores": [NUM_MOTIFS]}
POST /infer/batch  {"x": [[[float x 9] x 100], ...]}      → {"latent": [[64], ...], "motif_scores": [[..], ...]}
GET  /healthz      liveness + identity (backend, hef_sha256, config_version, shapes, uptime)
GET  /readyz       200 only once the model is loaded and a warm-up inference passed
GET  /metrics      Prometheus text

Bodies are parsed with orjson and validated with numpy in one pass (no per-float model
walk), strictly: every bad input is a 4xx JSON error saying what is wrong, never a 5xx.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, Info, generate_latest

from hailo_sidecar.backends import Backend, select_backend, sha256_of
from hailo_sidecar.config import SidecarConfig

log = logging.getLogger("hailo_sidecar")

# Fine steps around the 50 ms gate so p95 can be read off the histogram within ~2.5 ms, and
# sub-millisecond steps at the bottom so a fast backend's p95 is resolved too.
LATENCY_BUCKETS_S = tuple(
    b / 1000
    for b in (0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 9, 10, 12.5, 15, 17.5, 20,
              22.5, 25, 27.5, 30, 32.5, 35, 37.5, 40, 42.5, 45, 47.5, 50, 52.5, 55, 57.5, 60, 65, 70, 80, 90, 100,
              150, 250, 500, 1000, 2500)
)


class BadRequest(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


class ORJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _error(status: int, error: str, detail: str) -> ORJSONResponse:
    return ORJSONResponse({"error": error, "detail": detail}, status_code=status)


class State:
    def __init__(self, cfg: SidecarConfig) -> None:
        self.cfg = cfg
        self.started = time.monotonic()
        self.backend: Backend | None = None
        self.backend_reason = "not loaded"
        self.ready = False
        self.hef_sha256 = sha256_of(cfg.hef_path) if cfg.hef_path.is_file() else None
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "sidecar_request_latency_seconds", "End-to-end /infer request latency (parse + infer + encode)",
            ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        self.inference_latency = Histogram(
            "sidecar_inference_latency_seconds", "Backend inference latency per window",
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        self.requests = Counter(
            "sidecar_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=self.registry
        )
        self.errors = Counter("sidecar_errors", "Errors by kind", ["kind"], registry=self.registry)
        self.windows = Counter("sidecar_windows", "Windows inferred", registry=self.registry)
        self.info = Info("sidecar_model", "Identity of the served release", registry=self.registry)


def _load(state: State) -> None:
    cfg = state.cfg
    if cfg.expected_hef_sha256 and state.hef_sha256 != cfg.expected_hef_sha256:
        raise RuntimeError(
            f"HEF at {cfg.hef_path} has sha256 {state.hef_sha256}, expected HEF_SHA256={cfg.expected_hef_sha256}"
        )
    selection = select_backend(cfg)
    state.backend, state.backend_reason = selection.backend, selection.reason
    warm = np.zeros((1, cfg.window_length, cfg.window_channels), dtype=np.float32)
    latent, motifs = state.backend.infer(warm)
    if latent.shape != (1, cfg.latent_dim) or motifs.shape != (1, cfg.num_motifs):
        raise RuntimeError(f"warm-up produced shapes {latent.shape}, {motifs.shape}")
    state.info.info(
        {"hef_sha256": state.hef_sha256 or "none", "config_version": cfg.config_version, "backend": selection.backend.name}
    )
    state.ready = True
    log.info(json.dumps({"event": "ready", "backend": selection.backend.name, "reason": selection.reason}))


async def _read_body(request: Request, limit: int) -> bytes:
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise BadRequest(415, "unsupported_media_type", f"content-type must be application/json, got {ctype or 'none'!r}")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(400, "bad_content_length", "content-length is not a number")
        if int(declared) > limit:
            raise BadRequest(413, "body_too_large", f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_windows(body: bytes, cfg: SidecarConfig, batch: bool) -> np.ndarray:
    """Body → float32 [n, L, C]; raises BadRequest saying what is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest(422, "invalid_body", f"body must be a JSON object with key 'x', got {type(doc).__name__}")
    if "x" not in doc:
        raise BadRequest(422, "missing_key", "body has no key 'x'")
    extra = sorted(set(doc) - {"x"})
    if extra:
        raise BadRequest(422, "unknown_keys", f"unknown keys {extra}; only 'x' is accepted")
    try:
        raw = np.asarray(doc["x"])
    except ValueError:
        raise BadRequest(422, "ragged", "'x' is ragged: every row must have the same length") from None
    if raw.dtype.kind not in "iuf":
        kind = {"b": "booleans", "U": "strings", "O": "mixed or nested values"}.get(raw.dtype.kind, raw.dtype.name)
        raise BadRequest(422, "non_numeric", f"'x' must contain only numbers, found {kind}")
    want = (cfg.window_length, cfg.window_channels)
    if batch:
        if raw.ndim != 3 or raw.shape[1:] != want or raw.shape[0] == 0:
            raise BadRequest(422, "wrong_shape", f"'x' has shape {list(raw.shape)}, expected [n, {want[0]}, {want[1]}] with n ≥ 1")
        if raw.shape[0] > cfg.max_batch:
            raise BadRequest(413, "batch_too_large", f"batch of {raw.shape[0]} windows exceeds MAX_BATCH={cfg.max_batch}")
    elif raw.shape != want:
        raise BadRequest(422, "wrong_shape", f"'x' has shape {list(raw.shape)}, expected [{want[0]}, {want[1]}]")
    with np.errstate(over="ignore", invalid="ignore"):
        windows = raw.astype(np.float32, copy=False)
    if not np.isfinite(windows).all():
        bad = np.argwhere(~np.isfinite(windows))[0].tolist()
        raise BadRequest(422, "non_finite", f"'x' contains NaN/Inf or a value beyond float32 range at index {bad}")
    return windows if batch else windows[None, ...]


class RequestTimer:
    """Pure ASGI middleware: observes /infer latency from the first body byte received to the
    last response byte sent — the server's side of what the gate's client measures."""

    def __init__(self, app: Any, state: State) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path not in ("/infer", "/infer/batch"):
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def timed_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.state.request_latency.labels(path).observe(time.perf_counter() - t0)

        await self.app(scope, receive, timed_send)


def create_app(cfg: SidecarConfig | None = None) -> FastAPI:
    cfg = cfg or SidecarConfig.from_env()
    state = State(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _load(state)  # raises → the server refuses to start, with the reason
        yield

    app = FastAPI(title="hailo-sidecar", version="0.1.0", lifespan=lifespan)
    app.state.sidecar = state
    app.add_middleware(RequestTimer, state=state)

    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest) -> Response:
        endpoint = request.url.path
        state.requests.labels(endpoint, str(exc.status)).inc()
        state.errors.labels(exc.error).inc()
        return _error(exc.status, exc.error, exc.detail)

    async def _infer(request: Request, batch: bool) -> Response:
        endpoint = "/infer/batch" if batch else "/infer"
        if not state.ready or state.backend is None:
            state.requests.labels(endpoint, "503").inc()
            return _error(503, "not_ready", "model not loaded yet")
        body = await _read_body(request, cfg.max_body_bytes)
        windows = parse_windows(body, cfg, batch)
        t1 = time.perf_counter()
        try:
            latent, motifs = state.backend.infer(windows)
        except Exception as exc:  # a backend fault is ours, not the client's: 500, logged, worker stays up
            state.errors.labels("backend").inc()
            state.requests.labels(endpoint, "500").inc()
            log.error(json.dumps({"event": "inference_failed", "error": str(exc)}))
            return _error(500, "inference_failed", "backend inference failed; see sidecar logs")
        per_window = (time.perf_counter() - t1) / len(windows)
        for _ in range(len(windows)):
            state.inference_latency.observe(per_window)
        state.windows.inc(len(windows))
        payload = (
            {"latent": latent, "motif_scores": motifs}
            if batch
            else {"latent": latent[0], "motif_scores": motifs[0]}
        )
        state.requests.labels(endpoint, "200").inc()
        return ORJSONResponse(payload)

    @app.post("/infer")
    async def infer(request: Request) -> Response:
        return await _infer(request, batch=False)

    @app.post("/infer/batch")
    async def infer_batch(request: Request) -> Response:
        return await _infer(request, batch=True)

    @app.get("/healthz")
    async def healthz() -> Response:
        return ORJSONResponse(
            {
                "status": "ok" if state.ready else "loading",
                "backend": state.backend.name if state.backend else None,
                "backend_reason": state.backend_reason,
                "hef_sha256": state.hef_sha256,
                "config_version": cfg.config_version,
                "input_shape": [cfg.window_length, cfg.window_channels],
                "output_shapes": {"latent": [cfg.latent_dim], "motif_scores": [cfg.num_motifs]},
                "uptime_s": round(time.monotonic() - state.started, 3),
            }
        )

    @app.get("/readyz")
    async def readyz() -> Response:
        if state.ready:
            return ORJSONResponse({"ready": True})
        return _error(503, "not_ready", "model not loaded or warm-up not passed")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    return app
