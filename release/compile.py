"""Compile a validated ONNX into a Hailo-8 HEF with the DFC: parser → optimize → compiler.

The three stages run non-interactively (stdin closed, parser ``-y``) in a per-build working
directory with relative paths: the DFC writes its logs (``hailo_sdk.client.log``,
``allocator.log``, …) into the cwd, so they stay with the build, and the same argv works on the
host (``hailo`` on PATH, :class:`HostRunner`) and in the x86_64 compiler container, where that
directory is the only mount (:class:`ContainerRunner`, :func:`container_command`). Results are
cached on (ONNX sha256, calibration sha256, model script sha256, DFC version, hw_arch), so an
unchanged model is not recompiled.

Without a DFC (dev machines, CI) an explicit ``allow_placeholder=True`` writes a placeholder
HEF, marked as such in its first bytes and in the result; production deploys refuse it
(:func:`assert_deployable`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from release.checksums import sha256_bytes, sha256_file, write_sha256sum
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
from release.errors import IntegrityError, InvalidInput, RefusedForProduction, StepFailed, ToolNotFound
from release.identifiers import ReleaseTag

PLACEHOLDER_MAGIC = b"HAILO-PIPELINE-PLACEHOLDER-HEF\n"
# HailoRT's HEF header (libhailort hef_internal.hpp): big-endian u32 magic 0x01484546 ("\x01HEF"),
# u32 header version, u32 proto size, then a version-specific part (v0: reserved u32 + md5 of the rest).
HEF_MAGIC = b"\x01HEF"
HEF_HEADER_VERSIONS = (0, 1, 2, 3)
_HEF_V0 = struct.Struct(">4sIII16s")
LOG_TAIL_LINES = 30
STAGES = ("parser", "optimize", "compiler")


# -- running commands -------------------------------------------------------------------------
@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class CommandRunner(Protocol):
    """Runs one DFC argv in ``cwd``. A runner that runs it in a container also has a
    ``resolved_image`` attribute (set by its first run): the image it ran in, pinned by digest
    (:func:`image_reference`); the compile result and the manifest record it."""

    def run(self, argv: Sequence[str], cwd: Path, timeout_s: float) -> CommandResult: ...


def image_reference(image_id: str, repo_digests: Sequence[str] = ()) -> str:
    """What the manifest records for the compiler image: its registry digest (``repo@sha256:…``)
    when the image came from a registry, otherwise the local image ID (``sha256:…``)."""
    return sorted(repo_digests)[0] if repo_digests else image_id


def _run_process(argv: Sequence[str], cwd: Path, timeout_s: float, what: str) -> CommandResult:
    try:
        proc = subprocess.run(  # argv list, never a shell
            list(argv), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s
        )
    except FileNotFoundError:
        raise ToolNotFound(
            f"`{argv[0]}` not found (PATH={os.environ.get('PATH', '')}); {what}. Docs: {DFC_DOCS}"
        ) from None
    except subprocess.TimeoutExpired:
        raise StepFailed(f"`{' '.join(argv[:3])}` timed out after {timeout_s:.0f}s") from None
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


class HostRunner:
    """Runs the DFC on this host (``hailo`` on PATH or an explicit path)."""

    def run(self, argv: Sequence[str], cwd: Path, timeout_s: float) -> CommandResult:
        return _run_process(
            argv, cwd, timeout_s, "install the Hailo DFC 3.x or run the compile in the compiler image (docker/hailo_compiler)"
        )


class BindMount(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: Path
    target: str
    read_only: bool


class ContainerCommand(BaseModel):
    """One DFC command inside the x86_64 compiler container, as data: the Airflow task's Docker hook
    (image, entrypoint, command, mounts, working_dir, user, environment, network_mode) and `docker run`
    build the same container. ``entrypoint`` is the tool (``hailo``), so the command works whether or
    not the image declares ``ENTRYPOINT ["hailo"]``."""

    model_config = ConfigDict(frozen=True)

    image: str
    entrypoint: str
    command: tuple[str, ...]
    mounts: tuple[BindMount, ...]
    working_dir: str = "/work"
    user: str | None = None
    environment: dict[str, str] = {}
    network_mode: str = "none"
    platform: str = "linux/amd64"

    def docker_run_argv(self, docker: str = "docker") -> list[str]:
        argv = [docker, "run", "--rm", "--platform", self.platform, "--network", self.network_mode, "-w", self.working_dir]
        if self.user:
            argv += ["--user", self.user]
        for m in self.mounts:
            argv += ["--mount", f"type=bind,source={m.source},target={m.target}" + (",readonly" if m.read_only else "")]
        for key, value in sorted(self.environment.items()):
            argv += ["--env", f"{key}={value}"]
        return [*argv, "--entrypoint", self.entrypoint, self.image, *self.command]


CONTAINER_WORK_DIR = "/work"
CONTAINER_LICENSE_PATH = "/licenses/hailo.lic"
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def container_command(
    image: str,
    argv: Sequence[str],
    host_work_dir: Path,
    *,
    license_path: Path | None = None,
    user: str | None = None,
    extra_mounts: Sequence[BindMount] = (),
    environment: Mapping[str, str] | None = None,
) -> ContainerCommand:
    """The container form of a DFC ``argv`` (paths in it relative to ``host_work_dir``, mounted at /work).

    The licence, if any, is mounted read-only and never copied; ``user`` defaults to the calling
    uid:gid so the files the DFC writes into the mounted build dir stay owned by the caller.
    """
    if not argv:
        raise InvalidInput("empty DFC command")
    if license_path is not None and not license_path.is_file():
        raise InvalidInput(f"DFC licence file {license_path} does not exist")
    env = dict(environment or {})
    bad = [k for k in env if not _ENV_KEY.fullmatch(k)]
    if bad:
        raise InvalidInput(f"invalid environment variable name(s) for the compiler container: {bad}")
    mounts = [BindMount(source=host_work_dir.resolve(), target=CONTAINER_WORK_DIR, read_only=False)]
    if license_path is not None:
        mounts.append(BindMount(source=license_path.resolve(), target=CONTAINER_LICENSE_PATH, read_only=True))
    mounts.extend(extra_mounts)
    if user is None and hasattr(os, "getuid"):
        user = f"{os.getuid()}:{os.getgid()}"
    return ContainerCommand(image=image, entrypoint=argv[0], command=tuple(argv[1:]), mounts=tuple(mounts),
                            working_dir=CONTAINER_WORK_DIR, user=user, environment=env)


class ContainerRunner:
    """Runs each DFC command in the compiler container with `docker run --rm` (no Airflow needed).

    The image is resolved once, at the first run, to its ID: every stage runs in that exact image
    (a tag moved mid-compile cannot mix two DFCs) and ``resolved_image`` says which one it was."""

    def __init__(
        self,
        image: str,
        *,
        docker: str = "docker",
        license_path: Path | None = None,
        user: str | None = None,
        extra_mounts: Sequence[BindMount] = (),
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.image, self.docker, self.license_path, self.user = image, docker, license_path, user
        self.extra_mounts, self.environment = tuple(extra_mounts), dict(environment or {})
        self.image_id: str | None = None
        self.resolved_image: str | None = None

    def resolve(self, cwd: Path) -> str:
        if self.image_id is None:
            res = _run_process([self.docker, "image", "inspect", self.image], cwd, 60, "install Docker to run the compiler image")
            if res.returncode != 0:
                raise ToolNotFound(
                    f"compiler image {self.image} is not on this Docker engine ({res.stderr.strip()[-300:]}); "
                    "build it from docker/hailo_compiler (see its README) or load it"
                )
            info = json.loads(res.stdout)[0]
            self.image_id = str(info["Id"])
            self.resolved_image = image_reference(self.image_id, info.get("RepoDigests") or ())
        return self.image_id

    def command(self, argv: Sequence[str], cwd: Path) -> ContainerCommand:
        return container_command(self.image_id or self.image, argv, cwd, license_path=self.license_path, user=self.user,
                                 extra_mounts=self.extra_mounts, environment=self.environment)

    def run(self, argv: Sequence[str], cwd: Path, timeout_s: float) -> CommandResult:
        self.resolve(cwd)
        docker_argv = self.command(argv, cwd).docker_run_argv(self.docker)
        return _run_process(docker_argv, cwd, timeout_s, "install Docker to run the compiler image")


# -- results ----------------------------------------------------------------------------------
class CompileResult(BaseModel):
    """What one compile produced; the manifest's HEF record is built from it."""

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
    compiler_image: str | None = None  # the container image the DFC ran in (image_reference); None = host
    cached: bool
    cache_key: str | None = None
    logs_dir: Path | None
    parsing_report: Path | None
    stage_seconds: dict[str, float]


