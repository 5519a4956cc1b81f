"""Runner-host scripts: shellcheck-clean, dry runs print their steps, refusals say why;
register_runner.sh runs against a fake config.sh that records its argv, environment and uid;
the systemd units score <= 5.0 in `systemd-analyze security`."""

from __future__ import annotations

import configparser
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.fixtures.services import need_binary

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


UNITS = ["hailo-actions-runner@.service", "airflow-celery-worker@.service"]


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_units(unit):
    path = RUNNER / "systemd" / unit
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    assert {"Unit", "Service", "Install"} <= set(parser.sections())
    service = parser["Service"]
    assert service["ExecStart"].startswith("/")
    assert service["User"] not in {"root", "0"} and service["NoNewPrivileges"] == "true"
    assert service["ProtectSystem"] == "strict" and service["CapabilityBoundingSet"] == ""
    assert "Token" not in path.read_text() and "PASSWORD" not in path.read_text()
    assert "docker.sock" not in service.get("ReadWritePaths", "")
    if "celery" in unit:
        assert "--queues %i" in service["ExecStart"] and service["Restart"] == "always"
    else:
        # Ephemeral: one job, then the unit stops; the JIT file is root-only and deleted at start.
        assert service["Restart"] == "no"
        assert service["EnvironmentFile"] == "-/run/hailo-runner/%i.env"
        assert service["ExecStartPost"] == "+/usr/bin/rm -f /run/hailo-runner/%i.env"
        assert service["Environment"] == "DOCKER_HOST=unix:///run/user/%U/docker.sock"


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_units_exposure_at_most_5(unit):
    res = subprocess.run([need_binary("systemd-analyze"), "security", "--offline=true", str(RUNNER / "systemd" / unit)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= 5.0, res.stdout


# --- register_runner.sh against a fake runner ---------------------------------------------------

TOKEN = "AABBCC-registration-token-0123456789"
FAKE_CONFIG = r"""#!/usr/bin/env python3
import json, os, sys
token = os.environ.get("ACTIONS_RUNNER_INPUT_TOKEN", "")
seen = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if token and token.encode() in fh.read():
                    seen.append(pid)
        except OSError:
            pass
record = {"argv": sys.argv[1:], "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
          "groups": os.getgroups(), "env": dict(os.environ), "cwd": os.getcwd(), "token_on_cmdlines": seen}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config-record.json"), "w") as fh:
    json.dump(record, fh)
fail = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fail-with")
sys.exit(int(open(fail).read()) if os.path.exists(fail) else 0)
"""
FAKE_SYSTEMCTL = """#!/bin/sh
printf '%s\n' "$*" >> "$(dirname "$0")/systemctl.log"
"""


@pytest.fixture
def fake_runner():
    """A runner directory owned by `nobody`, with a fake config.sh/run.sh, plus a fake systemctl."""
    if os.geteuid() != 0:
        pytest.skip("switching to the runner user needs root (CI runs as root)")
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="hailo-runner-", dir="/tmp"))
    base.chmod(0o755)
    runner_dir = base / "actions-runner" / "hailo-builder"
    runner_dir.mkdir(parents=True)
    (runner_dir / "config.sh").write_text(FAKE_CONFIG)
    (runner_dir / "run.sh").write_text("#!/bin/sh\nexit 0\n")
    for name in ("config.sh", "run.sh"):
        (runner_dir / name).chmod(0o755)
    for p in (base / "actions-runner", runner_dir):
        os.chown(p, nobody.pw_uid, nobody.pw_gid)
    tools = base / "tools"
    tools.mkdir()
    (tools / "systemctl").write_text(FAKE_SYSTEMCTL)
    (tools / "systemctl").chmod(0o755)
    (base / "units").mkdir()
    (base / "env").mkdir()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMCTL": str(tools / "systemctl"),
           "HAILO_SYSTEMD_DIR": str(base / "units"), "HAILO_RUNNER_ENV_DIR": str(base / "env" / "run"),
           "UNRELATED_PARENT_SECRET": "must-not-reach-config"}
    yield {"base": base, "dir": runner_dir, "env": env, "nobody": nobody, "tools": tools}
    shutil.rmtree(base)


