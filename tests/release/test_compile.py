"""The DFC compile step, driven through the strict `hailo` CLI double (tests/doubles/bin/hailo)."""

import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from release.calibration import build_calibration_set, load_windows, write_calibration_set
from release.compile import assert_deployable, compile_hef
from release.dfc import DfcVersions, check_toolchain, parse_version_output, parser_argv
from release.dfc_runners import BindMount, ContainerRunner, container_command
from release.errors import IntegrityError, InvalidInput, RefusedForProduction, StepFailed, ToolNotFound
from release.hef_format import PLACEHOLDER_MAGIC, check_hef, is_placeholder_hef
from tests.fixtures.doubles import DOUBLES_BIN


@pytest.fixture
def calib(tmp_path):
    return write_calibration_set(tmp_path / "calib")[0]


def _compile(tmp_path, onnx, calib, **kw):
    kw.setdefault("work_dir", tmp_path / "work")
    return compile_hef(
        onnx, tag="v1", net_name="tcn_encoder", artifacts_dir=tmp_path / "artifacts", calib_path=calib, **kw,
    )


def test_compile_with_double_then_cache_hit(doubles_on_path, sample_onnx_path, calib, tmp_path):
    out = _compile(tmp_path, sample_onnx_path, calib, cache_dir=tmp_path / "cache")
    assert out.compiled_by_double and not out.real and not out.placeholder and not out.cached
    assert out.hef_path == tmp_path / "artifacts" / "tcn_encoder-v1.hef"
    assert (out.dfc_version, out.hailort_version, out.hw_arch) == ("3.33.0", "4.23.0", "hailo8")
    assert out.onnx_sha256 == hashlib.sha256(sample_onnx_path.read_bytes()).hexdigest()
    assert out.calibration_sha256 == hashlib.sha256(calib.read_bytes()).hexdigest()
    assert out.hef_sha256 == hashlib.sha256(out.hef_path.read_bytes()).hexdigest()
    assert out.size == out.hef_path.stat().st_size
    assert check_hef(out.hef_path) == "hef"
    # The logs the DFC writes into its cwd stay with the build.
    assert out.logs_dir is not None
    for name in ("hailo_sdk.client.log", "allocator.log", "parser.stdout.log", "compiler.stderr.log", "hailo_version.txt"):
        assert (out.logs_dir / name).is_file(), name
    assert out.parsing_report is not None and '"net_name": "tcn_encoder"' in out.parsing_report.read_text()
    assert set(out.stage_seconds) == {"version", "parser", "optimize", "compiler"}
    # sha256sum -c (the real coreutils tool) accepts the checksum file.
    res = subprocess.run(["sha256sum", "-c", out.sums_path.name], cwd=out.sums_path.parent, capture_output=True, text=True)
    assert res.returncode == 0 and "tcn_encoder-v1.hef: OK" in res.stdout

    # Second run with unchanged inputs: no stage runs (the double would rewrite its HARs), same bytes.
    out.hef_path.unlink()
    again = _compile(tmp_path, sample_onnx_path, calib, cache_dir=tmp_path / "cache", work_dir=tmp_path / "work2")
    assert again.cached and again.hef_sha256 == out.hef_sha256 and again.cache_key == out.cache_key
    assert set(again.stage_seconds) == {"version"}
    assert not (tmp_path / "work2" / "dfc" / "tcn_encoder.har").exists()
    assert again.parsing_report is not None and again.parsing_report.is_file()


