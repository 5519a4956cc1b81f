"""The pipeline's steps. Each: read inputs from the store, do one job via its module, save a
typed result beside the artifacts, return a small summary. Every step records honestly whether
it ran for real, against a test double, as a placeholder, or was skipped — and why."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from release.checksums import sha256_file, write_sha256sum
from release.config import load_settings
from release.devices import DeviceSpec, Inventory, load_inventory
from release.errors import IntegrityError, InvalidInput, ReleaseError, StepFailed
from release.ledger import Ledger
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
from release.pipeline import git_commit, now_utc
from release.pipeline_env import PipelineEnv
from release.request import SAMPLE_MODEL, ReleaseRequest
from release.states import ReleaseState
from release.step_results import (
    CompileResult,
    DeployResult,
    FinalResult,
    GateResult,
    ImageResult,
    ManifestResult,
    SignResult,
    ValidateResult,
    load_result,
    save_result,
)
from release.store import MANIFEST_NAME, ArtifactStore, next_release_counter

if TYPE_CHECKING:
    from release.bundle_signing import BundleSigner

CANDIDATE = "manifest.candidate.json"
CANDIDATE_SIG = "manifest.candidate.json.sig"
PUBLISHED_SIG = "manifest.json.sig"
BUNDLE_SIG = "bundle.sig"
NET_NAME = "tcn_encoder"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _timed(name: str, status: str, reason: str, t0: float) -> StepRecord:
    return StepRecord(name=name, status=status, reason=reason, duration_s=round(time.monotonic() - t0, 3))


# -- validate ---------------------------------------------------------------------------------
def validate(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, onnx_path: Path | None = None) -> dict[str, Any]:
    from release.onnx_validation import validate_onnx, write_report
    from release.sample_model import write_sample_model

    t0 = time.monotonic()
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
    return {"onnx_sha256": report.sha256, "opset": report.opset, "warnings": list(report.warnings)}


# -- compile ----------------------------------------------------------------------------------
def compile_hef(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, command_runner: Any = None) -> dict[str, Any]:
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
    result = CompileResult(
        step=_timed("compile", status, reason, t0),
        hef=HefArtifact(
            uri=store.uri(req.release_tag, out.hef_path.name), hef_sha256=out.hef_sha256, size=out.size,
            hw_arch=out.hw_arch, dfc_version=out.dfc_version, hailort_version=out.hailort_version,
            calibration_sha256=out.calibration_sha256, model_script_sha256=out.model_script_sha256,
            real_compile=out.real, placeholder=out.placeholder,
        ),
        hef_name=out.hef_path.name, sums_name="hef_sha256sum.txt",
    )
    save_result(store, req.release_tag, result)
    return {"hef_sha256": out.hef_sha256, "status": status, "cached": out.cached}


# -- image ------------------------------------------------------------------------------------
def build_image(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore) -> dict[str, Any]:
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
    save_result(store, req.release_tag, ImageResult(step=step, image=image))
    return {"repository": image.repository, "digest": image.digest, "status": step.status, "reason": step.reason}


# -- sign -------------------------------------------------------------------------------------
def _signing_key(env: PipelineEnv, production: bool) -> tuple[Path, Path]:
    import os

    from release.keys import generate_dev_keypair

    configured = os.environ.get("HAILO_SIGNING_KEY")
    if configured:
        return Path(configured), Path(os.environ.get("HAILO_SIGNING_PUB", configured + ".pub"))
    if production:
        raise StepFailed("HAILO_SIGNING_KEY is not set: production releases are never signed with a generated dev key")
    return generate_dev_keypair(env.keys_dir)


def sign(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore) -> dict[str, Any]:
    from release.keys import key_id, load_private_key, load_public_key

    t0 = time.monotonic()
    image = load_result(store, req.release_tag, "image", ImageResult).image
    priv, pub = _signing_key(env, req.production)
    kid = key_id(load_public_key(pub))
    signatures: list[SignatureRef] = []
    if image.digest and env.registry:
        from release.oci_signing import sign_image
        from release.registry import ImageRef, RegistryClient

        ref = ImageRef.parse(f"{image.repository}@{image.digest}")
        sig = sign_image(RegistryClient(ref.registry), ref, load_private_key(priv))
        signatures.append(SignatureRef(kind="cosign-image", ref=sig, key_id=kid))
        step = _timed("sign", "real", "cosign-format image signature (tag layout) + ECDSA manifest signature", t0)
    else:
        step = _timed("sign", "real", "ECDSA P-256 manifest signature; no image to sign (image step skipped)", t0)
    signatures.append(SignatureRef(kind="manifest-ecdsa", ref=CANDIDATE_SIG, key_id=kid))
    signatures.append(SignatureRef(kind="model-signing-bundle", ref=BUNDLE_SIG, key_id=kid))
    save_result(store, req.release_tag, SignResult(step=step, signatures=tuple(signatures)))
    return {"signatures": [s.kind for s in signatures], "key_id": kid}


# -- manifest ---------------------------------------------------------------------------------
def _ledger(env: PipelineEnv) -> Ledger:
    return Ledger(env.ledger_dir)


def last_promoted(env: PipelineEnv, device: str) -> str | None:
    for entry in reversed(_ledger(env).entries(device)):
        if entry.event == "promote" or (entry.event == "rollback" and entry.tag):
            return entry.tag
    return None


def write_manifest(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore) -> dict[str, Any]:
    from release.gate_settings import settings_with_overrides
    from release.keys import load_private_key
    from release.manifest_signing import sign_bytes

    t0 = time.monotonic()
    tag = req.release_tag
    validated = load_result(store, tag, "validate", ValidateResult)
    compiled = load_result(store, tag, "compile", CompileResult)
    image = load_result(store, tag, "image", ImageResult)
    signed = load_result(store, tag, "sign", SignResult)
    counter = next_release_counter(store, load_settings().channel)
    image_sig = next((s for s in signed.signatures if s.kind in ("cosign-image", "cosign-keyless")), None)
    manifest = ReleaseManifest(
        release_tag=tag, release_counter=counter, channel=load_settings().channel, device=req.device,
        continuity_id=req.continuity_id, config_version=req.config_version, git_commit=git_commit(REPO_ROOT),
        created_at=now_utc(), onnx=validated.onnx, hef=compiled.hef,
        image=image.image.model_copy(update={"signature": image_sig}),
        gate=GateRecord(thresholds=settings_with_overrides(req.gate_overrides).thresholds()),
        previous_release_tag=last_promoted(env, req.device), state=ReleaseState.MANIFEST_WRITTEN,
        signatures=signed.signatures,
        steps=(validated.step, compiled.step, image.step, signed.step, _timed("manifest", "real", "signed candidate", t0)),
    )
    data = manifest.canonical_json()
    priv, _ = _signing_key(env, req.production)
    store.put_bytes(tag, CANDIDATE, data)
    store.put_bytes(tag, CANDIDATE_SIG, sign_bytes(data, load_private_key(priv)))
    # HEF, ONNX and manifest signed together (OpenSSF model-signing), verified before deploy.
    signed_dir = _signed_files(store, tag, compiled.hef_name, env.work_dir(tag, "manifest") / "signed")
    from release.bundle_signing import KeyBundleSigner

    sig_path = KeyBundleSigner(priv).sign(signed_dir, signed_dir.parent / BUNDLE_SIG)
    store.put_file(tag, BUNDLE_SIG, sig_path)
    from release.checksums import sha256_bytes

    result = ManifestResult(
        step=_timed("manifest", "real", "candidate manifest written and signed", t0), manifest_name=CANDIDATE,
        signature_name=CANDIDATE_SIG, manifest_sha256=sha256_bytes(data), release_counter=counter,
    )
    save_result(store, tag, result)
    return {"manifest_uri": store.uri(tag, CANDIDATE), "release_counter": counter, "manifest_sha256": result.manifest_sha256}


# -- devices ----------------------------------------------------------------------------------
def local_device(env: PipelineEnv) -> DeviceSpec:
    """This machine as the `local` device: agent under artifacts/device/local, sidecar as a process."""
    import os

    port = int(os.environ.get("HAILO_LOCAL_SIDECAR_PORT", "9000"))
    root = env.root / "device" / "local"
    url = f"http://127.0.0.1:{port}"
    return DeviceSpec(
        name="local", transport="local", agent_root=str(root), agent_python=sys.executable, gate_url=url, health_url=url,
        restart_command=[sys.executable, "-m", "release.local_sidecar", "restart", "--release-dir", "{release_dir}",
                         "--state-dir", str(root / "sidecar"), "--port", str(port)],
        health_timeout_s=60,
    )


def inventory(env: PipelineEnv) -> Inventory:
    if env.devices_file is not None:
        inv = load_inventory(env.devices_file)
        if "local" not in inv.devices:
            inv = Inventory(devices={**inv.devices, "local": local_device(env)})
        return inv
    return Inventory(devices={"local": local_device(env)})


def open_transport(device: DeviceSpec, ssh_client_factory: Callable[[], Any] | None = None) -> Any:
    from release.transport import LocalTransport, ParamikoTransport, connect_ssh

    if device.transport == "local":
        return LocalTransport()
    if ssh_client_factory is not None:
        return ParamikoTransport(ssh_client_factory())
    if not (device.host and device.user and device.key_file and device.known_hosts):
        raise InvalidInput(f"device {device.name}: ssh transport needs host, user, key_file and known_hosts")
    return ParamikoTransport(connect_ssh(device.host, device.port, device.user, device.key_file, device.known_hosts))


def _signed_files(store: ArtifactStore, tag: str, hef_name: str, dest: Path) -> Path:
    """Exactly the files the bundle signature covers, under their on-device names."""
    import shutil

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    store.fetch(tag, CANDIDATE, dest / "manifest.json")
    store.fetch(tag, hef_name, dest / "model.hef")
    store.fetch(tag, "model.onnx", dest / "model.onnx")
    return dest


def _bundle(store: ArtifactStore, tag: str, manifest_name: str, sig_name: str, hef_name: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    store.fetch(tag, manifest_name, dest / "manifest.json")
    store.fetch(tag, sig_name, dest / "manifest.json.sig")
    store.fetch(tag, hef_name, dest / "model.hef")
    store.fetch(tag, "model.onnx", dest / "model.onnx")
    write_sha256sum([dest / "model.hef"], dest / "hef_sha256sum.txt")
    return dest


def verify_release_signature(store: ArtifactStore, tag: str, manifest_name: str, sig_name: str, pub: Path) -> ReleaseManifest:
    from release.keys import load_public_key
    from release.manifest_signing import verify_bytes

    data = store.get_bytes(tag, manifest_name)
    verify_bytes(data, store.get_bytes(tag, sig_name), load_public_key(pub), what=f"release {tag} {manifest_name}")
    return ReleaseManifest.from_json(data)



def publish_signed(store: ArtifactStore, tag: str, manifest: ReleaseManifest, private_key: Path) -> None:
    """Sign the manifest's canonical bytes, then publish: the signature lands before the release is visible."""
    from release.keys import load_private_key
    from release.manifest_signing import sign_bytes

    data = manifest.canonical_json()
    store.put_bytes(tag, PUBLISHED_SIG, sign_bytes(data, load_private_key(private_key)))
    store.publish(tag, data)

