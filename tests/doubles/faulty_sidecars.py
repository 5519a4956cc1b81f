"""TEST DOUBLES: faulty sidecars for the canary fault tests — never shipped.

Each wraps the real sidecar app (hailo_sidecar) and changes one thing:
  python -m tests.doubles.faulty_sidecars slow    # every inference takes twice as long, at least 5 ms (a 5 ms model at 10 ms)
  python -m tests.doubles.faulty_sidecars drift   # outputs drift away from the ONNX reference
  python -m tests.doubles.faulty_sidecars crash   # exits at start-up, every time (crash loop)
  python -m tests.doubles.faulty_sidecars nometrics  # serves correctly but has no /metrics (gate can't cross-check)
Garbage a canary may send back (the gate must turn each into a failed or inconclusive check, never raise):
  shortlatent     # latent of 32 values instead of 64
  wrongrows       # /infer/batch answers one row fewer than it was sent
  nan             # NaN in latent: the sidecar refuses its own output (422 output_non_finite)
  http500         # every inference fails: 500 with the sidecar's JSON error body
  nonjson         # /infer and /infer/batch answer 200 with an HTML page
  hang            # /infer and /infer/batch never answer (the device is stuck); the rest still serves
  garbagemetrics  # correct answers, but /metrics is 200 with text that is not Prometheus
A second argument (a glob) names the release tags that are faulty (HAILO_RELEASE_TAG, passed by the
device agent's restart command): other releases are served unmodified, so restoring the
last-known-good release on the same device really works.
"""

from __future__ import annotations

import asyncio
import sys
import time

import numpy as np

INFER_PATHS = ("/infer", "/infer/batch")


def _serve(patch, wrap=None) -> int:
    import uvicorn
    from hailo_sidecar.app import create_app, load
    from hailo_sidecar.config import SidecarConfig

    cfg = SidecarConfig.from_env()
    app = create_app(cfg)
    state = app.sidecar
    load(state)
    patch(state)
    if patch is no_metrics:
        wrap = _replace(("/metrics",), 404, b'{"error": "not_found", "detail": "no route /metrics"}', b"application/json")
    served = wrap(app) if wrap is not None else app
    # A short graceful shutdown: the hang double's requests never finish on their own.
    uvicorn.run(served, host="127.0.0.1", port=cfg.port, log_config=None, access_log=False, lifespan="off",
                timeout_graceful_shutdown=2)
    return 0


def _unchanged(state) -> None:
    pass


def _replace(paths, status: int, body: bytes, content_type: bytes):
    """ASGI wrapper: requests to ``paths`` get this raw answer instead of the sidecar's."""

    def wrap(app):
        async def asgi(scope, receive, send):
            if scope["type"] != "http" or scope.get("path") not in paths:
                await app(scope, receive, send)
                return
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        return asgi

    return wrap


def _hang(app):
    async def asgi(scope, receive, send):
        if scope["type"] == "http" and scope.get("path") in INFER_PATHS:
            await asyncio.sleep(3600)  # a stuck device: no answer, but the server stays up
        await app(scope, receive, send)

    return asgi


def _patch_outputs(change):
    def patch(state) -> None:
        inner = state.backend.infer

        def infer(windows):
            latent, motifs = inner(windows)
            return change(latent, motifs)

        state.backend.infer = infer

    return patch


def _with_nan(latent, motifs):
    latent = latent.copy()
    latent[:, 0] = np.nan
    return latent, motifs


def _failing(state) -> None:
    def infer(windows):
        raise RuntimeError("device stopped answering")

    state.backend.infer = infer


MODES = {
    "shortlatent": (_patch_outputs(lambda latent, motifs: (latent[:, :32].copy(), motifs)), None),
    "wrongrows": (_patch_outputs(lambda latent, motifs: (latent[:-1], motifs[:-1]) if len(latent) > 1 else (latent, motifs)),
                  None),
    "nan": (_patch_outputs(_with_nan), None),
    "http500": (_failing, None),
    "nonjson": (_unchanged, _replace(INFER_PATHS, 200, b"<html><body>Service Unavailable</body></html>", b"text/html")),
    "hang": (_unchanged, _hang),
    "garbagemetrics": (_unchanged, _replace(("/metrics",), 200, b"<<< not prometheus {{{ \x00 le=oops\n", b"text/plain")),
}


def slow(state) -> None:
    inner = state.backend.infer

    def infer(windows):
        t0 = time.perf_counter()
        out = inner(windows)
        time.sleep(max(time.perf_counter() - t0, 0.005))
        return out

    state.backend.infer = infer


def drift(state) -> None:
    inner = state.backend.infer
    rng = np.random.default_rng(7)

    def infer(windows):
        latent, motifs = inner(windows)
        latent = latent + rng.standard_normal(latent.shape).astype(np.float32) * np.abs(latent).mean() * 2
        return latent, motifs[:, ::-1].copy()

    state.backend.infer = infer


def no_metrics(state) -> None:
    """Outputs and speed untouched; /metrics answers 404 (see _serve)."""


if __name__ == "__main__":
    import fnmatch
    import os

    mode = sys.argv[1] if len(sys.argv) > 1 else "crash"
    faulty_tag = sys.argv[2] if len(sys.argv) > 2 else None
    if faulty_tag is not None and not fnmatch.fnmatchcase(os.environ.get("HAILO_RELEASE_TAG", ""), faulty_tag):
        sys.exit(_serve(lambda state: None))
    if mode == "crash":
        print("faulty sidecar double: crashing at start-up", file=sys.stderr)
        sys.exit(3)
    if mode in MODES:
        sys.exit(_serve(*MODES[mode]))
    sys.exit(_serve({"slow": slow, "drift": drift, "nometrics": no_metrics}[mode]))
