"""The sidecar's HTTP API (contract: shared/contract.md), as a plain ASGI application.

POST /infer        {"x": [[float x 9] x 100]}            → {"latent": [64], "motif_scores": [NUM_MOTIFS]}
POST /infer/batch  {"x": [[[float x 9] x 100], ...]}      → {"latent": [[64], ...], "motif_scores": [[..], ...]}
GET  /healthz      liveness + identity (backend, hef_sha256, config_version, shapes, uptime)
GET  /readyz       200 only once the model is loaded and the golden-window warm-up passed
GET  /metrics      Prometheus text
GET  /openapi.json, /docs   the OpenAPI document, prebuilt from the source (hailo_sidecar.openapi_gen)

Why no framework on the hot path: FastAPI's import was ~370 ms of a 530 ms app import (its
pydantic OpenAPI models alone ~140 ms), and Starlette + anyio still ~35-95 ms measured here under
load, for seven fixed routes that need no dependency injection. uvicorn serves this callable
directly; the OpenAPI document FastAPI used to build at run time is generated at build time and a
test keeps it equal to the source.

Every bad input is a 4xx JSON error saying what is wrong, never a 5xx; every output is checked
finite before it leaves (orjson would write NaN/Inf as null).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import orjson

from hailo_sidecar.backends import Backend, BackendError, HefState, Windows, nonfinite_rows, select_backend, warm_up
from hailo_sidecar.config import SidecarConfig
from hailo_sidecar.hef import HefError, inspect_hef
from hailo_sidecar.metrics import Metrics
from hailo_sidecar.validate import BadRequest, parse_windows

log = logging.getLogger("hailo_sidecar")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STATIC = Path(__file__).resolve().parent
ROUTES = {
    "/infer": "POST", "/infer/batch": "POST", "/healthz": "GET", "/readyz": "GET", "/metrics": "GET",
    "/openapi.json": "GET", "/docs": "GET",
}


class ClientGone(Exception):
    """The client closed the connection before its request body arrived."""

    def __init__(self, received: int) -> None:
        super().__init__(f"client disconnected after {received} body bytes")
        self.received = received


def inspect_hef_path(cfg: SidecarConfig) -> HefState:
    path = cfg.hef_path
    if not path.exists():
        return HefState(path)
    try:
        return HefState(path, info=inspect_hef(path))
    except HefError as exc:
        return HefState(path, problem=str(exc))


class State:
    def __init__(self, cfg: SidecarConfig) -> None:
        self.cfg = cfg
        self.started = time.monotonic()
        self.backend: Backend | None = None
        self.backend_reason = "not loaded"
        self.ready = False
        self.hef = HefState(cfg.hef_path)
        self.metrics = Metrics()

    @property
    def hef_sha256(self) -> str | None:
        return self.hef.info.sha256 if self.hef.info else None


def load(state: State) -> None:
    """Validate the HEF, choose and load the backend, warm it up; raise (refuse to start) otherwise."""
    cfg = state.cfg
    state.hef = inspect_hef_path(cfg)
    if cfg.expected_hef_sha256 and state.hef_sha256 != cfg.expected_hef_sha256:
        raise BackendError(
            f"HEF at {cfg.hef_path} has sha256 {state.hef_sha256} ({state.hef.problem or 'valid'}), "
            f"expected HEF_SHA256={cfg.expected_hef_sha256}"
        )
    selection = select_backend(cfg, state.hef)
    warm_up(selection.backend, cfg)
    state.backend, state.backend_reason = selection.backend, selection.reason
    info = state.hef.info
    hef_status = f"invalid: {state.hef.problem}" if state.hef.problem else (info.kind if info else "missing")
    state.metrics.model_info = {
        "hef_sha256": state.hef_sha256 or "none", "config_version": cfg.config_version,
        "backend": selection.backend.name, "hef_kind": info.kind if info else "none",
    }
    state.metrics.backend_info = {
        "backend": selection.backend.name, "mode": cfg.infer_mode, "reason": selection.reason, "hef_status": hef_status,
    }
    state.ready = True
    log.info(json.dumps({"event": "ready", "backend": selection.backend.name, "reason": selection.reason}))


def _json(status: int, content: Any) -> tuple[int, bytes, bytes]:
    return status, orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), b"application/json"


def _error(status: int, error: str, detail: str) -> tuple[int, bytes, bytes]:
    return _json(status, {"error": error, "detail": detail})


async def _send(send: Send, status: int, body: bytes, ctype: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    headers = dict(scope["headers"])
    ctype = headers.get(b"content-type", b"").decode("latin-1")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise BadRequest(415, "unsupported_media_type", f"content-type must be application/json, got {ctype or 'none'!r}")
    declared = headers.get(b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(400, "bad_content_length", "content-length is not a number")
        if int(declared) > limit:
            raise BadRequest(413, "body_too_large", f"body of {int(declared)} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone(size)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class SidecarApp:
    def __init__(self, cfg: SidecarConfig) -> None:
        self.cfg = cfg
        self.sidecar = State(cfg)
        self._static: dict[str, bytes] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if not self.sidecar.ready:
                        load(self.sidecar)  # raises → the server refuses to start, with the reason
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    raise
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            want = ROUTES.get(path)
            if want is None:
                await _send(tracked_send, *_error(404, "not_found", f"no route {path}; see /openapi.json"))
            elif method != want:
                status, body, ctype = _error(405, "method_not_allowed", f"{path} takes {want}, not {method}")
                await _send(tracked_send, status, body, ctype, [(b"allow", want.encode())])
            elif path in ("/infer", "/infer/batch"):
                await self._infer(scope, receive, tracked_send, batch=path == "/infer/batch")
            else:
                await _send(tracked_send, *self._get(path))
        except Exception:
            # A fault of ours, not the client's: logged with its traceback, answered as a 500 JSON error.
            log.exception(json.dumps({"event": "request_failed", "path": path}))
            self.sidecar.metrics.error("internal")
            if not started:
                await _send(send, *_error(500, "internal_error", "the sidecar failed; see its logs"))

    def _get(self, path: str) -> tuple[int, bytes, bytes]:
        state, cfg = self.sidecar, self.cfg
        if path == "/healthz":
            info = state.hef.info
            return _json(200, {
                "status": "ok" if state.ready else "loading",
                "backend": state.backend.name if state.backend else None,
                "backend_reason": state.backend_reason,
                "hef_sha256": state.hef_sha256,
                "hef_kind": info.kind if info else None,
                "hef_hw_arch": info.hw_arch if info else None,
                "hef_problem": state.hef.problem,
                "config_version": cfg.config_version,
                "input_shape": [cfg.window_length, cfg.window_channels],
                "output_shapes": {"latent": [cfg.latent_dim], "motif_scores": [cfg.num_motifs]},
                "uptime_s": round(time.monotonic() - state.started, 3),
            })
        if path == "/readyz":
            if state.ready:
                return _json(200, {"ready": True})
            return _error(503, "not_ready", "model not loaded or warm-up not passed")
        if path == "/metrics":
            body, ctype = state.metrics.render()
            return 200, body, ctype.encode()
        name = "openapi.json" if path == "/openapi.json" else "docs.html"
        if name not in self._static:
            self._static[name] = (STATIC / name).read_bytes()
        return 200, self._static[name], b"application/json" if name == "openapi.json" else b"text/html; charset=utf-8"

    async def _infer(self, scope: Scope, receive: Receive, send: Send, batch: bool) -> None:
        t0 = time.perf_counter()
        endpoint = "/infer/batch" if batch else "/infer"
        state, cfg, metrics = self.sidecar, self.cfg, self.sidecar.metrics
        if not state.ready or state.backend is None:
            metrics.request(endpoint, 503)
            await _send(send, *_error(503, "not_ready", "model not loaded yet"))
            return
        try:
            body = await _read_body(scope, receive, cfg.max_body_bytes)
            windows = parse_windows(body, cfg.window_length, cfg.window_channels, cfg.max_batch, batch)
        except ClientGone as gone:
            # Nobody to answer: count it and say so in one line, no traceback (it is not a fault).
            metrics.request(endpoint, 499)
            metrics.error("client_disconnected")
            log.warning(json.dumps({"event": "client_disconnected", "endpoint": endpoint, "body_bytes": gone.received}))
            return
        except BadRequest as exc:
            metrics.request(endpoint, exc.status)
            metrics.error(exc.error)
            await _send(send, *_error(exc.status, exc.error, exc.detail))
            metrics.observe_request(endpoint, time.perf_counter() - t0)
            return
        response = self._run(endpoint, windows, batch)
        await _send(send, *response)
        metrics.observe_request(endpoint, time.perf_counter() - t0)

    def _run(self, endpoint: str, windows: Windows, batch: bool) -> tuple[int, bytes, bytes]:
        state, metrics = self.sidecar, self.sidecar.metrics
        assert state.backend is not None
        t1 = time.perf_counter()
        try:
            latent, motifs = state.backend.infer(windows)
        except Exception as exc:  # a backend fault is ours, not the client's: 500, logged, worker stays up
            metrics.error("backend")
            metrics.request(endpoint, 500)
            log.exception(json.dumps({"event": "inference_failed", "error": str(exc)}))
            return _error(500, "inference_failed", "backend inference failed; see sidecar logs")
        per_window = (time.perf_counter() - t1) / len(windows)
        bad = nonfinite_rows(latent, motifs)
        if bad:
            metrics.nonfinite_outputs += 1
            metrics.error("non_finite_output")
            metrics.request(endpoint, 422)
            where = f"windows {bad}" if batch else "this window"
            return _error(
                422, "output_non_finite",
                f"the model's outputs for {where} are NaN/Inf: the input is outside the model's numeric range "
                "(finite float32 values this large overflow inside it); no outputs are returned",
            )
        metrics.inference_latency.observe(per_window, len(windows))
        metrics.windows += len(windows)
        metrics.request(endpoint, 200)
        payload = {"latent": latent, "motif_scores": motifs} if batch else {"latent": latent[0], "motif_scores": motifs[0]}
        return _json(200, payload)


def create_app(cfg: SidecarConfig | None = None) -> SidecarApp:
    return SidecarApp(cfg or SidecarConfig.from_env())
