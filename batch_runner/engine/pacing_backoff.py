"""One jittered exponential backoff, for every wait that doubles after each failure."""

from __future__ import annotations

import random


def backoff_s(attempt: int, base_s: float, cap_s: float) -> float:
    """The full wait before attempt `attempt` (1, 2, 3 ...): base, 2 × base, 4 × base ... up to cap."""
    return min(cap_s, base_s * 2 ** max(0, attempt - 1))


def jittered_backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """backoff_s, drawn from its upper half: clients that failed together do not come back in
    step, and none waits less than half the backoff."""
    return backoff_s(attempt, base_s, cap_s) * rng.uniform(0.5, 1.0)
