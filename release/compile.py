"""Compile a validated ONNX into a Hailo-8 HEF with the DFC: parser → optimize → compiler.

The three stages run non-interactively in a per-build working directory (the DFC writes its
logs into the cwd: they are kept with the build), on the host or in the compiler container
(a ``CommandRunner`` decides where). Results are cached on (ONNX sha256, calibration sha256,
model script sha256, DFC version, hw_arch), so an unchanged model is not recompiled.

Without a DFC (dev machines, CI) an explicit ``allow_placeholder=True`` writes a placeholder
HEF, marked as such in its bytes and in the result; production deploys refuse it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from release.checksums import sha256_bytes, sha256_file, write_sha256sum
from release.dfc import DfcVersions, compiler_argv, optimize_argv, parse_version_output, parser_argv, version_argv
from release.errors import InvalidInput, RefusedForProduction, StepFailed, ToolNotFound

PLACEHOLDER_MAGIC = b"HAILO-PIPELINE-PLACEHOLDER-HEF\n"
DFC_DOCS = "https://hailo.ai/developer-zone/ (Dataflow Compiler user guide; DFC 3.x for Hailo-8)"
LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class CommandRunner(Protocol):
    def run(self, argv: Sequence[str], cwd: Path, timeout_s: float) -> CommandResult: ...


class HostRunner:
    """Runs the DFC on this host (``hailo`` on PATH or an explicit path)."""

    def run(self, argv: Sequence[str], cwd: Path, timeout_s: float) -> CommandResult:
        try:
            proc = subprocess.run(
                list(argv), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s
            )
        except FileNotFoundError:
            raise ToolNotFound(
                f"`{argv[0]}` not found (PATH={os.environ.get('PATH', '')}); install the Hailo DFC 3.x "
                f"or run the compile in the compiler image (docker/hailo_compiler). Docs: {DFC_DOCS}"
            ) from None
        except subprocess.TimeoutExpired:
            raise StepFailed(f"`{' '.join(argv[:3])}` timed out after {timeout_s:.0f}s") from None
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)


@dataclass(frozen=True)
class ContainerSpec:
    """How to run the DFC inside the x86_64 compiler container: image, mounts, user — as data,
    so the Airflow DockerOperator and a plain `docker run` build the same container."""

    image: str
    work_dir: Path
    license_path: Path | None = None
    container_work_dir: str = "/work"

    def mounts(self) -> list[tuple[str, str, bool]]:
        """(host path, container path, read_only)."""
        mounts = [(str(self.work_dir), self.container_work_dir, False)]
        if self.license_path is not None:
            mounts.append((str(self.license_path), "/licenses/hailo.lic", True))
        return mounts

    def docker_run_argv(self, docker: str, argv: Sequence[str]) -> list[str]:
        cmd = [docker, "run", "--rm", "--platform", "linux/amd64", "--network", "none", "-w", self.container_work_dir]
        for host, inside, ro in self.mounts():
            cmd += ["--mount", f"type=bind,source={host},target={inside}" + (",readonly" if ro else "")]
        return [*cmd, self.image, *argv]


class CompileOutput(BaseModel):
    model_config = ConfigDict(frozen=True)

    hef_path: Path
    sums_path: Path
    hef_sha256: str
    size: int
    hw_arch: str
    net_name: str
    compiled_by_double: bool = False
    dfc_version: str | None
    hailort_version: str | None
    onnx_sha256: str
    calibration_sha256: str | None
    model_script_sha256: str | None
    real: bool
    placeholder: bool
    cached: bool
    logs_dir: Path | None
    parsing_report: Path | None
    stage_seconds: dict[str, float]


def is_placeholder_hef(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(PLACEHOLDER_MAGIC)) == PLACEHOLDER_MAGIC


def assert_deployable(hef_path: Path, *, production: bool) -> None:
    """Refuse an empty HEF always, and a placeholder HEF for any production target."""
    if not hef_path.is_file() or hef_path.stat().st_size == 0:
        raise StepFailed(f"{hef_path}: HEF is missing or empty")
    if production and is_placeholder_hef(hef_path):
        raise RefusedForProduction(
            f"{hef_path} is a placeholder HEF (no DFC compile ran); production targets need a real compile"
        )


def cache_key(onnx_sha: str, calib_sha: str | None, script_sha: str | None, dfc_version: str, hw_arch: str) -> str:
    return sha256_bytes(
        json.dumps([onnx_sha, calib_sha, script_sha, dfc_version, hw_arch], separators=(",", ":")).encode()
    )


def _tail(path: Path, text: str) -> str:
    lines = text.strip().splitlines()
    if path.is_file():
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines() + lines
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _run_stage(runner: CommandRunner, stage: str, argv: list[str], cwd: Path, timeout_s: float) -> float:
    t0 = time.monotonic()
    res = runner.run(argv, cwd, timeout_s)
    (cwd / f"{stage}.stdout.log").write_text(res.stdout, encoding="utf-8")
    (cwd / f"{stage}.stderr.log").write_text(res.stderr, encoding="utf-8")
    if res.returncode != 0:
        tail = _tail(cwd / "hailo_sdk.client.log", res.stderr or res.stdout)
        raise StepFailed(f"DFC stage `hailo {stage}` failed with exit code {res.returncode}; log tail:\n{tail}")
    return time.monotonic() - t0


def compile_hef(
    onnx_path: Path,
    *,
    tag: str,
    net_name: str,
    work_dir: Path,
    artifacts_dir: Path,
    calib_path: Path,
    hw_arch: str = "hailo8",
    model_script: Path | None = None,
    input_name: str = "window",
    input_shape: tuple[int, ...] = (1, 100, 9),
    output_names: tuple[str, ...] = ("latent", "motif_scores"),
    hailo: str | None = "hailo",
    runner: CommandRunner | None = None,
    cache_dir: Path | None = None,
    allow_placeholder: bool = False,
    timeout_s: float = 3600.0,
) -> CompileOutput:
    from release.identifiers import ReleaseTag

    tag = ReleaseTag(tag).value
    if not onnx_path.is_file():
        raise InvalidInput(f"ONNX model {onnx_path} does not exist; run validation first or check the path")
    if not calib_path.is_file():
        raise InvalidInput(f"calibration set {calib_path} does not exist (a .npy of preprocessed windows)")
    if model_script is not None and not model_script.is_file():
        raise InvalidInput(f"model script {model_script} does not exist")
    onnx_sha = sha256_file(onnx_path)
    calib_sha = sha256_file(calib_path)
    script_sha = sha256_file(model_script) if model_script else None
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    hef_out = artifacts_dir / f"{net_name}-{tag}.hef"
    sums = artifacts_dir / "hef_sha256sum.txt"
    runner = runner or HostRunner()

    if hailo is None:
        if not allow_placeholder:
            raise ToolNotFound(
                f"the Hailo DFC (`hailo`) is not installed (PATH={os.environ.get('PATH', '')}); "
                f"install DFC 3.x or use the compiler image. Docs: {DFC_DOCS}"
            )
        return _placeholder(hef_out, sums, net_name, hw_arch, onnx_sha, calib_sha, script_sha)

    build = work_dir / "dfc"
    if build.exists():
        shutil.rmtree(build)
    build.mkdir(parents=True)
    stages: dict[str, float] = {}
    t0 = time.monotonic()
    res = runner.run(version_argv(hailo), build, 60)
    if res.returncode != 0:
        raise StepFailed(f"`hailo --version` failed with exit code {res.returncode}: {res.stderr.strip()[-300:]}")
    versions: DfcVersions = parse_version_output(res.stdout + res.stderr)
    stages["version"] = time.monotonic() - t0

    key = cache_key(onnx_sha, calib_sha, script_sha, versions.dfc, hw_arch)
    cached_hef = cache_dir / key / f"{net_name}.hef" if cache_dir else None
    if cached_hef is not None and cached_hef.is_file():
        shutil.copyfile(cached_hef, hef_out)
        write_sha256sum([hef_out], sums)
        return CompileOutput(
            hef_path=hef_out, sums_path=sums, hef_sha256=sha256_file(hef_out), size=hef_out.stat().st_size,
            hw_arch=hw_arch, net_name=net_name, dfc_version=versions.dfc, hailort_version=versions.hailort,
            onnx_sha256=onnx_sha, calibration_sha256=calib_sha, model_script_sha256=script_sha,
            real=not versions.is_double, compiled_by_double=versions.is_double,
            placeholder=False, cached=True, logs_dir=None, parsing_report=None, stage_seconds=stages,
        )

    # The DFC sees the inputs under the build dir (the only mount inside the container).
    shutil.copyfile(onnx_path, build / "model.onnx")
    shutil.copyfile(calib_path, build / "calib.npy")
    script_in_build = None
    if model_script is not None:
        script_in_build = Path("model_script.alls")
        shutil.copyfile(model_script, build / script_in_build)
    har, opt_har = Path(f"{net_name}.har"), Path(f"{net_name}_optimized.har")
    out_dir = Path("out")
    compiled_har = out_dir / f"{net_name}_compiled.har"
    report = Path("parsing_report.json")
    stages["parser"] = _run_stage(
        runner, "parser",
        parser_argv(hailo, Path("model.onnx"), net_name, hw_arch, har, start_node=input_name,
                    end_nodes=output_names, input_shape=input_shape, report=report),
        build, timeout_s,
    )
    stages["optimize"] = _run_stage(
        runner, "optimize", optimize_argv(hailo, har, hw_arch, Path("calib.npy"), opt_har, script_in_build), build, timeout_s
    )
    (build / out_dir).mkdir(exist_ok=True)
    stages["compiler"] = _run_stage(
        runner, "compiler", compiler_argv(hailo, opt_har, hw_arch, out_dir, compiled_har, script_in_build), build, timeout_s
    )
    produced = build / out_dir / f"{net_name}.hef"
    if not produced.is_file() or produced.stat().st_size == 0:
        raise StepFailed(f"`hailo compiler` exited 0 but wrote no HEF at {produced}")
    if is_placeholder_hef(produced):
        raise StepFailed(f"{produced} carries the placeholder marker; refusing to treat it as a real compile")
    shutil.copyfile(produced, hef_out)
    write_sha256sum([hef_out], sums)
    if cached_hef is not None:
        cached_hef.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached_hef.with_suffix(".tmp")
        shutil.copyfile(produced, tmp)
        os.replace(tmp, cached_hef)
    return CompileOutput(
        hef_path=hef_out, sums_path=sums, hef_sha256=sha256_file(hef_out), size=hef_out.stat().st_size,
        hw_arch=hw_arch, net_name=net_name, dfc_version=versions.dfc, hailort_version=versions.hailort,
        onnx_sha256=onnx_sha, calibration_sha256=calib_sha, model_script_sha256=script_sha,
        real=not versions.is_double, compiled_by_double=versions.is_double,
        placeholder=False, cached=False, logs_dir=build, parsing_report=build / report if (build / report).is_file() else None,
        stage_seconds=stages,
    )


def _placeholder(
    hef_out: Path, sums: Path, net: str, arch: str, onnx_sha: str, calib_sha: str, script_sha: str | None
) -> CompileOutput:
    meta = {"net": net, "hw_arch": arch, "onnx_sha256": onnx_sha, "calibration_sha256": calib_sha,
            "note": "no DFC on this machine: NOT a compiled HEF, refused by production deploys"}
    hef_out.write_bytes(PLACEHOLDER_MAGIC + json.dumps(meta, sort_keys=True).encode() + b"\n")
    write_sha256sum([hef_out], sums)
    return CompileOutput(
        hef_path=hef_out, sums_path=sums, hef_sha256=sha256_file(hef_out), size=hef_out.stat().st_size,
        hw_arch=arch, net_name=net, dfc_version=None, hailort_version=None, onnx_sha256=onnx_sha,
        calibration_sha256=calib_sha, model_script_sha256=script_sha, real=False, placeholder=True, cached=False,
        logs_dir=None, parsing_report=None, stage_seconds={},
    )
