"""cosign's encrypted key format.

tests/data/cosign-test-sigstore-ec.key is `pemsigstorekey` from sigstore/cosign
pkg/cosign/keys_test.go (password "hello"), i.e. produced by cosign itself.
"""

from pathlib import Path

import pytest

from release.cosign_keys import load_cosign_private_key
from release.errors import IntegrityError, InvalidInput

KEY = Path(__file__).resolve().parents[1] / "data" / "cosign-test-sigstore-ec.key"


def test_loads_cosigns_own_test_key_and_signs():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = load_cosign_private_key(KEY, b"hello")
    assert isinstance(key.curve, ec.SECP256R1)
    sig = key.sign(b"payload", ec.ECDSA(hashes.SHA256()))
    key.public_key().verify(sig, b"payload", ec.ECDSA(hashes.SHA256()))


def test_wrong_password_refused():
    with pytest.raises(IntegrityError, match="wrong password"):
        load_cosign_private_key(KEY, b"wrong")


def test_tampered_and_foreign_files_refused(tmp_path):
    lines = KEY.read_text().splitlines()
    body = list(lines[2])
    body[10] = "A" if body[10] != "A" else "B"
    bad = tmp_path / "bad.key"
    bad.write_text("\n".join([lines[0], lines[1], "".join(body), *lines[3:]]) + "\n")
    with pytest.raises((InvalidInput, IntegrityError)):
        load_cosign_private_key(bad, b"hello")
    pem = tmp_path / "plain.key"
    pem.write_text(KEY.read_text().replace("ENCRYPTED SIGSTORE PRIVATE KEY", "PRIVATE KEY"))
    with pytest.raises(InvalidInput, match="not a cosign encrypted key"):
        load_cosign_private_key(pem, b"hello")
