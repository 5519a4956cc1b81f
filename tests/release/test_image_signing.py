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

from release.errors import IntegrityError, InvalidIdentifier, InvalidInput, RefusedForProduction
from release.image_build import build_and_push, buildx_argv, digest_from_metadata
from release.oci_signing import (
    IDENTITY_POLICY_ENV,
    SIG_ANNOTATION,
    SIMPLESIGNING,
    CosignCliSigner,
    KeySigner,
    identity_policy,
    identity_problem,
    image_signer,
    repository_name,
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


def _push_tiny(docker_cli, registry, repository, tag, ctx):
    """A one-file image FROM scratch, pushed: enough to sign and verify."""
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "f").write_text(f"hello {repository} {time.time()}")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY f /f\n")
    name = f"{registry}/{repository}:{tag}"
    subprocess.run([docker_cli, "build", "-q", "-t", name, str(ctx)], check=True, capture_output=True)
    subprocess.run([docker_cli, "push", name], check=True, capture_output=True)
    client = RegistryClient(registry)
    digest = client.manifest_digest(repository, tag)
    return client, ImageRef.parse(f"{registry}/{repository}@{digest}")


def _cosign_verify(pub, ref):
    """The strict cosign double (on PATH via doubles_on_path): checks our layout independently."""
    return subprocess.run(["cosign", "verify", "--key", str(pub), "--insecure-ignore-tlog=true", str(ref)],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def tiny_image(docker_cli, oci_registry, tmp_path_factory):
    return _push_tiny(docker_cli, oci_registry, "signing-test", "t1", tmp_path_factory.mktemp("tiny"))


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
    assert _cosign_verify(pub, ref).returncode == 0
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
    assert _cosign_verify(pub, ref).returncode == 1

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
        smoke = subprocess.run([str(Path(__import__("sys").executable)), "-m", "tests.fixtures.sidecar_smoke",
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


# -- identity policy: digest (cosign) / repository (containers/image matchRepository) / exact -------------

def test_repository_name_normalisation():
    hub = "docker.io/library/busybox"
    for text in ("busybox", "busybox:latest", "docker.io/busybox:1", "index.docker.io/library/busybox",
                 "docker.io/library/busybox@sha256:" + "c" * 64):
        assert repository_name(text) == hub, text
    assert repository_name("127.0.0.1:5000/hailo/runtime:v1") == "127.0.0.1:5000/hailo/runtime"
    assert repository_name("Registry.Example.org/hailo/runtime") == "registry.example.org/hailo/runtime"
    assert repository_name("localhost/x:1") == "localhost/x"
    assert repository_name("quay.io/a/b") != repository_name("quay.io/a/c")
    for bad in ("127.0.0.1:5000/Bad", "reg.example/x y", ""):
        assert repository_name(bad) is None, bad


def test_identity_problem_per_policy():
    ref = ImageRef.parse("reg.example.org/hailo/runtime@sha256:" + "d" * 64)
    tagged = "Reg.Example.org/hailo/runtime:v1.2"  # a tag (containers/image writes it) and a host in another case
    assert identity_problem(tagged, ref, "digest") is None
    assert identity_problem(tagged, ref, "repository") is None
    assert "'exact' needs" in (identity_problem(tagged, ref, "exact") or "")
    assert identity_problem("reg.example.org/hailo/runtime", ref, "exact") is None
    moved = identity_problem("reg.example.org/hailo/other:v1", ref, "repository") or ""
    assert "signed for repository reg.example.org/hailo/other, not reg.example.org/hailo/runtime" in moved
    assert f"{IDENTITY_POLICY_ENV}=digest" in moved
    assert "no docker-reference" in (identity_problem(None, ref, "repository") or "")
    assert identity_problem(None, ref, "digest") is None


def test_identity_policy_setting(monkeypatch, tmp_path):
    from release.verify import VerifyPolicy

    monkeypatch.delenv(IDENTITY_POLICY_ENV, raising=False)
    assert identity_policy(None) == "repository" and VerifyPolicy(tmp_path / "k.pub").identity == "repository"
    monkeypatch.setenv(IDENTITY_POLICY_ENV, "digest")
    assert VerifyPolicy(tmp_path / "k.pub").identity == "digest"
    monkeypatch.setenv(IDENTITY_POLICY_ENV, "loose")
    with pytest.raises(InvalidInput, match="digest, repository, exact"):
        VerifyPolicy(tmp_path / "k.pub")


def _copy_manifest(src, src_repo, dst, dst_repo, reference):
    """What `skopeo copy` / `crane copy` do for one manifest: blobs first, then the same manifest bytes."""
    body, media_type, digest = src.manifest(src_repo, reference)
    doc = json.loads(body)
    for desc in [doc["config"], *doc.get("layers", [])]:
        assert dst.put_blob(dst_repo, src.blob(src_repo, desc["digest"])) == desc["digest"]
    assert dst.put_manifest(dst_repo, reference, body, media_type) == digest


def _put_signature(client, ref, payload, key, config):
    """A one-layer signature manifest at the `.sig` tag, written outside `sign_image`."""
    from cryptography.hazmat.primitives import hashes

    sig = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    layer = {"mediaType": SIMPLESIGNING, "size": len(payload), "digest": client.put_blob(ref.repository, payload),
             "annotations": {SIG_ANNOTATION: sig}}
    config = json.dumps({**config, "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode()
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                           "digest": client.put_blob(ref.repository, config)},
                "layers": [layer]}
    client.put_manifest(ref.repository, signature_tag(ref.digest), json.dumps(manifest).encode(), OCI_MANIFEST)


def _cosign_layout(ref, key):
    """cosign sign: docker-reference is the repository without tag, optional null, cosign's fixed config."""
    return simple_signing_payload(ref), {"architecture": "", "created": "0001-01-01T00:00:00Z",
                                         "history": [{"created": "0001-01-01T00:00:00Z"}], "os": "", "config": {}}


def _containers_image_layout(ref, key):
    """containers/image (podman/skopeo push --sign-by-sigstore-private-key with use-sigstore-attachments):
    docker-reference is the pushed reference, tag included; Go marshals the keys sorted; optional names
    the creator and a timestamp; the config is an imgspec Image with only its rootfs."""
    payload = json.dumps({"critical": {"identity": {"docker-reference": f"{ref.name}:v1.2"},
                                       "image": {"docker-manifest-digest": ref.digest},
                                       "type": "cosign container image signature"},
                          "optional": {"creator": "containers/image 5.36.1", "timestamp": 1764850000}},
                         separators=(",", ":")).encode()
    return payload, {"architecture": "", "os": "", "config": {}}


@pytest.mark.docker
@pytest.mark.parametrize("layout", [_cosign_layout, _containers_image_layout], ids=["cosign", "containers-image"])
def test_identity_policies_with_relocated_repository_and_tag(layout, docker_cli, oci_registry, tmp_path,
                                                              doubles_on_path):
    from cryptography.hazmat.primitives import serialization

    repo = f"sigid-{layout.__name__.strip('_').split('_')[0]}"
    client, ref = _push_tiny(docker_cli, oci_registry, repo, "v1.2", tmp_path / "ctx")
    key = ec.generate_private_key(ec.SECP256R1())
    pub = tmp_path / "cosign.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    payload, config = layout(ref, key)
    _put_signature(client, ref, payload, key, config)
    has_tag = b":v1.2" in payload

    # In place: digest and repository accept; exact only when the payload carries no tag.
    assert verify_image(client, ref, key.public_key(), "digest").signed_reference.startswith(ref.name)
    verify_image(client, ref, key.public_key(), "repository")
    if has_tag:
        with pytest.raises(IntegrityError, match="'exact' needs") as err:
            verify_image(client, ref, key.public_key(), "exact")
        assert "another repository" not in str(err.value)
    else:
        verify_image(client, ref, key.public_key(), "exact")
    assert _cosign_verify(pub, ref).returncode == 0

    # Relocated: the image and its signature copied to another registry name and repository, as a mirror does
    # (the same docker-registry, addressed as localhost: a different registry host to every client).
    mirror_registry = oci_registry.replace("127.0.0.1", "localhost")
    mirror, moved = RegistryClient(mirror_registry), ImageRef(mirror_registry, f"mirror/{repo}", digest=ref.digest)
    _copy_manifest(client, ref.repository, mirror, moved.repository, ref.digest)
    _copy_manifest(client, ref.repository, mirror, moved.repository, signature_tag(ref.digest))
    verify_image(mirror, moved, key.public_key(), "digest")
    assert _cosign_verify(pub, moved).returncode == 0  # cosign itself checks the digest only
    with pytest.raises(IntegrityError, match=f"signed for repository {ref.name}, not {moved.name}"):
        verify_image(mirror, moved, key.public_key(), "repository")
    with pytest.raises(IntegrityError, match="'exact' needs"):
        verify_image(mirror, moved, key.public_key(), "exact")
    # The digest always binds: a validly signed payload for another digest is refused under every policy.
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_image(mirror, moved, ec.generate_private_key(ec.SECP256R1()).public_key(), "digest")


@pytest.mark.docker
def test_tag_reference_is_sign_by_digest_not_not_found(tiny_image):
    client, ref = tiny_image
    tagged = ImageRef.parse(f"{ref.name}:t1")  # the tag exists in the registry
    key = ec.generate_private_key(ec.SECP256R1())
    for call in (lambda: sign_image(client, tagged, key), lambda: KeySigner(client, key).sign(tagged),
                 lambda: CosignCliSigner(Path("cosign.key")).sign(tagged),
                 lambda: verify_image(client, tagged, key.public_key())):
        with pytest.raises(InvalidInput, match="by digest") as err:
            call()
        assert "not found" not in str(err.value)


COSIGN_KEY = DATA / "cosign-test-sigstore-ec.key"  # cosign's own test key (pkg/cosign/keys_test.go), password "hello"


@pytest.mark.docker
def test_cosign_binary_used_when_present_behind_the_same_interface(docker_cli, oci_registry, tmp_path,
                                                                    doubles_on_path, monkeypatch):
    from release.cosign_keys import load_cosign_private_key
    from release.keys import generate_dev_keypair, public_pem

    client, ref = _push_tiny(docker_cli, oci_registry, "cosign-cli-test", "v1", tmp_path / "ctx")
    key_file = tmp_path / "cosign.key"
    key_file.write_bytes(COSIGN_KEY.read_bytes())
    public = load_cosign_private_key(key_file, b"hello").public_key()
    pub = tmp_path / "cosign.pub"
    pub.write_bytes(public_pem(public))
    monkeypatch.setenv("COSIGN_PASSWORD", "hello")

    signer = image_signer(client, key_file)  # cosign on PATH (the strict double) + a cosign key
    assert isinstance(signer, CosignCliSigner)
    assert signer.sign(ref) == f"{ref.name}:{signature_tag(ref.digest)}"
    verify_image(client, ref, public, "exact")  # cosign's layout, read by our verifier
    assert _cosign_verify(pub, ref).returncode == 0

    monkeypatch.setenv("COSIGN_PASSWORD", "wrong")
    from release.errors import StepFailed

    with pytest.raises(StepFailed, match="decryption failed"):
        image_signer(client, key_file).sign(ref)

    # Without cosign on PATH, the same key signs through our own signer (COSIGN_PASSWORD read here).
    monkeypatch.setenv("COSIGN_PASSWORD", "hello")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    signer = image_signer(client, key_file)
    assert isinstance(signer, KeySigner)
    signer.sign(ref)
    layers = json.loads(client.manifest(ref.repository, signature_tag(ref.digest))[0])["layers"]
    assert len(layers) == 2
    verify_image(client, ref, public)

    # A PEM key is ours even where cosign exists (cosign reads only its own key format).
    priv, _ = generate_dev_keypair(tmp_path / "keys")
    assert isinstance(image_signer(client, priv, cosign=str(doubles_on_path / "cosign")), KeySigner)
