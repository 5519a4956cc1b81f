"""Sign the release bundle — HEF, ONNX and manifest together — with OpenSSF model-signing.

A bundle is one flat directory: ``manifest.json``, one ``*.onnx``, one ``*.hef`` and optionally
``hef_sha256sum.txt``. The signature (a sigstore bundle, DSSE over an in-toto statement listing
every file's sha256) lives outside the directory, so changing, adding or removing any file fails
verification, and the error names the file.

Key mode (`KeyBundleSigner`: the release key — EC P-256 PEM, or a cosign ``cosign.key`` with
``COSIGN_PASSWORD`` — fully offline) signs every release bundle, because `verify_release` checks it
with the release public key. `KeylessBundleSigner` uses sigstore's keyless flow (Fulcio certificate
+ Rekor entry for the workflow's OIDC identity, e.g. GitHub Actions with ``permissions: id-token:
write``) behind the same `BundleSigner` interface; `hailo-release attest` uses it without ``--key``.

model-signing's default hashing skips ``.git*`` / ``.github/`` paths, on signing *and* on
verification; a release bundle has no such files, so both sides here hash every file — otherwise a
``.gitignore`` slipped into a bundle would go unnoticed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.hazmat.primitives import serialization

from release.checksums import parse_sha256sum, sha256_file
from release.cosign_keys import is_cosign_key
from release.errors import IntegrityError, InvalidInput, StepFailed
from release.keys import load_private_key

if TYPE_CHECKING:
    import model_signing
    from model_signing import hashing

MANIFEST_FILE = "manifest.json"
HEF_CHECKSUM_FILE = "hef_sha256sum.txt"
BUNDLE_SIGNATURE_NAME = "bundle.sig"


class BundleSigner(Protocol):
    """Signs a bundle directory into a signature file outside it; returns the signature path."""

    def sign(self, bundle_dir: Path, signature: Path) -> Path: ...


def _hashing_config() -> hashing.Config:
    from model_signing import hashing

    # Every file, no git-path exemptions, no symlinks (a symlink makes hashing fail).
    return hashing.Config().set_ignored_paths(paths=[], ignore_git_paths=False)  # type: ignore[no-untyped-call]


def check_bundle(bundle_dir: Path) -> list[str]:
    """The bundle's file names, after checking its layout (raises InvalidInput)."""
    if not bundle_dir.is_dir():
        raise InvalidInput(f"bundle directory {bundle_dir} does not exist")
    entries = sorted(bundle_dir.iterdir())
    odd = [p.name for p in entries if p.is_symlink() or not p.is_file()]
    if odd:
        raise InvalidInput(f"bundle {bundle_dir} may hold regular files only; found {odd}")
    names = [p.name for p in entries]
    hefs = [n for n in names if n.endswith(".hef")]
    onnxs = [n for n in names if n.endswith(".onnx")]
    if MANIFEST_FILE not in names or len(hefs) != 1 or len(onnxs) != 1:
        raise InvalidInput(
            f"bundle {bundle_dir} must hold {MANIFEST_FILE}, exactly one *.hef and one *.onnx; found {names}"
        )
    extra = set(names) - {MANIFEST_FILE, HEF_CHECKSUM_FILE, hefs[0], onnxs[0]}
    if extra:
        raise InvalidInput(f"bundle {bundle_dir} holds unexpected files {sorted(extra)}")
    if HEF_CHECKSUM_FILE in names:
        entries_ = parse_sha256sum(bundle_dir / HEF_CHECKSUM_FILE)
        listed = {Path(name).name: digest for digest, name in entries_}
        if listed.get(hefs[0]) != sha256_file(bundle_dir / hefs[0]):
            raise IntegrityError(f"{HEF_CHECKSUM_FILE} in {bundle_dir} does not match {hefs[0]}")
    return names


def _check_signature_target(bundle_dir: Path, signature: Path) -> None:
    if signature.resolve().parent == bundle_dir.resolve():
        raise InvalidInput("write the bundle signature outside the bundle directory (it would sign itself)")


class KeyBundleSigner:
    """Key mode: ECDSA P-256 over the bundle, fully offline; verify with `verify_bundle`."""

    def __init__(self, private_key: Path, password: str | None = None) -> None:
        self.private_key = Path(private_key)
        self._password = password

    def sign(self, bundle_dir: Path, signature: Path) -> Path:
        import model_signing

        check_bundle(bundle_dir)
        _check_signature_target(bundle_dir, signature)
        config = model_signing.signing.Config().set_hashing_config(_hashing_config())  # type: ignore[no-untyped-call]
        if is_cosign_key(self.private_key):
            # model-signing reads PEM only: decrypt here and hand it the PEM through a pipe, never a file.
            key = load_private_key(self.private_key, self._password.encode() if self._password is not None else None)
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            read_fd, write_fd = os.pipe()
            try:
                os.write(write_fd, pem)
                os.close(write_fd)
                write_fd = -1
                self._use_key(config, Path(f"/dev/fd/{read_fd}"), None)
            finally:
                os.close(read_fd)
                if write_fd != -1:
                    os.close(write_fd)
        else:
            self._use_key(config, self.private_key, self._password)
        config.sign(bundle_dir, signature)
        return signature

    def _use_key(self, config: model_signing.signing.Config, path: Path, password: str | None) -> None:
        try:
            config.use_elliptic_key_signer(private_key=path, password=password)
        except (OSError, ValueError, TypeError) as exc:
            # The message names the key file and the failure type, never key material.
            raise InvalidInput(f"cannot use signing key {self.private_key}: {type(exc).__name__}") from None


