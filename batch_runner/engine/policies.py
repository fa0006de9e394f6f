"""Retry and budget policies shared by all workers, composed from small tenacity pieces.
(Pacing, the shared rate and pauses, is pacing.Pacer.)

- Budget: reserves the price of an attempt before it is sent, so --max-cost (all runs) and
  --max-cost-per-run hold even counting the requests in flight.
- retrying(): tenacity policy: retry transient errors, 429s and an unreachable endpoint; stop
  after N real failures (waiting on the pool does not count), after two billed answers with no
  usable image, or when the run is stopping; wait with full jitter.
"""

from __future__ import annotations

import threading
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

from batch_runner.api.client import RateLimited, TransientError, Unreachable, UnusableImage


class Stopping(Exception):
    """The run is stopping: do not send anything new."""


class GiveUp(Exception):
    """The pool stops waiting: the run ends as temporary (try later), items left pending."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # unreachable | rate-limited
        self.message = message


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

    def hold(self) -> float:
        """Reserve the price of a job an earlier run already submitted: it is committed, so it
        counts against the caps but is never refused."""
        with self._lock:
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