# -- deploy -----------------------------------------------------------------------------------
def deploy(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, ssh_client_factory: Callable[[], Any] | None = None) -> dict[str, Any]:
    from release import deploy as dep

    t0 = time.monotonic()
    tag = req.release_tag
    compiled = load_result(store, tag, "compile", CompileResult)
    _, pub = _signing_key(env, req.production)
    manifest = verify_release_signature(store, tag, CANDIDATE, CANDIDATE_SIG, pub)
    from release.bundle_signing import verify_bundle

    signed_dir = _signed_files(store, tag, compiled.hef_name, env.work_dir(tag, "deploy") / "signed")
    verify_bundle(signed_dir, store.fetch(tag, BUNDLE_SIG, signed_dir.parent / BUNDLE_SIG), pub)
    if req.production:
        from release.compile import assert_deployable

        hef_local = store.fetch(tag, compiled.hef_name, env.work_dir(tag, "deploy") / "check.hef")
        assert_deployable(hef_local, production=True)
    if manifest.image.digest:
        # Deploy by the verified digest only: our own verifier, before anything reaches the device.
        from release.keys import load_public_key
        from release.oci_signing import verify_image
        from release.registry import ImageRef, RegistryClient

        ref = ImageRef.parse(f"{manifest.image.repository}@{manifest.image.digest}")
        verify_image(RegistryClient(ref.registry), ref, load_public_key(pub))
    elif req.production:
        raise StepFailed("production releases need a pushed, signed runtime image; the image step was skipped")
    device = inventory(env).get(req.device)
    bundle = _bundle(store, tag, CANDIDATE, CANDIDATE_SIG, compiled.hef_name, env.work_dir(tag, "deploy") / "bundle")
    transport = open_transport(device, ssh_client_factory)
    ledger = _ledger(env)
    try:
        dep.install_agent(transport, device, pub)
        dep.upload_bundle(transport, device, bundle, tag)
        try:
            reply = dep.activate(transport, device, tag)
            healthy, detail = True, f"healthy after {reply.body.get('seconds', 0):.1f}s"
        except dep.Unhealthy as exc:
            healthy, detail = False, str(exc)
    finally:
        transport.close()
    ledger.append(device.name, "deploy", tag=tag, triggered_by=req.triggered_by,
                  reason=detail, release_counter=manifest.release_counter)
    result = DeployResult(step=_timed("deploy", "real", f"{device.transport} transport: {detail}", t0),
                          device=device.name, healthy=healthy, active_tag=tag if healthy else None, detail=detail)
    save_result(store, tag, result)
    return {"device": device.name, "healthy": healthy, "detail": detail, "manifest_uri": store.uri(tag, CANDIDATE)}


