"""Refuse to start a worker whose release signing key is not the one the other hosts use.

Every host of a scaled-out stack signs and verifies with one key pair, handed to it as files
(``HAILO_SIGNING_KEY`` / ``HAILO_SIGNING_PUB``); a worker never generates one. The first host to
start records the public key's ID in the shared store (``<HAILO_ARTIFACT_ROOT>/keys/release-signing.keyid``);
every later one must match it, or it is refused with both key IDs named, before a single task runs
(a bundle signed on the builder would otherwise fail verification on the edge worker).

    python -m hailo_airflow.keycheck      # scripts/scaleout.sh and the systemd units run it first
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

RECORD = Path("keys") / "release-signing.keyid"


class KeyMismatch(RuntimeError):
    pass


def check(store_root: Path, signing_key: str | None, signing_pub: str | None) -> str:
    """Return this host's key ID after checking it against (or recording it in) the shared store."""
    from release.keys import key_id, load_private_key, load_public_key, public_pem

    if not signing_key:
        raise KeyMismatch("HAILO_SIGNING_KEY is not set: a worker never generates a signing key; give every host "
                          "the stack's key pair as files (HAILO_SIGNING_KEY, HAILO_SIGNING_PUB)")
    pub_path = Path(signing_pub or signing_key + ".pub")
    pub = load_public_key(pub_path)
    mine = key_id(pub)
    if public_pem(load_private_key(Path(signing_key)).public_key()) != public_pem(pub):
        raise KeyMismatch(f"HAILO_SIGNING_KEY={signing_key} is not the private half of HAILO_SIGNING_PUB={pub_path} "
                          f"(key ID {mine})")
    record = store_root / RECORD
    record.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        recorded = record.read_text().strip()
        if recorded != mine:
            raise KeyMismatch(f"signing key mismatch: this host's key ID is {mine} (HAILO_SIGNING_PUB={pub_path}) but "
                              f"the stack signs with key ID {recorded} (recorded in {record}); refusing to start") from None
        return mine
    with os.fdopen(fd, "w") as fh:
        fh.write(mine + "\n")
    return mine


def main() -> int:
    from release.pipeline_env import PipelineEnv

    try:
        env = PipelineEnv.from_env()
        kid = check(env.store_root, str(env.signing_key) if env.signing_key else None,
                    str(env.signing_pub) if env.signing_pub else None)
    except Exception as exc:
        print(f"keycheck: {exc}", file=sys.stderr)
        return 1
    print(f"keycheck: signing key ID {kid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