CompileOutput = CompileResult  # earlier name, kept for callers


# -- HEF checks -------------------------------------------------------------------------------
HefKind = Literal["hef", "placeholder"]


def is_placeholder_hef(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(PLACEHOLDER_MAGIC)) == PLACEHOLDER_MAGIC


def check_hef(path: Path) -> HefKind:
    """Sanity-check a HEF file: a placeholder, or HailoRT's header (magic, known version, proto size
    that fits; for header v0 also the md5 of the body). Raises IntegrityError otherwise.
    This catches truncation and wrong files, not tampering: signatures cover that."""
    if not path.is_file():
        raise IntegrityError(f"{path}: HEF file is missing")
    size = path.stat().st_size
    if size == 0:
        raise IntegrityError(f"{path}: HEF file is empty")
    if is_placeholder_hef(path):
        return "placeholder"
    with open(path, "rb") as fh:
        head = fh.read(_HEF_V0.size)
        if head[:4] != HEF_MAGIC:
            raise IntegrityError(f"{path}: not a HEF (first bytes {head[:4]!r}, expected the HEF magic {HEF_MAGIC!r})")
        if len(head) < 12:
            raise IntegrityError(f"{path}: HEF header truncated ({size} bytes)")
        version, proto_size = struct.unpack(">II", head[4:12])
        if version not in HEF_HEADER_VERSIONS:
            raise IntegrityError(f"{path}: unknown HEF header version {version}")
        if proto_size == 0 or proto_size > size - 12:
            raise IntegrityError(f"{path}: HEF proto size {proto_size} does not fit a {size}-byte file (truncated?)")
        if version == 0:
            if len(head) < _HEF_V0.size or size - _HEF_V0.size != proto_size:
                raise IntegrityError(f"{path}: HEF v0 body is {size - _HEF_V0.size} bytes, header says {proto_size}")
            md5 = hashlib.md5(usedforsecurity=False)
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                md5.update(chunk)
            if md5.digest() != _HEF_V0.unpack(head)[4]:
                raise IntegrityError(f"{path}: HEF body md5 does not match its header (corrupt or truncated)")
    return "hef"


