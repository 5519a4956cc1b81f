"""Strict grammars for everything that reaches a path, an image reference or a remote command.

A release tag, continuity ID or device name that passes these checks contains no shell
metacharacter, no path separator and no ``..``; every other module takes the typed values
below, never raw strings, so unvalidated text cannot reach ``ssh``, ``docker`` or the filesystem.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import ClassVar

from release.errors import InvalidIdentifier

# Release tags also become OCI tags (max 128 chars, [A-Za-z0-9_.-], not starting with . or -).
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DEVICE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_CONTINUITY_RE = re.compile(r"^ADR-(?P<number>\d{4})-(?P<slug>[a-z0-9]+(?:-[a-z0-9]+)*)-(?P<date>\d{4}-\d{2}-\d{2})$")
_CONTINUITY_SEARCH_RE = re.compile(r"ADR-\d{4}-[a-z0-9]+(?:-[a-z0-9]+)*-\d{4}-\d{2}-\d{2}")
CONTINUITY_FORM = "ADR-<4 digits>-<lowercase-slug>-<YYYY-MM-DD>, e.g. ADR-0007-hailo-docker-2025-08-31"


def _describe_bad_chars(value: str, allowed: re.Pattern[str]) -> str:
    bad = sorted({ch for ch in value if not allowed.fullmatch(ch)})
    return ", ".join(repr(ch) for ch in bad)


@dataclass(frozen=True, slots=True)
class ReleaseTag:
    """A release tag such as ``v1.4.0`` or ``2026.11.22-rc1``; also valid as an OCI tag."""

    value: str
    _ALLOWED_CHAR: ClassVar[re.Pattern[str]] = re.compile(r"[A-Za-z0-9_.-]")

    def __post_init__(self) -> None:
        v = self.value
        if not isinstance(v, str) or not v:
            raise InvalidIdentifier("release tag is empty")
        if len(v) > 128:
            raise InvalidIdentifier(f"release tag is {len(v)} characters long; at most 128 are allowed")
        bad = _describe_bad_chars(v, self._ALLOWED_CHAR)
        if bad:
            raise InvalidIdentifier(
                f"release tag {v!r} contains forbidden characters {bad}; allowed are letters, digits, '_', '.', '-'"
            )
        if ".." in v:
            raise InvalidIdentifier(f"release tag {v!r} contains '..'")
        if not _TAG_RE.fullmatch(v):
            raise InvalidIdentifier(f"release tag {v!r} must start with a letter or digit")
        if v in {"current", "previous", "latest"}:
            raise InvalidIdentifier(f"release tag {v!r} is a reserved pointer name")

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class DeviceName:
    """A target device name (lowercase hostname label), e.g. ``pi-lab-01`` or ``local``."""

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or not _DEVICE_RE.fullmatch(self.value):
            raise InvalidIdentifier(
                f"device name {self.value!r} is invalid; expected a lowercase hostname label "
                "([a-z0-9-], 1-63 characters, starting with a letter or digit)"
            )

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class ContinuityId:
    """An architecture-decision continuity ID: ``ADR-0007-hailo-docker-2025-08-31``."""

    value: str
    number: int
    slug: str
    date: dt.date

    @classmethod
    def parse(cls, text: str) -> ContinuityId:
        if not isinstance(text, str):
            raise InvalidIdentifier(f"continuity ID must be a string, got {type(text).__name__}")
        m = _CONTINUITY_RE.fullmatch(text)
        if m is None:
            raise InvalidIdentifier(f"continuity ID {text!r} is malformed; expected {CONTINUITY_FORM}")
        try:
            date = dt.date.fromisoformat(m["date"])
        except ValueError:
            raise InvalidIdentifier(
                f"continuity ID {text!r} has date {m['date']!r}, which is not a real calendar date"
            ) from None
        number = int(m["number"])
        if number == 0:
            raise InvalidIdentifier(f"continuity ID {text!r}: ADR numbers start at 0001")
        return cls(value=text, number=number, slug=m["slug"], date=date)

    @classmethod
    def find_in(cls, text: str) -> ContinuityId:
        """Find the continuity ID inside free text such as a pull-request title."""
        found = _CONTINUITY_SEARCH_RE.findall(text or "")
        if not found:
            raise InvalidIdentifier(f"no continuity ID found in {text!r}; expected {CONTINUITY_FORM}")
        if len(set(found)) > 1:
            raise InvalidIdentifier(f"several continuity IDs found in {text!r}: {sorted(set(found))}")
        return cls.parse(found[0])

    def run_id(self, suffix: str) -> str:
        """An Airflow run id component: ``<continuity-id>__<suffix>`` (suffix validated like a tag)."""
        return f"{self.value}__{ReleaseTag(suffix).value}"

    def __str__(self) -> str:
        return self.value
