"""The books of every attempt, for both pools: what is reserved, journaled and counted before a
request leaves, and what its answer (or its silence) settles. And one `classify()` from an
exception to what the run does next: stop, fail the item, or leave it pending.

The money rule: an attempt that may have reached the server is on the books from the moment its
`sent` line is durable. One with no answer stays possibly billed, for good; one that provably
never left costs nothing. The seams other features hook into are the methods here: open(),
paid(), book_failed(), abandoned(), and classify().
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from typing import Any

from batch_runner.api.client import (
    ApiError,
    FatalApiError,
    ItemRejected,
    OutOfCredits,
    RateLimited,
    TransientError,
    Unreachable,
)
from batch_runner.engine.context import RunContext
from batch_runner.engine.outcome import StopReason
from batch_runner.engine.policies import BudgetExhausted, GiveUp, Stopping
from batch_runner.job.items import Item


@dataclass(frozen=True)
class Stop:
    """Stop the run: no new request is sent. The item stays pending."""

    reason: StopReason
    message: str = ""


@dataclass(frozen=True)
class Fail:
    """The item failed for good (until --retry-failed): its error is journaled."""

    error: ApiError


@dataclass(frozen=True)
class LeavePending:
    """Nothing to record: the run is stopping, and the item stays pending for the next run."""


Verdict = Stop | Fail | LeavePending

# What classify() knows how to judge; anything else is a bug, and stops the run as internal.
JUDGED = (ApiError, BudgetExhausted, GiveUp, Stopping, OSError)


def classify(exc: BaseException, stopping: bool) -> Verdict:
    """What an item's last error means for the run. `stopping`: the run was stopping already,
    so a retryable error that ended the item's tries was cut short, not run out of them."""
    if isinstance(exc, OutOfCredits):
        return Stop(StopReason(exc.reason), exc.message)
    if isinstance(exc, FatalApiError):
        return Stop(StopReason.FATAL, f"HTTP {exc.http_status}: {exc.message}")
    if isinstance(exc, BudgetExhausted):
        return Stop(StopReason.BUDGET if exc.scope == "total" else StopReason.RUN_BUDGET)
    if isinstance(exc, GiveUp):
        return Stop(StopReason(exc.reason), exc.message)
    if isinstance(exc, (Stopping, Unreachable)):
        return LeavePending()
    if isinstance(exc, ItemRejected):
        return Fail(exc)
    if isinstance(exc, (TransientError, RateLimited)):
        return LeavePending() if stopping else Fail(exc)  # out of tries, unless cut short by a stop
    if isinstance(exc, OSError):
        return Stop(StopReason.OUTPUT, output_problem(exc))  # a journal line or an image the disk refused
    raise TypeError(f"classify() cannot judge {type(exc).__name__}") from exc


def output_problem(exc: OSError) -> str:
    """Why the output folder refused a write, in a few words."""
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno == errno.EROFS:
        return "the file system is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or type(exc).__name__


class Attempts:
    """Opens, settles and books attempts on the run's budget, journal and tally."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx

    def open(self, item_id: str, attempt: int, row: dict[str, Any] | None) -> float:
        """Before a request (a v1 request or a v2 submit) leaves: reserve its price, then make
        its `sent` line durable. Returns the reservation. If the line cannot be written, nothing
        is sent and the reservation is given back."""
        reserved = self.ctx.budget.reserve()
        try:
            self.ctx.journal.sent(item_id, attempt, row)
        except BaseException:
            self.ctx.budget.settle(reserved, 0.0)
            raise
        self.ctx.tally.add(in_flight=1)
        return reserved

    def paid(self, reserved: float, cost: float) -> None:
        """An answer with an image (v1) or a collected result (v2): the reservation becomes spend."""
        self.ctx.budget.settle(reserved, cost)
        self.ctx.tally.add(in_flight=-1, spent=cost)

    def abandoned(self, reserved: float) -> None:
        """A bug, not an answer, while the request was out: it may have gone out, so it stays
        possibly billed (its `sent` line has no outcome after it)."""
        self.ctx.budget.settle(reserved, reserved)
        self.ctx.tally.add(in_flight=-1)

    def book_failed(
        self, item_id: str, attempt: int, exc: ApiError, reserved: float, started: float, ticket: Any
    ) -> None:
        """An attempt (a v1 request or a v2 submit) that got an error or no answer: settle its
        budget reservation, count it, journal it, and tell the pacer what the server said.
        One with no status line may still have been billed: it counts against the budget and in
        the ledger as possibly billed, for good. One that provably never left costs nothing."""
        latency = time.monotonic() - started
        possibly = reserved if exc.possibly_billed else 0.0
        self.ctx.budget.settle(reserved, exc.cost if exc.answered else possibly)
        self.ctx.tally.add(in_flight=-1, spent=exc.cost, possibly_billed=possibly, unanswered=int(exc.possibly_billed))
        self.ctx.journal.attempt(
            item_id, attempt, exc.http_status, exc.message, exc.cost, exc.answered, latency, exc.reached
        )
        if isinstance(exc, RateLimited):
            ticket.rate_limited(exc.retry_at)
            self.ctx.tally.add(rate_limited=1)
        elif isinstance(exc, Unreachable):
            ticket.unreachable(exc.message)
        elif exc.answered:
            ticket.answered()
        if self.ctx.watch is not None and (why := self.ctx.watch.failed(exc, latency)):
            self.ctx.stop.stop(StopReason.TIMEOUT, why)

    # ------------------------------------------------------------------ v2 jobs on the server

    def job_failed(self, item_id: str, attempt: int, message: str, reserved: float, age: float) -> None:
        """The server says the job FAILED: not billed."""
        self.ctx.journal.attempt(item_id, attempt, 422, message, 0.0, True, age)
        self.ctx.budget.settle(reserved, 0.0)
        self.ctx.tally.add(in_flight=-1)

    def job_expired(self, item_id: str, attempt: int, request_id: str, reserved: float) -> None:
        """The server forgot the job (404): it may have been billed first, so possibly billed."""
        self.ctx.journal.expired(item_id, attempt, request_id)
        self.ctx.budget.settle(reserved, reserved)
        self.ctx.tally.add(in_flight=-1, possibly_billed=reserved, unanswered=1)

    def unusable(self, item_id: str, attempt: int, message: str, cost: float, reserved: float, age: float) -> None:
        """A billed answer whose image is not the one asked for: paid, and journaled as such."""
        self.ctx.journal.attempt(item_id, attempt, 200, message, cost, True, age)
        self.paid(reserved, cost)

    # ------------------------------------------------------------------ an item's end

    def settle_item(self, item: Item, verdict: Verdict) -> None:
        """Carry out classify()'s verdict for an item whose tries have ended."""
        if isinstance(verdict, Stop):
            self.ctx.stop.stop(verdict.reason, verdict.message)
        elif isinstance(verdict, Fail):
            self.fail(item, verdict.error)

    def fail(self, item: Item, exc: ApiError) -> None:
        self.ctx.journal.done(item.item_id, "failed", error=exc.message, http_status=exc.http_status)
        self.ctx.tally.add(failed=1)
