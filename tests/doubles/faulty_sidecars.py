"""TEST DOUBLES: faulty sidecars for the canary fault tests — never shipped.

Each wraps the real sidecar app (hailo_sidecar) and changes one thing:
  python -m tests.doubles.faulty_sidecars slow    # every inference takes twice as long, at least 5 ms (a 5 ms model at 10 ms)
  python -m tests.doubles.faulty_sidecars drift   # outputs drift away from the ONNX reference
  python -m tests.doubles.faulty_sidecars crash   # exits at start-up, every time (crash loop)
  python -m tests.doubles.faulty_sidecars nometrics  # serves correctly but has no /metrics (gate can't cross-check)
A second argument (a glob) names the release tags that are faulty (HAILO_RELEASE_TAG, passed by the
device agent's restart command): other releases are served unmodified, so restoring the
last-known-good release on the same device really works.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def _serve(patch) -> int:
    import uvicorn
    from hailo_sidecar.app import _load, create_app
    from hailo_sidecar.config import SidecarConfig

    cfg = SidecarConfig.from_env()
    app = create_app(cfg)
    state = app.state.sidecar
    _load(state)
    patch(state)
    if patch is no_metrics:
        app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/metrics"]
    uvicorn.run(app, host="127.0.0.1", port=cfg.port, log_config=None, access_log=False, lifespan="off")
    return 0


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
    """Outputs and speed untouched; the route is removed in _serve."""


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
    sys.exit(_serve({"slow": slow, "drift": drift, "nometrics": no_metrics}[mode]))