# -- gate -------------------------------------------------------------------------------------
def gate(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore) -> dict[str, Any]:
    import io

    import numpy as np

    from release.gate import GateReport, run_gate, write_histogram_png
    from release.gate_settings import settings_with_overrides

    t0 = time.monotonic()
    tag = req.release_tag
    deployed = load_result(store, tag, "deploy", DeployResult)
    settings = settings_with_overrides(req.gate_overrides)
    if not deployed.healthy:
        record = GateRecord(thresholds=settings.thresholds(), verdict="fail",
                            reasons=(f"canary never became healthy: {deployed.detail}",))
        save_result(store, tag, GateResult(step=_timed("gate", "skipped", "canary unhealthy", t0), gate=record))
        return {"verdict": "fail", "reasons": list(record.reasons), "report_uri": None}
    device = inventory(env).get(req.device)
    ref = np.load(io.BytesIO(store.get_bytes(tag, "reference_outputs.npz")))
    baseline = None
    previous = ReleaseManifest.from_json(store.get_bytes(tag, CANDIDATE)).previous_release_tag
    if previous and store.exists(previous, "gate_report.json"):
        baseline = GateReport.model_validate_json(store.get_bytes(previous, "gate_report.json")).latencies_ms
    report = run_gate(device.gate_url, settings, windows=ref["windows"],
                      reference={"latent": ref["latent"], "motif_scores": ref["motif_scores"]}, baseline_latencies=baseline)
    work = env.work_dir(tag, "gate")
    (work / "gate_report.json").write_text(report.model_dump_json(indent=2))
    write_histogram_png(report, work / "gate_histogram.png")
    store.put_file(tag, "gate_report.json", work / "gate_report.json")
    store.put_file(tag, "gate_histogram.png", work / "gate_histogram.png")
    record = report.to_record(store.uri(tag, "gate_report.json"), store.uri(tag, "gate_histogram.png"))
    save_result(store, tag, GateResult(step=_timed("gate", "real", f"verdict {report.verdict.value}", t0), gate=record))
    return {
        "verdict": report.verdict.value, "reasons": list(report.reasons), "p95_ms": report.p95_ms,
        "windows_per_s": report.windows_per_s, "report_uri": record.report_uri,
    }


