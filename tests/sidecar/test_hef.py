"""HEF header and hw_arch validation (hailo_sidecar.hef), on files in HailoRT's real layout."""

import hashlib
import json
import struct

import pytest
from hailo_sidecar.hef import HEADER_SIZES, HW_ARCHS, HefError, encode_hef, inspect_hef


@pytest.mark.parametrize("version", sorted(HEADER_SIZES))
@pytest.mark.parametrize("arch", sorted(HW_ARCHS.values()))
def test_every_header_version_and_arch(tmp_path, version, arch):
    data = encode_hef(arch, payload=b"\x00" * 100, version=version)
    path = tmp_path / "m.hef"
    path.write_bytes(data)
    info = inspect_hef(path)
    assert (info.kind, info.hw_arch, info.size) == ("hef", arch, len(data))
    assert info.sha256 == hashlib.sha256(data).hexdigest()


def test_absent_hw_arch_is_proto3_default_hailo8(tmp_path):
    proto = b"\x0a\x00"  # ProtoHEFHef.header = empty ProtoHEFHeader
    data = struct.pack(">4sIII16s", b"\x01HEF", 0, len(proto), 0, hashlib.md5(proto).digest()) + proto
    (tmp_path / "m.hef").write_bytes(data)
    assert inspect_hef(tmp_path / "m.hef").hw_arch == "hailo8"


def test_dfc_double_output_is_labelled_double(tmp_path):
    body = json.dumps({"double": "hailo CLI test double", "arch": "hailo8l", "stage": "compiled"}).encode()
    data = struct.pack(">IIII16s", 0x01484546, 0, len(body), 0, hashlib.md5(body).digest()) + body
    (tmp_path / "m.hef").write_bytes(data)
    info = inspect_hef(tmp_path / "m.hef")
    assert (info.kind, info.hw_arch) == ("double", "hailo8l")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "is empty"),
        (b"\x01HE", "not a HEF"),
        (b"\x01HEF\x00\x00", "header truncated"),
        (encode_hef()[:-1], "truncated"),
        (encode_hef() + b"x", "header says"),
        (struct.pack(">4sII", b"\x01HEF", 9, 4) + b"abcd", "unknown HEF header version 9"),
        (struct.pack(">4sII", b"\x01HEF", 1, 3) + bytes(16) + b"\xff\xff\xff", "not a valid ProtoHEFHef"),
        (b"HAILO-PIPELINE-PLACEHOLDER-HEF\n{not json", "placeholder HEF body is not the JSON"),
        (b'HAILO-PIPELINE-PLACEHOLDER-HEF\n{"hw_arch": "gpu"}', "no known hw_arch"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path, data, why):
    (tmp_path / "m.hef").write_bytes(data)
    with pytest.raises(HefError, match=why):
        inspect_hef(tmp_path / "m.hef")


def test_unknown_arch_code(tmp_path):
    proto = b"\x0a\x02\x08\x63"  # hw_arch = 99
    data = struct.pack(">4sII", b"\x01HEF", 1, len(proto)) + bytes(16) + proto
    (tmp_path / "m.hef").write_bytes(data)
    with pytest.raises(HefError, match="unknown hw_arch 99"):
        inspect_hef(tmp_path / "m.hef")
