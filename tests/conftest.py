"""Root conftest: loads every fixture module under tests/fixtures/ as a pytest plugin.

Service fixtures (sshd, OCI registry, Docker engine, GCS emulator, Airflow) each live in
their own module there, so adding one never touches this file.
"""

from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}"
    for p in (Path(__file__).parent / "fixtures").glob("*.py")
    if not p.stem.startswith("_")
)
