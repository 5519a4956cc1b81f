"""One verification of a stored release, used by deploy, rollback, decide and attest, and the one way
a manifest entry is published (signature first).

``verify_release(store, tag, policy)`` checks, in order: the manifest's ECDSA signature (published
or candidate), the model-signing bundle over exactly the files the device gets (HEF, ONNX,
candidate manifest), and — where the manifest names a runtime image and the policy asks for it —
the image's cosign-format signature on the registry, by digest. A release that passes is safe to
put on a device; nothing that fails is ever deployed, restored or countersigned.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from release.checksums import write_sha256sum
from release.config import load_settings
from release.errors import StepFailed
from release.keys import default_public_path, generate_dev_keypair, load_private_key, load_public_key
from release.manifest import ReleaseManifest
from release.manifest_signing import sign_bytes, verify_bytes
from release.oci_signing import IdentityPolicy, identity_policy
from release.pipeline_env import PipelineEnv
from release.store import MANIFEST_NAME, ArtifactStore

CANDIDATE = "manifest.candidate.json"
CANDIDATE_SIG = "manifest.candidate.json.sig"
PUBLISHED_SIG = "manifest.json.sig"
BUNDLE_SIG = "bundle.sig"


def signing_key(env: PipelineEnv, production: bool) -> tuple[Path, Path]:
    """(private, public) release signing key: HAILO_SIGNING_KEY, or the dev key outside production."""
    if env.signing_key is not None:
        return env.signing_key, env.signing_pub or default_public_path(env.signing_key)
    if production:
        raise StepFailed("HAILO_SIGNING_KEY is not set: production releases are never signed with a generated dev key")
    return generate_dev_keypair(env.keys_dir)


def verify_signature(store: ArtifactStore, tag: str, manifest_name: str, sig_name: str, pub: Path) -> ReleaseManifest:
    data = store.get_bytes(tag, manifest_name)
    verify_bytes(data, store.get_bytes(tag, sig_name), load_public_key(pub), what=f"release {tag} {manifest_name}")
    return ReleaseManifest.from_json(data)


def publish_signed(store: ArtifactStore, tag: str, manifest: ReleaseManifest, private_key: Path) -> None:
    """Sign the manifest's canonical bytes, then publish: the signature lands before the release is visible."""
    data = manifest.canonical_json()
    store.put_bytes(tag, PUBLISHED_SIG, sign_bytes(data, load_private_key(private_key)))
    store.publish(tag, data)


def signed_files(store: ArtifactStore, tag: str, hef_name: str, dest: Path) -> Path:
    """Exactly the files the bundle signature covers, under their on-device names."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    store.fetch(tag, CANDIDATE, dest / "manifest.json")
    store.fetch(tag, hef_name, dest / "model.hef")
    store.fetch(tag, "model.onnx", dest / "model.onnx")
    return dest


def device_bundle(store: ArtifactStore, tag: str, hef_name: str, dest: Path) -> Path:
    """The directory uploaded to the device: signed candidate manifest, HEF, ONNX, sha256 list."""
    dest.mkdir(parents=True, exist_ok=True)
    store.fetch(tag, CANDIDATE, dest / "manifest.json")
    store.fetch(tag, CANDIDATE_SIG, dest / "manifest.json.sig")
    store.fetch(tag, hef_name, dest / "model.hef")
    store.fetch(tag, "model.onnx", dest / "model.onnx")
    write_sha256sum([dest / "model.hef"], dest / "hef_sha256sum.txt")
    return dest


@dataclass(frozen=True)
class VerifyPolicy:
    """What must verify. ``published``: the final manifest must exist and verify (rollback targets,
    decisions, attestations); otherwise the candidate is what counts (a canary before its verdict)."""

    public_key: Path
    published: bool = False
    check_image: bool = True
    identity: IdentityPolicy = field(default_factory=lambda: identity_policy(load_settings().image_identity_policy))


@dataclass(frozen=True)
class VerifiedRelease:
    tag: str
    candidate: ReleaseManifest
    published: ReleaseManifest | None
    hef_name: str
    signed_dir: Path


def verify_release(store: ArtifactStore, tag: str, policy: VerifyPolicy, work_dir: Path) -> VerifiedRelease:
    from release.bundle_signing import verify_bundle
    from release.step_results import CompileResult, load_result

    published = verify_signature(store, tag, MANIFEST_NAME, PUBLISHED_SIG, policy.public_key) if policy.published else None
    candidate = verify_signature(store, tag, CANDIDATE, CANDIDATE_SIG, policy.public_key)
    hef_name = load_result(store, tag, "compile", CompileResult).hef_name
    signed_dir = signed_files(store, tag, hef_name, work_dir / "signed")
    verify_bundle(signed_dir, store.fetch(tag, BUNDLE_SIG, work_dir / BUNDLE_SIG), policy.public_key)
    if policy.check_image and candidate.image.digest:
        # Deploy by the verified digest only: our own verifier, before anything reaches the device.
        from release.oci_signing import verify_image
        from release.registry import ImageRef, RegistryClient

        ref = ImageRef.parse(f"{candidate.image.repository}@{candidate.image.digest}")
        verify_image(RegistryClient(ref.registry), ref, load_public_key(policy.public_key), policy.identity)
    return VerifiedRelease(tag, candidate, published, hef_name, signed_dir)
