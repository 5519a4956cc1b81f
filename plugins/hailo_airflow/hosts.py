"""Airflow's ``[core] hostname_callable`` for the workers (``hailo_airflow.hosts.worker_hostname``).

A TaskInstance records the hostname of the worker that ran it. Two workers on one host (the
native scale-out stack, scripts/scaleout.sh) would both report the host's FQDN, so each sets
``HAILO_WORKER_HOSTNAME``; on separate hosts leave it unset and the FQDN is used, which is also
where the api-server fetches a running task's log from.
"""

from __future__ import annotations

import socket

from release.config import load_settings


def worker_hostname() -> str:
    return load_settings().worker_hostname or socket.getfqdn()
