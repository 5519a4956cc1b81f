"""`pip install hailo-pipeline` is the library and the `hailo-release` CLI only: the bare package,
from the hashed requirements/cli.lock, in a fresh venv, answers `status` about a real device with
no Airflow, no providers, no pytest and no google-cloud-storage installed. And the extras are what
pyproject.toml says they are.

The lock's wheels are downloaded once (hash-checked) into a cache keyed by the lock's sha256, so a
re-run installs without the network: pip's own HTTP cache stays empty here (checked: two fresh
installs both downloaded), and the download alone took 45 s of a 69 s install (bench/bench_install.py
measures the install itself)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

from release.pipeline import run_all
from release.pipeline_env import PipelineEnv
from tests.fixtures.testbed import REPO, free_port

pytestmark = pytest.mark.e2e

CLI_LOCK = REPO / "requirements" / "cli.lock"
DEVICE = "pi-bare"


def _wheel_cache(lock: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hailo-pipeline-tests"
    return base / f"wheels-{lock.stem}-{hashlib.sha256(lock.read_bytes()).hexdigest()[:16]}"


def _run(argv: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    assert res.returncode == 0, f"{argv[:4]}…: {res.stdout[-2000:]}{res.stderr[-3000:]}"
    return res


def locked_wheels(lock: Path) -> Path:
    """The lock's wheels in a local directory, downloaded once and checked against the lock's hashes."""
    cache = _wheel_cache(lock)
    if not cache.is_dir():
        partial = cache.with_name(f"{cache.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes", "--only-binary=:all:",
              "-r", str(lock), "-d", str(partial)])
        try:
            partial.rename(cache)
        except OSError:  # another run filled the cache meanwhile: theirs is as good (same hashes)
            shutil.rmtree(partial, ignore_errors=True)
        for stale in cache.parent.glob(f"wheels-{lock.stem}-*"):  # an older lock's wheels (133 MB each)
            if stale.name != cache.name and ".partial-" not in stale.name:
                shutil.rmtree(stale, ignore_errors=True)
    return cache


def project_wheel(dest: Path) -> Path:
    """hailo-pipeline's own wheel, built from a copy of what it packages (no build/ in the checkout)."""
    src = dest / "src"
    src.mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(REPO / "release", src / "release", ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dest), str(src)])
    return next(dest.glob("hailo_pipeline-*.whl"))


def pip_in(venv: Path) -> list[str]:
    """This pip, run by the venv's own interpreter on the venv (pip --python): the venv needs no pip
    of its own, which saved 15 s of ensurepip per venv at load 7 on 2 cores."""
    return [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]