# -- outcome ----------------------------------------------------------------------------------
def _publish_final(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, state: ReleaseState, extra: list[StepRecord]) -> FinalResult:
    tag = req.release_tag
    candidate = ReleaseManifest.from_json(store.get_bytes(tag, CANDIDATE))
    steps = list(candidate.steps)
    for name in ("deploy", "gate"):
        try:
            kind = DeployResult if name == "deploy" else GateResult
            steps.append(load_result(store, tag, name, kind).step)
        except ReleaseError:
            pass
    gate_record = load_result(store, tag, "gate", GateResult).gate if store.exists(tag, "steps/gate.json") else candidate.gate
    final = candidate.with_updates(state=state, gate=gate_record, steps=(*steps, *extra))
    priv, _ = _signing_key(env, req.production)
    if not store.is_published(tag):
        publish_signed(store, tag, final, priv)
    result = FinalResult(step=extra[-1], state=state.value, manifest_uri=store.uri(tag, MANIFEST_NAME))
    save_result_if_open(store, tag, result)
    return result


def save_result_if_open(store: ArtifactStore, tag: str, result: FinalResult) -> None:
    if not store.is_published(tag):
        save_result(store, tag, result)


def promote(
    req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, ssh_client_factory: Callable[[], Any] | None = None
) -> dict[str, Any]:
    from release import deploy as dep

    t0 = time.monotonic()
    device = inventory(env).get(req.device)
    transport = open_transport(device, ssh_client_factory)
    try:
        dep.promote(transport, device, req.release_tag)
    finally:
        transport.close()
    _ledger(env).append(device.name, "promote", tag=req.release_tag, triggered_by=req.triggered_by, reason="gate passed")
    final = _publish_final(req, env, store, ReleaseState.PROMOTED, [_timed("promote", "real", "gate passed", t0)])
    return {"state": final.state, "manifest_uri": final.manifest_uri}


