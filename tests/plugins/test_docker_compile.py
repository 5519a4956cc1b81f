"""The compile task's compiler container, on a real Docker engine, through the Docker provider's hook.

The compiler image is built from the project's docker/hailo_compiler/Dockerfile. The licensed DFC
wheel cannot be had here, so the wheel it installs is a stand-in named like the DFC's whose `hailo`
console script is the strict CLI double (tests/doubles/bin/hailo), with onnx and numpy wheels beside
it (fetched once on the host, then cached; the image build itself is offline: PIP_NO_INDEX=1).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.fixtures.docker_engine import REPO
from tests.fixtures.doubles import DOUBLES_BIN

pytestmark = [pytest.mark.docker, pytest.mark.airflow]

DFC_VERSION = "3.33.0"
IMAGE = "hailo-compiler-test:dfc-double"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed: same bytes every run, so BuildKit's cache is reused


def _dfc_double_wheel(dest: Path, requires: list[str]) -> Path:
    """A wheel named like the DFC's (hailo_dataflow_compiler-3.33.0-*.whl) whose `hailo` is the double."""
    dist = f"hailo_dataflow_compiler-{DFC_VERSION}.dist-info"
    files = {
        "hailo_cli_double.py": (DOUBLES_BIN / "hailo").read_text(),
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: hailo_dataflow_compiler\nVersion: " + DFC_VERSION + "\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: hailo-pipeline-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[console_scripts]\nhailo = hailo_cli_double:main\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{dist}/RECORD"])
    wheel = dest / f"hailo_dataflow_compiler-{DFC_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE), text)
    return wheel


def _dependency_wheels(requires: list[str]) -> Path:
    """onnx + numpy (and their dependencies) for the base image's CPython 3.11 on x86_64, cached."""
    key = hashlib.sha256(json.dumps(requires).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hailo-pipeline-tests" / f"dfc-deps-{key}"
    if not (cache / ".complete").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version", "3.11",
                "--implementation", "cp", "--dest", str(cache)]
        for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"):
            argv += ["--platform", tag]
        res = subprocess.run([*argv, *requires], capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            pytest.fail(f"pip download of the double's dependencies failed: {res.stderr[-1500:]}")
        (cache / ".complete").write_text(key)
    return cache


@pytest.fixture(scope="module")
def dfc_double_image(docker_cli, base_image, tmp_path_factory) -> str:
    """The compiler image, built from docker/hailo_compiler/Dockerfile with the double as its DFC."""
    requires = [f"onnx=={importlib.metadata.version('onnx')}", f"numpy=={importlib.metadata.version('numpy')}"]
    ctx = tmp_path_factory.mktemp("compiler-ctx")
    shutil.copyfile(REPO / "docker" / "hailo_compiler" / "Dockerfile", ctx / "Dockerfile")
    shutil.copyfile(REPO / "docker" / "hailo_compiler" / ".dockerignore", ctx / ".dockerignore")
    (ctx / "dfc").mkdir()
    _dfc_double_wheel(ctx / "dfc", requires)
    for wheel in _dependency_wheels(requires).glob("*.whl"):
        shutil.copyfile(wheel, ctx / "dfc" / wheel.name)
    res = subprocess.run(
        [docker_cli, "build", "--progress=plain", "--build-arg", f"BASE_IMAGE={base_image}",
         "--build-arg", f"DFC_VERSION={DFC_VERSION}", "--build-arg", "PIP_NO_INDEX=1", "-t", IMAGE, str(ctx)],
        capture_output=True, text=True, timeout=900, env={"PATH": "/usr/bin:/bin", "DOCKER_BUILDKIT": "1"},
    )
    if res.returncode != 0:
        pytest.fail(f"building the compiler image failed: {res.stderr[-3000:]}")
    return IMAGE


def _image_id(docker_cli: str, image: str) -> str:
    return subprocess.run([docker_cli, "image", "inspect", "-f", "{{.Id}}", image], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def pipeline_root(tmp_path, monkeypatch) -> Path:
    """A fresh PipelineEnv from the environment (what run_step builds) with no `hailo` on the host."""
    root = tmp_path / "root"
    for var in ("HAILO_ARTIFACT_ROOT", "HAILO_WORK_ROOT", "HAILO_KEYS_DIR", "HAILO_ARTIFACT_STORE", "HAILO_DFC_BIN",
                "HAILO_COMPILER_IMAGE", "HAILO_DFC_LICENSE", "HAILO_REGISTRY", "HAILO_SIGNING_KEY", "HAILO_DEVICES_FILE",
                "AIRFLOW_VAR_HAILO_COMPILER_IMAGE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HAILO_PIPELINE_ROOT", str(root))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert shutil.which("hailo") is None
    return root


def test_compile_task_runs_the_dfc_in_the_compiler_image(docker_cli, dfc_double_image, pipeline_root, monkeypatch):
    """The DAG's compile_hef task with the image configured as the Airflow Variable hailo_compiler_image:
    the four DFC commands run in the container (the host has no `hailo`; in dev mode it would have
    written a placeholder), the HEF is the double's, and the manifest names the exact image."""
    from airflow.sdk.exceptions import AirflowException
    from hailo_airflow.operators import HailoCompileOperator

    from release import build_steps
    from release.hef_format import check_hef
    from release.manifest import ReleaseManifest
    from release.pipeline_env import PipelineEnv
    from release.request import ReleaseRequest
    from release.store import LocalArtifactStore
    from release.verify import CANDIDATE

    req = ReleaseRequest(continuity_id="ADR-0007-hailo-docker-2025-08-31", release_tag="c1", config_version="cfg-1",
                         device="local", triggered_by="pytest")
    env = PipelineEnv.from_env()
    store = LocalArtifactStore(env.store_root)
    build_steps.validate(req, env, store)
    op = HailoCompileOperator(task_id="compile_hef", request=req.model_dump(mode="json"))

    # HAILO_COMPILER_IMAGE wins over the Variable: an image the engine lacks fails the task, saying so.
    monkeypatch.setenv("AIRFLOW_VAR_HAILO_COMPILER_IMAGE", dfc_double_image)
    monkeypatch.setenv("HAILO_COMPILER_IMAGE", "hailo-compiler-test:absent")
    with pytest.raises(AirflowException, match="hailo-compiler-test:absent is not on the Docker engine"):
        op.execute(context={})  # type: ignore[arg-type]
    monkeypatch.delenv("HAILO_COMPILER_IMAGE")

    result = op.execute(context={})  # type: ignore[arg-type]
    # No HAILO_DFC_LICENSE here: no licence is mounted (the CLI-path test sets one).
    assert "parser: licence absent" in (env.work_dir("c1", "compile") / "dfc" / "hailo_sdk.client.log").read_text()
    image_id = _image_id(docker_cli, dfc_double_image)
    assert result["step"]["status"] == "double", result["step"]
    assert image_id in result["step"]["reason"]
    assert result["hef"]["compiler_image"] == image_id  # a local build: no registry digest, its image ID
    assert (result["hef"]["dfc_version"], result["hef"]["hailort_version"]) == (DFC_VERSION, "4.23.0")
    hef = env.work_dir("c1", "compile") / "artifacts" / result["hef_name"]
    assert check_hef(hef) == "hef" and b"hailo CLI test double" in hef.read_bytes()
    build = env.work_dir("c1", "compile") / "dfc"
    assert "test double of the Hailo DFC CLI" in (build / "hailo_version.txt").read_text()
    assert (build / "out" / "tcn_encoder.hef").stat().st_uid == os.getuid()  # written as the caller
    assert {"hailo_sdk.client.log", "allocator.log"} <= {p.name for p in build.iterdir()}
    leftover = subprocess.run([docker_cli, "ps", "-aq", "--filter", f"ancestor={image_id}"], capture_output=True,
                              text=True, check=True).stdout.split()
    assert leftover == []  # every stage's container is removed

    for step in (build_steps.build_image, build_steps.sign, build_steps.write_manifest):
        step(req, env, store)
    manifest = ReleaseManifest.from_json(store.get_bytes("c1", CANDIDATE))
    assert manifest.hef.compiler_image == image_id and not manifest.hef.real_compile


def test_docker_hook_runner(docker_cli, base_image, tmp_path):
    """The runner alone: cwd is the mounted build dir, exit codes and stderr come back, no network,
    files stay the caller's, a stage that overruns its timeout is killed, and the image is pinned."""
    from hailo_airflow.docker_compile import DockerHookRunner

    from release.errors import StepFailed

    os.chmod(tmp_path, 0o777)
    runner = DockerHookRunner(image=base_image)
    ok = runner.run(["python3", "-c", "import os; open('out.har','w').write('har'); print('HailoRT v4.23.0'); "
                     "print('Hailo Dataflow Compiler v3.33.0'); print(os.getcwd())"], tmp_path, 120)
    assert ok.returncode == 0, ok.stderr
    assert "Hailo Dataflow Compiler v3.33.0" in ok.stdout and "/work" in ok.stdout
    assert runner.resolved_image == _image_id(docker_cli, base_image)
    assert (tmp_path / "out.har").read_text() == "har"
    assert (tmp_path / "out.har").stat().st_uid == os.getuid()
    bad = runner.run(["python3", "-c", "import sys; print('[error] Agent infeasible', file=sys.stderr); sys.exit(3)"],
                     tmp_path, 120)
    assert bad.returncode == 3 and "Agent infeasible" in bad.stderr and "Agent infeasible" not in bad.stdout
    net = runner.run(["python3", "-c", "import os; print(sorted(os.listdir('/sys/class/net')))"], tmp_path, 120)
    assert net.returncode == 0 and "['lo']" in net.stdout  # no network but loopback in the compiler container
    with pytest.raises(StepFailed, match="timed out after 2s"):
        runner.run(["sleep", "60"], tmp_path, 2)


def _validated(tag: str):
    from release import build_steps
    from release.pipeline_env import PipelineEnv
    from release.request import ReleaseRequest
    from release.store import LocalArtifactStore

    req = ReleaseRequest(continuity_id="ADR-0007-hailo-docker-2025-08-31", release_tag=tag, config_version="cfg-1",
                         device="local", triggered_by="pytest")
    env = PipelineEnv.from_env()
    store = LocalArtifactStore(env.store_root)
    build_steps.validate(req, env, store)
    return req, env, store


def test_cli_path_compiles_in_the_compiler_image(docker_cli, dfc_double_image, pipeline_root, monkeypatch):
    """Without Airflow (release.pipeline / the CLI), HAILO_COMPILER_IMAGE makes the same step run each
    DFC command with `docker run` in that image."""
    from release import build_steps

    monkeypatch.setenv("HAILO_COMPILER_IMAGE", dfc_double_image)
    monkeypatch.setenv("HAILO_DOCKER_BIN", docker_cli)
    licence = pipeline_root.parent / "hailo.lic"
    licence.write_text("licence stand-in\n")
    monkeypatch.setenv("HAILO_DFC_LICENSE", str(licence))
    req, env, store = _validated("k1")
    result = build_steps.compile_hef(req, env, store)
    assert result.step.status == "double" and result.hef.compiler_image == _image_id(docker_cli, dfc_double_image)
    build = env.work_dir("k1", "compile") / "dfc"
    assert "test double" in (build / "hailo_version.txt").read_text()
    # Every stage saw the licence, mounted read-only (HAILO_DFC_LICENSE), not copied into the build dir.
    log = (build / "hailo_sdk.client.log").read_text()
    assert all(f"{stage}: licence present, 17 bytes" in log for stage in ("parser", "optimize", "compiler")), log
    assert not any(p.name == "hailo.lic" for p in build.rglob("*"))


def test_without_an_image_the_host_hailo_runs_or_a_dev_placeholder(pipeline_root, monkeypatch):
    """No image anywhere (operator, env, Variable): `hailo` on the host; without one, dev mode only
    gets a marked placeholder, and production fails."""
    from airflow.sdk.exceptions import AirflowException
    from hailo_airflow.operators import HailoCompileOperator

    req, _, _ = _validated("h1")
    op = HailoCompileOperator(task_id="compile_hef", request=req.model_dump(mode="json"))
    assert op.resolve_compiler_image() is None
    placeholder = op.execute(context={})  # type: ignore[arg-type]
    assert placeholder["step"]["status"] == "placeholder" and placeholder["hef"]["compiler_image"] is None
    prod, _, _ = _validated("h2")
    prod_op = HailoCompileOperator(task_id="compile_hef", request={**prod.model_dump(mode="json"), "production": True})
    with pytest.raises(AirflowException, match="the Hailo DFC CLI is not installed"):
        prod_op.execute(context={})  # type: ignore[arg-type]
    monkeypatch.setenv("PATH", f"{DOUBLES_BIN}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin")
    host = op.execute(context={})  # type: ignore[arg-type]
    assert host["step"]["status"] == "double" and host["hef"]["compiler_image"] is None
    assert "compiler image" not in host["step"]["reason"]
