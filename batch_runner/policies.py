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

from .client import RateLimited, TransientError, Unreachable, UnusableImage


class Stopping(Exception):
    """The run is stopping: do not send anything new."""


class GiveUp(Exception):
    """The pool stops waiting: the run ends as temporary (try later), items left pending."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # unreachable | rate-limited
        self.message = message


class Cooldown:
    """A shared 'nobody sends before T' gate, set by whichever worker was told 429 or found
    the endpoint unreachable. Waiting is bounded: past `max_wait_s` the gate gives up, so a
    night's run ends with a clear 'try later' instead of spinning until morning."""

    def __init__(
        self,
        stop: threading.Event,
        base_s: float = 1.0,
        cap_s: float = 60.0,
        rng: random.Random | None = None,
        max_wait_s: float = 900.0,
    ):
        self._stop = stop
        self._lock = threading.Lock()
        self._until = 0.0
        self._streak = 0  # 429s since the last success, for backoff when the server gives no time
        self._base, self._cap = base_s, cap_s
        self._rng = rng or random.Random()
        self._max_wait = max_wait_s
        self._limited_since: float | None = None  # first 429 since the last success
        self._down_since: float | None = None  # first unreachable attempt since the last answer
        self._down_streak = 0
        self._down_why = ""
        self._give_up: GiveUp | None = None
        self.pauses = 0

    def rate_limited(self, retry_at: float | None) -> float:
        """Record a 429; returns the monotonic time until which everyone waits."""
        now = time.monotonic()
        with self._lock:
            self._streak += 1
            self._down_since = None
            if self._limited_since is None:
                self._limited_since = now
            if retry_at is not None and retry_at - now > self._max_wait:
                self._give_up = GiveUp(
                    "rate-limited",
                    f"the server asks to wait {_seconds(retry_at - now)}, "
                    f"longer than the maximum wait of {_seconds(self._max_wait)}",
                )
            if retry_at is None:
                # Full jitter: spreads the pool's retries instead of bunching them.
                retry_at = now + self._rng.uniform(0, min(self._cap, self._base * 2 ** (self._streak - 1)))
            if retry_at > self._until:
                self._until = min(retry_at, now + self._cap * 5)
                self.pauses += 1
            return self._until

    def unreachable(self, why: str = "the endpoint is unreachable") -> float:
        """Record an attempt that could not connect: the pool backs off together."""
        now = time.monotonic()
        with self._lock:
            self._down_why = why
            if self._down_since is None:
                self._down_since = now
            if now >= self._until:  # not one of the requests that left before the current pause
                self._down_streak += 1
                pause = min(self._cap, self._base * 2 ** (self._down_streak - 1))
                # End the last pause at the deadline, so giving up is not late by a whole backoff.
                self._until = min(now + pause, self._down_since + self._max_wait)
                self.pauses += 1
            return self._until

    def answered(self) -> None:
        """Any answer from the server: it is reachable."""
        with self._lock:
            self._down_since = None
            self._down_streak = 0

    def succeeded(self) -> None:
        with self._lock:
            self._streak = 0
            self._limited_since = None
            self._down_since = None
            self._down_streak = 0

    def give_up(self) -> GiveUp | None:
        """Set once waiting has lasted longer than max_wait_s with nothing to show for it."""
        now = time.monotonic()
        with self._lock:
            if self._give_up is None and self._down_since is not None and now - self._down_since >= self._max_wait:
                self._give_up = GiveUp(
                    "unreachable", f"{self._down_why} (unreachable for {_seconds(now - self._down_since)})"
                )
            limited = self._limited_since
            if self._give_up is None and limited is not None and now - limited >= self._max_wait:
                self._give_up = GiveUp(
                    "rate-limited",
                    f"the server has answered only 429 for {_seconds(now - limited)}",
                )
            return self._give_up

    def wait(self) -> None:
        while True:
            with self._lock:
                delay = self._until - time.monotonic()
            if delay <= 0:
                return
            if self._stop.wait(delay):
                raise Stopping()


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


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
    """The next request could pass a cap: `scope` is "total" (--max-cost) or "run"."""

    def __init__(self, scope: str = "total"):
        super().__init__(scope)
        self.scope = scope


class Budget:
    """Spend so far plus what requests in flight may cost, against the user's caps: one for the
    output folder across all its runs, one for this run alone (a night's share)."""

    def __init__(self, max_cost: float | None, spent: float, price: float, max_run_cost: float | None = None):
        self.max_cost = max_cost
        self.max_run_cost = max_run_cost
        self.price = price
        self._lock = threading.Lock()
        self.spent = spent
        self.spent_this_run = 0.0
        self._reserved = 0.0

    def reserve(self) -> float:
        with self._lock:
            if self.max_cost is not None and self.spent + self._reserved + self.price > self.max_cost + 1e-9:
                raise BudgetExhausted("total")
            cap = self.max_run_cost
            if cap is not None and self.spent_this_run + self._reserved + self.price > cap + 1e-9:
                raise BudgetExhausted("run")
            self._reserved += self.price
            return self.price

    def settle(self, reserved: float, cost: float) -> None:
        with self._lock:
            self._reserved -= reserved
            self.spent += cost
            self.spent_this_run += cost
            if cost > self.price:
                self.price = cost  # the server's x-cost is the better estimate from now on


# Outcomes that are not the item's fault: the pool waits on them together (a 429's pause, an
# endpoint that is down), so they neither use up the item's tries nor sleep per thread.
_POOL_WAITS = (RateLimited, Unreachable)


class _stop_after_counted(stop_base):
    """Stop once `n` outcomes of the counted kinds have been seen for this item."""

    counted: tuple[type[BaseException], ...] = ()
    excluded: tuple[type[BaseException], ...] = ()

    def __init__(self, n: int):
        self.n = n
        self._attr = f"_count_{type(self).__name__}"

    def __call__(self, retry_state: RetryCallState) -> bool:
        count = getattr(retry_state, self._attr, 0)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, self.counted) and not isinstance(exc, self.excluded):
            count += 1
        setattr(retry_state, self._attr, count)
        return count >= self.n


class stop_after_failures(_stop_after_counted):
    """Stop after n failed attempts, not counting 429s or an unreachable endpoint: being told
    to wait is not failing."""

    counted = (Exception,)
    excluded = _POOL_WAITS


class stop_after_unusable_images(_stop_after_counted):
    """Stop after n billed answers that held no usable image: each one was paid for, and a
    proxy or a server that answers so once usually does so again."""

    counted = (UnusableImage,)


class wait_unless_pool_waits(wait_base):
    """No per-thread sleep after a 429 or an unreachable endpoint (the shared gate does the
    waiting); else `then`."""

    def __init__(self, then: wait_base):
        self.then = then

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return 0.0 if isinstance(exc, _POOL_WAITS) else self.then(retry_state)


def retrying(
    max_attempts: int,
    stop_event: threading.Event,
    backoff_s: float = 1.0,
    backoff_max_s: float = 30.0,
    max_unusable: int = 2,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> Retrying:
    def sleep(seconds: float) -> None:
        if seconds > 0 and stop_event.wait(seconds):
            raise Stopping()

    return Retrying(
        retry=retry_if_exception_type((TransientError, *_POOL_WAITS)),
        stop=stop_any(
            stop_after_failures(max_attempts),
            stop_after_unusable_images(max_unusable),
            stop_when_event_set(stop_event),
        ),
        wait=wait_unless_pool_waits(wait_random_exponential(multiplier=backoff_s, max=backoff_max_s)),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
