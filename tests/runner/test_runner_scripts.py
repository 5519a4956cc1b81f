"""Runner-host scripts: shellcheck-clean, dry runs print their steps, refusals say why."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parents[2] / "runner"
SCRIPTS = sorted(RUNNER.glob("*.sh"))


def _run(script, *args, env=None):
    return subprocess.run(["bash", str(RUNNER / script), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_shellcheck_clean():
    sc = shutil.which("shellcheck")
    assert sc, "shellcheck is installed by scripts/setup.sh"
    res = subprocess.run([sc, "-x", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
    assert {p.name for p in SCRIPTS} >= {"install_docker_buildx.sh", "register_runner.sh", "preflight.sh"}


def test_install_buildx_dry_run_on_ubuntu():
    res = _run("install_docker_buildx.sh", "--dry-run",
               env={"HAILO_OS_ID": "ubuntu", "HAILO_OS_CODENAME": "noble", "HAILO_ARCH": "x86_64"})
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "docker-buildx-plugin" in out and "qemu-user-static" in out
    assert "https://download.docker.com/linux/ubuntu noble stable" in out
    assert "docker buildx create --name hailo-builder" in out and "linux/arm64" in out


@pytest.mark.parametrize(("os_id", "arch", "msg"), [("debian", "x86_64", "Ubuntu"), ("ubuntu", "aarch64", "x86_64")])
def test_install_buildx_refuses_wrong_host(os_id, arch, msg):
    res = _run("install_docker_buildx.sh", "--dry-run", env={"HAILO_OS_ID": os_id, "HAILO_ARCH": arch})
    assert res.returncode == 2 and msg in res.stderr


def test_register_runner_token_only_from_env(tmp_path):
    res = _run("register_runner.sh", "--url", "https://github.com/acme/hailo-pipeline", "--dir", str(tmp_path), "--dry-run",
               env={"RUNNER_TOKEN": "s3cr3t-token"})
    assert res.returncode == 0, res.stderr
    assert "--labels hailo-builder" in res.stdout and "s3cr3t-token" not in res.stdout + res.stderr
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_TOKEN"}
    res = subprocess.run(["bash", str(RUNNER / "register_runner.sh"), "--url", "https://github.com/acme/x", "--dry-run"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "RUNNER_TOKEN" in res.stderr
    res = _run("register_runner.sh", "--url", "http://evil;rm", "--dry-run", env={"RUNNER_TOKEN": "t"})
    assert res.returncode == 2


def test_preflight_reports_what_is_missing(tmp_path):
    env = {"DOCKER": str(tmp_path / "no-docker"), "HAILO_REGISTRY": "", "PATH": "/usr/bin:/bin"}
    res = _run("preflight.sh", env=env)
    assert res.returncode == 1
    for item in ("docker engine", "buildx linux/arm64", "DFC compiler image", "cosign", "HailoRT wheel", "registry"):
        assert f"MISSING  {item}" in res.stdout, res.stdout
    # A wheel that is named right but absent is still missing; one that exists passes its check.
    wheel = tmp_path / "hailort-4.23.0-cp311-cp311-linux_aarch64.whl"
    res = _run("preflight.sh", env={**env, "HAILO_HAILORT_WHEEL": str(wheel)})
    assert f"MISSING  HailoRT wheel {wheel}" in res.stdout
    wheel.write_bytes(b"PK")
    res = _run("preflight.sh", env={**env, "HAILO_HAILORT_WHEEL": str(wheel)})
    assert f"ok       HailoRT wheel {wheel}" in res.stdout and res.returncode == 1


@pytest.mark.parametrize("unit", ["hailo-actions-runner.service", "airflow-celery-worker@.service"])
def test_systemd_units(unit):
    path = RUNNER / "systemd" / unit
    verify = shutil.which("systemd-analyze")
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    assert {"Unit", "Service", "Install"} <= set(parser.sections())
    assert parser["Service"]["ExecStart"].startswith("/") and parser["Service"]["Restart"] == "always"
    assert parser["Service"]["User"] != "root" and parser["Service"]["NoNewPrivileges"] == "true"
    assert "Token" not in path.read_text() and "PASSWORD" not in path.read_text()
    if verify and os.path.exists("/run/systemd/system"):
        res = subprocess.run([verify, "verify", str(path)], capture_output=True, text=True)
        assert "error" not in res.stderr.lower()
    if "celery" in unit:
        assert "--queues %i" in parser["Service"]["ExecStart"]
