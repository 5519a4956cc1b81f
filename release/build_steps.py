"""The build half of a release: validate → compile → image → sign → manifest, over the artifact store.

Each step reads its inputs from the store (``steps/<name>.json`` and the artifacts beside them),
does one job through the library module that owns it, saves a typed result beside the artifacts,
records its state change through ``release.states.advance`` and returns the typed result. Every
step records honestly whether it ran for real, against a test double, as a placeholder, or was
skipped — and why. Nothing here touches a device.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from release.checksums import sha256_bytes, sha256_file
from release.config import load_settings
from release.errors import IntegrityError, InvalidInput, StepFailed
from release.history import History
from release.manifest import (
    GateRecord,
    HefArtifact,
    OnnxArtifact,
    ReleaseManifest,
    RuntimeImage,
    SignatureRef,
    StepRecord,
    TensorSpec,
)
from release.pipeline_env import PipelineEnv
from release.request import SAMPLE_MODEL, ReleaseRequest
from release.states import ReleaseEvent, ReleaseState, advance, create
from release.step_results import (
    CompileResult,
    ImageResult,
    ManifestResult,
    SignResult,
    ValidateResult,
    load_result,
    save_result,
)
from release.store import ArtifactStore
from release.verify import BUNDLE_SIG, CANDIDATE, CANDIDATE_SIG, signed_files, signing_key

NET_NAME = "tcn_encoder"
REPO_ROOT = Path(__file__).resolve().parents[1]


def git_commit(repo: Path | None = None) -> str:
    """The checkout's commit, or 'unknown' outside a git checkout."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out if len(out) == 40 else "unknown"


def _advance(req: ReleaseRequest, store: ArtifactStore, event: ReleaseEvent, reason: str) -> None:
    advance(History(store), req.release_tag, event, actor=req.triggered_by, device=req.device, reason=reason)


def _timed(name: str, status: str, reason: str, t0: float) -> StepRecord:
    return StepRecord(name=name, status=status, reason=reason, duration_s=round(time.monotonic() - t0, 3))


# -- validate ---------------------------------------------------------------------------------
def validate(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, onnx_path: Path | None = None) -> ValidateResult:
    from release.onnx_validation import validate_onnx, write_report
    from release.sample_model import write_sample_model

    t0 = time.monotonic()
    # The release exists from here on: its counter is allocated now, once, and never reused.
    create(History(store), req.release_tag, device=req.device, actor=req.triggered_by, reason=req.continuity_id)
    settings = load_settings()
    work = env.work_dir(req.release_tag, "validate")
    if req.onnx_location == SAMPLE_MODEL:
        src = write_sample_model(work / "model.onnx", num_motifs=settings.num_motifs)
    elif onnx_path is not None:
        src = onnx_path
    elif req.onnx_location.startswith("/"):
        src = Path(req.onnx_location)
    else:
        raise InvalidInput(f"{req.onnx_location}: gs:// models are fetched by the Airflow task (GCS hook)")
    report = validate_onnx(
        src, num_motifs=settings.num_motifs, opset_range=settings.opset_range, window=settings.window_shape, output_dir=work
    )
    write_report(report, work / "onnx_report.json")
    store.put_file(req.release_tag, "model.onnx", src)
    store.put_file(req.release_tag, "onnx_report.json", work / "onnx_report.json")
    store.put_file(req.release_tag, "reference_outputs.npz", work / "reference_outputs.npz")
    result = ValidateResult(
        step=_timed("validate", "real", "onnx.checker, shape inference, op allow-list, onnxruntime smoke run", t0),
        onnx=OnnxArtifact(
            uri=store.uri(req.release_tag, "model.onnx"), sha256=report.sha256, size=report.size, opset=report.opset,
            inputs=tuple(TensorSpec(name=i.name, shape=i.shape, dtype=i.dtype) for i in report.inputs),
            outputs=tuple(TensorSpec(name=o.name, shape=o.shape, dtype=o.dtype) for o in report.outputs),
        ),
        onnx_name="model.onnx", report_name="onnx_report.json", reference_name="reference_outputs.npz",
    )
    save_result(store, req.release_tag, result)
    _advance(req, store, ReleaseEvent.VALIDATED, f"onnx {report.sha256} opset {report.opset}")
    return result