def assert_deployable(target: CompileResult | Path, *, production: bool) -> None:
    """Refuse a missing/empty/corrupt HEF always, and a placeholder (or a HEF built by the CLI test
    double) for any production target."""
    result = target if isinstance(target, CompileResult) else None
    path = target.hef_path if isinstance(target, CompileResult) else Path(target)
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


# -- cache ------------------------------------------------------------------------------------
def cache_key(onnx_sha: str, calib_sha: str | None, script_sha: str | None, dfc_version: str, hw_arch: str) -> str:
    return sha256_bytes(json.dumps([onnx_sha, calib_sha, script_sha, dfc_version, hw_arch], separators=(",", ":")).encode())


class _CacheEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    hef_sha256: str
    dfc_version: str
    hailort_version: str
    compiled_by_double: bool
    stage_seconds: dict[str, float]
    compiler_image: str | None = None


def _cache_lookup(entry_dir: Path, net_name: str) -> _CacheEntry | None:
    meta, hef = entry_dir / "entry.json", entry_dir / f"{net_name}.hef"
    if not meta.is_file() or not hef.is_file():
        return None
    try:
        entry = _CacheEntry.model_validate_json(meta.read_bytes())
    except ValueError:
        entry = None
    if entry is None or sha256_file(hef) != entry.hef_sha256:
        # A corrupt entry is dropped and the model recompiled: the cache must never hand out bad bytes.
        shutil.rmtree(entry_dir, ignore_errors=True)
        return None
    return entry


