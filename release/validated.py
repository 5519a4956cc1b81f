"""Pydantic field types that run the identifier grammars of `release.identifiers`.

One place for "this string field is a release tag / device name / continuity ID", so every
model validates them the same way (identifiers.py itself stays free of pydantic: the PR-title
check runs on a bare python3).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from release.identifiers import ContinuityId, DeviceName, ReleaseTag

TagStr = Annotated[str, AfterValidator(lambda v: ReleaseTag(v).value)]
DeviceStr = Annotated[str, AfterValidator(lambda v: DeviceName(v).value)]
ContinuityIdStr = Annotated[str, AfterValidator(lambda v: ContinuityId.parse(v).value)]
