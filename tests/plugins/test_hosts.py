"""The workers' hostname callable: HAILO_WORKER_HOSTNAME (two workers on one host) or the FQDN, and a
clear error for a name Airflow could not use."""

from __future__ import annotations

import socket

import pytest

from release.errors import ConfigError

pytestmark = pytest.mark.airflow  # imports the Airflow plugin package


def test_worker_hostname_from_the_setting_or_the_fqdn(monkeypatch):
    from hailo_airflow.hosts import worker_hostname

    monkeypatch.setenv("HAILO_WORKER_HOSTNAME", "edge.build-01")
    assert worker_hostname() == "edge.build-01"
    monkeypatch.setenv("HAILO_WORKER_HOSTNAME", "")  # empty counts as unset
    assert worker_hostname() == socket.getfqdn()
    monkeypatch.setenv("HAILO_WORKER_HOSTNAME", "edge; reboot")
    with pytest.raises(ConfigError, match="HAILO_WORKER_HOSTNAME"):
        worker_hostname()
