"""cosign-compatible image signatures in the classic tag layout (cosign SIGNATURE_SPEC).

Tag ``sha256-<hex>.sig`` in the image's own repository holds an OCI image manifest whose layers
(one per signature) are simple-signing payloads, annotated with the base64 DER ECDSA P-256 /
SHA-256 signature over the payload bytes. `cosign verify --key cosign.pub
--insecure-ignore-tlog=true IMAGE@DIGEST` accepts what `sign_image` writes; `verify_image` is our
own verifier, run before any deploy. Where the `cosign` binary exists (production runner),
`CosignCliSigner` drives it behind the same interface.
"""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from release.errors import ArtifactNotFound, IntegrityError, InvalidInput, StepFailed, ToolNotFound
from release.registry import OCI_MANIFEST, ImageRef, RegistryClient, sha256_digest

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIG_ANNOTATION = "dev.cosignproject.cosign/signature"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
PAYLOAD_TYPE = "cosign container image signature"


def signature_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


def simple_signing_payload(ref: ImageRef) -> bytes:
    """Compact JSON in cosign's field order (dicts keep insertion order)."""
    if ref.digest is None:
        raise InvalidInput(f"{ref}: sign and verify by digest, never by tag")
    doc = {
        "critical": {
            "identity": {"docker-reference": ref.name},
            "image": {"docker-manifest-digest": ref.digest},
            "type": PAYLOAD_TYPE,
        },
        "optional": None,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _config_blob(payload_digests: list[str]) -> bytes:
    doc = {
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": payload_digests},
        "config": {},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def sign_image(client: RegistryClient, ref: ImageRef, key: ec.EllipticCurvePrivateKey) -> str:
    """Write (or append) a signature for ``ref`` (by digest); return the signature reference."""
    client.manifest(ref.repository, ref.digest or "")  # the image must exist, by digest
    payload = simple_signing_payload(ref)
    signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    tag = signature_tag(ref.digest or "")
    layers: list[dict[str, object]] = []
    try:
        body, _, _ = client.manifest(ref.repository, tag)
        layers = json.loads(body).get("layers", [])
    except ArtifactNotFound:
        pass
    payload_digest = client.put_blob(ref.repository, payload)
    layers.append(
        {"mediaType": SIMPLESIGNING, "size": len(payload), "digest": payload_digest, "annotations": {SIG_ANNOTATION: signature}}
    )
    config = _config_blob([str(layer["digest"]) for layer in layers])
    config_digest = client.put_blob(ref.repository, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": config_digest},
        "layers": layers,
    }
    client.put_manifest(ref.repository, tag, json.dumps(manifest, separators=(",", ":")).encode(), OCI_MANIFEST)
    return f"{ref.name}:{tag}"


@dataclass(frozen=True)
class VerifiedSignature:
    image: str
    signature_ref: str
    payload_digest: str


def verify_image(client: RegistryClient, ref: ImageRef, key: ec.EllipticCurvePublicKey) -> VerifiedSignature:
    """Accept ``ref`` only if a layer of its signature manifest verifies with ``key`` and names this digest."""
    if ref.digest is None:
        raise InvalidInput(f"{ref}: verify by digest, never by tag")
    client.manifest(ref.repository, ref.digest)
    tag = signature_tag(ref.digest)
    try:
        body, _, _ = client.manifest(ref.repository, tag)
    except ArtifactNotFound:
        raise IntegrityError(f"{ref}: no signature ({ref.name}:{tag} does not exist)") from None
    problems: list[str] = []
    for layer in json.loads(body).get("layers", []):
        digest = str(layer.get("digest"))
        try:
            payload = client.blob(ref.repository, digest)
        except (IntegrityError, ArtifactNotFound) as exc:
            problems.append(str(exc))
            continue
        try:
            sig = base64.b64decode(layer.get("annotations", {}).get(SIG_ANNOTATION, ""), validate=True)
            key.verify(sig, payload, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            problems.append(f"layer {digest[:19]}: signature does not verify with the given key")
            continue
        critical = json.loads(payload).get("critical", {})
        if critical.get("image", {}).get("docker-manifest-digest") != ref.digest:
            problems.append(f"layer {digest[:19]}: signed payload names another image digest")
        elif critical.get("identity", {}).get("docker-reference") != ref.name:
            problems.append(f"layer {digest[:19]}: signed payload names another repository")
        elif critical.get("type") != PAYLOAD_TYPE:
            problems.append(f"layer {digest[:19]}: unexpected payload type")
        else:
            return VerifiedSignature(str(ref), f"{ref.name}:{tag}", sha256_digest(payload))
    raise IntegrityError(f"{ref}: no valid signature: {'; '.join(problems) or 'signature manifest has no layers'}")


class ImageSigner(Protocol):
    def sign(self, ref: ImageRef) -> str: ...
    def verify(self, ref: ImageRef) -> None: ...


class KeySigner:
    """Our own signer/verifier (offline default)."""

    def __init__(self, client: RegistryClient, private: ec.EllipticCurvePrivateKey | None, public: ec.EllipticCurvePublicKey) -> None:
        self.client, self.private, self.public = client, private, public

    def sign(self, ref: ImageRef) -> str:
        if self.private is None:
            raise InvalidInput("no private key to sign with")
        return sign_image(self.client, ref, self.private)

    def verify(self, ref: ImageRef) -> None:
        verify_image(self.client, ref, self.public)


class CosignCliSigner:
    """The `cosign` binary (production runner). Keyless (`identity_token` from the workflow's
    OIDC) when no key file is given; key-based otherwise, without a transparency-log upload."""

    def __init__(self, cosign: str = "cosign", key: Path | None = None, public_key: Path | None = None) -> None:
        self.cosign, self.key, self.public_key = cosign, key, public_key

    def _run(self, argv: list[str]) -> None:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise ToolNotFound(f"{self.cosign} not found: install cosign on the hailo-builder runner") from None
        if res.returncode != 0:
            kind = IntegrityError if argv[1] == "verify" else StepFailed
            raise kind(f"cosign {argv[1]} failed (exit {res.returncode}): {res.stderr.strip()[-500:]}")

    def sign(self, ref: ImageRef) -> str:
        if ref.digest is None:
            raise InvalidInput(f"{ref}: sign by digest")
        if self.key is not None:
            self._run([self.cosign, "sign", "--yes", "--key", str(self.key), "--tlog-upload=false", str(ref)])
        else:
            self._run([self.cosign, "sign", "--yes", str(ref)])
        return f"{ref.name}:{signature_tag(ref.digest)}"

    def verify(self, ref: ImageRef) -> None:
        if self.public_key is None:
            raise InvalidInput("cosign verify needs --key (keyless verification needs identity flags)")
        self._run([self.cosign, "verify", "--key", str(self.public_key), "--insecure-ignore-tlog=true", str(ref)])