def _register(fake, *args, env=None, stdin=None):
    return subprocess.run(["bash", str(RUNNER / "register_runner.sh"), "--user", "nobody", "--dir", str(fake["dir"]), *args],
                          capture_output=True, text=True, env={**fake["env"], **(env or {})}, input=stdin, timeout=60)


def test_register_runs_config_as_the_runner_user_with_the_token_in_env_only(fake_runner):
    res = _register(fake_runner, "--url", "https://github.com/acme/hailo-pipeline", env={"RUNNER_TOKEN": TOKEN})
    assert res.returncode == 0, res.stderr
    rec = json.loads((fake_runner["dir"] / "config-record.json").read_text())
    nobody = fake_runner["nobody"]
    assert rec["uid"] == rec["euid"] == nobody.pw_uid and rec["gid"] == nobody.pw_gid
    assert 0 not in rec["groups"]
    argv = rec["argv"]
    assert "--ephemeral" in argv and "--disableupdate" in argv and "--unattended" in argv
    assert argv[argv.index("--labels") + 1] == "hailo-builder"
    assert argv[argv.index("--url") + 1] == "https://github.com/acme/hailo-pipeline"
    assert "--token" not in argv and TOKEN not in " ".join(argv)
    assert rec["token_on_cmdlines"] == [], "the token was on some process's command line"
    assert rec["env"]["ACTIONS_RUNNER_INPUT_TOKEN"] == TOKEN
    assert "RUNNER_TOKEN" not in rec["env"] and "UNRELATED_PARENT_SECRET" not in rec["env"]
    assert "RUNNER_ALLOW_RUNASROOT" not in rec["env"]
    assert rec["env"]["USER"] == "nobody" and rec["cwd"] == str(fake_runner["dir"])
    assert TOKEN not in res.stdout + res.stderr
    log = (fake_runner["tools"] / "systemctl.log").read_text().splitlines()
    assert log == ["daemon-reload", "enable --now hailo-actions-runner@hailo-builder.service"]
    assert (fake_runner["base"] / "units" / "hailo-actions-runner@.service").exists()


def test_register_rollback_runner_with_its_own_label_and_group(fake_runner):
    rollback_dir = fake_runner["dir"].parent / "hailo-rollback"
    shutil.copytree(fake_runner["dir"], rollback_dir)
    os.chown(rollback_dir, fake_runner["nobody"].pw_uid, fake_runner["nobody"].pw_gid)
    res = subprocess.run(["bash", str(RUNNER / "register_runner.sh"), "--user", "nobody", "--name", "hailo-rollback",
                          "--dir", str(rollback_dir), "--runner-group", "hailo-rollback",
                          "--url", "https://github.com/acme/hailo-pipeline"],
                         capture_output=True, text=True, env={**fake_runner["env"], "RUNNER_TOKEN": TOKEN}, timeout=60)
    assert res.returncode == 0, res.stderr
    argv = json.loads((rollback_dir / "config-record.json").read_text())["argv"]
    assert argv[argv.index("--labels") + 1] == "hailo-rollback"
    assert argv[argv.index("--runnergroup") + 1] == "hailo-rollback"
    assert "enable --now hailo-actions-runner@hailo-rollback.service" in (fake_runner["tools"] / "systemctl.log").read_text()


def test_register_fails_when_config_fails(fake_runner):
    (fake_runner["dir"] / "fail-with").write_text("3")
    res = _register(fake_runner, "--url", "https://github.com/acme/x", env={"RUNNER_TOKEN": TOKEN})
    assert res.returncode == 3
    assert not (fake_runner["tools"] / "systemctl.log").exists()


