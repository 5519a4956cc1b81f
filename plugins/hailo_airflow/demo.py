"""The main job on embedded defaults: run hailo_canary_release end to end on this machine.

    python -m hailo_airflow.demo [--tag T] [--continuity-id ID] [--config-version V] [--onnx PATH]

Airflow runs for real (SQLite, in-process `dag.test()`); the device is this machine (`local`
target: device agent + sidecar on the onnx backend). Prints where the manifest and the gate
report are, and the verdict. Exit 0 when the release was promoted, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def ensure_local_registry(root: Path, port: int = 5000) -> str | None:
    """Start Debian's docker-registry on 127.0.0.1 when a Docker engine answers; None otherwise."""
    import shutil
    import socket
    import time

    docker = "/usr/bin/docker"
    if not Path(docker).exists() or subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        return None
    addr = f"127.0.0.1:{port}"
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return addr  # already serving
    binary = shutil.which("docker-registry")
    if binary is None:
        return None
    (root / "registry").mkdir(parents=True, exist_ok=True)
    config = root / "registry" / "config.yml"
    config.write_text(f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {root / 'registry' / 'data'}}}}}\n"
                      f"http: {{addr: {addr}}}\n")
    subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return addr
        time.sleep(0.1)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default=f"demo-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}")
    parser.add_argument("--continuity-id", default="ADR-0007-hailo-docker-2025-08-31")
    parser.add_argument("--config-version", default="cfg-2026.11.0")
    parser.add_argument("--onnx", default="sample", help="'sample' or an absolute path to a .onnx")
    parser.add_argument("--device", default="local")
    args = parser.parse_args(argv)

    os.environ.setdefault("HAILO_PIPELINE_ROOT", str(REPO_ROOT / "artifacts"))
    if "HAILO_REGISTRY" not in os.environ:
        registry = ensure_local_registry(Path(os.environ["HAILO_PIPELINE_ROOT"]))
        if registry:
            os.environ["HAILO_REGISTRY"] = registry
            print(f"→ OCI registry at {registry} (docker-registry)", flush=True)
        else:
            print("→ no Docker engine/registry here: the image step will be recorded as skipped", flush=True)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    airflow = Path(sys.executable).with_name("airflow")
    print("→ airflow db migrate", flush=True)
    migrate = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True)
    if migrate.returncode != 0:
        print(migrate.stdout[-2000:], migrate.stderr[-2000:], file=sys.stderr)
        return 1

    pools = subprocess.run([str(airflow), "pools", "import", str(REPO_ROOT / "docker" / "airflow" / "pools.json")],
                           capture_output=True, text=True)
    if pools.returncode != 0:
        print(pools.stderr[-2000:], file=sys.stderr)
        return 1

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    if bag.import_errors:
        print(f"DAG import errors: {bag.import_errors}", file=sys.stderr)
        return 1
    dag = bag.dags["hailo_canary_release"]
    conf = {
        "continuity_id": args.continuity_id, "release_tag": args.tag, "onnx_location": args.onnx,
        "config_version": args.config_version, "device": args.device, "gate_overrides": {}, "production": False,
    }
    print(f"→ hailo_canary_release {json.dumps(conf)}", flush=True)
    run = dag.test(run_conf=conf)

    from release.pipeline_env import PipelineEnv
    from release.store import MANIFEST_NAME, LocalArtifactStore

    env = PipelineEnv.from_env()
    store = LocalArtifactStore(env.store_root)
    print(f"\nDAG run {run.run_id}: {run.state}")
    if not store.is_published(args.tag):
        print(f"release {args.tag} was not published; see the task logs above and `hailo-release history --tag {args.tag}`")
        return 1
    manifest = json.loads(store.get_bytes(args.tag, MANIFEST_NAME))
    gate = manifest["gate"]
    print(f"release   {args.tag} (#{manifest['release_counter']}) → {manifest['state']}")
    print(f"verdict   {gate['verdict']}: {'; '.join(gate['reasons'])}")
    measured = gate.get("measured", {})
    if measured.get("p95_ms") is not None:
        print(f"latency   p95 {measured['p95_ms']:.2f} ms, {measured['windows_per_s']:.1f} windows/s "
              f"(limits: p95 < {gate['thresholds']['p95_ms']} ms, >= {gate['thresholds']['min_windows_per_s']} windows/s)")
    print(f"manifest  {store.uri(args.tag, MANIFEST_NAME)}")
    print(f"gate      {gate.get('report_uri')}")
    print(f"histogram {gate.get('histogram_uri')}")
    print("steps:")
    for step in manifest["steps"]:
        print(f"  {step['name']:<9} {step['status']:<12} {step['reason']}")
    if manifest.get("lease_s"):
        print(f"lease     {manifest['lease_s']:.0f}s to commit the canary, else the device restored last-known-good")
    from release.canary import EXIT_CODES
    from release.states import ReleaseState

    return EXIT_CODES.get(ReleaseState(manifest["state"]), 1)  # the same codes as `hailo-release run`


if __name__ == "__main__":
    raise SystemExit(main())
