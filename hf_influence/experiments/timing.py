"""`PhaseTimer`: wall-clock seconds per named phase of a long job, for ``timing.json`` and a printed table."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class PhaseTimer:
    """Accumulates wall-clock seconds per named phase (the same name twice adds up).

    Example:
        ```python
        >>> timer = PhaseTimer()
        >>> with timer.phase("scoring"):
        ...     pass
        >>> sorted(timer.to_dict()["phases"])
        ['scoring']
        ```
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - begin

    __call__ = phase

    def to_dict(self) -> dict[str, Any]:
        return {"total_seconds": time.perf_counter() - self.start, "phases": dict(self.phases)}

    def table(self) -> str:
        """One line per phase: name and seconds."""
        width = max((len(k) for k in self.phases), default=5)
        return "\n".join(f"{name:<{width}} {seconds:>9.1f}" for name, seconds in self.phases.items())
