"""The buildx branch of build_and_push, end to end through a strict buildx double that builds and
pushes for real (tests/doubles/bin/docker-buildx-double), so the metadata-file digest path is
exercised against a real engine and a real registry."""

import subprocess
from pathlib import Path

import pytest

from release.errors import RefusedForProduction
from release.image_build import build_and_push, buildx_argv
from release.registry import RegistryClient

DOUBLE = Path(__file__).resolve().parents[1] / "doubles" / "bin" / "docker-buildx-double"


def _tiny_context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY f /f\n")
    (ctx / "f").write_bytes(b"buildx double probe\n")
    return ctx


def test_double_rejects_grammar_the_release_build_never_uses(tmp_path):
    good = buildx_argv(str(DOUBLE), "127.0.0.1:5/x:t", tmp_path, tmp_path / "Dockerfile", tmp_path / "m.json")
    for bad in (
        [a for a in good if a != "--provenance=true"],
        [a for a in good if a != "--push"],
        [*good[:-1], "--load", good[-1]],
        [*good, "extra-context"],
        [a.replace("linux/arm64", "linux/arm64;rm") for a in good],
    ):
        res = subprocess.run(bad, capture_output=True, text=True)
        assert res.returncode == 1 and "ERROR" in res.stderr, bad


@pytest.mark.docker
def test_buildx_path_digest_from_metadata_matches_registry(docker_cli, oci_registry, tmp_path):
    ctx = _tiny_context(tmp_path)
    built = build_and_push(docker=str(DOUBLE), registry=oci_registry, repository="buildx-probe", tag="dev1",
                           context=ctx, dockerfile=ctx / "Dockerfile", work_dir=tmp_path / "w", production=False,
                           cache_dir=tmp_path / "cache", platform="linux/amd64")
    assert built.builder == "buildx"
    assert built.digest == RegistryClient(oci_registry).manifest_digest("buildx-probe", "dev1")
    assert (tmp_path / "w" / "buildx-metadata.json").is_file()
    with pytest.raises(RefusedForProduction, match="linux/arm64"):
        build_and_push(docker=str(DOUBLE), registry=oci_registry, repository="buildx-probe", tag="prod1",
                       context=ctx, dockerfile=ctx / "Dockerfile", work_dir=tmp_path / "w", production=True,
                       cache_dir=tmp_path / "cache", platform="linux/amd64")
