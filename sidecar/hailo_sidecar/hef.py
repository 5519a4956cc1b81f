"""HEF_PATH validation: is the file a HEF, and for which hw_arch — checked before its sha256 is
ever reported, in every mode (standard library only: this runs on the cold-start path).

Layout (HailoRT 4.x, libhailort hef_internal.hpp): big-endian u32 magic 0x01484546 ("\\x01HEF"),
u32 header version, u32 proto size, a version-specific part (v0: reserved u32 + md5 of the proto;
v1: crc u32, ccws size u64, reserved u32; v2: xxh3 u64, ccws size u64, 2 x reserved u64; v3: xxh3
u64, ccws size u64, padding u32, additional-info size u64, 2 x reserved u64), then the
``ProtoHEFHef`` protobuf (hef.proto), whose field 1 is ``ProtoHEFHeader`` with ``hw_arch`` (enum) as
field 1. Two non-HailoRT forms are recognised and labelled as such, never as a compiled HEF:
the release pipeline's placeholder (no DFC on the build machine) and the DFC CLI test double's
output (a HailoRT v0 header over a JSON body).

This catches empty, truncated and foreign files, not tampering: the sha256 reported in /healthz and
checked against the signed manifest covers that. The body's md5/crc/xxh3 is not recomputed here:
HailoRT checks it when it loads the HEF, and a second full pass over a tens-of-MB HEF would cost
the cold start 2.0 ms per MB here (md5; sha256 is 0.6 ms/MB) for nothing the sha256 does not catch.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Literal, NamedTuple

HEF_MAGIC = b"\x01HEF"
PLACEHOLDER_MAGIC = b"HAILO-PIPELINE-PLACEHOLDER-HEF\n"
# Header size per version = 12 common bytes + the packed version-specific part.
HEADER_SIZES = {0: 32, 1: 28, 2: 44, 3: 56}
# ProtoHEFHwArch (hef.proto). proto3: an absent hw_arch field means 0, i.e. hailo8.
HW_ARCHS = {0: "hailo8", 1: "hailo8p", 2: "hailo8r", 3: "hailo8l", 4: "hailo15m", 5: "hailo10h", 103: "hailo15h"}
KNOWN_ARCH_NAMES = frozenset(HW_ARCHS.values())
_MAX_PLACEHOLDER = 1 << 20

HefKind = Literal["hef", "placeholder", "double"]


class HefError(ValueError):
    """HEF_PATH is not a usable HEF; the message says what is wrong with the file."""


class HefInfo(NamedTuple):
    path: Path
    kind: HefKind
    hw_arch: str
    sha256: str
    size: int


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise HefError("protobuf varint runs past the end")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7


def _field(buf: bytes, number: int, wire_type: int) -> int | bytes | None:
    """The first occurrence of field ``number`` in a protobuf message, skipping the others."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wtype = key >> 3, key & 7
        if num == 0:
            raise HefError("protobuf field number 0")
        if wtype == 0:
            value, pos = _varint(buf, pos)
            if num == number and wtype == wire_type:
                return value
        elif wtype == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise HefError(f"protobuf field {num} of {length} bytes runs past the end (truncated?)")
            if num == number and wtype == wire_type:
                return buf[pos : pos + length]
            pos += length
        elif wtype in (1, 5):
            pos += 8 if wtype == 1 else 4
        else:
            raise HefError(f"protobuf wire type {wtype} is not used by hef.proto")
    if pos != len(buf):
        raise HefError("protobuf message runs past the end")
    return None


def _proto_arch(proto: bytes) -> str:
    header = _field(proto, 1, 2)
    if not isinstance(header, bytes):
        raise HefError("the HEF protobuf has no ProtoHEFHeader")
    code = _field(header, 1, 0)
    code = 0 if code is None else code
    assert isinstance(code, int)
    if code not in HW_ARCHS:
        raise HefError(f"unknown hw_arch {code} in the HEF header")
    return HW_ARCHS[code]


