import shutil
import subprocess

import pytest

from release.calibration import write_calibration_set
from release.compile import (
    PLACEHOLDER_MAGIC,
    ContainerSpec,
    assert_deployable,
    compile_hef,
    is_placeholder_hef,
)
from release.dfc import parse_version_output, parser_argv
from release.errors import InvalidInput, RefusedForProduction, StepFailed, ToolNotFound


@pytest.fixture
def calib(tmp_path):
    return write_calibration_set(tmp_path / "calib")[0]


def _compile(tmp_path, onnx, calib, **kw):
    return compile_hef(
        onnx, tag="v1", net_name="tcn_encoder", work_dir=tmp_path / "work", artifacts_dir=tmp_path / "artifacts",
        calib_path=calib, **kw,
    )


def test_compile_with_double(doubles_on_path, sample_onnx_path, calib, tmp_path):
    out = _compile(tmp_path, sample_onnx_path, calib, cache_dir=tmp_path / "cache")
    assert out.compiled_by_double and not out.real and not out.placeholder and not out.cached
    assert out.hef_path.name == "tcn_encoder-v1.hef"
    assert (out.dfc_version, out.hailort_version) == ("3.33.0", "4.23.0")
    assert out.hef_path.read_bytes().startswith(b"\x01HEF")
    assert (out.logs_dir / "hailo_sdk.client.log").is_file() and (out.logs_dir / "allocator.log").is_file()
    assert out.parsing_report and out.parsing_report.is_file()
    assert set(out.stage_seconds) >= {"parser", "optimize", "compiler"}
    res = subprocess.run(["sha256sum", "-c", "hef_sha256sum.txt"], cwd=out.sums_path.parent, capture_output=True, text=True)
    assert res.returncode == 0 and "tcn_encoder-v1.hef: OK" in res.stdout
    again = _compile(tmp_path, sample_onnx_path, calib, cache_dir=tmp_path / "cache")
    assert again.cached and again.hef_sha256 == out.hef_sha256
    assert "parser" not in again.stage_seconds


def test_changed_calibration_recompiles(doubles_on_path, sample_onnx_path, calib, tmp_path):
    import numpy as np

    first = _compile(tmp_path, sample_onnx_path, calib, cache_dir=tmp_path / "cache")
    other = tmp_path / "calib2.npy"
    np.save(other, np.ones((4, 100, 9), dtype=np.float32))
    second = _compile(tmp_path, sample_onnx_path, other, cache_dir=tmp_path / "cache")
    assert not second.cached and second.hef_sha256 != first.hef_sha256


@pytest.mark.parametrize("stage", ["parser", "optimize", "compiler"])
def test_failing_stage_named_with_log_tail(doubles_on_path, sample_onnx_path, calib, tmp_path, monkeypatch, stage):
    monkeypatch.setenv("HAILO_DOUBLE_FAIL_STAGE", stage)
    with pytest.raises(StepFailed) as exc:
        _compile(tmp_path, sample_onnx_path, calib)
    assert f"hailo {stage}` failed" in str(exc.value)
    assert "injected failure" in str(exc.value)


def test_wrong_dfc_major_refused(doubles_on_path, sample_onnx_path, calib, tmp_path, monkeypatch):
    monkeypatch.setenv("HAILO_DOUBLE_VERSION", "5.1.0")
    with pytest.raises(StepFailed, match="DFC 3.x with HailoRT 4.x"):
        _compile(tmp_path, sample_onnx_path, calib)


def test_missing_tool_and_inputs(sample_onnx_path, calib, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolNotFound, match="PATH=/nonexistent"):
        _compile(tmp_path, sample_onnx_path, calib)
    with pytest.raises(ToolNotFound, match="not installed"):
        _compile(tmp_path, sample_onnx_path, calib, hailo=None)
    with pytest.raises(InvalidInput, match="does not exist"):
        _compile(tmp_path, tmp_path / "missing.onnx", calib)


def test_placeholder_marked_and_refused_for_production(sample_onnx_path, calib, tmp_path):
    out = _compile(tmp_path, sample_onnx_path, calib, hailo=None, allow_placeholder=True)
    assert out.placeholder and not out.real and out.dfc_version is None
    assert out.hef_path.read_bytes().startswith(PLACEHOLDER_MAGIC)
    assert is_placeholder_hef(out.hef_path)
    assert_deployable(out.hef_path, production=False)
    with pytest.raises(RefusedForProduction, match="placeholder"):
        assert_deployable(out.hef_path, production=True)


def test_double_rejects_bad_grammar(doubles_on_path, sample_onnx_path, tmp_path):
    hailo = shutil.which("hailo")

    def run(*args, stdin=subprocess.DEVNULL):
        return subprocess.run([hailo, *args], cwd=tmp_path, capture_output=True, text=True, stdin=stdin)

    assert run("parser", "onnx", str(sample_onnx_path), "--net-name", "n", "--hw-arch", "hailo9", "--har-path", "n.har", "-y").returncode == 2
    assert run("parser", "onnx", str(sample_onnx_path), "--net-name", "n", "--hw-arch", "hailo8").returncode == 2
    no_y = run("parser", "onnx", str(sample_onnx_path), "--net-name", "n", "--hw-arch", "hailo8", "--har-path", "n.har")
    assert no_y.returncode != 0 and "-y" in no_y.stderr
    assert run("optimize", "n.har", "--hw-arch", "hailo8", "--output-har-path", "o.har").returncode == 2
    assert run("compiler", "missing.har", "--hw-arch", "hailo8", "--output-dir", "o", "--output-har-path", "o/c.har").returncode == 1
    assert run("--bogus").returncode == 2


def test_argv_and_container_spec_are_safe(tmp_path):
    argv = parser_argv("hailo", tmp_path / "m.onnx", "tcn", "hailo8", tmp_path / "tcn.har", start_node="window",
                       end_nodes=("latent", "motif_scores"), input_shape=(1, 100, 9), report=tmp_path / "r.json")
    assert argv[-1] == "-y" and "window=[1,100,9]" in argv
    with pytest.raises(InvalidInput):
        parser_argv("hailo", tmp_path / "m.onnx", "tcn;rm", "hailo8", tmp_path / "x.har", start_node="window",
                    end_nodes=("latent",), input_shape=(1,), report=tmp_path / "r.json")
    with pytest.raises(InvalidInput):
        parser_argv("hailo", tmp_path / "m.onnx", "tcn", "hailo10h", tmp_path / "x.har", start_node="window",
                    end_nodes=("latent",), input_shape=(1,), report=tmp_path / "r.json")
    spec = ContainerSpec(image="hailo-compiler:3.33.0", work_dir=tmp_path, license_path=tmp_path / "hailo.lic")
    cmd = spec.docker_run_argv("docker", ["hailo", "--version"])
    assert cmd[:3] == ["docker", "run", "--rm"] and "--network" in cmd
    assert f"type=bind,source={tmp_path / 'hailo.lic'},target=/licenses/hailo.lic,readonly" in cmd
    assert cmd[-2:] == ["hailo", "--version"]


def test_version_parsing():
    v = parse_version_output("HailoRT v4.23.0\nHailo Dataflow Compiler v3.33.0\n")
    assert (v.dfc, v.hailort) == ("3.33.0", "4.23.0")
    with pytest.raises(StepFailed, match="lacks"):
        parse_version_output("hailo 1.0")