def _cache_store(entry_dir: Path, net_name: str, hef: Path, build: Path, entry: _CacheEntry) -> None:
    tmp = entry_dir.with_name(entry_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "logs").mkdir(parents=True)
    shutil.copyfile(hef, tmp / f"{net_name}.hef")
    for log in [*build.glob("*.log"), *build.glob("*.json")]:
        shutil.copyfile(log, tmp / "logs" / log.name)
    (tmp / "entry.json").write_text(entry.model_dump_json(), encoding="utf-8")
    shutil.rmtree(entry_dir, ignore_errors=True)
    try:
        os.replace(tmp, entry_dir)
    except OSError:
        # A concurrent build of the same key stored its entry first: same key, same inputs; keep theirs.
        shutil.rmtree(tmp, ignore_errors=True)


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
) -> CompileResult:
    """Compile ``onnx_path`` to ``artifacts_dir/<net>-<tag>.hef`` plus ``hef_sha256sum.txt``.

    ``runner=None`` runs ``hailo`` on this host (resolved on PATH); a :class:`ContainerRunner`
    (or the Airflow task's Docker-hook runner) runs the same argv in the compiler container and the
    result records that image (``compiler_image``).
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
        hit = _cache_lookup(entry_dir, net_name)
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
        _cache_store(entry_dir, net_name, produced, build, _CacheEntry(
            hef_sha256=sha256_file(produced), dfc_version=versions.dfc, hailort_version=versions.hailort,
            compiled_by_double=versions.is_double, stage_seconds=stages, compiler_image=ran_in))
    return _result(hef_out, sums, net_name, hw_arch, versions, onnx_sha, calib_sha, script_sha, key,
                   cached=False, logs_dir=build, stages=stages, compiler_image=ran_in)


def _result(
    hef_out: Path, sums: Path, net: str, arch: str, versions: DfcVersions, onnx_sha: str, calib_sha: str,
    script_sha: str | None, key: str, *, cached: bool, logs_dir: Path, stages: dict[str, float],
    compiler_image: str | None,
) -> CompileResult:
    write_sha256sum([hef_out], sums)
    report = logs_dir / "parsing_report.json"
    return CompileResult(
        hef_path=hef_out, sums_path=sums, hef_sha256=sha256_file(hef_out), size=hef_out.stat().st_size,
        hw_arch=arch, net_name=net, dfc_version=versions.dfc, hailort_version=versions.hailort,
        onnx_sha256=onnx_sha, calibration_sha256=calib_sha, model_script_sha256=script_sha,
        real=not versions.is_double, compiled_by_double=versions.is_double, placeholder=False, cached=cached,
        cache_key=key, logs_dir=logs_dir, parsing_report=report if report.is_file() else None, stage_seconds=stages,
        compiler_image=compiler_image,
    )


def _placeholder(
    hef_out: Path, sums: Path, net: str, arch: str, onnx_sha: str, calib_sha: str, script_sha: str | None
) -> CompileResult:
    meta = {"net": net, "hw_arch": arch, "onnx_sha256": onnx_sha, "calibration_sha256": calib_sha,
            "note": "PLACEHOLDER: no DFC on this machine; NOT a compiled HEF, refused by production deploys"}
    hef_out.write_bytes(PLACEHOLDER_MAGIC + json.dumps(meta, sort_keys=True).encode() + b"\n")
    write_sha256sum([hef_out], sums)
    return CompileResult(
        hef_path=hef_out, sums_path=sums, hef_sha256=sha256_file(hef_out), size=hef_out.stat().st_size,
        hw_arch=arch, net_name=net, dfc_version=None, hailort_version=None, onnx_sha256=onnx_sha,
        calibration_sha256=calib_sha, model_script_sha256=script_sha, real=False, placeholder=True, cached=False,
        logs_dir=None, parsing_report=None, stage_seconds={},
    )
