"""Progress display for long steps: one line per step on stderr, with elapsed time."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled

    def say(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.say(f"→ {name} ...")
        t0 = time.monotonic()
        try:
            yield
        except BaseException:
            self.say(f"✗ {name} failed after {time.monotonic() - t0:.1f}s")
            raise
        self.say(f"✓ {name} ({time.monotonic() - t0:.1f}s)")


# -- phases of a long step, for a watcher in another process ------------------------------------
# The main job (hailo_airflow.demo) runs the DAG in a child process whose output goes to a log file,
# and prints a line for a long step at least every 10 s. The step says what it is doing by writing
# one line to the file named in HAILO_PROGRESS_FILE; without the variable (Celery workers, the CLI)
# reporting is a no-op. A file, not a pipe: make_base_image.sh (a shell script run by the image step)
# writes the same file, and a writer never blocks on a watcher that stopped reading.
PHASE_FILE_ENV = "HAILO_PROGRESS_FILE"


def report_phase(phase: str) -> None:
    """Tell a watching main job what the current step is doing now (one line, replaced each time)."""
    import os

    target = os.environ.get(PHASE_FILE_ENV)
    if not target:
        return
    tmp = f"{target}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(phase.replace("\n", " ").strip()[:200] + "\n")
        os.replace(tmp, target)  # atomic: the watcher never reads half a line
    except OSError:
        pass  # progress is advisory; a full disk must not fail a release step


def read_phase(path: str, since: float) -> str | None:
    """The phase last written to ``path`` at or after ``since`` (a time.time() value), else None."""
    import os

    try:
        if os.stat(path).st_mtime < since:
            return None
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None
