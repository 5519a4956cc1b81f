"""Detached ECDSA P-256 / SHA-256 signatures (DER) over a release manifest's canonical bytes.

DER, not raw r||s, so the stdlib-only device agent can verify with
`openssl dgst -sha256 -verify release-signing.pub -signature manifest.json.sig manifest.json`.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from release.errors import IntegrityError


def sign_bytes(data: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_bytes(data: bytes, signature: bytes, key: ec.EllipticCurvePublicKey, what: str = "manifest") -> None:
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise IntegrityError(f"{what}: signature does not verify with the release public key") from None
