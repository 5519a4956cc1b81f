"""`python -m hailo_sidecar`: serve on 0.0.0.0:$PORT; exit 2 with the reason if config or model is bad."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import uvicorn

from hailo_sidecar.backends import BackendError
from hailo_sidecar.config import ConfigError, SidecarConfig


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        try:
            body = json.loads(msg)
        except ValueError:
            body = {"message": msg}
        return json.dumps({"ts": round(time.time(), 3), "level": record.levelname.lower(), "logger": record.name, **body})


def main() -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        cfg = SidecarConfig.from_env()
        from hailo_sidecar.app import _load, create_app

        app = create_app(cfg)
        # Load before binding the port: a sidecar that cannot serve must not look alive.
        _load(app.state.sidecar)
    except (ConfigError, BackendError, RuntimeError) as exc:
        print(json.dumps({"level": "error", "event": "refusing_to_start", "reason": str(exc)}), file=sys.stderr)
        return 2
    host = os.environ.get("HOST", "0.0.0.0")  # noqa: S104 - a container port, published explicitly
    uvicorn.run(app, host=host, port=cfg.port, log_config=None, access_log=False, lifespan="off")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