def test_register_refuses_a_directory_the_runner_user_does_not_own(fake_runner):
    os.chown(fake_runner["dir"], 0, 0)
    res = _register(fake_runner, "--url", "https://github.com/acme/x", env={"RUNNER_TOKEN": TOKEN})
    assert res.returncode == 2 and "must belong to nobody" in res.stderr
    assert not (fake_runner["dir"] / "config-record.json").exists()


def test_register_refuses_root_and_docker_group_members(fake_runner):
    res = subprocess.run(["bash", str(RUNNER / "register_runner.sh"), "--user", "root", "--dir", str(fake_runner["dir"]),
                          "--url", "https://github.com/acme/x"],
                         capture_output=True, text=True, env={**fake_runner["env"], "RUNNER_TOKEN": TOKEN}, timeout=60)
    assert res.returncode == 2 and "as root" in res.stderr
    # `id` that reports the runner user in the docker group.
    fake_id = fake_runner["tools"] / "id"
    fake_id.write_text('#!/bin/sh\nif [ "$1" = "-nG" ]; then echo "nogroup docker"; else exec /usr/bin/id "$@"; fi\n')
    fake_id.chmod(0o755)
    env = {"RUNNER_TOKEN": TOKEN, "PATH": f"{fake_runner['tools']}:/usr/sbin:/usr/bin:/sbin:/bin"}
    res = _register(fake_runner, "--url", "https://github.com/acme/x", env=env)
    assert res.returncode == 2 and "docker group" in res.stderr
    assert not (fake_runner["dir"] / "config-record.json").exists()


def test_register_jit_config_from_stdin_to_a_root_only_env_file(fake_runner):
    jit = "eyJhIjoiYiJ9" * 4
    res = _register(fake_runner, "--jit", stdin=jit + "\n")
    assert res.returncode == 0, res.stderr
    env_file = Path(fake_runner["env"]["HAILO_RUNNER_ENV_DIR"]) / "hailo-builder.env"
    assert env_file.read_text() == f"ACTIONS_RUNNER_INPUT_JITCONFIG={jit}\n"
    st = env_file.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)
    assert env_file.parent.stat().st_mode & 0o777 == 0o700
    assert not (fake_runner["dir"] / "config-record.json").exists(), "JIT mode runs no config.sh"
    assert jit not in res.stdout + res.stderr
    res = _register(fake_runner, "--jit", stdin="not a jit config; rm -rf /\n")
    assert res.returncode == 2


@pytest.mark.parametrize(
    ("args", "env", "msg"),
    [
        (["--url", "https://github.com/acme/x"], {}, "RUNNER_TOKEN"),
        (["--url", "http://evil;rm"], {"RUNNER_TOKEN": "t"}, "--url"),
        (["--url", "https://github.com/acme/x", "--token", "t"], {}, "unknown argument"),
        (["--url", "https://github.com/acme/x", "--name", "../etc"], {"RUNNER_TOKEN": "t"}, "--name"),
        (["--url", "https://github.com/acme/x", "--labels", "a b"], {"RUNNER_TOKEN": "t"}, "--labels"),
        (["--url", "https://github.com/acme/x", "--dir", "rel/dir"], {"RUNNER_TOKEN": "t"}, "absolute"),
    ],
)
def test_register_refusals(args, env, msg):
    base = {k: v for k, v in os.environ.items() if k != "RUNNER_TOKEN"}
    res = subprocess.run(["bash", str(RUNNER / "register_runner.sh"), *args, "--dry-run"],
                         capture_output=True, text=True, env={**base, **env}, timeout=60)
    assert res.returncode == 2 and msg in res.stderr, res.stderr


def test_register_dry_run_shows_no_token():
    res = _run("register_runner.sh", "--url", "https://github.com/acme/hailo-pipeline", "--user", "nobody", "--dry-run",
               env={"RUNNER_TOKEN": TOKEN})
    assert res.returncode == 0, res.stderr
    assert "--ephemeral" in res.stdout and "--labels hailo-builder" in res.stdout
    assert TOKEN not in res.stdout + res.stderr and "ACTIONS_RUNNER_INPUT_TOKEN" in res.stdout
