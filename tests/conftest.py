"""Root conftest: loads every fixture module under tests/fixtures/ as a pytest plugin.

Service fixtures (sshd, OCI registry, Docker engine, GCS emulator, Airflow) each live in
their own module there, so adding one never touches this file.

Airflow reads its configuration when first imported, so its home is set here, before any
test module is imported: a throw-away AIRFLOW_HOME (SQLite) per test session, with this
repository's dags/ and plugins/ folders.
"""

import os
import tempfile
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if "HAILO_TEST_AIRFLOW_HOME" not in os.environ:
    os.environ["HAILO_TEST_AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="hailo-airflow-home-")
os.environ["AIRFLOW_HOME"] = os.environ["HAILO_TEST_AIRFLOW_HOME"]
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(_REPO / "plugins")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")

# Modules other fixture modules import (services, testbed) come first, so pytest registers
# them before they are imported as plain modules (and can still rewrite their asserts).
_FIRST = ["tests.fixtures.services", "tests.fixtures.testbed", "tests.fixtures.manifests"]
pytest_plugins = _FIRST + sorted(
    f"tests.fixtures.{p.stem}"
    for p in (Path(__file__).parent / "fixtures").glob("*.py")
    if not p.stem.startswith("_") and f"tests.fixtures.{p.stem}" not in _FIRST
)
