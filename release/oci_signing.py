"""cosign-compatible image signatures in the classic tag layout (cosign SIGNATURE_SPEC).

Tag ``sha256-<hex>.sig`` in the image's own repository holds an OCI image manifest whose layers
(one per signature) are simple-signing payloads, annotated with the base64 DER ECDSA P-256 /
SHA-256 signature over the payload bytes. `cosign verify --key cosign.pub
--insecure-ignore-tlog=true IMAGE@DIGEST` accepts what `sign_image` writes; `verify_image` is our
own verifier, run before any deploy (`release.verify.verify_release`).

Signing goes through `image_signer`: with a cosign encrypted key (``cosign.key``, password in
``COSIGN_PASSWORD``) and the `cosign` binary on PATH, `CosignCliSigner` runs cosign itself; otherwise
`KeySigner` signs here (cosign cannot read a plain PEM key, and the dev/test machines have no cosign).

Identity policy (what the payload's ``docker-reference`` must say, besides the digest, which always
must match): ``digest`` — nothing more (cosign's own check); ``repository`` — the parsed repository
names are equal, tags ignored, registry host normalised (containers/image ``matchRepository``, its
default for digest references); ``exact`` — the reference string equals ``registry/repository``.
The default is ``repository``: see README, "Image signature identity".
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from release.errors import ArtifactNotFound, IntegrityError, InvalidInput, StepFailed, ToolNotFound
from release.registry import OCI_MANIFEST, ImageRef, RegistryClient, sha256_digest

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIG_ANNOTATION = "dev.cosignproject.cosign/signature"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
PAYLOAD_TYPE = "cosign container image signature"

IdentityPolicy = Literal["digest", "repository", "exact"]
IDENTITY_POLICIES: tuple[IdentityPolicy, ...] = ("digest", "repository", "exact")
DEFAULT_IDENTITY_POLICY: IdentityPolicy = "repository"
IDENTITY_POLICY_ENV = "HAILO_IMAGE_IDENTITY_POLICY"

_DOCKER_HUB = "docker.io"
_HUB_ALIASES = ("index.docker.io",)  # docker/distribution reference: legacyDefaultDomain
_PATH = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
_HOST = re.compile(r"^(localhost|[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*)(:[0-9]{1,5})?$")


def identity_policy(value: str | None) -> IdentityPolicy:
    """Parse a policy name; ``None`` or empty gives the default."""
    if not value:
        return DEFAULT_IDENTITY_POLICY
    if value not in IDENTITY_POLICIES:
        raise InvalidInput(f"image identity policy {value!r} is not one of {', '.join(IDENTITY_POLICIES)}")
    return value


def repository_name(reference: str) -> str | None:
    """``registry/path`` of a docker reference, normalised the way containers/image and Docker do
    (``ParseNormalizedNamed``): tag and digest dropped, a missing or aliased Docker Hub host becomes
    ``docker.io``, a one-part Hub path gains ``library/``, the host is lower-cased. None if malformed."""
    name = reference.split("@", 1)[0]
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        host, path = first.lower(), rest
    else:
        host, path = _DOCKER_HUB, name
    if ":" in path.rsplit("/", 1)[-1]:
        path = path.rsplit(":", 1)[0]
    if host in _HUB_ALIASES:
        host = _DOCKER_HUB
    if host == _DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _HOST.fullmatch(host) or not _PATH.fullmatch(path):
        return None
    return f"{host}/{path}"


def identity_problem(signed_reference: object, ref: ImageRef, policy: IdentityPolicy) -> str | None:
    """Why the payload's ``docker-reference`` does not satisfy ``policy`` for ``ref``; None if it does."""
    if policy == "digest":
        return None
    if not isinstance(signed_reference, str):
        return f"signed payload has no docker-reference (identity policy {policy!r} needs one)"
    if policy == "exact":
        if signed_reference == ref.name:
            return None
        return f"signed for {signed_reference!r}, identity policy 'exact' needs {ref.name!r}"
    signed_repo, wanted = repository_name(signed_reference), repository_name(ref.name)
    if signed_repo is not None and signed_repo == wanted:
        return None
    return (f"signed for repository {signed_repo or repr(signed_reference)}, not {wanted} (identity policy "
            f"'repository'; a copied or mirrored image verifies with {IDENTITY_POLICY_ENV}=digest)")


def signature_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


def _require_digest(ref: ImageRef, verb: str) -> str:
    if ref.digest is None:
        raise InvalidInput(f"{ref}: {verb} by digest (IMAGE@sha256:...), never by tag")
    return ref.digest


