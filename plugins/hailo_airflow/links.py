"""Extra links on the task pages: the release manifest and the gate report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey


class _XComUriLink(BaseOperatorLink):
    key: ClassVar[str]

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        value = XCom.get_value(ti_key=ti_key, key=self.key)
        return str(value) if value else ""


class ManifestLink(_XComUriLink):
    name = "Release manifest"
    key = "manifest_uri"


class GateReportLink(_XComUriLink):
    name = "Gate report"
    key = "gate_report_uri"


class RolloutReportLink(_XComUriLink):
    name = "Rollout report"
    key = "rollout_report_uri"