def rollback(
    req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore, ssh_client_factory: Callable[[], Any] | None = None
) -> dict[str, Any]:
    from release import deploy as dep

    t0 = time.monotonic()
    device = inventory(env).get(req.device)
    gate_record = load_result(store, req.release_tag, "gate", GateResult).gate
    reason = "; ".join(gate_record.reasons) or "gate failed"
    transport = open_transport(device, ssh_client_factory)
    try:
        state = dep.status(transport, device)
        if state.get("current") == req.release_tag:
            reply = dep.rollback(transport, device, "previous")
            detail = f"rolled back to {reply.body.get('rolled_back_to')} in {reply.seconds:.1f}s"
        else:
            detail = f"device already on {state.get('current')} (agent restored it)"
    finally:
        transport.close()
    _ledger(env).append(device.name, "rollback", tag=last_promoted(env, device.name), triggered_by=req.triggered_by,
                        reason=f"canary {req.release_tag} rejected: {reason}")
    final = _publish_final(req, env, store, ReleaseState.ROLLED_BACK, [_timed("rollback", "real", detail, t0)])
    return {"state": final.state, "manifest_uri": final.manifest_uri, "reason": reason, "detail": detail}


def hold(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore) -> dict[str, Any]:
    t0 = time.monotonic()
    gate_record = load_result(store, req.release_tag, "gate", GateResult).gate
    reason = "; ".join(gate_record.reasons)
    _ledger(env).append(req.device, "hold", tag=req.release_tag, triggered_by=req.triggered_by,
                        reason=f"gate inconclusive, waiting for a human: {reason}")
    final = _publish_final(req, env, store, ReleaseState.HELD, [_timed("hold", "real", reason, t0)])
    return {"state": final.state, "manifest_uri": final.manifest_uri, "reason": reason}


def report(req: ReleaseRequest, env: PipelineEnv, store: ArtifactStore) -> dict[str, Any]:
    manifest = ReleaseManifest.from_json(store.get_bytes(req.release_tag, MANIFEST_NAME))
    summary = {
        "release_tag": manifest.release_tag, "release_counter": manifest.release_counter, "state": manifest.state.value,
        "verdict": manifest.gate.verdict, "reasons": list(manifest.gate.reasons),
        "p95_ms": manifest.gate.measured.get("p95_ms"), "windows_per_s": manifest.gate.measured.get("windows_per_s"),
        "hef_sha256": manifest.hef.hef_sha256, "config_version": manifest.config_version,
        "image_digest": manifest.image.digest, "manifest_uri": store.uri(req.release_tag, MANIFEST_NAME),
        "gate_report_uri": manifest.gate.report_uri, "gate_histogram_uri": manifest.gate.histogram_uri,
        "steps": {s.name: f"{s.status}: {s.reason}" for s in manifest.steps},
    }
    print(json.dumps(summary, indent=2))
    return summary


