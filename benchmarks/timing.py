"""Timing contenders side by side: one call of each per round (A B C A B C ...), so a busy machine slows all alike."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def alternate(contenders: dict[str, Callable[[], object]], repeats: int, *, warm_up: bool = True,
              sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds of each contender's calls over ``repeats`` rounds (after one untimed call each, unless ``warm_up`` is
    False); ``sync`` (e.g. ``torch.cuda.synchronize``) runs before and after every timed call."""
    if warm_up:
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            if sync:
                sync()
            t = time.perf_counter()
            fn()
            if sync:
                sync()
            times[name].append(time.perf_counter() - t)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in times.items()}
