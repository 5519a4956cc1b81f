"""A small OCI distribution (registry API v2) client: manifests, blobs, digests, platforms.

Plain HTTP for loopback registries (as Docker itself treats 127.0.0.0/8), HTTPS otherwise.
Every digest the registry reports is checked against the bytes it sent.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import requests

from release.errors import ArtifactNotFound, IntegrityError, InvalidIdentifier, StepFailed

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))

_REGISTRY = re.compile(r"^(localhost|[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)(:[0-9]{1,5})?$")
_REPO = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class ImageRef:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        if not isinstance(text, str) or any(c.isspace() for c in text):
            raise InvalidIdentifier(f"image reference {text!r} is malformed")
        rest, at, digest_text = text.partition("@")
        digest = digest_text if at else None
        registry, _, path = rest.partition("/")
        if not path or not _REGISTRY.fullmatch(registry) or not ("." in registry or ":" in registry or registry == "localhost"):
            raise InvalidIdentifier(f"image reference {text!r} must start with a registry host (host[:port]/repo)")
        tag = None
        if ":" in path.rsplit("/", 1)[-1]:
            path, tag = path.rsplit(":", 1)
        if not _REPO.fullmatch(path):
            raise InvalidIdentifier(f"image reference {text!r}: repository {path!r} is invalid")
        if tag is not None and not _TAG.fullmatch(tag):
            raise InvalidIdentifier(f"image reference {text!r}: tag {tag!r} is invalid")
        if digest is not None and not _DIGEST.fullmatch(digest):
            raise InvalidIdentifier(f"image reference {text!r}: digest must be sha256:<64 hex>")
        return cls(registry, path, tag, digest)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryClient:
    def __init__(self, registry: str, timeout: float = 30.0) -> None:
        if not _REGISTRY.fullmatch(registry):
            raise InvalidIdentifier(f"registry {registry!r} is not host[:port]")
        host = registry.split(":")[0]
        scheme = "http" if host in ("localhost", "127.0.0.1") or host.startswith("127.") else "https"
        self.registry = registry
        self.base = f"{scheme}://{registry}/v2"
        self.timeout = timeout
        self.session = requests.Session()

    def _req(self, method: str, url: str, **kw: Any) -> requests.Response:
        try:
            return self.session.request(method, url, timeout=self.timeout, **kw)
        except requests.RequestException as exc:
            raise StepFailed(f"registry {self.registry}: {method} failed: {exc}") from None

    def manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest by tag or digest; the digest is verified."""
        r = self._req("GET", f"{self.base}/{repository}/manifests/{reference}", headers={"Accept": ACCEPT})
        if r.status_code == 404:
            raise ArtifactNotFound(f"{self.registry}/{repository}:{reference} not found in the registry")
        if r.status_code != 200:
            raise StepFailed(f"registry GET manifest {repository}:{reference}: HTTP {r.status_code} {r.text[:200]}")
        digest = sha256_digest(r.content)
        reported = r.headers.get("Docker-Content-Digest")
        if reported and reported != digest:
            raise IntegrityError(f"registry reported digest {reported} for a manifest whose bytes hash to {digest}")
        if reference.startswith("sha256:") and reference != digest:
            raise IntegrityError(f"manifest fetched by digest {reference} hashes to {digest}")
        return r.content, r.headers.get("Content-Type", "").split(";")[0], digest

    def manifest_digest(self, repository: str, reference: str) -> str:
        return self.manifest(repository, reference)[2]

    def blob(self, repository: str, digest: str) -> bytes:
        r = self._req("GET", f"{self.base}/{repository}/blobs/{digest}")
        if r.status_code == 404:
            raise ArtifactNotFound(f"blob {digest} not found in {self.registry}/{repository}")
        if r.status_code != 200:
            raise StepFailed(f"registry GET blob {digest}: HTTP {r.status_code}")
        if sha256_digest(r.content) != digest:
            raise IntegrityError(f"blob {digest} from {self.registry}/{repository} does not match its digest")
        return r.content

    def put_blob(self, repository: str, data: bytes) -> str:
        digest = sha256_digest(data)
        head = self._req("HEAD", f"{self.base}/{repository}/blobs/{digest}")
        if head.status_code == 200:
            return digest
        r = self._req("POST", f"{self.base}/{repository}/blobs/uploads/")
        if r.status_code != 202 or "Location" not in r.headers:
            raise StepFailed(f"registry blob upload start: HTTP {r.status_code} {r.text[:200]}")
        location = r.headers["Location"]
        if location.startswith("/"):
            location = self.base.rsplit("/v2", 1)[0] + location
        sep = "&" if "?" in location else "?"
        r = self._req("PUT", f"{location}{sep}digest={digest}", data=data,
                      headers={"Content-Type": "application/octet-stream"})
        if r.status_code != 201:
            raise StepFailed(f"registry blob upload: HTTP {r.status_code} {r.text[:200]}")
        return digest

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        r = self._req("PUT", f"{self.base}/{repository}/manifests/{reference}", data=body,
                      headers={"Content-Type": media_type})
        if r.status_code != 201:
            raise StepFailed(f"registry PUT manifest {repository}:{reference}: HTTP {r.status_code} {r.text[:300]}")
        return sha256_digest(body)

    def platforms(self, repository: str, reference: str) -> set[str]:
        """os/arch of an image (from its config blob) or of every entry of an index."""
        body, media_type, _ = self.manifest(repository, reference)
        doc = json.loads(body)
        media_type = media_type or doc.get("mediaType", "")
        if media_type in (OCI_INDEX, DOCKER_LIST) or "manifests" in doc:
            out = set()
            for entry in doc.get("manifests", []):
                p = entry.get("platform") or {}
                if p.get("os") and p.get("architecture") and p.get("os") != "unknown":
                    out.add(f"{p['os']}/{p['architecture']}")
            return out
        config = json.loads(self.blob(repository, doc["config"]["digest"]))
        if not config.get("os") or not config.get("architecture"):
            return set()
        return {f"{config['os']}/{config['architecture']}"}
