"""Run the sidecar as a local process: the `local` device target's stand-in for `docker compose up -d`.

    python -m release.local_sidecar restart --release-dir DIR --state-dir S --port 9000
    python -m release.local_sidecar stop --state-dir S

`restart` stops the running sidecar (its whole process group, so only one process ever owns
the model — as only one may own /dev/hailo0 on the Pi), then starts `python -m hailo_sidecar`
for the release in DIR (HEF_PATH, ONNX_PATH and CONFIG_VERSION from its manifest) detached, and
returns at once: the device agent does the health check. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _stop(state_dir: Path, timeout: float = 10.0) -> None:
    pidfile = state_dir / "sidecar.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.killpg(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


def _wait_port_free(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.05)


def restart(release_dir: Path, state_dir: Path, port: int, python: str, module: str, extra_env: list[str]) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    _stop(state_dir)
    _wait_port_free(port)
    manifest = json.loads((release_dir / "manifest.json").read_text())
    env = dict(os.environ)
    env.update(
        {
            "HEF_PATH": str(release_dir / "model.hef"),
            "ONNX_PATH": str(release_dir / "model.onnx"),
            "CONFIG_VERSION": manifest["config_version"],
            "NUM_MOTIFS": str(manifest["onnx"]["outputs"][1]["shape"][-1]),
            "INFER_MODE": "onnx",
            "HAILO_SIDECAR_ALLOW_AMD64": "1",
            "HOST": "127.0.0.1",
            "PORT": str(port),
        }
    )
    for item in extra_env:
        key, _, value = item.partition("=")
        env[key] = value
    log = open(state_dir / "sidecar.log", "ab")  # noqa: SIM115 - handed to the child process
    # MODULE may carry arguments ("pkg.mod arg"): split on whitespace, no shell involved.
    proc = subprocess.Popen(
        [python, "-m", *module.split()], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, cwd=state_dir,
    )
    (state_dir / "sidecar.pid").write_text(str(proc.pid))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("restart")
    r.add_argument("--release-dir", type=Path, required=True)
    r.add_argument("--state-dir", type=Path, required=True)
    r.add_argument("--port", type=int, default=9000)
    r.add_argument("--python", default=sys.executable)
    r.add_argument("--module", default="hailo_sidecar", help="module to run (tests inject faulty sidecars here)")
    r.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for the sidecar")
    s = sub.add_parser("stop")
    s.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "stop":
        _stop(args.state_dir)
        return 0
    return restart(args.release_dir, args.state_dir, args.port, args.python, args.module, args.env)


if __name__ == "__main__":
    raise SystemExit(main())
