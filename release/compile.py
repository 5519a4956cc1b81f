"""Compile a validated ONNX into a Hailo-8 HEF with the DFC: parser → optimize → compiler.

The three stages run non-interactively (stdin closed, parser ``-y``) in a per-build working
directory with relative paths: the DFC writes its logs (``hailo_sdk.client.log``,
``allocator.log``, …) into the cwd, so they stay with the build, and the same argv works on the
host (``hailo`` on PATH) and in the x86_64 compiler container, where that directory is the only
mount (release.dfc_runners). Results are cached on (ONNX sha256, calibration sha256, model script
sha256, DFC version, hw_arch), so an unchanged model is not recompiled (release.compile_cache).

Without a DFC (dev machines, CI) an explicit ``allow_placeholder=True`` writes a placeholder
HEF, marked as such in its first bytes and in the result (release.hef_format); production deploys
refuse it (:func:`assert_deployable`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from release.checksums import sha256_file, write_sha256sum
from release.compile_cache import CacheEntry, cache_key, find_entry, save_entry
from release.dfc import (
    DFC_DOCS,
    DfcVersions,
    check_hw_arch,
    check_net_name,
    check_toolchain,
    compiler_argv,
    optimize_argv,
    parse_version_output,
    parser_argv,
    version_argv,
)
from release.dfc_runners import CommandRunner, HostRunner
from release.errors import IntegrityError, InvalidInput, RefusedForProduction, StepFailed, ToolNotFound
from release.hef_format import check_hef, write_placeholder_hef
from release.identifiers import ReleaseTag

LOG_TAIL_LINES = 30
STAGES = ("parser", "optimize", "compiler")


# -- results ----------------------------------------------------------------------------------
class CompiledHef(BaseModel):
    """The HEF one compile step produced (compiled, from the cache, or a marked placeholder); the
    manifest's HEF record is built from it. (release.step_results.CompileResult is the stored step.)"""

    model_config = ConfigDict(frozen=True)

    hef_path: Path
    sums_path: Path
    hef_sha256: str
    size: int
    hw_arch: str
    net_name: str
    dfc_version: str | None
    hailort_version: str | None
    onnx_sha256: str
    calibration_sha256: str | None
    model_script_sha256: str | None
    real: bool  # a licensed DFC compiled it (not the test double, not a placeholder)
    placeholder: bool
    compiled_by_double: bool = False
    compiler_image: str | None = None  # the container image the DFC ran in (dfc_runners.image_reference); None = host
    cached: bool
    cache_key: str | None = None
    logs_dir: Path | None
    parsing_report: Path | None
    stage_seconds: dict[str, float]


# -- deployability ----------------------------------------------------------------------------
def assert_deployable(target: CompiledHef | Path, *, production: bool) -> None:
    """Refuse a missing/empty/corrupt HEF always, and a placeholder (or a HEF built by the CLI test
    double) for any production target."""
    result = target if isinstance(target, CompiledHef) else None
    path = target.hef_path if isinstance(target, CompiledHef) else Path(target)
    try:
        kind = check_hef(path)
    except IntegrityError as exc:
        raise StepFailed(str(exc)) from exc
    if not production:
        return
    if kind == "placeholder" or (result is not None and result.placeholder):
        raise RefusedForProduction(
            f"{path} is a placeholder HEF (no DFC compile ran); production targets need a real DFC 3.x compile "
            "(run the compile step with the compiler image: docker/hailo_compiler)"
        )
    if result is not None and not result.real:
        raise RefusedForProduction(f"{path} was built by the DFC CLI test double, not a licensed DFC; refused for production")


# -- the compile step -------------------------------------------------------------------------
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
        raise StepFailed(
            f"DFC stage `hailo {stage}` failed with exit code {res.returncode} (logs in {cwd}); log tail:\n{tail}"
        )
    return time.monotonic() - t0