# -- compile ----------------------------------------------------------------------------------
def compile_hef(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, command_runner: Any = None) -> CompileResult:
    from release.calibration import write_calibration_set
    from release.compile import assert_deployable
    from release.compile import compile_hef as run_compile

    t0 = time.monotonic()
    validated = load_result(store, req.release_tag, "validate", ValidateResult)
    work = env.work_dir(req.release_tag, "compile")
    onnx_local = store.fetch(req.release_tag, validated.onnx_name, work / "model.onnx")
    if sha256_file(onnx_local) != validated.onnx.sha256:
        raise IntegrityError(f"release {req.release_tag}: model.onnx in the store does not match the validated sha256")
    calib, _ = write_calibration_set(work / "calibration")
    if command_runner is None and env.compiler_image:  # the CLI path: `docker run` per stage (Airflow: Docker hook)
        from release.dfc_runners import ContainerRunner

        command_runner = ContainerRunner(env.compiler_image, docker=env.docker_bin or "docker", license_path=env.dfc_license)
    hailo = "hailo" if command_runner is not None else env.hailo_bin
    out = run_compile(
        onnx_local, tag=req.release_tag, net_name=NET_NAME, work_dir=work, artifacts_dir=work / "artifacts",
        calib_path=calib, hw_arch=env.hw_arch, hailo=hailo, runner=command_runner, cache_dir=env.root / "compile-cache",
        allow_placeholder=not req.production,
    )
    assert_deployable(out, production=req.production)  # the result: refuses placeholders and double-built HEFs
    store.put_file(req.release_tag, out.hef_path.name, out.hef_path)
    store.put_file(req.release_tag, "hef_sha256sum.txt", out.sums_path)
    store.put_file(req.release_tag, calib.name, calib)
    if out.logs_dir is not None:
        for log in sorted(out.logs_dir.glob("*.log"))[:20]:
            store.put_file(req.release_tag, f"dfc-logs/{log.name}", log)
    if out.placeholder:
        status, reason = "placeholder", "no Hailo DFC on this machine: placeholder HEF (refused by production deploys)"
    elif out.compiled_by_double:
        status, reason = "double", f"DFC CLI test double ({'cached' if out.cached else 'compiled'})"
    else:
        status, reason = "real", f"DFC {out.dfc_version} ({'cache hit' if out.cached else 'compiled'})"
    if out.compiler_image:
        reason += f" in compiler image {out.compiler_image}"
    result = CompileResult(
        step=_timed("compile", status, reason, t0),
        hef=HefArtifact(
            uri=store.uri(req.release_tag, out.hef_path.name), hef_sha256=out.hef_sha256, size=out.size,
            hw_arch=out.hw_arch, dfc_version=out.dfc_version, hailort_version=out.hailort_version,
            calibration_sha256=out.calibration_sha256, model_script_sha256=out.model_script_sha256,
            real_compile=out.real, placeholder=out.placeholder, compiler_image=out.compiler_image,
        ),
        hef_name=out.hef_path.name, sums_name="hef_sha256sum.txt",
    )
    save_result(store, req.release_tag, result)
    _advance(req, store, ReleaseEvent.COMPILED, f"{status}: hef {out.hef_sha256}")
    return result


# -- image ------------------------------------------------------------------------------------
def build_image(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore) -> ImageResult:
    from release import image_build

    t0 = time.monotonic()
    repository = f"{env.registry}/{env.image_repository}" if env.registry else env.image_repository
    why_not = image_build.unavailable_reason(env.docker_bin, env.registry)
    if why_not is not None:
        if req.production:
            raise StepFailed(f"cannot build the runtime image for a production release: {why_not}")
        image = RuntimeImage(repository=repository, digest=None, platform="linux/arm64", signature=None, builder="none", pushed=False)
        step = _timed("image", "skipped", why_not, t0)
    else:
        if req.production and env.hailort_wheel is None:
            raise StepFailed(
                "a production runtime image needs HailoRT: set HAILO_HAILORT_WHEEL to Hailo's "
                "hailort-X.Y.Z-cp311-cp311-linux_aarch64.whl matching the Pi's driver (without it the Pi would "
                "silently serve the CPU fallback)"
            )
        if env.hailort_wheel is not None:
            # The HEF runs only on the HailoRT it was compiled for (HAILO_INVALID_HEF otherwise).
            compiled_for = load_result(store, req.release_tag, "compile", CompileResult).hef.hailort_version
            in_image = image_build.hailort_wheel_version(env.hailort_wheel)
            if compiled_for and compiled_for != in_image:
                raise StepFailed(f"the HEF was compiled for HailoRT {compiled_for} but the image would get {in_image}")
        built = image_build.build_and_push(
            docker=env.docker_bin, registry=env.registry, repository=env.image_repository,  # type: ignore[arg-type]
            tag=req.release_tag, context=REPO_ROOT, work_dir=env.work_dir(req.release_tag, "image"),
            production=req.production, cache_dir=env.root / "image-cache", hailort_wheel=env.hailort_wheel,
        )
        image = RuntimeImage(repository=built.repository, digest=built.digest, platform=built.platform,
                             signature=None, builder=built.builder, pushed=True, hailort_version=built.hailort_version)
        step = _timed("image", "real", built.note, t0)
    result = ImageResult(step=step, image=image)
    save_result(store, req.release_tag, result)
    _advance(req, store, ReleaseEvent.IMAGE_PUBLISHED, f"{step.status}: {image.repository}@{image.digest}")
    return result


