"""Build-time generator of the sidecar's prebuilt files: the OpenAPI document and /docs page (FastAPI
is a build-time dependency only: importing it cost ~370 ms of the old cold start), and golden.npy,
the warm-up windows (so the real backends' warm-up does not import numpy.random).

    python -m hailo_sidecar.openapi_gen          # rewrite hailo_sidecar/openapi.json, docs.html, golden.npy
    python -m hailo_sidecar.openapi_gen --check  # exit 1 when the committed files are stale

The routes are declared here with FastAPI exactly as the old run-time app declared them, plus the
request and response schemas of the contract (shared/contract.md); tests/sidecar checks that the
documents the running sidecar serves equal what this module generates from the source.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hailo_sidecar.app import ROUTES, STATIC

TITLE, VERSION = "hailo-sidecar", "0.1.0"

_NUM = {"type": "number"}
_ROW = {"type": "array", "items": _NUM, "minItems": 9, "maxItems": 9, "description": "one time step: 9 channels"}
_WINDOW = {"type": "array", "items": _ROW, "minItems": 100, "maxItems": 100, "description": "100 time steps"}
_ERROR = {
    "type": "object", "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string", "description": "what is wrong"}},
}
_ERRORS = {
    str(code): {"description": text, "content": {"application/json": {"schema": _ERROR}}}
    for code, text in (
        (400, "Invalid JSON or content-length"), (413, "Body or batch too large"), (415, "Not application/json"),
        (422, "Wrong shape, non-numeric (bool/string/null), nested too deep, beyond float32, or outputs non-finite "
              "(input outside the model's numeric range)"),
        (503, "Model not loaded yet"),
    )
}


def _infer_doc(batch: bool) -> dict[str, Any]:
    x = {"type": "array", "items": _WINDOW, "minItems": 1} if batch else _WINDOW
    vec = {"type": "array", "items": _NUM}
    out = {"type": "array", "items": vec} if batch else vec
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {
                "type": "object", "required": ["x"], "additionalProperties": False, "properties": {"x": x},
            }}},
        },
        "responses": {
            "200": {"description": "Finite outputs", "content": {"application/json": {"schema": {
                "type": "object", "required": ["latent", "motif_scores"],
                "properties": {"latent": out, "motif_scores": out},
            }}}},
            **_ERRORS,
        },
    }


def build_app() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse

    app = FastAPI(title=TITLE, version=VERSION, openapi_url="/openapi.json", docs_url="/docs", redoc_url=None)

    def _unused() -> None:  # the generator only describes routes; the sidecar's app.py serves them
        raise NotImplementedError

    docs = {
        "/infer": ("Infer one window", _infer_doc(False), JSONResponse),
        "/infer/batch": ("Infer a batch of windows (n ≤ MAX_BATCH)", _infer_doc(True), JSONResponse),
        "/healthz": ("Liveness and identity: backend, hef_sha256, config_version, shapes", None, JSONResponse),
        "/readyz": ("200 once the model is loaded and the warm-up passed, else 503", None, JSONResponse),
        "/metrics": ("Prometheus text exposition", None, PlainTextResponse),
    }
    for path, (summary, extra, response_class) in docs.items():
        app.add_api_route(
            path, _unused, methods=[ROUTES[path]], summary=summary, openapi_extra=extra, response_class=response_class,
            name=path.strip("/").replace("/", "_"),
        )
    return app


def build_documents() -> dict[str, bytes]:
    """The bytes of openapi.json and docs.html as the sidecar must serve them."""
    from fastapi.openapi.docs import get_swagger_ui_html

    app = build_app()
    spec = json.dumps(app.openapi(), indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n"
    html = get_swagger_ui_html(openapi_url="/openapi.json", title=f"{TITLE} - Swagger UI").body
    import io

    import numpy as np

    from hailo_sidecar.runtimes import golden_windows

    golden = io.BytesIO()
    np.save(golden, golden_windows(8, prebuilt=False), allow_pickle=False)
    return {"openapi.json": spec, "docs.html": bytes(html), "golden.npy": golden.getvalue()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare with the committed files")
    parser.add_argument("--out", type=Path, default=STATIC)
    args = parser.parse_args(argv)
    stale = []
    for name, data in build_documents().items():
        target = args.out / name
        if args.check:
            if not target.is_file() or target.read_bytes() != data:
                stale.append(name)
        else:
            target.write_bytes(data)
    if stale:
        print(f"stale: {', '.join(stale)}; run python -m hailo_sidecar.openapi_gen", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
