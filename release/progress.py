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