def github_oidc_available(environ: Mapping[str, str]) -> bool:
    """True inside a GitHub Actions job granted ``id-token: write`` (the runner sets both variables)."""
    return bool(environ.get("ACTIONS_ID_TOKEN_REQUEST_URL") and environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN"))


class KeylessBundleSigner:
    """sigstore keyless signing (Fulcio + Rekor). Needs network and an OIDC identity: an explicit
    token, or GitHub Actions' ambient one. Without either it refuses up front — model-signing would
    otherwise fall back to an interactive browser login, which hangs a CI job."""

    def __init__(self, identity_token: str | None = None, *, use_staging: bool = False,
                 oidc_issuer: str | None = None, environ: Mapping[str, str] | None = None) -> None:
        self._identity_token = identity_token
        self.use_staging = use_staging
        self.oidc_issuer = oidc_issuer
        self._environ = os.environ if environ is None else environ

    def signer_options(self) -> dict[str, object]:
        """The keyword arguments handed to model-signing's `use_sigstore_signer` (token redacted)."""
        if not self._identity_token and not github_oidc_available(self._environ):
            raise StepFailed(
                "keyless signing needs an OIDC identity: run in GitHub Actions with `permissions: id-token: write` "
                "or pass an identity token; use key mode (KeyBundleSigner) offline"
            )
        return {"use_ambient_credentials": self._identity_token is None, "identity_token": self._identity_token,
                "use_staging": self.use_staging, "oidc_issuer": self.oidc_issuer, "force_oob": True}

    def sign(self, bundle_dir: Path, signature: Path) -> Path:
        import model_signing

        check_bundle(bundle_dir)
        _check_signature_target(bundle_dir, signature)
        options = self.signer_options()
        config = model_signing.signing.Config().set_hashing_config(_hashing_config())  # type: ignore[no-untyped-call]
        try:
            config.use_sigstore_signer(**options)  # type: ignore[arg-type]
            config.sign(bundle_dir, signature)
        except Exception as exc:  # sigstore raises TUF, network and OIDC errors of many types
            raise StepFailed(f"keyless signing of {bundle_dir.name} failed: {type(exc).__name__}: {exc}") from None
        return signature


def signed_digests(signature: Path) -> dict[str, str]:
    """File name → sha256 hex as listed in the signature's in-toto statement.

    Only meaningful once model-signing has verified the signature (it raises "Signature mismatch"
    only after the DSSE signature itself verified), so the listing can be trusted then.
    """
    import base64
    import json

    doc = json.loads(signature.read_bytes())
    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    return {str(r["name"]): str(r["digest"]) for r in statement["predicate"]["resources"]}


def _mismatch_summary(bundle_dir: Path, signature: Path) -> str:
    try:
        expected = signed_digests(signature)
    except (ValueError, KeyError, TypeError):
        return "file digests differ"
    actual = {p.relative_to(bundle_dir).as_posix(): p for p in sorted(bundle_dir.rglob("*")) if p.is_file()}
    parts = []
    changed = [n for n in expected if n in actual and sha256_file(actual[n]) != expected[n]]
    for label, names in (("changed", changed), ("added", sorted(set(actual) - set(expected))),
                         ("removed", sorted(set(expected) - set(actual)))):
        if names:
            parts.append(f"{label}: {', '.join(names)}")
    return "; ".join(parts) or "file digests differ"


def _verify(bundle_dir: Path, signature: Path, configure: object) -> None:
    """Shared verification: `configure` sets the verifier on a model-signing verifying Config."""
    from cryptography.exceptions import InvalidSignature

    if not signature.is_file():
        raise IntegrityError(f"bundle signature {signature} is missing")
    if not bundle_dir.is_dir():
        raise IntegrityError(f"bundle directory {bundle_dir} is missing")
    import model_signing

    config = model_signing.verifying.Config().set_hashing_config(_hashing_config())  # type: ignore[no-untyped-call]
    try:
        configure(config)  # type: ignore[operator]
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInput(f"cannot load the verification key: {type(exc).__name__}") from None
    except Exception as exc:  # keyless: sigstore's trust root (TUF) could not be fetched
        raise StepFailed(f"cannot set up the sigstore verifier: {type(exc).__name__}: {exc}") from None
    try:
        config.verify(bundle_dir, signature)
    except InvalidSignature:
        raise IntegrityError(f"bundle signature {signature.name} does not verify with the release public key") from None
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith("Signature mismatch"):
            raise IntegrityError(f"bundle {bundle_dir.name} does not match its signature ({_mismatch_summary(bundle_dir, signature)})") from None
        if msg.startswith("Key mismatch"):
            raise IntegrityError(f"bundle signature {signature.name} was made with a different key") from None
        raise IntegrityError(f"bundle signature {signature.name} is invalid: {msg}") from None
    except Exception as exc:  # a corrupted signature file fails inside JSON / protobuf / sigstore parsing
        raise IntegrityError(f"bundle signature {signature.name} is unreadable or invalid: {type(exc).__name__}: {exc}") from None
    try:
        check_bundle(bundle_dir)
    except InvalidInput as exc:  # signed by something that did not check the layout
        raise IntegrityError(f"signed bundle has an invalid layout: {exc}") from None


def verify_bundle(bundle_dir: Path, signature: Path, public_key: Path) -> None:
    """Key mode: raise IntegrityError, naming what failed, unless every file matches the signature."""
    _verify(bundle_dir, signature, lambda c: c.use_elliptic_key_verifier(public_key=public_key))

