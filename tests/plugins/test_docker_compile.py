"""The compile step's container runner through the Docker provider's DockerOperator, on a real engine."""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.airflow]


def test_docker_operator_runner_runs_in_the_build_dir(docker_cli, base_image, tmp_path):
    from hailo_airflow.docker_compile import DockerOperatorRunner

    os.chmod(tmp_path, 0o777)
    runner = DockerOperatorRunner(image=base_image)
    ok = runner.run(["python3", "-c", "import os; open('out.har','w').write('har'); print('HailoRT v4.23.0'); "
                     "print('Hailo Dataflow Compiler v3.33.0'); print(os.getcwd())"], tmp_path, 120)
    assert ok.returncode == 0, ok.stderr
    assert "Hailo Dataflow Compiler v3.33.0" in ok.stdout and "/work" in ok.stdout
    assert (tmp_path / "out.har").read_text() == "har"
    assert (tmp_path / "out.har").stat().st_uid == os.getuid()  # files stay the caller's
    bad = runner.run(["python3", "-c", "import sys; print('[error] Agent infeasible', file=sys.stderr); sys.exit(3)"],
                     tmp_path, 120)
    assert bad.returncode != 0 and "Agent infeasible" in bad.stderr
    net = runner.run(["python3", "-c", "import os; print(sorted(os.listdir('/sys/class/net')))"], tmp_path, 120)
    assert net.returncode == 0 and "['lo']" in net.stdout  # no network but loopback in the compiler container
