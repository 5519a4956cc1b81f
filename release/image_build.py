"""Build and push the linux/arm64 runtime image; the pushed digest is what everything downstream uses.

Production: `docker buildx build --platform linux/arm64 --push --provenance=true --metadata-file M`
(the digest comes from the metadata file). These machines have no buildx plugin, so the same
flow also runs with the classic/BuildKit builder (`docker build` + `docker push`) against a
real registry, and the digest is read back from the registry. Either way a production target
refuses an image whose platform (read from the registry's config blob) is not linux/arm64.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from release.errors import InvalidInput, RefusedForProduction, StepFailed, ToolNotFound
from release.identifiers import ReleaseTag
from release.progress import report_phase

RUNTIME_DOCKERFILE = Path("docker/hailo_runtime/Dockerfile")
PRODUCTION_PLATFORM = "linux/arm64"


@dataclass(frozen=True)
class ImageBuildResult:
    repository: str
    tag: str
    digest: str
    platform: str
    builder: str
    note: str
    hailort_version: str | None = None


# HailoRT's Python wheel as Hailo ships it for the Pi (package hailo_platform inside). It is not on
# PyPI: the runner host keeps the one matching the Pi's driver and names it in HAILO_HAILORT_WHEEL.
_HAILORT_WHEEL = re.compile(r"^hailort-(?P<version>\d+\.\d+\.\d+)-cp311-cp311-linux_aarch64\.whl$")


def hailort_wheel_version(wheel: Path) -> str:
    """The HailoRT version of ``wheel`` after checking it is a cp311 aarch64 wheel holding hailo_platform."""
    import zipfile

    match = _HAILORT_WHEEL.fullmatch(wheel.name)
    if match is None:
        raise InvalidInput(
            f"{wheel.name}: expected HailoRT's Pi wheel, hailort-X.Y.Z-cp311-cp311-linux_aarch64.whl "
            "(the runtime image runs CPython 3.11 on linux/arm64)"
        )
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"{wheel}: not a readable wheel: {exc}") from None
    if not any(n.startswith("hailo_platform/") for n in names):
        raise InvalidInput(f"{wheel.name}: no hailo_platform package inside; is this HailoRT's Python wheel?")
    return match.group("version")


_PIP_PLATFORMS = {
    "linux/amd64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
    "linux/arm64": ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"),
}
BASE_IMAGES = {"linux/amd64": "hailo-base:bookworm-amd64", "linux/arm64": "hailo-base:bookworm-arm64"}


def stage_runtime_context(
    repo: Path, work_dir: Path, platform: str, cache_dir: Path, python: str, hailort_wheel: Path | None = None
) -> Path:
    """A build context with the runtime Dockerfile and a wheelhouse for ``platform`` (plus
    HailoRT's wheel when given: the Dockerfile installs it if present).

    Wheels are fetched on the host (binary-only, for the target platform and the base image's
    CPython 3.11), so the image build itself needs no network and no proxy CA inside.
    """
    import hashlib
    import tomllib

    if platform not in _PIP_PLATFORMS:
        raise StepFailed(f"no wheel platform mapping for {platform}")
    sidecar = (repo / "sidecar").resolve()  # absolute: a bare "sidecar" would be a PyPI name to pip
    meta = tomllib.loads((sidecar / "pyproject.toml").read_text())["project"]
    deps = [*meta["dependencies"], *meta["optional-dependencies"]["onnx"]]
    key = hashlib.sha256(json.dumps([platform, deps]).encode()).hexdigest()[:16]
    wheels = cache_dir / f"wheelhouse-{platform.replace('/', '-')}-{key}"
    if not (wheels / ".complete").is_file():
        report_phase(f"pip download: wheelhouse for {platform} (first run only)")
        wheels.mkdir(parents=True, exist_ok=True)
        argv = [python, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version", "3.11",
                "--implementation", "cp", "--dest", str(wheels)]
        for tag in _PIP_PLATFORMS[platform]:
            argv += ["--platform", tag]
        _run([*argv, *deps], f"pip download (wheelhouse for {platform})", timeout=900)
        (wheels / ".complete").write_text(key)
    ctx = work_dir / f"context-{platform.replace('/', '-')}"
    if ctx.exists():
        shutil.rmtree(ctx)
    (ctx / "wheelhouse").mkdir(parents=True)
    for wheel in wheels.glob("*.whl"):
        shutil.copyfile(wheel, ctx / "wheelhouse" / wheel.name)
    report_phase("pip wheel: the sidecar")
    _run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(ctx / "wheelhouse"), str(sidecar)],
         "pip wheel (sidecar)", timeout=600)
    if hailort_wheel is not None:  # checked by build_and_push (hailort_wheel_version) before staging
        shutil.copyfile(hailort_wheel, ctx / "wheelhouse" / hailort_wheel.name)
    shutil.copyfile(repo / RUNTIME_DOCKERFILE, ctx / "Dockerfile")
    return ctx


def ensure_base_image(docker: str, platform: str, repo: Path) -> str:
    """Make the local Debian base image for ``platform`` if it is missing (no registry to pull from)."""
    image = BASE_IMAGES[platform]
    if subprocess.run([docker, "image", "inspect", image], capture_output=True).returncode == 0:
        return image
    arch = platform.split("/", 1)[1]
    report_phase(f"base image {arch}: not cached, making it (arm64: debootstrap under QEMU, minutes)")
    res = subprocess.run([str(repo / "scripts" / "make_base_image.sh"), arch, image], capture_output=True, text=True,
                         timeout=3600, env={**__import__("os").environ, "DOCKER": docker})
    if res.returncode != 0:
        raise StepFailed(f"cannot make the {platform} base image: {res.stderr.strip()[-500:]}")
    return image


def unavailable_reason(docker: str | None, registry: str | None) -> str | None:
    """Why the image cannot be built here, or None when it can."""
    if not docker or not Path(docker).exists():
        return "no docker CLI on this machine"
    if not registry:
        return "no OCI registry configured (HAILO_REGISTRY)"
    probe = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=20)
    if probe.returncode != 0:
        return f"the Docker engine does not answer: {probe.stderr.strip()[-200:]}"
    return None


def buildx_argv(docker: str, image: str, context: Path, dockerfile: Path, metadata_file: Path,
                platform: str = PRODUCTION_PLATFORM, build_args: dict[str, str] | None = None) -> list[str]:
    argv = [docker, "buildx", "build", "--platform", platform, "--push", "--provenance=true",
            "--metadata-file", str(metadata_file), "--file", str(dockerfile), "--tag", image]
    for key, value in sorted((build_args or {}).items()):
        argv += ["--build-arg", f"{key}={value}"]
    return [*argv, str(context)]


def digest_from_metadata(metadata_file: Path) -> str:
    """The pushed manifest digest from `docker buildx build --metadata-file` output."""
    try:
        meta = json.loads(metadata_file.read_text())
    except (OSError, ValueError) as exc:
        raise StepFailed(f"buildx metadata file {metadata_file} is unreadable: {exc}") from None
    digest = meta.get("containerimage.digest")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
        raise StepFailed(f"buildx metadata has no valid containerimage.digest (keys: {sorted(meta)})")
    return digest


# A build's own step lines: the classic builder's "Step 4/18 : RUN ..." and BuildKit's "#7 [build 2/3] RUN ...".
_BUILD_STEP = re.compile(r"^(Step \d+/\d+ : .*|#\d+ \[[^\]]+\] .*)$")


def _run_reporting(argv: list[str], what: str, phase: str, timeout: float = 3600) -> str:
    """_run for a docker build, with each build step reported as the phase ("docker build: Step 4/15 : RUN
    python3 -m venv ..."): the arm64 runtime build runs pip under QEMU for minutes (that step took 80 s
    on a quiet run here, ≈ 7 min at load average 8), and "docker build" alone for that long says
    nothing. Output is read as it comes, stderr merged."""
    import collections
    import os
    import threading

    from release.progress import PHASE_FILE_ENV

    if not os.environ.get(PHASE_FILE_ENV):
        return _run(argv, what, timeout)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace")
    except FileNotFoundError:
        raise ToolNotFound(f"{argv[0]} not found") from None
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    lines: collections.deque[str] = collections.deque(maxlen=400)
    try:
        for line in proc.stdout or ():
            lines.append(line)
            if _BUILD_STEP.match(line.strip()):
                report_phase(f"{phase}: {line.strip()}")
        proc.wait()
    finally:
        timer.cancel()
    out = "".join(lines)
    if proc.returncode != 0:
        if timed_out.is_set():
            raise subprocess.TimeoutExpired(argv, timeout)
        raise StepFailed(f"{what} failed (exit {proc.returncode}): {out.strip()[-800:]}")
    return out


def _run(argv: list[str], what: str, timeout: float = 3600) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ToolNotFound(f"{argv[0]} not found") from None
    if res.returncode != 0:
        raise StepFailed(f"{what} failed (exit {res.returncode}): {(res.stderr or res.stdout).strip()[-800:]}")
    return res.stdout


def build_and_push(
    *, docker: str, registry: str, repository: str, tag: str, context: Path, work_dir: Path, production: bool,
    cache_dir: Path, dockerfile: Path | None = None, platform: str | None = None, base_image: str | None = None,
    hailort_wheel: Path | None = None,
) -> ImageBuildResult:
    import sys

    from release.registry import ImageRef, RegistryClient

    tag = ReleaseTag(tag).value
    image = f"{registry}/{repository}:{tag}"
    ImageRef.parse(image)
    plat = platform or PRODUCTION_PLATFORM
    hailort_version = hailort_wheel_version(hailort_wheel) if hailort_wheel is not None else None
    if hailort_version is not None and plat != PRODUCTION_PLATFORM:
        raise InvalidInput(f"HailoRT's wheel is for linux/arm64; cannot build a {plat} image with it")
    if dockerfile is None:
        base_image = base_image or ensure_base_image(docker, plat, context)
        context = stage_runtime_context(context, work_dir, plat, cache_dir, sys.executable, hailort_wheel)
        dockerfile = context / "Dockerfile"
    work_dir.mkdir(parents=True, exist_ok=True)
    buildx = shutil.which("docker-buildx") or _has_buildx(docker)
    build_args = {"BASE_IMAGE": base_image} if base_image else {}
    if hailort_version is not None:
        build_args["HAILORT_VERSION"] = hailort_version
    if buildx:
        meta = work_dir / "buildx-metadata.json"
        report_phase(f"docker buildx build --push ({plat})")
        _run_reporting(buildx_argv(docker, image, context, dockerfile, meta, plat, build_args), "docker buildx build",
                       f"docker buildx build ({plat})")
        digest, builder, note = digest_from_metadata(meta), "buildx", "docker buildx build --push (metadata file digest)"
    else:
        argv = [docker, "build", "--platform", plat, "--file", str(dockerfile), "--tag", image]
        for key, value in sorted(build_args.items()):
            argv += ["--build-arg", f"{key}={value}"]
        report_phase(f"docker build ({plat})")
        _run_reporting([*argv, str(context)], "docker build", f"docker build ({plat})")
        report_phase(f"docker push {image}")
        _run([docker, "push", image], "docker push")
        report_phase("registry: reading the digest and platform back")
        digest = RegistryClient(registry).manifest_digest(repository, tag)
        builder, note = "docker-build", "docker build + push (no buildx plugin here); digest read back from the registry"
    client = RegistryClient(registry)
    platforms = client.platforms(repository, digest)
    if production and PRODUCTION_PLATFORM not in platforms:
        raise RefusedForProduction(
            f"image {image}@{digest} is {', '.join(sorted(platforms)) or 'of unknown platform'}; production needs {PRODUCTION_PLATFORM}"
        )
    actual = PRODUCTION_PLATFORM if PRODUCTION_PLATFORM in platforms else (sorted(platforms)[0] if platforms else plat)
    if hailort_version is None:
        note += "; no HailoRT wheel: the image serves the onnx fallback only"
    else:
        note += f"; HailoRT {hailort_version}"
    return ImageBuildResult(repository=f"{registry}/{repository}", tag=tag, digest=digest, platform=actual,
                            builder=builder, note=f"{note} ({actual})", hailort_version=hailort_version)


def _has_buildx(docker: str) -> str | None:
    res = subprocess.run([docker, "buildx", "version"], capture_output=True, text=True, timeout=20)
    return docker if res.returncode == 0 else None
