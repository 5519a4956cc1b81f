"""Load cosign's encrypted private key files (`cosign generate-key-pair` output).

Format (sigstore/cosign pkg/cosign/keys.go, via secure-systems-lab encrypted): a PEM block
`ENCRYPTED SIGSTORE PRIVATE KEY` (older: `ENCRYPTED COSIGN PRIVATE KEY`) whose body is JSON
`{"kdf": {"name": "scrypt", "params": {"N","r","p"}, "salt"}, "cipher": {"name": "nacl/secretbox",
"nonce"}, "ciphertext"}`; scrypt(password) gives the 32-byte secretbox key; the plaintext is a
PKCS#8 DER private key. Only ECDSA P-256 is accepted: it is what our signatures use.

`release.keys.load_private_key` reads such a file (``HAILO_SIGNING_KEY=cosign.key``) with the
password from ``COSIGN_PASSWORD``, as cosign does; the matching public key is cosign's ``cosign.pub``,
a plain PEM that the device's ``openssl dgst -verify`` reads.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import nacl.exceptions
import nacl.secret
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_private_key

from release.errors import IntegrityError, InvalidInput

PEM_TYPES = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")
_MAX_SCRYPT_N = 1 << 20  # refuse absurd work factors from a hostile file


def is_cosign_key(path: Path) -> bool:
    """True if ``path`` starts like a cosign encrypted key (a missing file is not one)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(64).lstrip()
    except OSError:
        return False
    return any(head.startswith(f"-----BEGIN {t}-----".encode()) for t in PEM_TYPES)


def load_cosign_private_key(path: Path, password: bytes) -> ec.EllipticCurvePrivateKey:
    text = path.read_text(encoding="ascii", errors="strict")
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 3 or not lines[0].startswith("-----BEGIN ") or not lines[-1].startswith("-----END "):
        raise InvalidInput(f"{path}: not a PEM file")
    pem_type = lines[0][len("-----BEGIN "):].rstrip("-")
    if pem_type not in PEM_TYPES or lines[-1] != f"-----END {pem_type}-----":
        raise InvalidInput(f"{path}: PEM type {pem_type!r} is not a cosign encrypted key ({' / '.join(PEM_TYPES)})")
    try:
        doc = json.loads(base64.b64decode("".join(lines[1:-1]), validate=True))
        kdf, cipher = doc["kdf"], doc["cipher"]
        params = kdf["params"]
        n, r, p = int(params["N"]), int(params["r"]), int(params["p"])
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(cipher["nonce"], validate=True)
        ciphertext = base64.b64decode(doc["ciphertext"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"{path}: malformed cosign key body: {exc}") from None
    if kdf.get("name") != "scrypt" or cipher.get("name") != "nacl/secretbox":
        raise InvalidInput(f"{path}: unsupported kdf/cipher {kdf.get('name')}/{cipher.get('name')}")
    if not (1 < n <= _MAX_SCRYPT_N and n & (n - 1) == 0 and 0 < r <= 32 and 0 < p <= 16):
        raise InvalidInput(f"{path}: scrypt parameters N={n} r={r} p={p} out of range")
    secret = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=32, maxmem=128 * r * (n + p + 2) + (1 << 20))
    try:
        der = nacl.secret.SecretBox(secret).decrypt(ciphertext, nonce)
    except (nacl.exceptions.CryptoError, ValueError):
        raise IntegrityError(f"{path}: wrong password or corrupted key") from None
    key = load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InvalidInput(f"{path}: only ECDSA P-256 cosign keys are supported")
    return key
