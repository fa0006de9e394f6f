"""The async (v2) pool: jobs outstanding on the server, not threads blocked on sockets.

A few submit threads take items and submit them through the same gate as v1 requests (the
Pacer's rate and shared pauses, the Budget's reservation, the 406/401/403/404 stops); the
request id is journaled the moment it arrives. A small set of poll threads share one heap of
due times: each takes the job due first, polls it once, and either puts it back with its next
due time (PollSchedule) or fetches and saves its image through the run's ResultSink, as the
sync pool does. Both pools keep their books through engine/attempts.py and judge an item's end
with its classify(); an item's tries are policies.Tries, counted by the same rule as v1's.
So `--concurrency 50` means 50 jobs on the server and about ten threads, whatever the latency.

Money:
- At most `_submit_width()` submits are ever between the server's answer and the journal's
  `submitted` line: one, unless a known rate limit times a submit's latency needs more. A kill
  -9 costs at most that many duplicate jobs; each is on the books as possibly billed (its `sent`
  line has no answer after it).
- A job journaled as submitted is polled, never submitted again, until the server says FAILED
  (not billed: retried if --max-attempts allows) or forgets it (404 after the result's hour:
  possibly billed, counted and reported, and submitted again).
- On a stop (Ctrl-C, the run's window, credits, budget) no new job is submitted, but the jobs
  already on the server are polled to the end and saved: they are paid for. Only a stop that
  makes polling pointless (a fatal answer, a full disk, an internal error, giving up on an
  unreachable or rate-limiting server) leaves them; their ids are journaled and the next run
  polls them.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batch_runner import humanize
from batch_runner.api import spec as api_spec
from batch_runner.api.client import ApiError, FatalApiError, RateLimited, Unreachable, UnusableImage
from batch_runner.api.v2 import JobExpired, JobFailed, JobStatus, V2Client
from batch_runner.engine.attempts import JUDGED, Attempts, Fail, classify
from batch_runner.engine.context import RunContext
from batch_runner.engine.key_lane import KeyLane
from batch_runner.engine.outcome import StopReason
from batch_runner.engine.policies import GiveUp, Stopping, Tries, retrying
from batch_runner.engine.poll_schedule import PollSchedule
from batch_runner.engine.sink import ResultSink
from batch_runner.job.items import Item

if TYPE_CHECKING:
    from batch_runner.store.journal import ItemState
    from batch_runner.store.ledger import Ledger

MAX_SUBMITTERS = 4  # submits are quick: a few threads cover any rate the pacer allows
MAX_POLLERS = 4  # one poll or fetch each; polls are quick, and most jobs need one
# The provider keeps a result an hour; a 404 much sooner than that is no expiry but a poll URL
# the server does not serve: submitting again would bill every item over and over.
RESULT_TTL_S = 3600.0
EARLY_404_S = 0.9 * RESULT_TTL_S
MAX_POLL_ERRORS = 8  # in a row, for one job: leave it to the next run (its id is journaled)
# Stops after which polling is pointless: the server refuses us, or the disk cannot take images.
_ABANDON = {
    StopReason.FATAL,
    StopReason.CONTENT_TYPE,
    StopReason.OUTPUT,
    StopReason.INTERNAL,
    StopReason.UNREACHABLE,
    StopReason.RATE_LIMITED,
}


def earlier_jobs(ledger: Ledger) -> dict[str, ItemState]:
    """Items whose v2 job an earlier run submitted and journaled, with no result yet."""
    return {
        item_id: state
        for item_id, state in ledger.where_status("pending")
        if state.request_id and not state.open_attempt
    }


def sync_mode_note(ledger: Ledger) -> str | None:
    """A sync run would buy again the images of jobs an async run left on the server."""
    count = len(earlier_jobs(ledger))
    if not count:
        return None
    return (
        f"note: {count:,} item(s) have a job on the server from an earlier async run; this synchronous run "
        "sends them again (and pays again). Resume in async mode to collect them instead."
    )


class _Halt(threading.Event):
    """The stop signal for a poll waiting on the Pacer: only a stop that abandons the jobs on
    the server, since after any other stop they are still polled to the end."""

    def __init__(self, pool: AsyncPool):
        super().__init__()
        self._pool = pool

    def is_set(self) -> bool:
        return self._pool.abandoning()


@dataclass(eq=False)
class _Job:
    item: Item
    attempts: int  # requests sent for the item so far, over all runs
    row: dict[str, Any] | None  # the item's row, journaled with its first request ever
    request_id: str | None = None
    submitted_at: float = 0.0  # monotonic; for a job from an earlier run, when this run found it
    recovered: bool = False  # submitted by an earlier run: its age is unknown
    reserved: float = 0.0  # the budget held for it while it is on the server
    polls: int = 0
    running_at: float | None = None  # age at the last poll that found it running
    tries: Tries | None = None  # this run's failed submits, FAILED jobs and unusable images
    poll_errors: int = 0


class AsyncPool:
    def __init__(self, ctx: RunContext, lane: KeyLane, ledger: Ledger):
        assert isinstance(lane.client, V2Client)
        self.ctx = ctx
        self.lane = lane
        self.client: V2Client = lane.client
        self.ledger = ledger  # as of the run's start: the jobs earlier runs left on the server
        self.attempts = Attempts(ctx)
        self.sink = ResultSink(ctx)
        self.cap = ctx.settings.concurrency  # jobs outstanding on the server
        self.schedule = PollSchedule()
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self._resubmit: deque[_Job] = deque()
        self._outstanding = 0  # jobs holding a slot: being submitted, on the server, being fetched
        self._exhausted = False  # every item of the plan was taken
        self._adopted: set[str] = set()  # items whose job an earlier run submitted
        self._submitting = 0
        self._submit_latency: float | None = None
        self._polls_paced = False  # polls take paced send slots once one has drawn a 429
        self._halt = _Halt(self)
        self.counts = {"resumed": 0, "expired": 0, "lost_submits": 0, "failed_jobs": 0, "results": 0}

    # ------------------------------------------------------------------ wiring

    def threads(self) -> list[threading.Thread]:
        """The pool's threads, not started; the runner starts and supervises them."""
        self._resume_earlier_jobs()
        submitters = min(MAX_SUBMITTERS, self.cap)
        pollers = min(MAX_POLLERS, self.cap)
        threads = [threading.Thread(target=self._guard, args=(self._submitter,), name=f"submit-{i}", daemon=True)
                   for i in range(submitters)]  # fmt: skip
        threads += [threading.Thread(target=self._guard, args=(self._poller,), name=f"poll-{i}", daemon=True)
                    for i in range(pollers)]  # fmt: skip
        return threads

    def pace(self) -> str:
        """The progress line's pace: the Pacer's, then the poll cadence."""
        return f"{self.lane.pace()}, {self.schedule.describe()}"

    def close(self) -> None:
        """Say what async mode did that the run's report does not."""
        log = self.ctx.log
        if self.counts["resumed"]:
            log(f"async: {self.counts['resumed']:,} job(s) submitted by an earlier run were polled, not resubmitted")
        if self.counts["expired"]:
            log(
                f"async: {self.counts['expired']:,} item(s) were submitted again because the server no longer knew "
                "their job (expired or unknown, 404); each earlier job may have been billed"
            )
        if self.counts["lost_submits"]:
            log(
                f"async: {self.counts['lost_submits']:,} submit(s) got no answer (e.g. the connection dropped): "
                "the server may have created and billed a job for each; they are counted as possibly billed"
            )
        if self.counts["failed_jobs"]:
            log(f"async: {self.counts['failed_jobs']:,} job(s) FAILED on the server (not billed)")
        left = self._outstanding
        if left:
            log(
                f"async: {left:,} job(s) are still on the server; their request ids are journaled, "
                "and the next run polls them instead of paying again"
            )

    def _guard(self, loop: Any) -> None:
        try:
            loop()
        except OSError as exc:  # a journal line or an image that the disk refused
            self.sink.output_error(exc)
        except Exception as exc:  # noqa: BLE001 - a dead thread must stop the run, never vanish
            self.ctx.stop.stop(StopReason.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            with self._cond:
                self._cond.notify_all()

    def _resume_earlier_jobs(self) -> None:
        """Every journaled request id without a result is polled, not submitted again."""
        pending = earlier_jobs(self.ledger)
        if not pending:
            return
        now = time.monotonic()
        for item in self.ctx.items.plan():
            state = pending.pop(item.item_id, None)
            if state is None:
                continue
            job = _Job(item, state.attempts, None, state.request_id, now, recovered=True)
            job.reserved = self.ctx.budget.hold()
            self.ctx.budget.spent -= job.reserved  # its job was in the books' starting figure
            self.ctx.tally.add(in_flight=1)
            self._adopted.add(item.item_id)
            self._outstanding += 1
            self.counts["resumed"] += 1
            heapq.heappush(self._heap, (now, next(self._seq), job))
            if not pending:
                break
        if self.counts["resumed"]:
            self.ctx.log(
                f"async: {self.counts['resumed']:,} job(s) submitted by an earlier run are still on record; "
                "polling them instead of submitting again"
            )

    # ------------------------------------------------------------------ the pool's state

    def _stopping(self) -> bool:
        return self.ctx.stop.is_set()

    def abandoning(self) -> bool:
        """The run stopped for a reason that makes polling pointless: leave the jobs on the
        server (their ids are journaled; the next run polls them)."""
        return self.ctx.stop.reason in _ABANDON

    def _finished(self) -> bool:
        """Called under the lock: nothing left to submit or poll."""
        if self.abandoning():
            return True
        nothing_new = self._exhausted or self._stopping()
        return nothing_new and self._outstanding == 0

    def _release(self, job: _Job) -> None:
        """The job gives its slot back: done, failed, or left pending."""
        with self._cond:
            self._outstanding -= 1
            self._cond.notify_all()

    def _due(self, job: _Job, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), job))
            self._cond.notify_all()

    def _again(self, job: _Job) -> None:
        """Submit the item again, keeping its slot; or, once the run stops, leave it pending."""
        job.request_id = None
        with self._cond:
            if self._stopping():
                self._outstanding -= 1
            else:
                self._resubmit.append(job)
            self._cond.notify_all()

    # ------------------------------------------------------------------ submitting

    def _submitter(self) -> None:
        while (job := self._take()) is not None:
            self._submit(job)

    def _take(self) -> _Job | None:
        """The next job to submit: one to submit again first, else the plan's next item, once
        fewer than `cap` jobs are outstanding. None when there is nothing left to submit."""
        with self._cond:
            while True:
                if self._stopping():
                    while self._resubmit:  # they keep their journaled state: pending
                        self._resubmit.popleft()
                        self._outstanding -= 1
                    self._cond.notify_all()
                    return None
                if self._resubmit:
                    return self._resubmit.popleft()
                if self._exhausted:
                    if self._outstanding == 0:
                        return None
                elif self._outstanding < self.cap:
                    self._outstanding += 1
                    break
                self._cond.wait(0.25)
        while True:  # outside the lock: the plan's next chunk may take a ledger lookup
            entry = self.ctx.items.next()
            if entry is None:
                with self._cond:
                    self._outstanding -= 1
                    self._exhausted = True
                    self._cond.notify_all()
                return None
            item = entry.item
            if item.item_id not in self._adopted:
                return _Job(item, entry.attempts, None if entry.has_row else item.row())

    def _submit_width(self) -> int:
        """How many submits may be unanswered at once. Each is a possible duplicate job if the
        process is killed, so one, unless a known rate limit (--rpm, or one learned from 429s)
        needs more to be reached at the submits' latency (Little's law)."""
        latency = self._submit_latency
        pacer = self.lane.pacer
        known = pacer.ceiling_rpm or pacer.limit_rpm
        if latency is None or not known:
            return 1
        return max(1, min(MAX_SUBMITTERS, math.ceil(known / 60 * latency)))

    def _submit(self, job: _Job) -> None:
        ctx = self.ctx

        def before_sleep(_: Any) -> None:
            ctx.tally.add(retries=1)

        job.tries = job.tries or Tries(ctx.options.max_attempts)
        policy = retrying(
            job.tries.max_attempts, ctx.stop.event, ctx.run.backoff_s, before_sleep=before_sleep, tries=job.tries
        )
        try:
            policy(self._submit_once, job)
        except JUDGED as exc:
            self._release(job)
            self.attempts.settle_item(job.item, classify(exc, self._stopping()))

    def _submit_once(self, job: _Job) -> None:
        with self._cond:
            while self._submitting >= self._submit_width():
                if self._stopping():
                    raise Stopping()
                self._cond.wait(0.25)
            self._submitting += 1
        try:
            with self.lane.pacer.acquire(self.ctx.stop.event) as ticket:
                self._send_submit(job, ticket)
        finally:
            with self._cond:
                self._submitting -= 1
                self._cond.notify_all()

    def _send_submit(self, job: _Job, ticket: Any) -> None:
        """One submit, on the books like a v1 request: reserved, journaled as sent before it
        goes out, and its answer (the request id) journaled before anything else is done."""
        job.attempts += 1
        reserved = self.attempts.open(job.item.item_id, job.attempts, job.row)
        job.row = None
        started = time.monotonic()
        try:
            submitted = self.client.submit(job.item.params)
        except ApiError as exc:
            if exc.possibly_billed:
                self.counts["lost_submits"] += 1
            self.attempts.book_failed(job.item.item_id, job.attempts, exc, reserved, started, ticket)
            raise
        except BaseException:
            self.attempts.abandoned(reserved)
            raise
        # The id first: from this line on, a crash costs a poll, not a second job.
        self.ctx.journal.submitted(job.item.item_id, job.attempts, submitted.request_id)
        ticket.succeeded(submitted.latency_s)
        with self._cond:
            latency, previous = submitted.latency_s, self._submit_latency
            self._submit_latency = latency if previous is None else previous * 0.8 + latency * 0.2
        job.request_id, job.reserved = submitted.request_id, reserved
        job.submitted_at, job.polls, job.running_at, job.poll_errors = time.monotonic(), 0, None, 0
        self._due(job, self.schedule.first_delay())

    # ------------------------------------------------------------------ polling

    def _poller(self) -> None:
        while (job := self._next_due()) is not None:
            self._check(job)

    def _next_due(self) -> _Job | None:
        """The job due first, once it is due and the shared 429 pause is over."""
        pacer = self.lane.pacer
        with self._cond:
            while True:
                if self._finished():
                    return None
                gave_up = pacer.give_up()
                if gave_up is not None:
                    self.ctx.stop.stop(StopReason(gave_up.reason), gave_up.message)
                    return None
                now = time.monotonic()
                paused = pacer.paused_for_s
                if self._heap and paused <= 0 and self._heap[0][0] <= now:
                    return heapq.heappop(self._heap)[2]
                wait = 0.25
                if paused > 0:
                    wait = min(wait, paused)
                elif self._heap:
                    wait = min(wait, self._heap[0][0] - now)
                self._cond.wait(max(wait, 0.001))

    def _check(self, job: _Job) -> None:
        """Poll one job once; on COMPLETED fetch, check and save its image."""
        assert job.request_id is not None
        age = time.monotonic() - job.submitted_at
        try:
            status = self._call(self.client.status, job.request_id)
            job.polls += 1
            self.schedule.polled()
            if status in (JobStatus.QUEUED, JobStatus.PROCESSING):
                job.running_at, job.poll_errors = age, 0
                self._due(job, self.schedule.next_delay(job.polls))
                return
            completed = self._call(self.client.result, job.request_id)
            self.counts["results"] += 1
            if completed is None:  # the status said COMPLETED a moment too soon
                self._due(job, self.schedule.next_delay(job.polls))
                return
            if not job.recovered:
                self.schedule.learn(age, job.running_at, completed.duration_s)
            size = api_spec.resolution_size(job.item.params.get("resolution"))
            generated = self.client.fetch(completed, job.request_id, size)
        except JobFailed as exc:
            self._failed(job, exc, age)
        except JobExpired as exc:
            self._expired(job, exc, age)
        except UnusableImage as exc:
            self._unusable(job, exc, age)
        except RateLimited:
            self.ctx.tally.add(rate_limited=1)
            self._due(job, 0.0)  # due at once; the shared pause holds it back
        except (GiveUp, Stopping):
            self._release(job)  # the pool gives up; the id is journaled for the next run
        except FatalApiError as exc:
            self._release(job)
            self.attempts.settle_item(job.item, classify(exc, self._stopping()))
        except ApiError:  # a 5xx, a timeout, an unreachable endpoint: the job is safe on the server
            self._poll_error(job)
        else:
            self.attempts.paid(job.reserved, generated.cost)
            try:
                self.sink.succeed(job.item, generated, job.attempts, age)
            finally:
                self._release(job)

    def _call(self, request: Any, *args: Any) -> Any:
        """One poll or result request, reported to the Pacer like a submit: a 429 pauses every
        worker and cuts the rate, an unreachable endpoint counts towards giving up.

        Whether polls count against the key's rate limit is not published. Until one draws a
        429 they take no send slot, so submits keep the whole rate; from the first 429 on, the
        server has shown that they count, and each takes a paced slot like a submit."""
        pacer = self.lane.pacer
        ticket = pacer.acquire(self._halt) if self._polls_paced else pacer.outside()
        try:
            answer = request(*args)
        except RateLimited as exc:
            self._polls_paced = True
            ticket.rate_limited(exc.retry_at)
            raise
        except Unreachable as exc:
            ticket.unreachable(exc.message)
            raise
        except ApiError as exc:
            if exc.answered:
                ticket.answered()
            raise
        else:
            ticket.succeeded()
            return answer
        finally:
            ticket.release()

    def _poll_error(self, job: _Job) -> None:
        """A poll that got no usable answer: the job is safe on the server; try again later."""
        job.poll_errors += 1
        if job.poll_errors >= MAX_POLL_ERRORS:
            message = f"polling {job.request_id} failed {job.poll_errors} times in a row; the next run polls it"
            self.ctx.log(f"async: {message} (its id is journaled)")
            self.ctx.stop.stop(StopReason.UNREACHABLE, message)  # try later (75), not an unexplained stop
            self._release(job)
            return
        self._due(job, min(PollSchedule.MAX_GAP_S, 0.5 * 2**job.poll_errors))

    def _failed(self, job: _Job, exc: JobFailed, age: float) -> None:
        """FAILED: not billed. Submitted again while the item's tries allow, else the item fails
        with the server's message."""
        self.counts["failed_jobs"] += 1
        self.attempts.job_failed(job.item.item_id, job.attempts, exc.message, job.reserved, age)
        self._try_again_or_fail(job, exc)

    def _expired(self, job: _Job, exc: JobExpired, age: float) -> None:
        """404: the server no longer knows the id. The job may have been billed before its
        result expired: possibly billed, reported, and the item is submitted again."""
        assert job.request_id is not None
        if not job.recovered and age < EARLY_404_S:
            # Not an expiry: the server does not serve the poll URL it should. Submitting
            # again would pay for every item over and over.
            self.ctx.stop.stop(
                StopReason.FATAL,
                f"HTTP 404: the server does not know request {job.request_id}, submitted {humanize.duration(age)} "
                "ago; its poll URL is not served at this endpoint",
            )
            self._release(job)
            return
        self.counts["expired"] += 1
        self.attempts.job_expired(job.item.item_id, job.attempts, job.request_id, job.reserved)
        job.recovered = False
        self._again(job)

    def _unusable(self, job: _Job, exc: UnusableImage, age: float) -> None:
        """A completed, billed job whose image is not the one asked for: like v1, paid for and
        retried once, since each try costs money."""
        self.attempts.unusable(job.item.item_id, job.attempts, exc.message, exc.cost, job.reserved, age)
        self._try_again_or_fail(job, exc)

    def _try_again_or_fail(self, job: _Job, exc: ApiError) -> None:
        """Count the job's end against the item's tries (the v1 rule): submit it again, or fail it."""
        job.tries = job.tries or Tries(self.ctx.options.max_attempts)
        job.tries.count(exc)
        if not job.tries.exhausted and not self._stopping():
            self.ctx.tally.add(retries=1)
            self._again(job)
            return
        self._release(job)
        self.attempts.settle_item(job.item, Fail(exc))