def test_changed_inputs_recompile(doubles_on_path, sample_onnx_path, calib, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = _compile(tmp_path, sample_onnx_path, calib, cache_dir=cache)
    other = tmp_path / "calib2.npy"
    np.save(other, np.ones((4, 100, 9), dtype=np.float32))
    second = _compile(tmp_path, sample_onnx_path, other, cache_dir=cache)
    assert not second.cached and second.hef_sha256 != first.hef_sha256
    script = tmp_path / "m.alls"
    script.write_text("performance_param(compiler_optimization_level=max)\n")
    third = _compile(tmp_path, sample_onnx_path, calib, cache_dir=cache, model_script=script)
    assert not third.cached and third.model_script_sha256 == hashlib.sha256(script.read_bytes()).hexdigest()
    monkeypatch.setenv("HAILO_DOUBLE_VERSION", "3.32.0")
    fourth = _compile(tmp_path, sample_onnx_path, calib, cache_dir=cache)
    assert not fourth.cached and fourth.dfc_version == "3.32.0"
    assert len({first.cache_key, second.cache_key, third.cache_key, fourth.cache_key}) == 4


def test_corrupt_cache_entry_is_recompiled(doubles_on_path, sample_onnx_path, calib, tmp_path):
    cache = tmp_path / "cache"
    first = _compile(tmp_path, sample_onnx_path, calib, cache_dir=cache)
    cached_hef = cache / str(first.cache_key) / "tcn_encoder.hef"
    cached_hef.write_bytes(cached_hef.read_bytes()[:-1] + b"X")
    again = _compile(tmp_path, sample_onnx_path, calib, cache_dir=cache)
    assert not again.cached and again.hef_sha256 == first.hef_sha256


@pytest.mark.parametrize("stage", ["parser", "optimize", "compiler"])
def test_failing_stage_named_with_log_tail(doubles_on_path, sample_onnx_path, calib, tmp_path, monkeypatch, stage):
    monkeypatch.setenv("HAILO_DOUBLE_FAIL_STAGE", stage)
    with pytest.raises(StepFailed) as exc:
        _compile(tmp_path, sample_onnx_path, calib, cache_dir=tmp_path / "cache")
    msg = str(exc.value)
    assert f"`hailo {stage}` failed with exit code 1" in msg
    assert "injected failure" in msg and "log tail" in msg
    assert not (tmp_path / "artifacts" / "tcn_encoder-v1.hef").exists()
    assert not any((tmp_path / "cache").glob("*/tcn_encoder.hef"))  # a failed build is never cached


def test_version_failure_and_wrong_toolchain(doubles_on_path, sample_onnx_path, calib, tmp_path, monkeypatch):
    monkeypatch.setenv("HAILO_DOUBLE_FAIL_STAGE", "version")
    with pytest.raises(StepFailed, match="--version` failed"):
        _compile(tmp_path, sample_onnx_path, calib)
    monkeypatch.delenv("HAILO_DOUBLE_FAIL_STAGE")
    monkeypatch.setenv("HAILO_DOUBLE_VERSION", "5.1.0")
    with pytest.raises(StepFailed, match="DFC 3.x with HailoRT 4.x") as exc:
        _compile(tmp_path, sample_onnx_path, calib)
    assert "DFC 5.1.0" in str(exc.value) and "DFC_VERSION=3.33.0" in str(exc.value)


def test_missing_tool_and_inputs(sample_onnx_path, calib, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolNotFound, match="PATH=/nonexistent") as exc:
        _compile(tmp_path, sample_onnx_path, calib)
    assert "developer-zone" in str(exc.value) and "docker/hailo_compiler" in str(exc.value)
    with pytest.raises(ToolNotFound, match="not installed"):
        _compile(tmp_path, sample_onnx_path, calib, hailo=None)
    with pytest.raises(InvalidInput, match="missing.onnx does not exist"):
        _compile(tmp_path, tmp_path / "missing.onnx", calib)
    with pytest.raises(InvalidInput, match="calibration set"):
        _compile(tmp_path, sample_onnx_path, tmp_path / "nope.npy")
    with pytest.raises(InvalidInput, match="model script"):
        _compile(tmp_path, sample_onnx_path, calib, model_script=tmp_path / "nope.alls")
    with pytest.raises(InvalidInput):
        compile_hef(sample_onnx_path, tag="v1;rm -rf /", net_name="tcn", work_dir=tmp_path, artifacts_dir=tmp_path,
                    calib_path=calib)
    with pytest.raises(InvalidInput, match="hw_arch"):
        _compile(tmp_path, sample_onnx_path, calib, hw_arch="hailo10h")


def test_placeholder_marked_and_refused_for_production(sample_onnx_path, calib, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no DFC anywhere: dev mode may write a placeholder
    out = _compile(tmp_path, sample_onnx_path, calib, allow_placeholder=True)
    assert out.placeholder and not out.real and out.dfc_version is None
    data = out.hef_path.read_bytes()
    assert data.startswith(PLACEHOLDER_MAGIC) and b"PLACEHOLDER: no DFC" in data
    assert is_placeholder_hef(out.hef_path) and check_hef(out.hef_path) == "placeholder"
    assert_deployable(out, production=False)
    assert_deployable(out.hef_path, production=False)
    with pytest.raises(RefusedForProduction, match="placeholder"):
        assert_deployable(out, production=True)
    with pytest.raises(RefusedForProduction, match="placeholder"):
        assert_deployable(out.hef_path, production=True)


def test_double_built_hef_refused_for_production_result(doubles_on_path, sample_onnx_path, calib, tmp_path):
    out = _compile(tmp_path, sample_onnx_path, calib)
    assert_deployable(out, production=False)
    with pytest.raises(RefusedForProduction, match="test double"):
        assert_deployable(out, production=True)


def test_hef_sanity_check(doubles_on_path, sample_onnx_path, calib, tmp_path):
    hef = _compile(tmp_path, sample_onnx_path, calib).hef_path
    good = hef.read_bytes()
    assert good[:4] == b"\x01HEF" and struct.unpack(">I", good[4:8])[0] == 0
    bad = tmp_path / "bad.hef"
    cases = {
        b"": "empty",
        b"ELF\x7f" + good[4:]: "not a HEF",
        good[:-10]: "v0 body",  # truncated
        good[:40] + bytes([good[40] ^ 1]) + good[41:]: "md5",  # one flipped body byte
        good[:4] + struct.pack(">I", 9) + good[8:]: "header version",
    }
    for data, why in cases.items():
        bad.write_bytes(data)
        with pytest.raises(IntegrityError, match=why):
            check_hef(bad)
        with pytest.raises(StepFailed):
            assert_deployable(bad, production=False)
    with pytest.raises(IntegrityError, match="missing"):
        check_hef(tmp_path / "absent.hef")


def test_compiler_writing_garbage_is_a_failed_step(doubles_on_path, sample_onnx_path, calib, tmp_path, monkeypatch):
    # A `hailo` wrapper that runs the double, then truncates the HEF it wrote.
    wrapper = tmp_path / "bin" / "hailo"
    wrapper.parent.mkdir()
    wrapper.write_text(
        "#!/bin/sh\n"
        f'"{sys.executable}" "{doubles_on_path / "hailo"}" "$@" || exit $?\n'
        'if [ "$1" = compiler ]; then truncate -s 20 out/tcn_encoder.hef; fi\n'
    )
    wrapper.chmod(0o755)
    with pytest.raises(StepFailed, match="invalid HEF"):
        _compile(tmp_path, sample_onnx_path, calib, hailo=str(wrapper))


def test_argv_grammar_is_exact_and_safe(tmp_path):
    argv = parser_argv("hailo", Path("model.onnx"), "tcn", "hailo8", Path("tcn.har"), start_node="window",
                       end_nodes=("latent", "motif_scores"), input_shape=(1, 100, 9), report=Path("r.json"))
    assert argv == ["hailo", "parser", "onnx", "model.onnx", "--net-name", "tcn", "--hw-arch", "hailo8",
                    "--har-path", "tcn.har", "--start-node-names", "window", "--end-node-names", "latent",
                    "motif_scores", "--tensor-shapes", "window=[1,100,9]", "--parsing-report-path", "r.json", "-y"]
    for bad in ({"net": "tcn;rm"}, {"arch": "hailo10h"}, {"start": "--hw-arch"}, {"start": "a b"}):
        with pytest.raises(InvalidInput):
            parser_argv("hailo", Path("m.onnx"), bad.get("net", "tcn"), bad.get("arch", "hailo8"), Path("x.har"),
                        start_node=bad.get("start", "window"), end_nodes=("latent",), input_shape=(1,), report=Path("r"))


def test_version_parsing_and_toolchain_check():
    v = parse_version_output("HailoRT v4.23.0\nHailo Dataflow Compiler v3.33.0\n")
    assert (v.dfc, v.hailort, v.is_double) == ("3.33.0", "4.23.0", False)
    assert check_toolchain(v, "hailo8l") is v
    with pytest.raises(StepFailed, match="lacks the hailort version"):
        parse_version_output("Hailo Dataflow Compiler v3.33.0")
    with pytest.raises(StepFailed, match="wrong toolchain for hailo8"):
        check_toolchain(DfcVersions(dfc="5.1.0", hailort="5.1.0"), "hailo8")
    with pytest.raises(StepFailed, match="wrong toolchain"):
        check_toolchain(DfcVersions(dfc="3.33.0", hailort="5.1.0"), "hailo8")


def test_container_command_as_data_and_argv(tmp_path):
    lic = tmp_path / "hailo.lic"
    lic.write_text("licence")
    build = tmp_path / "build"
    build.mkdir()
    cmd = container_command("hailo-compiler:3.33.0", ["hailo", "--version"], build, license_path=lic)
    me = f"{os.getuid()}:{os.getgid()}"  # the caller: what the DFC writes into /work stays the caller's
    assert cmd.working_dir == "/work" and cmd.network_mode == "none" and cmd.user == me
    assert (cmd.entrypoint, cmd.command) == ("hailo", ("--version",))
    assert [(m.source, m.target, m.read_only) for m in cmd.mounts] == [
        (build.resolve(), "/work", False), (lic.resolve(), "/licenses/hailo.lic", True)]
    assert cmd.docker_run_argv("/usr/bin/docker") == [
        "/usr/bin/docker", "run", "--rm", "--platform", "linux/amd64", "--network", "none", "-w", "/work",
        "--user", me,
        "--mount", f"type=bind,source={build.resolve()},target=/work",
        "--mount", f"type=bind,source={lic.resolve()},target=/licenses/hailo.lic,readonly",
        "--entrypoint", "hailo", "hailo-compiler:3.33.0", "--version"]
    with pytest.raises(InvalidInput, match="licence"):
        container_command("img", ["hailo"], build, license_path=tmp_path / "absent.lic")
    with pytest.raises(InvalidInput, match="empty DFC command"):
        container_command("img", [], build)


class DoubleImageRunner(ContainerRunner):
    """The product's ContainerRunner with a Debian base image standing in for the licensed compiler
    image: the CLI double and this interpreter are mounted read-only at their own paths, and the
    double runs under this interpreter (the base image has no Python). ``fail_stage`` makes the
    double fail that stage (through a wrapper that sets HAILO_DOUBLE_FAIL_STAGE)."""

    def __init__(self, image: str, *, docker: str, license_path: Path | None = None, fail_stage: str | None = None,
                 wrapper_dir: Path | None = None) -> None:
        super().__init__(image, docker=docker, license_path=license_path)
        venv, base = Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()
        self.tool = DOUBLES_BIN / "hailo"
        self.ro = [BindMount(source=p, target=str(p), read_only=True) for p in {venv, base, DOUBLES_BIN}]
        if fail_stage is not None:
            assert wrapper_dir is not None
            wrapper_dir.mkdir(parents=True, exist_ok=True)
            self.tool = wrapper_dir / "hailo-failing"
            self.tool.write_text(f"import os, runpy, sys\nos.environ['HAILO_DOUBLE_FAIL_STAGE'] = {fail_stage!r}\n"
                                 f"sys.argv[0] = {str(DOUBLES_BIN / 'hailo')!r}\n"
                                 f"runpy.run_path(sys.argv[0], run_name='__main__')\n")
            self.ro.append(BindMount(source=wrapper_dir.resolve(), target=str(wrapper_dir.resolve()), read_only=True))

    def command(self, argv, cwd):
        cmd = super().command(argv, cwd)
        assert cmd.entrypoint == "hailo"  # the product's form, then pointed at the double
        return cmd.model_copy(update={"entrypoint": str(Path(sys.executable)), "command": (str(self.tool), *cmd.command),
                                      "mounts": (*cmd.mounts, *self.ro)})


IMAGE_ID = "sha256:" + "cd" * 32
REPO_DIGEST = "registry.example/hailo-compiler@sha256:" + "ab" * 32


def test_container_runner_drives_the_same_stages(doubles_on_path, sample_onnx_path, calib, tmp_path):
    """ContainerRunner with a `docker` double that checks the run argv, then executes the command in
    the mounted dir: the compile's argv are relative and work unchanged inside the container."""
    docker = tmp_path / "docker-double"
    docker.write_text(
        "#!/usr/bin/env python3\n"
        "# test double of `docker run` for the compiler image: checks the argv, runs the command in the /work mount\n"
        "import json, os, subprocess, sys\n"
        "a = sys.argv[1:]\n"
        "if a[:2] == ['image', 'inspect']:\n"
        "    assert a[2:] == ['hailo-compiler:test'], a\n"
        f"    print(json.dumps([{{'Id': '{IMAGE_ID}', 'RepoDigests': ['{REPO_DIGEST}']}}]))\n"
        "    sys.exit(0)\n"
        "assert a[:9] == ['run', '--rm', '--platform', 'linux/amd64', '--network', 'none', '-w', '/work', '--user'], a\n"
        "i = a.index('--mount')\n"
        "src = a[i + 1].split(',')[1].removeprefix('source=')\n"
        "assert a[i + 1].endswith(',target=/work'), a\n"
        f"assert a[i + 2:i + 5] == ['--entrypoint', 'hailo', '{IMAGE_ID}'], a\n"  # every stage in the resolved image
        "sys.exit(subprocess.run(['hailo', *a[i + 5:]], cwd=src, stdin=subprocess.DEVNULL).returncode)\n"
    )
    docker.chmod(0o755)
    runner = ContainerRunner("hailo-compiler:test", docker=str(docker))
    out = _compile(tmp_path, sample_onnx_path, calib, runner=runner, hailo="hailo")
    assert out.compiled_by_double and check_hef(out.hef_path) == "hef"
    assert out.compiler_image == REPO_DIGEST  # a registry image is recorded by its registry digest
    with pytest.raises(ToolNotFound, match="Docker"):
        _compile(tmp_path, sample_onnx_path, calib, runner=ContainerRunner("img", docker=str(tmp_path / "no-docker")))


def test_calibration_set_versions_and_validation(tmp_path):
    a = build_calibration_set(tmp_path / "a")
    b = build_calibration_set(tmp_path / "b")
    assert a.path.name == "calib-v1.npy" and a.sha256 == b.sha256 and a.count == 64  # deterministic
    data = np.load(a.path, allow_pickle=False)
    assert data.dtype == np.float32 and data.shape == (64, 100, 9)
    src = tmp_path / "windows.npz"
    np.savez(src, windows=data[:5].astype(np.float64))
    from_file = build_calibration_set(tmp_path / "c", windows_file=src)
    assert from_file.count == 5 and from_file.source == str(src)
    assert np.load(from_file.path).dtype == np.float32
    assert load_windows(src).shape == (5, 100, 9)
    nan = data[:2].copy()
    nan[0, 0, 0] = np.nan
    for bad, why in ((nan, "NaN"), (data[:, :50], "shape"), (np.zeros((0, 100, 9)), "shape"),
                     (np.array([["a"] * 9] * 100)[None], "dtype")):
        with pytest.raises(InvalidInput, match=why):
            build_calibration_set(tmp_path / "d", windows=bad)
    pickled = tmp_path / "evil.npy"
    np.save(pickled, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInput, match="not a readable"):
        load_windows(pickled)
    with pytest.raises(InvalidInput, match="no array"):
        np.savez(tmp_path / "other.npz", x=data)
        load_windows(tmp_path / "other.npz")


@pytest.mark.docker
def test_compile_in_a_real_container(docker_cli, base_image, doubles_on_path, sample_onnx_path, calib, tmp_path):
    """The container path on a real Docker engine: each stage is `docker run --rm --network none
    --user uid:gid -w /work --mount <build dir>:/work --entrypoint hailo IMAGE ...`. The licensed DFC
    image cannot be built here, so the container is the Debian base image with the CLI double run by
    this interpreter, both mounted read-only (DoubleImageRunner; the compiler image's own build is
    tested in tests/docker/)."""
    lic = tmp_path / "hailo.lic"
    lic.write_text("licence stand-in\n")
    runner = DoubleImageRunner(base_image, docker=docker_cli, license_path=lic)
    out = _compile(tmp_path, sample_onnx_path, calib, runner=runner, hailo="hailo", cache_dir=tmp_path / "cache")
    assert out.compiled_by_double and check_hef(out.hef_path) == "hef"
    assert (out.dfc_version, out.hailort_version) == ("3.33.0", "4.23.0")
    assert out.logs_dir is not None and (out.logs_dir / "hailo_sdk.client.log").is_file()
    assert (out.logs_dir / "out" / "tcn_encoder.hef").stat().st_uid == os.getuid()  # written as the caller
    image_id = subprocess.run([docker_cli, "image", "inspect", "-f", "{{.Id}}", base_image], capture_output=True,
                              text=True, check=True).stdout.strip()
    assert out.compiler_image == runner.resolved_image == image_id  # pinned by ID: every stage ran in it
    # A cache hit on the host reports the image the cached HEF was compiled in, not the host.
    hit = _compile(tmp_path, sample_onnx_path, calib, hailo=str(DOUBLES_BIN / "hailo"), cache_dir=tmp_path / "cache",
                   work_dir=tmp_path / "w-hit")
    assert hit.cached and hit.compiler_image == image_id and hit.hef_sha256 == out.hef_sha256
    # Same inputs compiled on the host give the same HEF: the argv are identical in both places.
    host = compile_hef(sample_onnx_path, tag="v1", net_name="tcn_encoder", work_dir=tmp_path / "host",
                       artifacts_dir=tmp_path / "host-artifacts", calib_path=calib,
                       hailo=str(DOUBLES_BIN / "hailo"))
    assert host.hef_sha256 == out.hef_sha256 and host.compiler_image is None
    # A failing stage in the container surfaces the same way.
    failing = DoubleImageRunner(base_image, docker=docker_cli, fail_stage="optimize", wrapper_dir=tmp_path / "wrap")
    with pytest.raises(StepFailed, match="`hailo optimize` failed"):
        _compile(tmp_path, sample_onnx_path, calib, runner=failing, hailo="hailo", work_dir=tmp_path / "w3")


@pytest.mark.docker
def test_compiler_image_context_refuses_without_wheel(docker_cli, base_image):
    """Building straight from docker/hailo_compiler (its .dockerignore sends only dfc/) without the
    DFC wheel stops at once with the actionable message, not a BuildKit "not found"."""
    ctx = Path(__file__).resolve().parents[2] / "docker" / "hailo_compiler"
    if list((ctx / "dfc").glob("*.whl")):
        pytest.skip("a DFC wheel is present in docker/hailo_compiler/dfc: this test checks the refusal without one")
    res = subprocess.run(
        [docker_cli, "build", "--progress=plain", "--build-arg", f"BASE_IMAGE={base_image}", "-t",
         "hailo-compiler-test:ctx-nowheel", str(ctx)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )
    assert res.returncode != 0
    assert "hailo_dataflow_compiler-3.33.0-*.whl not found" in res.stderr and "Hailo Developer Zone" in res.stderr
    assert '"/dfc" not found' not in res.stderr