def bare_install(venv: Path, work: Path) -> None:
    """python -m venv; the lock with --require-hashes --no-deps; the project with --no-deps; pip check.
    --no-compile: byte-compiling 535 MB of site-packages is the user's first import's business, and
    it made the install 45 s instead of 17 s here (load 7)."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    pip = [*pip_in(venv), "install", "--quiet", "--no-compile", "--no-index", "--no-deps"]
    _run([*pip, "--require-hashes", "--find-links", str(locked_wheels(CLI_LOCK)), "-r", str(CLI_LOCK)])
    _run([*pip, str(project_wheel(work))])
    _run([*pip_in(venv), "check"])


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """A fresh venv with the bare package, and a device running a promoted release made by the real
    pipeline (in this process, while the venv installs: the install mostly waits on disk and network)."""
    from tests.fixtures.testbed import Testbed

    root = tmp_path_factory.mktemp("bare")
    venv = root / "venv"
    failure: list[BaseException] = []

    def install() -> None:
        try:
            bare_install(venv, root / "dist")
        except BaseException as exc:  # reported by the test, not lost in the thread
            failure.append(exc)

    installer = threading.Thread(target=install)
    installer.start()
    (root / "bed").mkdir()
    bed = Testbed(root / "bed")
    try:
        spec = bed.device(DEVICE, "local", free_port())
        devices = {"devices": {DEVICE: spec.model_dump(mode="json", exclude_none=True, exclude={"name"})}}
        (bed.root / "devices.yaml").write_text(yaml.safe_dump(devices))
        bed.env = PipelineEnv(**{**bed.env.model_dump(), "devices_file": bed.root / "devices.yaml"})
        req = bed.request("v1", config_version="cfg-v1", device=DEVICE,
                          gate_overrides={"duration_s": 5, "lease_margin_s": 20})
        outcome = run_all(req, bed.env, bed.store, say=lambda _m: None)
        installer.join()
        if failure:
            raise failure[0]
        yield venv, bed, outcome
    finally:
        installer.join()
        bed.stop_sidecars()


def _bare_env(bed) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAILO_", "AIRFLOW", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "HAILO_PIPELINE_ROOT": str(bed.root), "HAILO_DEVICES_FILE": str(bed.root / "devices.yaml")}


def test_bare_install_has_no_airflow_providers_or_pytest(bare):
    venv, bed, _ = bare
    python = str(venv / "bin" / "python")
    res = subprocess.run([python, "-c", "import airflow"], capture_output=True, text=True, cwd=bed.root, timeout=60)
    assert res.returncode != 0 and "No module named 'airflow'" in res.stderr
    dists = json.loads(_run([*pip_in(venv), "list", "--format=json"], cwd=bed.root).stdout)
    names = {d["name"].lower().replace("_", "-") for d in dists}
    assert "hailo-pipeline" in names
    unwanted = {n for n in names if n.startswith(("apache-airflow", "pytest", "google-cloud")) or n == "celery"}
    assert not unwanted, f"the bare install pulled {sorted(unwanted)}"
    where = _run([python, "-c", "import release; print(release.__file__)"], cwd=bed.root).stdout.strip()
    assert where.startswith(str(venv)), where  # the installed wheel, not the checkout


def test_bare_cli_rollback_help_and_status_on_a_real_device(bare):
    venv, bed, outcome = bare
    cli = str(venv / "bin" / "hailo-release")
    env = _bare_env(bed)
    res = _run([cli, "rollback", "--help"], env=env, cwd=bed.root, timeout=60)
    assert "--device" in res.stdout and "--to" in res.stdout
    res = subprocess.run([cli, "status", "--device", DEVICE], capture_output=True, text=True, env=env, cwd=bed.root,
                         timeout=120)
    view = json.loads(res.stdout)
    if outcome.state.value == "promoted":
        assert res.returncode == 0, res.stdout + res.stderr
        assert view["device_runs"]["current"] == view["device_runs"]["committed"] == "v1"
        assert view["store_last_known_good"] == "v1" and view["agrees"] is True
    else:  # a gate that rightly did not pass on a busy host: the device is back on nothing committed
        assert view["store_last_known_good"] is None and view["device_runs"]["committed"] is None, view
    history = _run([cli, "history", "--tag", "v1"], env=env, cwd=bed.root, timeout=60).stdout.splitlines()
    assert json.loads(history[-1])["to_state"] == outcome.state.value
    # A gs:// store needs the gcs extra, which the bare package lacks: said plainly (exit 2).
    res = subprocess.run([cli, "history"], capture_output=True, text=True, cwd=bed.root, timeout=60,
                         env={**env, "HAILO_ARTIFACT_STORE": "gs://hailo-releases"})
    assert res.returncode == 2 and "hailo-pipeline[gcs]" in res.stderr, res.stderr


def _requirements(values: list[str]) -> dict[str, str]:
    return {re.split(r"[<>=!~\[ ;]", v, maxsplit=1)[0].lower(): v for v in values}


def test_extras_are_what_the_issue_names_and_the_sidecar_extra_matches_the_sidecar():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(extras) >= {"airflow", "celery", "sidecar", "dev", "gcs"}
    base = _requirements(project["dependencies"])
    assert not {n for n in base if n.startswith(("apache-airflow", "pytest", "google-cloud", "celery"))}
    assert set(_requirements(extras["gcs"])) == {"google-cloud-storage"}
    sidecar = tomllib.loads((REPO / "sidecar" / "pyproject.toml").read_text())["project"]
    at_run_time = _requirements(sidecar["dependencies"] + sidecar["optional-dependencies"]["onnx"])
    at_run_time.pop("fastapi")  # build and test time only (the OpenAPI document)
    assert _requirements(extras["sidecar"]) == at_run_time


def test_every_lock_is_hashed_and_the_gcs_lock_extends_the_cli_lock():
    def pins(name: str) -> dict[str, str]:
        text = (REPO / "requirements" / name).read_text()
        found = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, re.M))
        assert text.count("--hash=sha256:") >= len(found) > 0, name
        return found

    cli, gcs, dev = pins("cli.lock"), pins("gcs.lock"), pins("dev.lock")
    assert {k: v for k, v in gcs.items() if k in cli} == cli
    assert "google-cloud-storage" in gcs and "google-cloud-storage" not in cli
    assert not [n for n in cli if n.startswith(("apache-airflow", "pytest"))]
    # CI's set has what the on-call set has, at the same versions, for the packages that matter here.
    for name in ("google-cloud-storage", "google-api-core", "google-auth"):
        assert dev[name] == gcs[name], name
