"""Strict grammars for everything that reaches a path, an image reference or a remote command.

A release tag, continuity ID or device name that passes these checks contains no shell
metacharacter, no path separator and no ``..``; every other module takes the typed values
below, never raw strings, so unvalidated text cannot reach ``ssh``, ``docker`` or the filesystem.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

from release.errors import InvalidIdentifier

# Every grammar below is ASCII-only: explicit [0-9] / [a-z] classes (never \d or \w, which accept
# Arabic-Indic or full-width digits) and re.ASCII. fullmatch() everywhere: `$` alone would accept a
# trailing newline.

# Length caps. Airflow run IDs are at most 250 characters; the pipeline also records
# "airflow:<run id>" in ReleaseRequest.triggered_by (at most 200). With these caps the longest run
# ID this module can derive is CONTINUITY_ID_MAX_LEN + 2 + RUN_SUFFIX_MAX_LEN = 166 characters.
AIRFLOW_RUN_ID_MAX_LEN = 250
SLUG_MAX_LEN = 80
CONTINUITY_ID_MAX_LEN = len("ADR-0000-") + SLUG_MAX_LEN + len("-2025-01-01")  # 100
RUN_SUFFIX_MAX_LEN = 64
RUN_ID_MAX_LEN = CONTINUITY_ID_MAX_LEN + len("__") + RUN_SUFFIX_MAX_LEN  # 166
TAG_MAX_LEN = 128  # OCI tag limit
FIND_IN_MAX_TEXT = 4096  # a PR title is at most 256 characters; refuse novels before searching them

# Pattern bodies (no anchors): the only place each grammar is written. The Python checks below,
# the pydantic types of release.validated and every JSON schema (manifest, request, DAG params)
# are built from these. The device agent (release/device_checks.py, standard library only) keeps
# a copy of TAG_BODY and RESERVED_TAGS; tests/release/test_schemas.py fails if the copy drifts.
TAG_BODY = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
DEVICE_BODY = r"[a-z0-9][a-z0-9-]{0,62}"
CONTINUITY_BODY = r"ADR-[0-9]{4}-[a-z0-9]+(?:-[a-z0-9]+)*-[0-9]{4}-[0-9]{2}-[0-9]{2}"
CONFIG_VERSION_BODY = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
CHANNEL_BODY = r"[a-z][a-z0-9-]{0,31}"
# 'sample' (the built-in model), an absolute .onnx path, or gs://BUCKET/PATH.onnx; '..' is refused
# separately (ONNX_LOCATION_FORBIDDEN), since a regex body cannot say "nowhere in the string" simply.
ONNX_LOCATION_BODY = r"sample|gs://[a-z0-9][a-z0-9._-]{1,220}/[A-Za-z0-9_./-]+\.onnx|/[A-Za-z0-9_./-]+\.onnx"
ONNX_LOCATION_FORBIDDEN = ".."
SAMPLE_MODEL = "sample"
# Names the store and the device agent use for pointers: never a release tag. The device agent
# refuses all five; ReleaseTag refused only the first three before, so a tag "committed" passed
# here and failed on the device.
RESERVED_TAGS = frozenset({"current", "previous", "latest", "committed", "last-known-good"})
ROLLBACK_PREVIOUS = "previous"  # the rollback target meaning "the committed release before last-known-good"
HwArch = Literal["hailo8", "hailo8l", "hailo8r"]
HW_ARCHES: tuple[str, ...] = get_args(HwArch)

# Release tags also become OCI tags (max 128 chars, [A-Za-z0-9_.-], not starting with . or -).
_TAG_RE = re.compile(TAG_BODY, re.ASCII)
_DEVICE_RE = re.compile(DEVICE_BODY, re.ASCII)
_CONTINUITY_RE = re.compile(
    r"ADR-(?P<number>[0-9]{4})-(?P<slug>[a-z0-9]+(?:-[a-z0-9]+)*)-(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})", re.ASCII
)
# In free text the ID must stand alone: no letter, digit, '_' or '-' (of any script) directly
# before or after it, so "xADR-0007-a-2025-08-311" holds no ID. Deliberately not re.ASCII, so
# that a Unicode letter next to the ID is not a boundary either.
_CONTINUITY_SEARCH_RE = re.compile(r"(?<![\w-])" + CONTINUITY_BODY + r"(?![\w-])")
CONTINUITY_FORM = "ADR-<4 digits>-<lowercase-slug>-<YYYY-MM-DD>, e.g. ADR-0007-hailo-docker-2025-08-31"


def json_schema_pattern(body: str) -> str:
    """An ECMA-262 ``pattern`` with ``\\A…\\z`` semantics for a JSON schema.

    JSON-schema validators run ``pattern`` as a search: ``^…$`` in Python's ``re`` (which
    ``jsonschema``, and so Airflow's Params, use) also matches before a trailing newline. The
    negative look-ahead after ``$`` refuses that in both Python and ECMA regex engines.
    """
    return rf"^(?:{body})$(?!\n)"


def anchor_schema_patterns(schema: Any) -> Any:
    """Return ``schema`` with every anchored ``pattern`` (``^…$``) rewritten by json_schema_pattern."""
    if isinstance(schema, dict):
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if (key == "pattern" and isinstance(value, str) and value.startswith("^") and value.endswith("$")
                    and not value.endswith("\\$")):
                out[key] = json_schema_pattern(value[1:-1])
            else:
                out[key] = anchor_schema_patterns(value)
        return out
    if isinstance(schema, list):
        return [anchor_schema_patterns(v) for v in schema]
    return schema


def _describe_bad_chars(value: str, allowed: re.Pattern[str]) -> str:
    bad = sorted({ch for ch in value if not allowed.fullmatch(ch)})
    return ", ".join(repr(ch) for ch in bad)


@dataclass(frozen=True, slots=True)
class ReleaseTag:
    """A release tag such as ``v1.4.0`` or ``2026.11.22-rc1``; also valid as an OCI tag."""

    value: str
    _ALLOWED_CHAR: ClassVar[re.Pattern[str]] = re.compile(r"[A-Za-z0-9_.-]", re.ASCII)

    def __post_init__(self) -> None:
        v = self.value
        if not isinstance(v, str) or not v:
            raise InvalidIdentifier("release tag is empty")
        if len(v) > TAG_MAX_LEN:
            raise InvalidIdentifier(f"release tag is {len(v)} characters long; at most {TAG_MAX_LEN} are allowed")
        bad = _describe_bad_chars(v, self._ALLOWED_CHAR)
        if bad:
            raise InvalidIdentifier(
                f"release tag {v!r} contains forbidden characters {bad}; allowed are letters, digits, '_', '.', '-'"
            )
        if ".." in v:
            raise InvalidIdentifier(f"release tag {v!r} contains '..'")
        if not _TAG_RE.fullmatch(v):
            raise InvalidIdentifier(f"release tag {v!r} must start with a letter or digit")
        if v in RESERVED_TAGS:
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
        if len(text) > CONTINUITY_ID_MAX_LEN:
            raise InvalidIdentifier(
                f"continuity ID is {len(text)} characters long; at most {CONTINUITY_ID_MAX_LEN} are allowed "
                f"(slug at most {SLUG_MAX_LEN}), so that derived Airflow run IDs stay within {AIRFLOW_RUN_ID_MAX_LEN}"
            )
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
        text = text or ""
        if len(text) > FIND_IN_MAX_TEXT:
            raise InvalidIdentifier(f"text to search is {len(text)} characters long; at most {FIND_IN_MAX_TEXT}")
        found = _CONTINUITY_SEARCH_RE.findall(text)
        if not found:
            raise InvalidIdentifier(f"no continuity ID found in {text!r}; expected {CONTINUITY_FORM}")
        if len(set(found)) > 1:
            raise InvalidIdentifier(f"several continuity IDs found in {text!r}: {sorted(set(found))}")
        return cls.parse(found[0])

    def run_id(self, suffix: str) -> str:
        """An Airflow run id: ``<continuity-id>__<suffix>`` (suffix validated like a tag, at most
        RUN_SUFFIX_MAX_LEN characters), so the result is at most RUN_ID_MAX_LEN characters."""
        tag = ReleaseTag(suffix).value
        if len(tag) > RUN_SUFFIX_MAX_LEN:
            raise InvalidIdentifier(
                f"run ID suffix is {len(tag)} characters long; at most {RUN_SUFFIX_MAX_LEN} are allowed"
            )
        return f"{self.value}__{tag}"

    def __str__(self) -> str:
        return self.value
