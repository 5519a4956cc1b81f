"""Registers what needs registration: the extra links (the operators themselves are plain imports)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from hailo_airflow.links import GateReportLink, ManifestLink, RolloutReportLink


class HailoPipelinePlugin(AirflowPlugin):
    name = "hailo_pipeline"
    operator_extra_links = [ManifestLink(), GateReportLink(), RolloutReportLink()]