def _resolve_hailo(hailo: str | None) -> str | None:
    if hailo is None:
        return None
    return shutil.which(hailo)


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
) -> CompiledHef:
    """Compile ``onnx_path`` to ``artifacts_dir/<net>-<tag>.hef`` plus ``hef_sha256sum.txt``.

    ``runner=None`` runs ``hailo`` on this host (resolved on PATH); a
    ``release.dfc_runners.ContainerRunner`` (or the Airflow task's Docker-hook runner) runs the same
    argv in the compiler container and the result records that image (``compiler_image``).
    ``allow_placeholder`` (dev only) writes a marked placeholder when no DFC is installed.
    """
    tag = ReleaseTag(tag).value
    check_net_name(net_name)
    check_hw_arch(hw_arch)
    if not onnx_path.is_file():
        raise InvalidInput(f"ONNX model {onnx_path} does not exist; export it or run the validate step first (check the path)")
    if not calib_path.is_file():
        raise InvalidInput(
            f"calibration set {calib_path} does not exist (a .npy of float32 [N,100,9] windows: release.calibration)"
        )
    if model_script is not None and not model_script.is_file():
        raise InvalidInput(f"model script {model_script} does not exist")
    onnx_sha = sha256_file(onnx_path)
    calib_sha = sha256_file(calib_path)
    script_sha = sha256_file(model_script) if model_script else None
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    hef_out = artifacts_dir / f"{net_name}-{tag}.hef"
    sums = artifacts_dir / "hef_sha256sum.txt"

    if runner is None:
        resolved = _resolve_hailo(hailo)
        if resolved is None:
            if allow_placeholder:
                return _placeholder(hef_out, sums, net_name, hw_arch, onnx_sha, calib_sha, script_sha)
            where = "is not installed" if hailo is None else f"`{hailo}` was not found"
            raise ToolNotFound(
                f"the Hailo DFC CLI {where} (PATH={os.environ.get('PATH', '')}); install DFC 3.x "
                f"or run the compile in the compiler image (docker/hailo_compiler). Docs: {DFC_DOCS}"
            )
        hailo, runner = resolved, HostRunner()
    elif hailo is None:
        hailo = "hailo"  # inside the compiler image it is on PATH

    build = work_dir / "dfc"
    if build.exists():
        shutil.rmtree(build)
    build.mkdir(parents=True)
    stages: dict[str, float] = {}
    t0 = time.monotonic()
    res = runner.run(version_argv(hailo), build, 120)
    if res.returncode != 0:
        raise StepFailed(f"`hailo --version` failed with exit code {res.returncode}: {(res.stderr or res.stdout).strip()[-300:]}")
    versions: DfcVersions = check_toolchain(parse_version_output(res.stdout + res.stderr), hw_arch)
    (build / "hailo_version.txt").write_text(res.stdout + res.stderr, encoding="utf-8")
    stages["version"] = time.monotonic() - t0

    key = cache_key(onnx_sha, calib_sha, script_sha, versions.dfc, hw_arch)
    entry_dir = cache_dir / key if cache_dir is not None else None
    if entry_dir is not None:
        hit = find_entry(entry_dir, net_name)
        if hit is not None:
            shutil.copyfile(entry_dir / f"{net_name}.hef", hef_out)
            # The HEF was compiled where the entry says (the image of this run only answered --version).
            return _result(hef_out, sums, net_name, hw_arch, versions, onnx_sha, calib_sha, script_sha, key,
                           cached=True, logs_dir=entry_dir / "logs", stages=stages, compiler_image=hit.compiler_image)

    # The DFC sees its inputs under the build dir (the only mount inside the container).
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
    argvs = {
        "parser": parser_argv(hailo, Path("model.onnx"), net_name, hw_arch, har, start_node=input_name,
                              end_nodes=output_names, input_shape=input_shape, report=report),
        "optimize": optimize_argv(hailo, har, hw_arch, Path("calib.npy"), opt_har, script_in_build),
        "compiler": compiler_argv(hailo, opt_har, hw_arch, out_dir, compiled_har, script_in_build),
    }
    (build / out_dir).mkdir(exist_ok=True)
    for stage in STAGES:
        stages[stage] = _run_stage(runner, stage, argvs[stage], build, timeout_s)
    ran_in = getattr(runner, "resolved_image", None)
    produced = build / out_dir / f"{net_name}.hef"
    if not produced.is_file():
        raise StepFailed(f"`hailo compiler` exited 0 but wrote no HEF at {produced}; logs in {build}")
    try:
        kind = check_hef(produced)
    except IntegrityError as exc:
        raise StepFailed(f"`hailo compiler` wrote an invalid HEF: {exc}") from exc
    if kind == "placeholder":
        raise StepFailed(f"{produced} carries the placeholder marker; refusing to treat it as a compiled HEF")
    shutil.copyfile(produced, hef_out)
    if entry_dir is not None:
        save_entry(entry_dir, net_name, produced, build, CacheEntry(
            hef_sha256=sha256_file(produced), dfc_version=versions.dfc, hailort_version=versions.hailort,
            compiled_by_double=versions.is_double, stage_seconds=stages, compiler_image=ran_in))
    return _result(hef_out, sums, net_name, hw_arch, versions, onnx_sha, calib_sha, script_sha, key,
                   cached=False, logs_dir=build, stages=stages, compiler_image=ran_in)


def _result(
    hef_out: Path, sums: Path, net: str, arch: str, versions: DfcVersions, onnx_sha: str, calib_sha: str,
    script_sha: str | None, key: str, *, cached: bool, logs_dir: Path, stages: dict[str, float],
    compiler_image: str | None,
) -> CompiledHef:
    write_sha256sum([hef_out], sums)
    report = logs_dir / "parsing_report.json"
    return CompiledHef(
        hef_path=hef_out, sums_path=sums, hef_sha256=sha256_file(hef_out), size=hef_out.stat().st_size,
        hw_arch=arch, net_name=net, dfc_version=versions.dfc, hailort_version=versions.hailort,
        onnx_sha256=onnx_sha, calibration_sha256=calib_sha, model_script_sha256=script_sha,
        real=not versions.is_double, compiled_by_double=versions.is_double, placeholder=False, cached=cached,
        cache_key=key, logs_dir=logs_dir, parsing_report=report if report.is_file() else None, stage_seconds=stages,
        compiler_image=compiler_image,
    )


def _placeholder(
    hef_out: Path, sums: Path, net: str, arch: str, onnx_sha: str, calib_sha: str, script_sha: str | None
) -> CompiledHef:
    meta = {"net": net, "hw_arch": arch, "onnx_sha256": onnx_sha, "calibration_sha256": calib_sha,
            "note": "PLACEHOLDER: no DFC on this machine; NOT a compiled HEF, refused by production deploys"}
    write_placeholder_hef(hef_out, meta)
    write_sha256sum([hef_out], sums)
    return CompiledHef(
        hef_path=hef_out, sums_path=sums, hef_sha256=sha256_file(hef_out), size=hef_out.stat().st_size,
        hw_arch=arch, net_name=net, dfc_version=None, hailort_version=None, onnx_sha256=onnx_sha,
        calibration_sha256=calib_sha, model_script_sha256=script_sha, real=False, placeholder=True, cached=False,
        logs_dir=None, parsing_report=None, stage_seconds={},
    )
