"""The runtime image's HailoRT wheel: grammar, refusals, and the pipeline's production rules.
(The arm64 build that installs it for real is in test_image_signing.py's slow tier.)"""

from __future__ import annotations

import zipfile

import pytest

from release import build_steps as steps
from release.errors import InvalidInput, StepFailed
from release.image_build import build_and_push, hailort_wheel_version
from release.pipeline_env import PipelineEnv
from tests.fixtures.doubles import make_hailort_wheel_double


def test_wheel_grammar_and_content(tmp_path):
    good = make_hailort_wheel_double(tmp_path / "w", "4.20.0")
    assert hailort_wheel_version(good) == "4.20.0"
    for name in ("hailort-4.20.0-cp312-cp312-linux_aarch64.whl", "hailort-4.20.0-cp311-cp311-linux_x86_64.whl",
                 "hailort-4.20-cp311-cp311-linux_aarch64.whl", "other-4.20.0-cp311-cp311-linux_aarch64.whl"):
        renamed = tmp_path / name
        renamed.write_bytes(good.read_bytes())
        with pytest.raises(InvalidInput, match="expected HailoRT's Pi wheel"):
            hailort_wheel_version(renamed)
    garbage = tmp_path / "g" / good.name
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a zip")
    with pytest.raises(InvalidInput, match="not a readable wheel"):
        hailort_wheel_version(garbage)
    empty = tmp_path / "e" / good.name
    empty.parent.mkdir()
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("something/__init__.py", "")
    with pytest.raises(InvalidInput, match="no hailo_platform"):
        hailort_wheel_version(empty)


def test_arm64_wheel_refused_for_an_amd64_image_before_any_build(tmp_path):
    wheel = make_hailort_wheel_double(tmp_path / "w")
    with pytest.raises(InvalidInput, match="linux/arm64"):
        build_and_push(docker="/nonexistent/docker", registry="127.0.0.1:1", repository="r", tag="t", context=tmp_path,
                       work_dir=tmp_path / "work", production=False, cache_dir=tmp_path / "c", platform="linux/amd64",
                       hailort_wheel=wheel)


def _bed_with(testbed, **changes):
    testbed.env = PipelineEnv(**{**testbed.env.model_dump(), "docker_bin": "/usr/bin/true", "registry": "127.0.0.1:1",
                                 **changes})
    return testbed


def test_production_image_needs_hailort(testbed, monkeypatch):
    monkeypatch.setattr("release.image_build.unavailable_reason", lambda docker, registry: None)
    bed = _bed_with(testbed)
    req = bed.request("p1", production=True)
    steps.validate(req, bed.env, bed.store)
    steps.compile_hef(bed.request("p1"), bed.env, bed.store)
    with pytest.raises(StepFailed, match="HAILO_HAILORT_WHEEL"):
        steps.build_image(req, bed.env, bed.store)


def test_hef_and_image_hailort_must_match(testbed, monkeypatch, tmp_path, doubles_on_path):
    monkeypatch.setattr("release.image_build.unavailable_reason", lambda docker, registry: None)
    bed = _bed_with(testbed, hailo_bin=str(doubles_on_path / "hailo"),
                    hailort_wheel=make_hailort_wheel_double(tmp_path / "w", "4.20.0"))
    req = bed.request("m1")
    steps.validate(req, bed.env, bed.store)
    steps.compile_hef(req, bed.env, bed.store)  # the DFC double reports HailoRT 4.23.0
    with pytest.raises(StepFailed, match=r"compiled for HailoRT 4\.23\.0 but the image would get 4\.20\.0"):
        steps.build_image(req, bed.env, bed.store)
