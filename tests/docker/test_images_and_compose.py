"""Compose files and images: the compose files validate with docker-compose; the compiler image
refuses to build without the DFC wheel, and keeps the wheel out of its layers when given one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"


def _compose_config(path: Path, env: dict[str, str]) -> dict:
    compose = shutil.which("docker-compose")
    if compose is None:
        from tests.fixtures.services import unavailable

        unavailable("docker-compose is not installed")
    res = subprocess.run([compose, "-f", str(path), "config"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env})
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)


def test_pi_compose():
    digest = "sha256:" + "a" * 64
    cfg = _compose_config(DOCKER_DIR / "compose" / "docker-compose.pi.yaml",
                          {"HAILO_RUNTIME_IMAGE": f"reg.example/hailo-runtime@{digest}", "HEF_SHA256": "b" * 64,
                           "CONFIG_VERSION": "cfg-1"})
    svc = cfg["services"]["hailo-inference"]
    assert svc["image"].endswith(digest) and svc["environment"]["INFER_MODE"] == "hailo"
    assert any("/dev/hailo0" in d for d in svc["devices"])
    assert any(str(v).endswith(":ro") or (isinstance(v, dict) and v.get("read_only")) for v in svc["volumes"])
    assert svc["restart"] == "unless-stopped" and svc["read_only"] is True
    # Without the digest pinned, compose refuses (no floating tags on the device).
    compose = shutil.which("docker-compose")
    res = subprocess.run([compose, "-f", str(DOCKER_DIR / "compose" / "docker-compose.pi.yaml"), "config"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode != 0 and "HAILO_RUNTIME_IMAGE" in res.stderr


def test_gpusrv_compose():
    cfg = _compose_config(DOCKER_DIR / "compose" / "docker-compose.gpusrv.yaml", {"HAILO_RUNTIME_IMAGE": "reg.example/r:1"})
    svc = cfg["services"]["hailo-inference"]
    assert svc["environment"]["INFER_MODE"] == "stub" and "devices" not in svc


def test_airflow_compose():
    cfg = _compose_config(DOCKER_DIR / "airflow" / "docker-compose.yaml", {"POSTGRES_PASSWORD": "x"})
    services = cfg["services"]
    assert "postgres" in services and "redis" in services
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    queues = {name: svc["command"][svc["command"].index("--queues") + 1]
              for name, svc in services.items() if "celery" in " ".join(map(str, svc.get("command", [])))}
    assert sorted(queues.values()) == ["edge", "hailo-builder"]
    assert "pools import" in " ".join(services["airflow-init"]["command"])


@pytest.mark.docker
def test_compiler_image_refuses_without_wheel_and_never_bakes_it(docker_cli, base_image, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "dfc").mkdir(parents=True)
    shutil.copyfile(DOCKER_DIR / "hailo_compiler" / "Dockerfile", ctx / "Dockerfile")
    env = {"PATH": "/usr/bin:/bin", "DOCKER_BUILDKIT": "1"}
    res = subprocess.run([docker_cli, "build", "--progress=plain", "--build-arg", f"BASE_IMAGE={base_image}", "-t",
                          "hailo-compiler-test:nowheel", str(ctx)], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode != 0
    assert "not found in the build context's dfc/ directory" in res.stdout + res.stderr
    assert "Hailo Developer Zone" in res.stdout + res.stderr
    # A stand-in wheel (pure Python, named like the DFC's) proves the bind mount keeps it out of layers.
    pkg = tmp_path / "pkg"
    (pkg / "hailo_sdk_client").mkdir(parents=True)
    (pkg / "hailo_sdk_client" / "__init__.py").write_text("")
    (pkg / "pyproject.toml").write_text('[project]\nname = "hailo_dataflow_compiler"\nversion = "3.33.0"\n'
                                        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n')
    import sys

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(ctx / "dfc"), str(pkg)],
                   check=True)
    res = subprocess.run([docker_cli, "build", "--build-arg", f"BASE_IMAGE={base_image}", "-t", "hailo-compiler-test:stand-in",
                          str(ctx)], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    found = subprocess.run([docker_cli, "run", "--rm", "--entrypoint", "sh", "hailo-compiler-test:stand-in", "-c",
                            "find / -name 'hailo_dataflow_compiler-*.whl' 2>/dev/null | wc -l"],
                           capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "0"
    user = subprocess.run([docker_cli, "image", "inspect", "-f", "{{.Config.User}}", "hailo-compiler-test:stand-in"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert user == "dfc"
