"""A minimal GitHub REST client for the trust-boundary commands (release.github_setup): GET with
Link pagination, and the one POST that mints a runner configuration. Standard library only.

The token is passed in by the caller (from the environment, never argv); plain http is accepted
only for a loopback test server.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from release.errors import InvalidInput

DEFAULT_API = "https://api.github.com"
ORG_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})", re.ASCII)


class ApiError(Exception):
    def __init__(self, status: int, path: str, message: str) -> None:
        super().__init__(f"HTTP {status} for {path}: {message}")
        self.status = status


class GitHubApi:
    """A minimal GitHub REST client (GET + Link pagination, and POST)."""

    def __init__(self, base_url: str, token: str | None, *, timeout_s: float = 20.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in {"https", "http"} or not parsed.netloc:
            raise InvalidInput(f"--api-url must be an http(s) URL, got {base_url!r}")
        if parsed.scheme == "http" and parsed.hostname not in {"127.0.0.1", "localhost", "::1"}:
            raise InvalidInput("--api-url may use plain http only for a loopback test server")
        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def _open(self, url: str, body: dict[str, Any] | None = None) -> tuple[Any, str | None]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        req.add_header("Accept", "application/vnd.github+json")
        req.add_header("X-GitHub-Api-Version", "2022-11-28")
        req.add_header("User-Agent", "hailo-release-check-github")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        path = urllib.parse.urlsplit(url).path
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body = json.loads(resp.read().decode("utf-8") or "null")
                return body, resp.headers.get("Link")
        except urllib.error.HTTPError as exc:
            try:
                message = str(json.loads(exc.read().decode("utf-8")).get("message", exc.reason))
            except (ValueError, AttributeError):
                message = str(exc.reason)
            raise ApiError(exc.code, path, message) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ApiError(0, path, f"unreachable: {exc}") from None

    def get(self, path: str) -> Any:
        return self._open(f"{self.base}{path}")[0]

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._open(f"{self.base}{path}", body)[0]

    def get_all(self, path: str, key: str) -> list[Any]:
        """All items of a paginated list endpoint whose body is {"total_count": n, key: [...]}."""
        sep = "&" if "?" in path else "?"
        url: str | None = f"{self.base}{path}{sep}per_page=100"
        items: list[Any] = []
        pages = 0
        while url and pages < 50:
            body, link = self._open(url)
            items.extend(body.get(key, []) if isinstance(body, dict) else body)
            url = _next_link(link, self.base)
            pages += 1
        return items


def _next_link(link: str | None, base: str) -> str | None:
    for part in (link or "").split(","):
        m = re.search(r'<([^>]+)>;\s*rel="next"', part)
        if m and m.group(1).startswith(base):
            return m.group(1)
    return None


def path_segment(segment: str) -> str:
    """``segment`` quoted for one segment of a REST path (no ``/`` passes through)."""
    return urllib.parse.quote(segment, safe="")
