"""Signing benchmarks: the release bundle (sample ONNX + HEF-sized blob + manifest + checksum file)
signed and verified with OpenSSF model-signing (key mode), and the manifest's detached ECDSA
signature, ours and the `openssl` verification the device agent runs."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.table import Row

HEF_BYTES = 4 << 20  # a compiled TCN encoder HEF is a few MiB


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def rows() -> list[Row]:
    from release.bundle_signing import KeyBundleSigner, verify_bundle
    from release.checksums import write_sha256sum
    from release.keys import generate_dev_keypair, load_private_key, load_public_key
    from release.manifest_signing import sign_bytes, verify_bytes
    from release.sample_model import write_sample_model
    from tests.fixtures.manifests import make_manifest

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        priv, pub = generate_dev_keypair(root / "keys")
        bundle = root / "bundle"
        bundle.mkdir()
        write_sample_model(bundle / "model.onnx")
        (bundle / "tcn_encoder-bench.hef").write_bytes(os.urandom(HEF_BYTES))
        write_sha256sum([bundle / "tcn_encoder-bench.hef"], bundle / "hef_sha256sum.txt")
        manifest = make_manifest().canonical_json()
        (bundle / "manifest.json").write_bytes(manifest)
        size_mib = sum(p.stat().st_size for p in bundle.iterdir()) / (1 << 20)
        sig = root / "bundle.sig"
        signer = KeyBundleSigner(priv)
        sign_ms = _median_ms(lambda: signer.sign(bundle, sig), 5)
        verify_ms = _median_ms(lambda: verify_bundle(bundle, sig, pub), 5)

        key, pubkey = load_private_key(priv), load_public_key(pub)
        msig = sign_bytes(manifest, key)
        msign_ms = _median_ms(lambda: sign_bytes(manifest, key), 50)
        mverify_ms = _median_ms(lambda: verify_bytes(manifest, msig, pubkey), 50)
        (root / "manifest.json").write_bytes(manifest)
        (root / "manifest.json.sig").write_bytes(msig)
        argv = ["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(root / "manifest.json.sig"),
                str(root / "manifest.json")]
        openssl_ms = float("nan")
        if shutil.which("openssl"):
            openssl_ms = _median_ms(lambda: subprocess.run(argv, check=True, capture_output=True), 10)
    note = f"sample ONNX + {HEF_BYTES >> 20} MiB HEF blob, {size_mib:.1f} MiB bundle, median of 5"
    return [
        Row("bundle sign (model-signing, key mode)", sign_ms, "ms", "< 1000 ms", sign_ms < 1000, note),
        Row("bundle verify (model-signing, key mode)", verify_ms, "ms", "< 1000 ms", verify_ms < 1000, note),
        Row("manifest sign (ECDSA P-256, DER)", msign_ms, "ms", "-", None, f"{len(manifest)} B manifest"),
        Row("manifest verify (ours)", mverify_ms, "ms", "-", None, "cryptography"),
        Row("manifest verify (openssl dgst, device agent)", openssl_ms, "ms", "-", None, "process start included"),
    ]
