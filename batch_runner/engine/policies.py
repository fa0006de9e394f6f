"""Retry and budget policies shared by all workers, composed from small tenacity pieces.
(Pacing, the shared rate and pauses, is pacing.Pacer.)

- Budget: reserves the price of an attempt before it is sent, so --max-cost (all runs) and
  --max-cost-per-run hold even counting the requests in flight.
- Tries: one item's tries against its limits: N real failures (waiting on the pool does not
  count), or two billed answers with no usable image. Kept for the item's life in this run, so
  async mode counts its submits, FAILED jobs and unusable images by the same rule as v1.
- retrying(): tenacity policy: retry transient errors, 429s and an unreachable endpoint; stop
  when the item's Tries run out or when the run is stopping; wait with full jitter.
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


class Tries:
    """One item's tries in this run: it stops after `max_attempts` failures, not counting 429s
    or an unreachable endpoint (being told to wait is not failing), or after `max_unusable`
    billed answers that held no usable image (each was paid for, and a proxy or a server that
    answers so once usually does so again)."""

    def __init__(self, max_attempts: int, max_unusable: int = 2):
        self.max_attempts = max_attempts
        self.max_unusable = max_unusable
        self.failures = 0
        self.unusable = 0

    def count(self, exc: BaseException | None) -> None:
        """Count one attempt's error against the limits."""
        if isinstance(exc, Exception) and not isinstance(exc, _POOL_WAITS):
            self.failures += 1
        if isinstance(exc, UnusableImage):
            self.unusable += 1

    @property
    def exhausted(self) -> bool:
        return self.failures >= self.max_attempts or self.unusable >= self.max_unusable


class stop_when_tries_run_out(stop_base):
    """Count each failed attempt into the item's Tries; stop once they run out."""

    def __init__(self, tries: Tries):
        self.tries = tries

    def __call__(self, retry_state: RetryCallState) -> bool:
        self.tries.count(retry_state.outcome.exception() if retry_state.outcome else None)
        return self.tries.exhausted


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
    tries: Tries | None = None,
) -> Retrying:
    """The retry policy for one item; `tries` carries its count over from earlier calls (an
    async item resubmitted after a FAILED job), else a fresh Tries(max_attempts, max_unusable)."""

    def sleep(seconds: float) -> None:
        if seconds > 0 and stop_event.wait(seconds):
            raise Stopping()

    return Retrying(
        retry=retry_if_exception_type((TransientError, *_POOL_WAITS)),
        stop=stop_any(
            stop_when_tries_run_out(tries or Tries(max_attempts, max_unusable)),
            stop_when_event_set(stop_event),
        ),
        wait=wait_unless_pool_waits(wait_random_exponential(multiplier=backoff_s, max=backoff_max_s)),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
