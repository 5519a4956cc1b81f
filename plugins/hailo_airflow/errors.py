"""Map errors from the release library onto Airflow's failure semantics, message intact.

Bad input and integrity failures will not get better on retry, so they fail the task for good
(AirflowFailException); everything else is an ordinary failure that the task's retry policy
may retry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from release.errors import ArtifactExists, IntegrityError, InvalidInput, RefusedForProduction, ReleaseError

_NO_RETRY = (InvalidInput, IntegrityError, RefusedForProduction, ArtifactExists)


@contextlib.contextmanager
def release_errors_as_airflow_failures() -> Iterator[None]:
    try:
        yield
    except _NO_RETRY as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
    except ReleaseError as exc:
        raise AirflowException(f"{type(exc).__name__}: {exc}") from exc
