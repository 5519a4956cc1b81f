"""`python -m hailo_sidecar`: serve on $HOST:$PORT (default 0.0.0.0:9000).

A sidecar that cannot serve must not look alive, so the HEF check, model load and golden-window
warm-up run, and the port is bound, before the server starts. Any failure on that path — whatever
library raised it (onnxruntime's pybind errors, OSError from bind, ImportError) — ends in one
documented JSON line on stderr and exit 2:

    {"level": "error", "event": "refusing_to_start", "reason": "..."}

(plus "error_type" and "traceback" when the exception is not one of the sidecar's own).
Imports are deferred to where they are needed: what the chosen backend needs and nothing more.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import traceback
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a record's JSON message is merged in, and an attached exception
    keeps its traceback (the previous formatter dropped ``exc_info`` and so lost every traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        try:
            body = json.loads(msg)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"message": msg}
        out = {"ts": round(time.time(), 3), "level": record.levelname.lower(), "logger": record.name, **body}
        if record.exc_info:
            exc = record.exc_info[1]
            out["error_type"] = type(exc).__name__ if exc is not None else None
            out["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out)


def refusal(exc: BaseException) -> str:
    """The documented refusal line for ``exc``."""
    from hailo_sidecar.backends import BackendError
    from hailo_sidecar.config import ConfigError

    line: dict[str, object] = {"level": "error", "event": "refusing_to_start", "reason": str(exc) or type(exc).__name__}
    if not isinstance(exc, (ConfigError, BackendError)):
        line["error_type"] = type(exc).__name__
        line["traceback"] = "".join(traceback.format_exception(exc))
    return json.dumps(line)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts so a busy port is a refusal (exit 2).
    proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only for sockets
    that say so, and without it every keep-alive answer waited for the client's delayed ACK
    (/infer p50 44 ms instead of 0.55 ms on the asyncio loop + h11 the runtime image runs)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn() -> tuple[Any, Any]:
    """uvicorn's Config and Server without executing uvicorn/__init__.py, which imports the CLI
    (click) and the reload/multiprocess supervisors (multiprocessing, shutil → bz2, lzma) that a
    programmatic server never uses: `import uvicorn` cost 126 ms CPU against 92 ms for this path,
    measured here (median of 15, loaded machine). The package module is created from its spec but
    not executed, then given the two names its submodules import from it (uvicorn.lifespan.*
    does `from uvicorn import Config`). Any surprise falls back to the plain import."""
    import importlib.util

    if "uvicorn" not in sys.modules:
        spec = importlib.util.find_spec("uvicorn")
        if spec is not None and spec.submodule_search_locations is not None:
            sys.modules["uvicorn"] = importlib.util.module_from_spec(spec)
    try:
        from uvicorn.config import Config
        from uvicorn.server import Server
    except ImportError:
        for name in [m for m in sys.modules if m == "uvicorn" or m.startswith("uvicorn.")]:
            del sys.modules[name]
        import uvicorn

        return uvicorn.Config, uvicorn.Server
    package = sys.modules["uvicorn"]
    if not hasattr(package, "Config"):
        setattr(package, "Config", Config)  # noqa: B010 - the module object has no such names yet
        setattr(package, "Server", Server)  # noqa: B010
    return Config, Server


def main() -> int:
    # numpy's OpenBLAS starts one thread per core at import: 79 vs 153 ms CPU for `import numpy`
    # measured here (median of 15). The sidecar runs no BLAS (onnxruntime has its own kernels,
    # the stub is plain Python), so one thread is all it needs; an operator's setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        from hailo_sidecar.config import SidecarConfig

        cfg = SidecarConfig.from_env()
        from hailo_sidecar.backends import prestart_identify

        prestart_identify(cfg)
        from hailo_sidecar.app import create_app, load

        app = create_app(cfg)
        load(app.sidecar)
        host = os.environ.get("HOST", "0.0.0.0")  # noqa: S104 - a container port, published explicitly
        sock = _bind(host, cfg.port)
        config_cls, server_cls = _uvicorn()
        # ws="none": the default "auto" imports the websockets library (~9 ms here) for a server with no WebSocket
        # route; proxy_headers=False: nothing proxies EdgeInfer's calls, so no X-Forwarded-* rewriting per request.
        # SIDECAR_LOOP / SIDECAR_HTTP (uvicorn's loop and http settings, default auto) let the bench run
        # the runtime image's stack (asyncio + h11: uvloop and httptools are not in the image) here.
        config = config_cls(
            app, log_config=None, access_log=False, lifespan="off", ws="none", proxy_headers=False,
            loop=os.environ.get("SIDECAR_LOOP", "auto"), http=os.environ.get("SIDECAR_HTTP", "auto"),
        )
        config.load()  # protocol, loop and lifespan classes: an import failure here is a refusal too
        server = server_cls(config)
    except Exception as exc:
        print(refusal(exc), file=sys.stderr, flush=True)
        return 2
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
