"""Sign the release bundle — HEF, ONNX and manifest together — with OpenSSF model-signing.

Key mode (EC P-256 private key, fully offline) is the default here; `KeylessBundleSigner` uses
sigstore's keyless flow (Fulcio + Rekor with the ambient OIDC identity, e.g. GitHub Actions'
`id-token: write`) behind the same interface. The signature is a sigstore bundle over a manifest
of per-file digests, so changing, adding or removing any file of the bundle fails verification.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from release.errors import IntegrityError, InvalidInput

BUNDLE_FILES = ("manifest.json", "model.hef", "model.onnx")


class BundleSigner(Protocol):
    def sign(self, bundle_dir: Path, signature: Path) -> Path: ...


def _check_bundle(bundle_dir: Path, signature: Path) -> None:
    missing = [f for f in BUNDLE_FILES if not (bundle_dir / f).is_file()]
    if missing:
        raise InvalidInput(f"bundle {bundle_dir} lacks {missing}")
    if signature.resolve().parent == bundle_dir.resolve():
        raise InvalidInput("write the bundle signature outside the bundle directory (it would sign itself)")


class KeyBundleSigner:
    def __init__(self, private_key: Path) -> None:
        self.private_key = private_key

    def sign(self, bundle_dir: Path, signature: Path) -> Path:
        import model_signing

        _check_bundle(bundle_dir, signature)
        config = model_signing.signing.Config()  # type: ignore[no-untyped-call]
        config.use_elliptic_key_signer(private_key=self.private_key).sign(bundle_dir, signature)
        return signature


class KeylessBundleSigner:
    """sigstore keyless signing; needs network and an OIDC identity (production CI only)."""

    def sign(self, bundle_dir: Path, signature: Path) -> Path:
        import model_signing

        _check_bundle(bundle_dir, signature)
        config = model_signing.signing.Config()  # type: ignore[no-untyped-call]
        config.use_sigstore_signer().sign(bundle_dir, signature)
        return signature


def verify_bundle(bundle_dir: Path, signature: Path, public_key: Path) -> None:
    """Raise IntegrityError unless every file of the bundle matches the signed manifest."""
    import model_signing

    if not signature.is_file():
        raise IntegrityError(f"bundle signature {signature} is missing")
    try:
        config = model_signing.verifying.Config()  # type: ignore[no-untyped-call]
        config.use_elliptic_key_verifier(public_key=public_key).verify(bundle_dir, signature)
    except ValueError as exc:
        raise IntegrityError(f"bundle {bundle_dir.name} does not match its signature: {exc}") from None
    except Exception as exc:  # a corrupted signature file fails inside protobuf / sigstore parsing
        raise IntegrityError(f"bundle signature {signature.name} is unreadable or invalid: {type(exc).__name__}: {exc}") from None
