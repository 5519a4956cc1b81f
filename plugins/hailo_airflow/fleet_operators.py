"""The fleet DAG's one operator worth being a class: the rollout's last word, with the report's link."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from hailo_airflow.links import RolloutReportLink

if TYPE_CHECKING:
    from airflow.sdk import Context


class RolloutReportOperator(BaseOperator):
    """Record the rollout complete when all its waves are done and write its report (JSON + per-device
    latency PNG beside the release in the store); the task page links the report ("Rollout report")."""

    template_fields: Sequence[str] = ("rollout",)
    operator_extra_links = (RolloutReportLink(),)

    def __init__(self, *, rollout: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rollout = rollout

    def execute(self, context: Context) -> dict[str, Any]:
        from hailo_airflow.fleet_steps import finish

        out = finish(self.rollout, context)
        context["ti"].xcom_push(key=RolloutReportLink.key, value=out["report_uri"])
        return out