# -- sign -------------------------------------------------------------------------------------
def sign(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore) -> SignResult:
    from release.keys import key_id, load_public_key

    t0 = time.monotonic()
    image = load_result(store, req.release_tag, "image", ImageResult).image
    priv, pub = signing_key(env, req.production)
    kid = key_id(load_public_key(pub))
    signatures: list[SignatureRef] = []
    if image.digest and env.registry:
        from release.oci_signing import image_signer
        from release.registry import ImageRef, RegistryClient

        ref = ImageRef.parse(f"{image.repository}@{image.digest}")
        sig = image_signer(RegistryClient(ref.registry), priv).sign(ref)
        signatures.append(SignatureRef(kind="cosign-image", ref=sig, key_id=kid))
        step = _timed("sign", "real", "cosign-format image signature (tag layout) + ECDSA manifest signature", t0)
    else:
        step = _timed("sign", "real", "ECDSA P-256 manifest signature; no image to sign (image step skipped)", t0)
    signatures.append(SignatureRef(kind="manifest-ecdsa", ref=CANDIDATE_SIG, key_id=kid))
    signatures.append(SignatureRef(kind="model-signing-bundle", ref=BUNDLE_SIG, key_id=kid))
    result = SignResult(step=step, signatures=tuple(signatures))
    save_result(store, req.release_tag, result)
    _advance(req, store, ReleaseEvent.SIGNED, f"key {kid}: {', '.join(s.kind for s in signatures)}")
    return result


# -- manifest ---------------------------------------------------------------------------------
def write_manifest(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore) -> ManifestResult:
    from release.gate_settings import settings_with_overrides
    from release.keys import load_private_key
    from release.manifest_signing import sign_bytes

    t0 = time.monotonic()
    tag = req.release_tag
    validated = load_result(store, tag, "validate", ValidateResult)
    compiled = load_result(store, tag, "compile", CompileResult)
    image = load_result(store, tag, "image", ImageResult)
    signed = load_result(store, tag, "sign", SignResult)
    history = History(store)
    counter = history.counter_of(tag)
    if counter is None:
        raise StepFailed(f"release {tag} has no allocated counter: run the validate step first")
    settings = settings_with_overrides(req.gate_overrides)
    lkg = history.last_known_good(req.device)
    image_sig = next((s for s in signed.signatures if s.kind in ("cosign-image", "cosign-keyless")), None)
    manifest = ReleaseManifest(
        release_tag=tag, release_counter=counter, channel=load_settings().channel, device=req.device,
        continuity_id=req.continuity_id, config_version=req.config_version, git_commit=git_commit(REPO_ROOT),
        created_at=dt.datetime.now(dt.UTC), onnx=validated.onnx, hef=compiled.hef,
        image=image.image.model_copy(update={"signature": image_sig}),
        gate=GateRecord(thresholds=settings.thresholds()), lease_s=settings.lease_s(),
        previous_release_tag=lkg[0] if lkg else None, state=ReleaseState.MANIFEST_WRITTEN,
        signatures=signed.signatures,
        steps=(validated.step, compiled.step, image.step, signed.step, _timed("manifest", "real", "signed candidate", t0)),
    )
    data = manifest.canonical_json()
    priv, _ = signing_key(env, req.production)
    store.put_bytes(tag, CANDIDATE, data)
    store.put_bytes(tag, CANDIDATE_SIG, sign_bytes(data, load_private_key(priv)))
    # HEF, ONNX and manifest signed together (OpenSSF model-signing), verified before deploy.
    signed_dir = signed_files(store, tag, compiled.hef_name, env.work_dir(tag, "manifest") / "signed")
    from release.bundle_signing import KeyBundleSigner

    sig_path = KeyBundleSigner(priv).sign(signed_dir, signed_dir.parent / BUNDLE_SIG)
    store.put_file(tag, BUNDLE_SIG, sig_path)
    result = ManifestResult(
        step=_timed("manifest", "real", "candidate manifest written and signed", t0), manifest_name=CANDIDATE,
        signature_name=CANDIDATE_SIG, manifest_sha256=sha256_bytes(data), release_counter=counter,
    )
    save_result(store, tag, result)
    _advance(req, store, ReleaseEvent.MANIFEST_WRITTEN, f"candidate #{counter} sha256 {result.manifest_sha256}")
    return result
