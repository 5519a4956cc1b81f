"""The release library's HEF check (release/hef_format.py) and the sidecar's HEF_PATH check
(sidecar/hailo_sidecar/hef.py) are two copies on purpose: the sidecar imports nothing from release/.
This keeps them agreeing: the same constants, and the same verdict on the same bytes — what the
pipeline publishes, the sidecar loads; what one refuses, so does the other. The one difference
is stated: only the library checks a v0 header's md5 (on the device, the agent has verified the
signed sha256 of every byte before the sidecar starts)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hailo_sidecar.hef import HEADER_SIZES, HefError, encode_hef, inspect_hef
from hailo_sidecar.hef import HEF_MAGIC as SIDECAR_HEF_MAGIC
from hailo_sidecar.hef import PLACEHOLDER_MAGIC as SIDECAR_PLACEHOLDER_MAGIC

from release import hef_format
from release.errors import IntegrityError


def test_the_two_copies_share_their_constants():
    assert hef_format.HEF_MAGIC == SIDECAR_HEF_MAGIC
    assert hef_format.PLACEHOLDER_MAGIC == SIDECAR_PLACEHOLDER_MAGIC
    assert set(hef_format.HEF_HEADER_VERSIONS) == set(HEADER_SIZES)


def _placeholder(path: Path) -> bytes:
    hef_format.write_placeholder_hef(path, {"net": "tcn_encoder", "hw_arch": "hailo8", "onnx_sha256": "ab" * 32})
    return path.read_bytes()


def _double_hef() -> bytes:
    """A v0 HEF as the DFC CLI double writes it (a JSON body under HailoRT's header)."""
    import hashlib

    body = json.dumps({"net": "tcn_encoder", "hw_arch": "hailo8"}).encode()
    return struct.pack(">4sIII16s", b"\x01HEF", 0, len(body), 0, hashlib.md5(body, usedforsecurity=False).digest()) + body


CASES = {
    "compiled v0": (lambda p: encode_hef("hailo8"), True),
    "compiled v3": (lambda p: encode_hef("hailo8l", version=3), True),
    "placeholder": (_placeholder, True),
    "DFC double": (lambda p: _double_hef(), True),
    "empty": (lambda p: b"", False),
    "wrong magic": (lambda p: b"\x02HEF" + encode_hef()[4:], False),
    "truncated header": (lambda p: encode_hef()[:10], False),
    "truncated body": (lambda p: encode_hef()[:-3], False),
    "unknown version": (lambda p: encode_hef()[:4] + struct.pack(">I", 9) + encode_hef()[8:], False),
    "proto size zero": (lambda p: encode_hef()[:8] + struct.pack(">I", 0) + encode_hef()[12:], False),
    "trailing bytes on v0": (lambda p: encode_hef() + b"extra", False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_library_and_the_sidecar_agree_on_the_same_bytes(case, tmp_path):
    make, valid = CASES[case]
    path = tmp_path / "model.hef"
    data = make(path)
    path.write_bytes(data)
    try:
        library: str | None = hef_format.check_hef(path)
    except IntegrityError:
        library = None
    try:
        sidecar: str | None = inspect_hef(path).kind
    except HefError:
        sidecar = None
    assert (library is not None, sidecar is not None) == (valid, valid), (case, library, sidecar)
    if valid:
        assert (library == "placeholder") == (sidecar == "placeholder"), (case, library, sidecar)


def test_only_the_library_checks_a_v0_md5(tmp_path):
    data = bytearray(encode_hef("hailo8", payload=b"weights"))
    data[-1] ^= 0xFF  # inside the mapping payload: the proto still parses
    path = tmp_path / "model.hef"
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="md5"):
        hef_format.check_hef(path)
    assert inspect_hef(path).kind == "hef"  # the agent's signed sha256 check stands before it on a device
