"""Image build, push, digest read-back and cosign-format signing against a real Docker engine and a
real OCI registry; buildx and cosign through strict doubles."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from release.errors import IntegrityError, InvalidIdentifier, RefusedForProduction
from release.image_build import build_and_push, buildx_argv, digest_from_metadata
from release.oci_signing import (
    SIG_ANNOTATION,
    CosignCliSigner,
    sign_image,
    signature_tag,
    simple_signing_payload,
    verify_image,
)
from release.registry import OCI_MANIFEST, ImageRef, RegistryClient
from tests.fixtures.testbed import free_port

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"


def test_image_ref_grammar():
    ref = ImageRef.parse("127.0.0.1:5000/hailo/runtime@sha256:" + "a" * 64)
    assert (ref.registry, ref.repository, ref.tag) == ("127.0.0.1:5000", "hailo/runtime", None)
    assert ImageRef.parse("registry.example.org/hailo-runtime:v1.2").tag == "v1.2"
    for bad in ("hailo-runtime:v1", "127.0.0.1:5000/Hailo:v1", "127.0.0.1:5000/x:v1;rm", "127.0.0.1:5000/x@sha256:zz",
                "127.0.0.1:5000/x y", "127.0.0.1:5000/x:$(id)"):
        with pytest.raises(InvalidIdentifier):
            ImageRef.parse(bad)


def test_payload_is_cosign_simple_signing():
    ref = ImageRef.parse("127.0.0.1:5000/hailo-runtime@sha256:" + "b" * 64)
    assert simple_signing_payload(ref) == (
        b'{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/hailo-runtime"},'
        b'"image":{"docker-manifest-digest":"sha256:' + b"b" * 64 + b'"},'
        b'"type":"cosign container image signature"},"optional":null}'
    )
    assert signature_tag("sha256:" + "b" * 64) == "sha256-" + "b" * 64 + ".sig"


def test_buildx_argv_and_metadata():
    argv = buildx_argv("docker", "reg.example/hailo-runtime:v1", Path("/ctx"), Path("/ctx/Dockerfile"), Path("/m.json"),
                       build_args={"BASE_IMAGE": "hailo-base:bookworm-arm64"})
    assert argv[:3] == ["docker", "buildx", "build"]
    assert argv[argv.index("--platform") + 1] == "linux/arm64"
    assert "--push" in argv and "--provenance=true" in argv and argv[-1] == "/ctx"
    assert argv[argv.index("--metadata-file") + 1] == "/m.json"
    assert digest_from_metadata(DATA / "buildx-metadata.json") == json.loads(
        (DATA / "buildx-metadata.json").read_text())["containerimage.digest"]


def test_bad_metadata_refused(tmp_path):
    from release.errors import StepFailed

    (tmp_path / "m.json").write_text('{"image.name": "x"}')
    with pytest.raises(StepFailed, match="containerimage.digest"):
        digest_from_metadata(tmp_path / "m.json")


@pytest.fixture(scope="module")
def tiny_image(docker_cli, oci_registry, tmp_path_factory):
    """A one-file image FROM scratch, pushed: enough to sign and verify."""
    ctx = tmp_path_factory.mktemp("tiny")
    (ctx / "f").write_text(f"hello {time.time()}")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY f /f\n")
    name = f"{oci_registry}/signing-test:t1"
    subprocess.run([docker_cli, "build", "-q", "-t", name, str(ctx)], check=True, capture_output=True)
    subprocess.run([docker_cli, "push", name], check=True, capture_output=True)
    client = RegistryClient(oci_registry)
    digest = client.manifest_digest("signing-test", "t1")
    return client, ImageRef.parse(f"{oci_registry}/signing-test@{digest}")


@pytest.mark.docker
def test_sign_and_verify_roundtrip_and_tampering(tiny_image, tmp_path, doubles_on_path):
    client, ref = tiny_image
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(IntegrityError, match="no signature"):
        verify_image(client, ref, key.public_key())
    sig_ref = sign_image(client, ref, key)
    assert sig_ref.endswith(signature_tag(ref.digest))
    verify_image(client, ref, key.public_key())
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_image(client, ref, other.public_key())
    sign_image(client, ref, other)  # a second signature appends a layer
    manifest = json.loads(client.manifest(ref.repository, signature_tag(ref.digest))[0])
    assert len(manifest["layers"]) == 2 and manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    verify_image(client, ref, other.public_key())

    # The strict cosign double verifies our layout independently.
    from cryptography.hazmat.primitives import serialization

    pub = tmp_path / "cosign.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    CosignCliSigner(public_key=pub).verify(ref)
    res = subprocess.run(["cosign", "verify", "--key", str(pub), str(ref)], capture_output=True, text=True)
    assert res.returncode == 1 and "insecure-ignore-tlog" in res.stderr
    res = subprocess.run(["cosign", "verify", "--key", str(pub), "--insecure-ignore-tlog=true", f"{ref.name}:t1"],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "by digest" in res.stderr

    # Tamper 1: flip a byte of the signature annotation → refused by us and by the double.
    layers = [dict(layer) for layer in manifest["layers"]]
    sig = bytearray(base64.b64decode(layers[0]["annotations"][SIG_ANNOTATION]))
    sig[10] ^= 1
    layers = [{**layers[0], "annotations": {SIG_ANNOTATION: base64.b64encode(bytes(sig)).decode()}}]
    tampered = {**manifest, "layers": layers}
    client.put_manifest(ref.repository, signature_tag(ref.digest), json.dumps(tampered).encode(), OCI_MANIFEST)
    with pytest.raises(IntegrityError):
        verify_image(client, ref, key.public_key())
    with pytest.raises(IntegrityError):
        CosignCliSigner(public_key=pub).verify(ref)

    # Tamper 2: a payload that names another digest, validly signed → refused (wrong image).
    other_ref = ImageRef(ref.registry, ref.repository, digest="sha256:" + "0" * 64)
    payload = simple_signing_payload(other_ref)
    from cryptography.hazmat.primitives import hashes

    forged_sig = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    payload_digest = client.put_blob(ref.repository, payload)
    forged = {**manifest, "layers": [{"mediaType": layers[0]["mediaType"], "size": len(payload), "digest": payload_digest,
                                      "annotations": {SIG_ANNOTATION: forged_sig}}]}
    client.put_manifest(ref.repository, signature_tag(ref.digest), json.dumps(forged).encode(), OCI_MANIFEST)
    with pytest.raises(IntegrityError, match="another image digest"):
        verify_image(client, ref, key.public_key())

    # Tamper 3: a signature layer swapped onto another blob (the registry only accepts known blobs) → refused.
    bad_layer = {**manifest["layers"][0], "digest": manifest["config"]["digest"], "size": manifest["config"]["size"]}
    client.put_manifest(ref.repository, signature_tag(ref.digest),
                        json.dumps({**manifest, "layers": [bad_layer]}).encode(), OCI_MANIFEST)
    with pytest.raises(IntegrityError):
        verify_image(client, ref, key.public_key())


@pytest.mark.docker
def test_runtime_image_build_push_run(docker_cli, oci_registry, base_image, tmp_path):
    t0 = time.monotonic()
    built = build_and_push(docker=docker_cli, registry=oci_registry, repository="hailo-runtime", tag="ci-amd64",
                           context=REPO, work_dir=tmp_path, production=False, cache_dir=Path("/var/cache/hailo-pipeline"),
                           platform="linux/amd64")
    seconds = time.monotonic() - t0
    assert built.platform == "linux/amd64" and built.digest.startswith("sha256:") and built.builder == "docker-build"
    assert RegistryClient(oci_registry).manifest_digest("hailo-runtime", "ci-amd64") == built.digest
    # The same code path refuses to publish a non-arm64 image for a production target.
    with pytest.raises(RefusedForProduction, match="linux/arm64"):
        build_and_push(docker=docker_cli, registry=oci_registry, repository="hailo-runtime", tag="ci-amd64-prod",
                       context=REPO, work_dir=tmp_path, production=True, cache_dir=Path("/var/cache/hailo-pipeline"),
                       platform="linux/amd64")
    port = free_port()
    name = f"sidecar-test-{port}"
    image = f"{built.repository}@{built.digest}"
    subprocess.run([docker_cli, "run", "-d", "--rm", "--name", name, "-e", "INFER_MODE=stub", "-e", "CONFIG_VERSION=cfg-img",
                    "-p", f"127.0.0.1:{port}:9000", "--read-only", image], check=True, capture_output=True)
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        smoke = subprocess.run([str(Path(__import__("sys").executable)), "-m", "hailo_sidecar.smoke",
                                f"http://127.0.0.1:{port}", "--expect-config-version", "cfg-img"], capture_output=True, text=True)
        assert smoke.returncode == 0, smoke.stderr
        uid = subprocess.run([docker_cli, "exec", name, "id", "-u"], capture_output=True, text=True, check=True).stdout.strip()
        assert uid != "0" and uid == "10001"
        inspect = json.loads(subprocess.run([docker_cli, "image", "inspect", image], capture_output=True, text=True,
                                            check=True).stdout)[0]
        assert inspect["Config"]["User"] == "10001:10001" and inspect["Config"]["Healthcheck"]["Test"]
        env = " ".join(inspect["Config"]["Env"])
        assert "PASSWORD" not in env and "TOKEN" not in env and "KEY=" not in env
    finally:
        subprocess.run([docker_cli, "stop", name], capture_output=True)
    # Real backends refuse to run on amd64 (the platform guardrail).
    res = subprocess.run([docker_cli, "run", "--rm", "-e", "INFER_MODE=onnx", image], capture_output=True, text=True)
    assert res.returncode == 2 and "linux/arm64" in res.stderr
    print(f"runtime image build+push: {seconds:.1f}s")


@pytest.mark.docker
@pytest.mark.slow
def test_arm64_runtime_image_accepted_for_production(docker_cli, oci_registry, base_image_arm64, tmp_path):
    from tests.fixtures.doubles import make_hailort_wheel_double

    # A HailoRT-shaped wheel holding the hailo_platform double: the image must install what it is given.
    wheel = make_hailort_wheel_double(tmp_path / "hailort", "4.23.0")
    built = build_and_push(docker=docker_cli, registry=oci_registry, repository="hailo-runtime", tag="ci-arm64",
                           context=REPO, work_dir=tmp_path, production=True, cache_dir=Path("/var/cache/hailo-pipeline"),
                           platform="linux/arm64", hailort_wheel=wheel)
    assert built.platform == "linux/arm64" and built.hailort_version == "4.23.0"
    assert "linux/arm64" in RegistryClient(oci_registry).platforms("hailo-runtime", built.digest)
    image = f"{built.repository}@{built.digest}"
    probe = "import platform, hailo_platform; print(platform.machine(), hasattr(hailo_platform, 'VDevice'))"
    res = subprocess.run([docker_cli, "run", "--rm", "--platform", "linux/arm64", "--entrypoint", "python", image,
                          "-c", probe], capture_output=True, text=True, timeout=600)
    assert res.stdout.strip() == "aarch64 True", res.stderr
    labels = json.loads(subprocess.run([docker_cli, "image", "inspect", image], capture_output=True, text=True,
                                       check=True).stdout)[0]["Config"]["Labels"]
    assert labels["io.hailo.hailort-version"] == "4.23.0"