# -- on-call and failures ---------------------------------------------------------------------
def rollback_device(
    env: PipelineEnv,
    store: ArtifactStore,
    *,
    device: str,
    to: str,
    reason: str,
    triggered_by: str,
    ssh_client_factory: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """On-call rollback: verify the target's signatures, re-activate it, record a rollback manifest."""
    from release import deploy as dep
    from release.identifiers import ReleaseTag

    t0 = time.monotonic()
    spec = inventory(env).get(device)
    target = last_promoted(env, device) if to == "previous" else ReleaseTag(to).value
    if target is None:
        raise StepFailed(f"device {device}: no earlier release to roll back to")
    priv, pub = _signing_key(env, production=False)
    verify_release_signature(store, target, MANIFEST_NAME, PUBLISHED_SIG, pub)
    transport = open_transport(spec, ssh_client_factory)
    try:
        dep.install_agent(transport, spec, pub)
        reply = dep.rollback(transport, spec, target)
    finally:
        transport.close()
    seconds = time.monotonic() - t0
    old = ReleaseManifest.from_json(store.get_bytes(target, MANIFEST_NAME))
    counter = next_release_counter(store, old.channel)
    rb_tag = ReleaseTag(f"{target}-rb{counter}").value
    entry = old.with_updates(
        release_tag=rb_tag, release_counter=counter, kind="rollback", points_to_release_tag=target,
        state=ReleaseState.ROLLED_BACK, created_at=now_utc(), previous_release_tag=reply.body.get("from"),
        steps=(StepRecord(name="rollback", status="real", reason=reason, duration_s=round(seconds, 3)),),
    )
    publish_signed(store, rb_tag, entry, priv)
    _ledger(env).append(device, "rollback", tag=target, triggered_by=triggered_by, reason=reason, release_counter=counter)
    return {"device": device, "rolled_back_to": target, "seconds_to_healthy": round(seconds, 3),
            "rollback_manifest": store.uri(rb_tag, MANIFEST_NAME)}


Decision = Literal["approve", "reject"]


def decide_held(
    env: PipelineEnv,
    store: ArtifactStore,
    *,
    device: str,
    tag: str,
    decision: Decision,
    reason: str,
    decided_by: str,
    ssh_client_factory: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """A human's answer to a held release (inconclusive gate): approve → promote, reject → roll back.

    The held manifest's signature is verified first and the state change goes through the transition
    table, so only a held release can be decided, once. The answer is a new signed manifest entry
    (higher counter) pointing at the held release: history stays append-only.
    """
    from release import deploy as dep
    from release.identifiers import ReleaseTag
    from release.states import ReleaseEvent, transition

    t0 = time.monotonic()
    tag = ReleaseTag(tag).value
    if not reason.strip():
        raise InvalidInput("a decision on a held release needs a reason (it goes into the ledger and the manifest)")
    spec = inventory(env).get(device)
    priv, pub = _signing_key(env, production=False)
    held = verify_release_signature(store, tag, MANIFEST_NAME, PUBLISHED_SIG, pub)
    if held.device not in (None, device):
        raise InvalidInput(f"release {tag} was a canary on device {held.device}, not {device}")
    decided = [m for m in _entries_pointing_at(store, tag) if m.kind == "decision"]
    if decided:
        raise InvalidInput(f"release {tag} was already decided in {decided[0].release_tag} ({decided[0].state.value})")
    event = ReleaseEvent.APPROVE if decision == "approve" else ReleaseEvent.ROLLBACK
    new_state = transition(held.state, event)
    transport = open_transport(spec, ssh_client_factory)
    try:
        current = dep.status(transport, spec).get("current")
        if current != tag:
            raise StepFailed(
                f"device {device} no longer runs the held release {tag} (it runs {current}); nothing to decide"
            )
        if decision == "approve":
            dep.promote(transport, spec, tag)
            detail, ledger_tag = f"promoted {tag}", tag
        else:
            reply = dep.rollback(transport, spec, "previous")
            ledger_tag = str(reply.body.get("rolled_back_to") or "")
            detail = f"rolled back to {ledger_tag or 'previous'} in {reply.seconds:.1f}s"
    finally:
        transport.close()
    seconds = time.monotonic() - t0
    counter = next_release_counter(store, held.channel)
    entry_tag = ReleaseTag(f"{tag}-{decision}{counter}").value
    entry = held.with_updates(
        release_tag=entry_tag, release_counter=counter, kind="decision", points_to_release_tag=tag,
        state=new_state, created_at=now_utc(),
        steps=(StepRecord(name=decision, status="real", reason=f"{decided_by}: {reason} ({detail})",
                          duration_s=round(seconds, 3)),),
    )
    publish_signed(store, entry_tag, entry, priv)
    if decision == "approve":
        _ledger(env).append(device, "promote", tag=tag, triggered_by=decided_by,
                            reason=f"held release approved: {reason}", release_counter=counter)
    else:
        _ledger(env).append(device, "rollback", tag=ledger_tag or None, triggered_by=decided_by,
                            reason=f"held release {tag} rejected: {reason}", release_counter=counter)
    return {"device": device, "release_tag": tag, "decision": decision, "state": new_state.value, "detail": detail,
            "seconds": round(seconds, 3), "decision_manifest": store.uri(entry_tag, MANIFEST_NAME)}


def _entries_pointing_at(store: ArtifactStore, tag: str) -> list[ReleaseManifest]:
    found = []
    for published in store.list_published():
        manifest = ReleaseManifest.from_json(store.get_bytes(published, MANIFEST_NAME))
        if manifest.points_to_release_tag == tag:
            found.append(manifest)
    return found


def attest_release(env: PipelineEnv, store: ArtifactStore, tag: str, output_dir: Path, signer: BundleSigner) -> dict[str, Any]:
    """Countersign a published release's bundle with ``signer`` (in GitHub Actions: keyless, the
    workflow's OIDC identity), writing the signature and what it covers to ``output_dir``.

    The release's own key signatures (published manifest, candidate manifest, bundle) are verified
    first, so nothing tampered is ever countersigned. The store is not written: a published release
    is immutable, and a keyless signature lives in Rekor's transparency log as well.
    """
    import shutil

    from release.bundle_signing import verify_bundle
    from release.identifiers import ReleaseTag

    tag = ReleaseTag(tag).value
    _, pub = _signing_key(env, production=False)
    published = verify_release_signature(store, tag, MANIFEST_NAME, PUBLISHED_SIG, pub)
    if published.kind != "release" or published.state is not ReleaseState.PROMOTED:
        # An attestation says "this release passed its canary": never for a rolled-back or held one.
        raise InvalidInput(f"{tag} is a {published.kind} entry in state {published.state.value}; "
                           "only a promoted release is attested")
    verify_release_signature(store, tag, CANDIDATE, CANDIDATE_SIG, pub)
    compiled = load_result(store, tag, "compile", CompileResult)
    work = env.work_dir(tag, "attest")
    signed_dir = _signed_files(store, tag, compiled.hef_name, work / "signed")
    verify_bundle(signed_dir, store.fetch(tag, BUNDLE_SIG, work / BUNDLE_SIG), pub)
    output_dir.mkdir(parents=True, exist_ok=True)
    signature = signer.sign(signed_dir, work / f"{tag}.sigstore.json")
    shutil.copyfile(signature, output_dir / signature.name)
    covered = {p.name: sha256_file(p) for p in sorted(signed_dir.iterdir())}
    summary = {"release_tag": tag, "state": published.state.value, "signature": signature.name, "files_sha256": covered}
    (output_dir / f"{tag}.attestation.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return {**summary, "output_dir": str(output_dir)}


def record_failure(env: PipelineEnv, params: dict[str, Any], *, task_id: str, run_id: str, reason: str) -> None:
    device = str(params.get("device") or "local")
    tag = params.get("release_tag")
    _ledger(env).append(device, "failure", tag=str(tag) if tag else None, triggered_by=f"airflow:{run_id}",
                        reason=f"task {task_id} failed: {reason}")