def simple_signing_payload(ref: ImageRef) -> bytes:
    """Compact JSON in cosign's field order (dicts keep insertion order)."""
    digest = _require_digest(ref, "sign and verify")
    doc = {
        "critical": {
            "identity": {"docker-reference": ref.name},
            "image": {"docker-manifest-digest": digest},
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
    digest = _require_digest(ref, "sign")
    client.manifest(ref.repository, digest)  # the image must exist, by digest
    payload = simple_signing_payload(ref)
    signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    tag = signature_tag(digest)
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
    signed_reference: str


def verify_image(client: RegistryClient, ref: ImageRef, key: ec.EllipticCurvePublicKey,
                 identity: IdentityPolicy = DEFAULT_IDENTITY_POLICY) -> VerifiedSignature:
    """Accept ``ref`` only if a layer of its signature manifest verifies with ``key``, names this
    digest, and names an identity ``identity`` accepts (see the module docstring)."""
    digest = _require_digest(ref, "verify")
    identity = identity_policy(identity)
    client.manifest(ref.repository, digest)
    tag = signature_tag(digest)
    try:
        body, _, _ = client.manifest(ref.repository, tag)
    except ArtifactNotFound:
        raise IntegrityError(f"{ref}: no signature ({ref.name}:{tag} does not exist)") from None
    problems: list[str] = []
    for layer in json.loads(body).get("layers", []):
        layer_digest = str(layer.get("digest"))
        label = f"layer {layer_digest[:19]}"
        try:
            payload = client.blob(ref.repository, layer_digest)
        except (IntegrityError, ArtifactNotFound) as exc:
            problems.append(str(exc))
            continue
        try:
            sig = base64.b64decode(layer.get("annotations", {}).get(SIG_ANNOTATION, ""), validate=True)
            key.verify(sig, payload, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            problems.append(f"{label}: signature does not verify with the given key")
            continue
        try:
            critical = json.loads(payload).get("critical", {})
            signed_reference = critical.get("identity", {}).get("docker-reference")
            signed_digest = critical.get("image", {}).get("docker-manifest-digest")
        except (ValueError, AttributeError):
            problems.append(f"{label}: signed payload is not a simple-signing document")
            continue
        if signed_digest != digest:
            problems.append(f"{label}: signed payload names another image digest ({signed_digest})")
        elif critical.get("type") != PAYLOAD_TYPE:
            problems.append(f"{label}: unexpected payload type {critical.get('type')!r}")
        elif (problem := identity_problem(signed_reference, ref, identity)) is not None:
            problems.append(f"{label}: {problem}")
        else:
            return VerifiedSignature(str(ref), f"{ref.name}:{tag}", sha256_digest(payload), str(signed_reference))
    raise IntegrityError(f"{ref}: no valid signature: {'; '.join(problems) or 'signature manifest has no layers'}")


class ImageSigner(Protocol):
    """Signs an image (by digest) in the classic tag layout; returns the signature reference."""

    def sign(self, ref: ImageRef) -> str: ...


class KeySigner:
    """Our own signer: an EC P-256 key in this process (PEM, or a cosign key decrypted here)."""

    def __init__(self, client: RegistryClient, private: ec.EllipticCurvePrivateKey) -> None:
        self.client, self.private = client, private

    def sign(self, ref: ImageRef) -> str:
        return sign_image(self.client, ref, self.private)


class CosignCliSigner:
    """The `cosign` binary with a cosign key file (password from ``COSIGN_PASSWORD``, which cosign
    reads itself). Forces the classic tag layout and no transparency-log upload, so `verify_image`
    and `cosign verify --key cosign.pub --insecure-ignore-tlog=true` both accept the result
    (cosign v3 would otherwise write a new-format bundle and upload to Rekor)."""

    def __init__(self, key: Path, cosign: str = "cosign") -> None:
        self.key, self.cosign = key, cosign

    def argv(self, ref: ImageRef) -> list[str]:
        _require_digest(ref, "sign")
        return [self.cosign, "sign", "--yes", "--key", str(self.key), "--new-bundle-format=false",
                "--use-signing-config=false", "--tlog-upload=false", str(ref)]

    def sign(self, ref: ImageRef) -> str:
        argv = self.argv(ref)
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise ToolNotFound(f"{self.cosign} not found: install cosign on the hailo-builder runner") from None
        except subprocess.TimeoutExpired:
            raise StepFailed(f"cosign sign {ref} timed out after 300 s") from None
        if res.returncode != 0:
            raise StepFailed(f"cosign sign failed (exit {res.returncode}): {res.stderr.strip()[-500:]}")
        return f"{ref.name}:{signature_tag(ref.digest or '')}"


def image_signer(client: RegistryClient, private_key: Path, cosign: str | None = None) -> ImageSigner:
    """The signer for the release key: the `cosign` binary (``cosign``, else found on PATH) when the key is
    in cosign's encrypted format and cosign is installed; our `KeySigner` otherwise."""
    from release.cosign_keys import is_cosign_key
    from release.keys import load_private_key

    binary = cosign or shutil.which("cosign")
    if binary is not None and is_cosign_key(private_key):
        return CosignCliSigner(private_key, binary)
    return KeySigner(client, load_private_key(private_key))
