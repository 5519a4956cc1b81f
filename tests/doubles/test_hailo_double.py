"""The `hailo` CLI double must reject what the real DFC CLI rejects, or the compile tests prove nothing."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.doubles import DOUBLES_BIN

HAILO = DOUBLES_BIN / "hailo"


def run(cwd: Path, *args: str, env=None):
    return subprocess.run([sys.executable, str(HAILO), *args], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=env)


def parse(cwd, onnx, *extra):
    return run(cwd, "parser", "onnx", str(onnx), "--net-name", "n", "--hw-arch", "hailo8", "--har-path", "n.har", *extra)


def test_header_names_it_a_double():
    head = HAILO.read_text().splitlines()[1]
    assert "TEST DOUBLE" in head


def test_version_output():
    res = run(Path.cwd(), "--version")
    assert res.returncode == 0
    assert "HailoRT v4.23.0" in res.stdout and "Hailo Dataflow Compiler v3.33.0" in res.stdout


def test_happy_path_writes_what_the_real_cli_writes(sample_onnx_path, tmp_path):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.zeros((2, 100, 9), np.float32))
    res = parse(tmp_path, sample_onnx_path, "--start-node-names", "window", "--end-node-names", "latent", "motif_scores",
                "--tensor-shapes", "window=[1,100,9]", "--parsing-report-path", "r.json", "-y")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "n.har").is_file() and json.loads((tmp_path / "r.json").read_text())["net_name"] == "n"
    assert (tmp_path / "hailo_sdk.client.log").is_file()
    res = run(tmp_path, "optimize", "n.har", "--hw-arch", "hailo8", "--calib-set-path", "calib.npy", "--output-har-path",
              "n_opt.har")
    assert res.returncode == 0, res.stderr
    res = run(tmp_path, "compiler", "n_opt.har", "--hw-arch", "hailo8", "--output-dir", "out", "--output-har-path",
              "out/n_compiled.har")
    assert res.returncode == 0, res.stderr
    hef = (tmp_path / "out" / "n.hef").read_bytes()
    assert hef[:4] == b"\x01HEF" and (tmp_path / "allocator.log").is_file() and (tmp_path / "out" / "n_compiled.har").is_file()
    # Deterministic: the same inputs give the same HEF bytes.
    run(tmp_path, "compiler", "n_opt.har", "--hw-arch", "hailo8", "--output-dir", "out2", "--output-har-path", "out2/c.har")
    assert (tmp_path / "out2" / "n.hef").read_bytes() == hef


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--bogus"], 2, "error:"),
        (["profiler", "x.har"], 2, "invalid choice"),
        (["parser", "tflite", "m"], 2, "invalid choice"),
        (["parser", "onnx", "M", "--net-name", "n", "--hw-arch", "hailo9", "--har-path", "n.har", "-y"], 2, "hailo9"),
        (["parser", "onnx", "M", "--net-name", "n", "--hw-arch", "Hailo8", "--har-path", "n.har", "-y"], 2, "Hailo8"),
        (["parser", "onnx", "M", "--net-name", "n", "--hw-arch", "hailo10h", "--har-path", "n.har", "-y"], 2, "hailo10h"),
        (["parser", "onnx", "M", "--net-name", "n", "--hw-arch", "hailo8", "-y"], 2, "--har-path"),
        (["parser", "onnx", "M", "--hw-arch", "hailo8", "--har-path", "n.har", "-y"], 2, "--net-name"),
        (["parser", "onnx", "M", "--net-name", "n", "--hw-arch", "hailo8", "--har-path", "n.har", "-y", "--yes-please"],
         2, "unrecognized"),
        (["optimize", "n.har", "--hw-arch", "hailo8", "--output-har-path", "o.har"], 2, "--calib-set-path"),
        (["optimize", "n.har", "--hw-arch", "hailo8", "--calib-set-path", "c.npy", "--use-random-calib-set",
          "--output-har-path", "o.har"], 2, "not allowed"),
        (["optimize", "n.har", "--hw-arch", "hailo8", "--calib-set-path", "c.npy"], 2, "--output-har-path"),
        (["compiler", "o.har", "--hw-arch", "hailo8", "--output-har-path", "x.har"], 2, "--output-dir"),
        (["compiler", "o.har", "--output-dir", "out", "--output-har-path", "x.har"], 2, "--hw-arch"),
        (["compiler", "missing.har", "--hw-arch", "hailo8", "--output-dir", "o", "--output-har-path", "o/c.har"], 1,
         "does not exist"),
    ],
)
def test_rejects_bad_grammar(sample_onnx_path, tmp_path, args, code, says):
    args = [str(sample_onnx_path) if a == "M" else a for a in args]
    res = run(tmp_path, *args)
    assert res.returncode == code, (res.stdout, res.stderr)
    assert says in res.stderr


def test_parser_without_y_asks_and_fails_on_eof(sample_onnx_path, tmp_path):
    res = parse(tmp_path, sample_onnx_path)
    assert res.returncode == 1 and "(y/n)" in res.stdout and "EOF" in res.stderr and "-y" in res.stderr
    assert not (tmp_path / "n.har").exists()
    answered = subprocess.run(
        [sys.executable, str(HAILO), "parser", "onnx", str(sample_onnx_path), "--net-name", "n", "--hw-arch", "hailo8",
         "--har-path", "n.har"], cwd=tmp_path, input="y\n", capture_output=True, text=True)
    assert answered.returncode == 0 and (tmp_path / "n.har").is_file()


def test_parser_checks_the_model(sample_onnx_path, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all \x00\xff")
    assert "Failed to load ONNX" in parse(tmp_path, junk, "-y").stderr
    assert "Unable to find node nope" in parse(tmp_path, sample_onnx_path, "--end-node-names", "nope", "-y").stderr
    for shape, says in (("window=[1,100]", "does not match"), ("other=[1,100,9]", "not an input"),
                        ("window=1,100,9", "Invalid --tensor-shapes")):
        res = parse(tmp_path, sample_onnx_path, "--tensor-shapes", shape, "-y")
        assert res.returncode != 0 and says in res.stderr, (shape, res.stderr)


def test_stages_need_the_previous_stage_output(sample_onnx_path, tmp_path):
    (tmp_path / "fake.har").write_bytes(b"PK\x03\x04 not a har")
    res = run(tmp_path, "optimize", "fake.har", "--hw-arch", "hailo8", "--use-random-calib-set", "--output-har-path", "o.har")
    assert res.returncode == 1 and "not a valid HAR" in res.stderr
    assert parse(tmp_path, sample_onnx_path, "-y").returncode == 0
    res = run(tmp_path, "compiler", "n.har", "--hw-arch", "hailo8", "--output-dir", "o", "--output-har-path", "o/c.har")
    assert res.returncode == 1 and "expects a optimized HAR" in res.stderr
    res = run(tmp_path, "optimize", "n.har", "--hw-arch", "hailo8l", "--use-random-calib-set", "--output-har-path", "o.har")
    assert res.returncode == 1 and "parsed for hailo8" in res.stderr
    np.save(tmp_path / "bad.npy", np.zeros((2, 100, 8), np.float32))
    res = run(tmp_path, "optimize", "n.har", "--hw-arch", "hailo8", "--calib-set-path", "bad.npy", "--output-har-path", "o.har")
    assert res.returncode == 1 and "does not match" in res.stderr


def test_failure_injection_and_5x_archs(sample_onnx_path, tmp_path):
    import os

    env = {**os.environ, "HAILO_DOUBLE_FAIL_STAGE": "parser"}
    res = run(tmp_path, "parser", "onnx", str(sample_onnx_path), "--net-name", "n", "--hw-arch", "hailo8", "--har-path",
              "n.har", "-y", env=env)
    assert res.returncode == 1 and "injected failure" in res.stderr
    env = {**os.environ, "HAILO_DOUBLE_VERSION": "5.1.0"}
    res = run(tmp_path, "parser", "onnx", str(sample_onnx_path), "--net-name", "n", "--hw-arch", "hailo8", "--har-path",
              "n.har", "-y", env=env)
    assert res.returncode == 2 and "invalid choice" in res.stderr
