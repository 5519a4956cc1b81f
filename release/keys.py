"""EC P-256 signing keys for manifests and images; never logged, written 0600.

A private key is a PEM (PKCS#8 or SEC1, optionally password-protected) or a cosign encrypted key
(``cosign generate-key-pair``), whose password comes from ``COSIGN_PASSWORD`` as with cosign itself.
Public keys are always PEM: the device verifies manifests with ``openssl dgst -sha256 -verify``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from release.checksums import sha256_bytes
from release.errors import InvalidInput

PRIVATE_NAME = "release-signing.key"
PUBLIC_NAME = "release-signing.pub"


def generate_dev_keypair(keys_dir: Path) -> tuple[Path, Path]:
    """Create (once) a dev key pair for the embedded-default demo; returns (private, public).

    An existing private key is kept (its public half is re-derived if missing); the private key
    file is always left 0600 and the directory 0700.
    """
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys_dir, 0o700)
    priv_path, pub_path = keys_dir / PRIVATE_NAME, keys_dir / PUBLIC_NAME
    if priv_path.is_file():
        os.chmod(priv_path, 0o600)
        key = load_private_key(priv_path)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        _write_private(priv_path, pem)
    if not pub_path.is_file() or pub_path.read_bytes() != public_pem(key.public_key()):
        pub_path.write_bytes(public_pem(key.public_key()))
    return priv_path, pub_path


def _write_private(dest: Path, pem: bytes) -> None:
    """Temp file created 0600, fsynced, renamed: the key is never readable by others, even briefly."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def default_public_path(private: Path) -> Path:
    """The public half's file when none is named: ``<key>.pub``, else cosign's ``cosign.key`` → ``cosign.pub``."""
    appended = private.with_name(private.name + ".pub")
    sibling = private.with_suffix(".pub")
    if not appended.exists() and private.suffix == ".key" and sibling.exists():
        return sibling
    return appended


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: Path, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """Load a P-256 private key; a cosign key is decrypted with ``password`` or ``COSIGN_PASSWORD``."""
    from release.cosign_keys import is_cosign_key, load_cosign_private_key

    if is_cosign_key(path):
        if password is None:
            env_password = os.environ.get("COSIGN_PASSWORD")
            if env_password is None:
                raise InvalidInput(f"{path} is a cosign encrypted key: set COSIGN_PASSWORD to its password")
            password = env_password.encode()
        return load_cosign_private_key(path, password)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=password)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInput(f"cannot load private key {path}: {type(exc).__name__}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise InvalidInput(f"{path}: expected an EC P-256 private key")
    return key


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot load public key {path}: {type(exc).__name__}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise InvalidInput(f"{path}: expected an EC P-256 public key")
    return key


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    """sha256 of the DER SubjectPublicKeyInfo: names the key in manifests without revealing anything."""
    return sha256_bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


SIGNATURE_HASH = hashes.SHA256
