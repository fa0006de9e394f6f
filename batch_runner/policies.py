"""Pacing and retry policies shared by all workers, composed from small tenacity pieces.

- Cooldown: one pause for the whole pool after a 429, until the time the server named.
- RpmLimiter: spaces request starts so a published limit (e.g. 50 RPM) is met, not hit.
- Budget: reserves the price of an attempt before it is sent, so --max-cost holds even
  counting the requests in flight.
- retrying(): tenacity policy: retry transient errors and 429s, stop after N real failures
  (429s do not count) or when the run is stopping, wait with full jitter.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_any,
    stop_when_event_set,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from .client import RateLimited, TransientError


class Stopping(Exception):
    """The run is stopping: do not send anything new."""


class Cooldown:
    """A shared 'nobody sends before T' gate, set by whichever worker was told 429."""

    def __init__(
        self, stop: threading.Event, base_s: float = 1.0, cap_s: float = 60.0, rng: random.Random | None = None
    ):
        self._stop = stop
        self._lock = threading.Lock()
        self._until = 0.0
        self._streak = 0  # 429s since the last success, for backoff when the server gives no time
        self._base, self._cap = base_s, cap_s
        self._rng = rng or random.Random()
        self.pauses = 0

    def rate_limited(self, retry_at: float | None) -> float:
        """Record a 429; returns the monotonic time until which everyone waits."""
        now = time.monotonic()
        with self._lock:
            self._streak += 1
            if retry_at is None:
                # Full jitter: spreads the pool's retries instead of bunching them.
                retry_at = now + self._rng.uniform(0, min(self._cap, self._base * 2 ** (self._streak - 1)))
            if retry_at > self._until:
                self._until = min(retry_at, now + self._cap * 5)
                self.pauses += 1
            return self._until

    def succeeded(self) -> None:
        with self._lock:
            self._streak = 0

    def wait(self) -> None:
        while True:
            with self._lock:
                delay = self._until - time.monotonic()
            if delay <= 0:
                return
            if self._stop.wait(delay):
                raise Stopping()


class RpmLimiter:
    """Hands out send slots spaced 60/rpm seconds apart to all workers."""

    def __init__(self, rpm: float | None, stop: threading.Event, margin: float = 1.01):
        # A hair slower than the limit, so that clock noise never puts rpm+1 requests into
        # the server's rolling minute.
        self._interval = 60.0 * margin / rpm if rpm else 0.0
        self._stop = stop
        self._lock = threading.Lock()
        self._next = 0.0

    def acquire(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now and self._stop.wait(slot - now):
            raise Stopping()

    def defer(self, until: float) -> None:
        """After a cooldown the spacing restarts from its end, not in a burst."""
        with self._lock:
            self._next = max(self._next, until)


class BudgetExhausted(Exception):
    pass


class Budget:
    """Spend so far plus what requests in flight may cost, against the user's maximum."""

    def __init__(self, max_cost: float | None, spent: float, price: float):
        self.max_cost = max_cost
        self.price = price
        self._lock = threading.Lock()
        self.spent = spent
        self._reserved = 0.0

    def reserve(self) -> float:
        with self._lock:
            if self.max_cost is not None and self.spent + self._reserved + self.price > self.max_cost + 1e-9:
                raise BudgetExhausted()
            self._reserved += self.price
            return self.price

    def settle(self, reserved: float, cost: float) -> None:
        with self._lock:
            self._reserved -= reserved
            self.spent += cost
            if cost > self.price:
                self.price = cost  # the server's x-cost is the better estimate from now on


class stop_after_failures(stop_base):
    """Stop after n failed attempts, not counting 429s: being told to wait is not failing."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, retry_state: RetryCallState) -> bool:
        failures = getattr(retry_state, "failures", 0)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if not isinstance(exc, RateLimited):
            failures += 1
        retry_state.failures = failures  # type: ignore[attr-defined]
        return failures >= self.n


class wait_unless_rate_limited(wait_base):
    """No per-thread sleep after a 429 (the shared cooldown does the waiting); else `then`."""

    def __init__(self, then: wait_base):
        self.then = then

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return 0.0 if isinstance(exc, RateLimited) else self.then(retry_state)


def retrying(
    max_attempts: int,
    stop_event: threading.Event,
    backoff_s: float = 1.0,
    backoff_max_s: float = 30.0,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> Retrying:
    def sleep(seconds: float) -> None:
        if seconds > 0 and stop_event.wait(seconds):
            raise Stopping()

    return Retrying(
        retry=retry_if_exception_type((TransientError, RateLimited)),
        stop=stop_any(stop_after_failures(max_attempts), stop_when_event_set(stop_event)),
        wait=wait_unless_rate_limited(wait_random_exponential(multiplier=backoff_s, max=backoff_max_s)),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