def _json_arch(blob: bytes, what: str) -> str:
    try:
        meta = json.loads(blob)
    except ValueError:
        raise HefError(f"{what} body is not the JSON it should be (truncated?)") from None
    arch = meta.get("hw_arch", meta.get("arch")) if isinstance(meta, dict) else None
    if arch not in KNOWN_ARCH_NAMES:
        raise HefError(f"{what} names no known hw_arch (got {arch!r})")
    return str(arch)


def inspect_hef(path: Path) -> HefInfo:
    """Validate ``path`` as a HEF and return its kind, hw_arch and sha256; raise HefError otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HefError(f"no file at HEF_PATH={path}") from None
    except OSError as exc:
        raise HefError(f"HEF_PATH={path} cannot be read: {exc.strerror}") from None
    if not data:
        raise HefError(f"HEF_PATH={path} is empty (0 bytes)")
    import hashlib  # only when a HEF is there: stub and onnx starts without one skip its import

    sha = hashlib.sha256(data).hexdigest()
    if data.startswith(PLACEHOLDER_MAGIC):
        if len(data) > _MAX_PLACEHOLDER:
            raise HefError(f"{path}: placeholder HEF of {len(data)} bytes is too large to be one")
        arch = _json_arch(data[len(PLACEHOLDER_MAGIC) :], f"{path}: placeholder HEF")
        return HefInfo(path, "placeholder", arch, sha, len(data))
    if data[:4] != HEF_MAGIC:
        raise HefError(f"{path} is not a HEF: first bytes {data[:4]!r}, expected the HEF magic {HEF_MAGIC!r}")
    if len(data) < 12:
        raise HefError(f"{path}: HEF header truncated ({len(data)} bytes)")
    version, proto_size = struct.unpack(">II", data[4:12])
    if version not in HEADER_SIZES:
        raise HefError(f"{path}: unknown HEF header version {version} (HailoRT 4.x knows 0-3)")
    start = HEADER_SIZES[version]
    if len(data) < start or proto_size == 0 or start + proto_size > len(data):
        raise HefError(f"{path}: HEF proto of {proto_size} bytes does not fit the {len(data)}-byte file (truncated?)")
    proto = data[start : start + proto_size]
    if version == 0:
        if len(data) != start + proto_size:
            raise HefError(f"{path}: HEF v0 body is {len(data) - start} bytes, its header says {proto_size}")
        if proto[:1] == b"{":
            # Written by the DFC CLI test double (tests/doubles/bin/hailo): HailoRT would refuse it.
            return HefInfo(path, "double", _json_arch(proto, f"{path}: DFC-double HEF"), sha, len(data))
    try:
        arch = _proto_arch(proto)
    except HefError as exc:
        raise HefError(f"{path}: HEF body is not a valid ProtoHEFHef: {exc}") from None
    return HefInfo(path, "hef", arch, sha, len(data))


def encode_hef(hw_arch: str = "hailo8", payload: bytes = b"", version: int = 0) -> bytes:
    """A minimal well-formed HEF (header + ProtoHEFHef with a ProtoHEFHeader) for tests and benches."""
    import hashlib

    code = {v: k for k, v in HW_ARCHS.items()}[hw_arch]

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    header = b"\x08" + varint(code) + b"\x1a" + varint(len(b"3.33.0")) + b"3.33.0"
    proto = b"\x0a" + varint(len(header)) + header
    if payload:
        proto += b"\x1a" + varint(len(payload)) + payload  # field 3: mapping (bytes)
    size = HEADER_SIZES[version]
    if version == 0:
        head = struct.pack(">4sIII16s", HEF_MAGIC, 0, len(proto), 0, hashlib.md5(proto, usedforsecurity=False).digest())
    else:
        head = struct.pack(">4sII", HEF_MAGIC, version, len(proto)) + bytes(size - 12)
    return head + proto
