"""The HEF file as the release library sees it: HailoRT's header checked before a HEF is
published or deployed, and the placeholder written (and recognised) when no DFC compiled one.

The placeholder is the marker line below followed by one JSON object (net, hw_arch, input
sha256s); the sidecar's HEF_PATH check (sidecar/hailo_sidecar/hef.py, standard library only, so a
copy of these constants) labels it a placeholder from the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from release.errors import IntegrityError

PLACEHOLDER_MAGIC = b"HAILO-PIPELINE-PLACEHOLDER-HEF\n"
# HailoRT's HEF header (libhailort hef_internal.hpp): big-endian u32 magic 0x01484546 ("\x01HEF"),
# u32 header version, u32 proto size, then a version-specific part (v0: reserved u32 + md5 of the rest).
HEF_MAGIC = b"\x01HEF"
HEF_HEADER_VERSIONS = (0, 1, 2, 3)
_HEF_V0 = struct.Struct(">4sIII16s")

HefKind = Literal["hef", "placeholder"]


def is_placeholder_hef(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(PLACEHOLDER_MAGIC)) == PLACEHOLDER_MAGIC


def check_hef(path: Path) -> HefKind:
    """Sanity-check a HEF file: a placeholder, or HailoRT's header (magic, known version, proto size
    that fits; for header v0 also the md5 of the body). Raises IntegrityError otherwise.
    This catches truncation and wrong files, not tampering: signatures cover that."""
    if not path.is_file():
        raise IntegrityError(f"{path}: HEF file is missing")
    size = path.stat().st_size
    if size == 0:
        raise IntegrityError(f"{path}: HEF file is empty")
    if is_placeholder_hef(path):
        return "placeholder"
    with open(path, "rb") as fh:
        head = fh.read(_HEF_V0.size)
        if head[:4] != HEF_MAGIC:
            raise IntegrityError(f"{path}: not a HEF (first bytes {head[:4]!r}, expected the HEF magic {HEF_MAGIC!r})")
        if len(head) < 12:
            raise IntegrityError(f"{path}: HEF header truncated ({size} bytes)")
        version, proto_size = struct.unpack(">II", head[4:12])
        if version not in HEF_HEADER_VERSIONS:
            raise IntegrityError(f"{path}: unknown HEF header version {version}")
        if proto_size == 0 or proto_size > size - 12:
            raise IntegrityError(f"{path}: HEF proto size {proto_size} does not fit a {size}-byte file (truncated?)")
        if version == 0:
            if len(head) < _HEF_V0.size or size - _HEF_V0.size != proto_size:
                raise IntegrityError(f"{path}: HEF v0 body is {size - _HEF_V0.size} bytes, header says {proto_size}")
            md5 = hashlib.md5(usedforsecurity=False)
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                md5.update(chunk)
            if md5.digest() != _HEF_V0.unpack(head)[4]:
                raise IntegrityError(f"{path}: HEF body md5 does not match its header (corrupt or truncated)")
    return "hef"


def write_placeholder_hef(path: Path, meta: Mapping[str, object]) -> None:
    """Write a placeholder HEF: the marker, then ``meta`` as one JSON line (never a compiled HEF)."""
    path.write_bytes(PLACEHOLDER_MAGIC + json.dumps(meta, sort_keys=True).encode() + b"\n")
