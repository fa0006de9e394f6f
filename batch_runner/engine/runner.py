"""One run of a job into an output folder, as a lifecycle: take the folder's lock, recover what
an earlier run left, count what is to send, pick a pool, supervise it, and say how it went.

The work itself is done by peers around one RunContext (engine/context.py):
- item_source.py: the plan's items against the ledger, streamed in chunks;
- key_lane.py: the client, pacer and credits of the run's API key;
- attempts.py: the books of every attempt, and classify() (stop, fail, or leave pending);
- sink.py: the recipe, the durable save and `done`, a lost paid image, output errors;
- sync_pool.py (v1 threads) or async_pool.py (v2 submit and poll), with the same shape;
- manifest_fold.py and run_record.py: the results table and runs.jsonl.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable

from batch_runner import humanize
from batch_runner.api.deadline import STOP_GRACE_S, shorten_all
from batch_runner.engine.async_pool import AsyncPool, sync_mode_note
from batch_runner.engine.attempt_watch import watch_for
from batch_runner.engine.attempts import output_problem
from batch_runner.engine.context import RunContext, RunOptions, StopSignal, Tally
from batch_runner.engine.item_source import ItemSource, PlanCount
from batch_runner.engine.key_lane import KeyLane
from batch_runner.engine.manifest_fold import ManifestFold
from batch_runner.engine.outcome import EXIT_CODES, RunOutcome, StopReason
from batch_runner.engine.policies import Budget
from batch_runner.engine.progress import Progress
from batch_runner.engine.run_record import abandoned, finished
from batch_runner.engine.sink import adopt_saved_images
from batch_runner.engine.sync_pool import SyncPool
from batch_runner.errors import MixedOutput
from batch_runner.job.manifest import Job
from batch_runner.settings import ProgressMode
from batch_runner.store.books import committed_usd, reserve_price, sync_refusal
from batch_runner.store.journal import Journal
from batch_runner.store.ledger import Ledger
from batch_runner.store.ledger import load as load_ledger
from batch_runner.store.output_dir import AlreadyRunning, OutputDir

__all__ = ["MixedOutput", "RunOptions", "Runner"]


class _Crew:
    """The pool's threads, whose ends are counted here rather than asked of Thread.is_alive():
    a Thread.join() cut short by KeyboardInterrupt (CPython before 3.13) marks a thread that is
    still sending as stopped."""

    def __init__(self, threads: list[threading.Thread]):
        self._left = len(threads)
        self._ended = threading.Condition()
        for thread in threads:
            thread.run = self._counted(thread.run)  # type: ignore[method-assign]

    def _counted(self, run: Callable[[], None]) -> Callable[[], None]:
        def counted() -> None:
            try:
                run()
            finally:
                with self._ended:
                    self._left -= 1
                    self._ended.notify_all()

        return counted

    def wait(self, timeout_s: float) -> bool:
        """True once every thread has ended; False after timeout_s."""
        with self._ended:
            return self._ended.wait_for(lambda: self._left == 0, timeout_s)


class Runner:
    """One run of a job into an output folder. It reports what happened as a RunOutcome and
    says nothing about flags, exit codes or signals: that is the caller's (the CLI's) business.
    Messages go to `log` (none by default)."""

    def __init__(self, job: Job, options: RunOptions, log: Callable[[str], None] | None = None):
        self.job = job
        self.options = options
        self.settings = options.settings
        self.out = OutputDir(options.output)
        self.log: Callable[[str], None] = log or (lambda message: None)
        self.stop = StopSignal()  # made before the lock: a stop may come while queueing for it
        self.tally = Tally()
        self.items = ItemSource(job, options.options.retry_failed)
        self._started_at = time.time()
        self._count: PlanCount | None = None
        self._recorded = False  # runs.jsonl has this run's line
        self._locked = False  # this run holds the output folder

    # ------------------------------------------------------------------ the caller's handles

    @property
    def stop_reason(self) -> StopReason | None:
        return self.stop.reason

    @property
    def stop_message(self) -> str:
        return self.stop.message

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return self.tally.in_flight

    def request_stop(self, message: str = "") -> None:
        """Stop cleanly, from any thread or a signal handler: no new request is sent, those in
        flight are let finish, and run() returns with StopReason.INTERRUPTED. Safe to repeat."""
        self.stop.stop(StopReason.INTERRUPTED, message)
        shorten_all(STOP_GRACE_S)  # whatever the server does, the requests in flight end soon

    def record_abandoned(self, message: str) -> None:
        """The process is leaving at once (a second Ctrl-C) with requests in flight: write this
        run's runs.jsonl line from its counters, so a monitor still sees the run. Writes with
        plain os calls, no lock any thread may hold, so a signal handler may call it."""
        if self._recorded or not self._locked:
            return
        self._recorded = True
        count = self._count
        record = abandoned(
            self.job.name,
            self._started_at,
            EXIT_CODES[StopReason.INTERRUPTED],
            message,
            count.total if count else None,
            count.todo if count else None,
            self.tally,
            self.settings.price_per_image,
            self.options.target.sandbox,
        )
        self._append_record(record)

    # ------------------------------------------------------------------ the lifecycle

    def run(self) -> RunOutcome:
        self._take_lock()
        self._locked = True
        try:
            self._started_at = time.time()
            lane: list[KeyLane] = []
            outcome = self._run_locked(lane)
            if not self._recorded:
                self._recorded = True
                learned = lane[0].learned_rpm() if lane else None
                record = finished(self.job.name, self._started_at, outcome, learned, self.options.target.sandbox)
                self._append_record(record)
            return outcome
        finally:
            self._locked = False
            self.out.unlock()

    def _take_lock(self) -> None:
        """Queue behind another run of the folder for up to wait_lock, but not past a stop
        request: AlreadyRunning, with stop_reason set when the wait was cut short."""
        waited = self.options.options.wait_lock
        deadline = time.monotonic() + waited
        while True:
            try:
                return self.out.lock(0.0)
            except AlreadyRunning as exc:
                if self.stop.reason is not None:
                    raise
                if time.monotonic() >= deadline:
                    raise AlreadyRunning(f"{exc} after waiting {waited:g} s" if waited else str(exc)) from None
            # A plain sleep, not an Event.wait(): a signal handler may stop the run from this
            # thread, and must not find the event's lock held.
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _run_locked(self, lanes: list[KeyLane]) -> RunOutcome:
        self.out.prepare()
        removed = self.out.remove_partials()
        if removed:
            self.log(f"removed {removed} half-written file(s) left by an earlier crash")
        history = load_ledger(self.out, checkpoint_past=20_000)
        if not history.from_snapshot and history.replayed_lines > 1_000_000:
            self.log(f"note: {self.out.path} had no ledger checkpoint; one was written from the whole journal")
        self._refuse_mixing(history)
        journal = Journal(self.out.journal)
        fold: ManifestFold | None = None
        try:
            recovered = adopt_saved_images(self.out, history, journal, self.settings.price_per_image)
            if recovered:
                history.refresh()
            count = self._count = self.items.count(history)
            journal.run_started(
                job=self.job.name,
                items=count.total,
                todo=count.todo,
                sandbox=self.options.target.sandbox,
                pid=os.getpid(),
                price_per_image=self.settings.price_per_image,
            )
            history.refresh()
            fold = ManifestFold(self.out, self.items, count.digest, self._output_error, self.log)
            fold.at_start(history, count.todo)
            self._announce(count, recovered)
            if count.todo and self.stop.reason is None:
                self._send(journal, history, fold, count, lanes)
                history = history.refresh()
                history.checkpoint()
                fold.join()
                fold.fold(history)
            return self._outcome(count, history, recovered)
        finally:
            if fold is not None:
                fold.join()
            journal.close()

    def _refuse_mixing(self, history: Ledger) -> None:
        kinds = {bool(r.get("sandbox")) for r in history.runs}
        if kinds and self.options.target.sandbox not in kinds:
            raise MixedOutput(self.out.path, holds_sandbox=True in kinds)

    def _announce(self, count: PlanCount, recovered: int) -> None:
        s = self.settings
        done_before = count.total - count.todo
        self.log(
            f"run {self.job.name}: {count.total:,} items, {count.todo:,} to send"
            + (f", {done_before:,} already done" if done_before else "")
            + f"; ~{humanize.money(count.todo * s.price_per_image)} at {humanize.price(s.price_per_image)} per image"
            + f"; output {self.out.path}"
        )
        if recovered:
            self.log(f"recovered {recovered} image(s) that arrived just before an earlier run stopped")
        if count.unanswered:
            self.log(
                f"note: {count.unanswered} item(s) were sent by an earlier run that stopped before their answer; "
                "they may have been billed, and will be sent again"
            )

    def _send(
        self, journal: Journal, history: Ledger, fold: ManifestFold, count: PlanCount, lanes: list[KeyLane]
    ) -> None:
        """Make the run's context, pick the pool for the API mode, and supervise it."""
        s = self.settings
        if s.api != "async" and (refusal := sync_refusal([st for _, st in history.where_status("pending")])):
            self.stop.stop(StopReason.JOBS_ON_SERVER, refusal)  # v2 jobs on the server would be bought again
            return
        self._warn_disk_space(count)
        lane = KeyLane.open(self.options, self.out, self.stop)
        lane.client.warn = self.log
        lanes.append(lane)
        if warning := lane.credits_warning(count.todo * s.price_per_image):
            self.log(warning)
        # What the server may have billed already: confirmed spend, plus every attempt that
        # got no answer, across all runs of this output.
        price = reserve_price(history, s.price_per_image)  # the highest price this folder has seen
        budget = Budget(s.max_cost, committed_usd(history, price), price, s.max_cost_per_run)
        self.items.start(history, self.stop)
        o = self.options.options
        quiet = ProgressMode(o.progress) is ProgressMode.QUIET
        # Sync mode only: a v2 submit is answered at once, whatever the generation takes.
        watch = watch_for(o.timeout, s.max_wait, self.log, quiet, not self.options.target.sandbox)
        ctx = RunContext(
            self.job, self.options, self.out, journal, budget, self.tally, self.stop, self.items, self.log, lanes,
            None if s.api == "async" else watch,
        )  # fmt: skip
        # Async mode: jobs outstanding on the server, a few submit and poll threads.
        pool: SyncPool | AsyncPool
        if s.api == "async":
            pool = AsyncPool(ctx, lane, history)
        else:
            pool = SyncPool(ctx, lane, workers=min(s.concurrency, count.todo))
            if note := sync_mode_note(history):
                self.log(note)
        progress = Progress(
            count.todo, self.tally, mode=self.options.options.progress,
            interval_s=self.options.options.log_interval, log=self.log, pace=lambda: pool.pace() + watch.bar(),
        )  # fmt: skip
        try:
            self._supervise(pool.threads(), progress, fold, history, watch.tick)
        finally:
            progress.close()
            pool.close()
            lane.close()
            lane.remember(self.out)

    def _supervise(
        self,
        threads: list[threading.Thread],
        progress: Progress,
        fold: ManifestFold,
        ledger: Ledger,
        tick: Callable[[], None],
    ) -> None:
        """Start the pool's threads and wait for them all: refresh the progress, close the run's
        window when it is due, and fold the journal's news into the ledger now and then."""
        crew = _Crew(threads)
        for thread in threads:
            thread.start()
        max_duration = self.settings.max_duration
        window_closes = time.monotonic() + max_duration if max_duration else None
        while True:
            try:
                if crew.wait(0.25):
                    return
                progress.refresh()
                tick()  # the unreachable notice under --progress quiet, once a minute has passed
                if window_closes is not None and time.monotonic() >= window_closes:
                    window = humanize.duration(max_duration or 0)
                    self.stop.stop(StopReason.DURATION, f"the run's window of {window} closed")
                fold.now_and_then(ledger)
            except KeyboardInterrupt:
                # run() installs no handler, so a Python caller's Ctrl-C lands here. Leaving
                # now would close the journal and free the folder under live workers: stop
                # as the CLI does, let the requests in flight finish, and return the outcome.
                self.request_stop("KeyboardInterrupt")

    def _warn_disk_space(self, count: PlanCount) -> None:
        # Half a byte a pixel is a generous JPEG; a full disk stops the run cleanly anyway.
        need = int(count.todo_pixels * 0.5)
        try:
            free = shutil.disk_usage(self.out.path).free
        except OSError:
            return
        if free < need:
            self.log(
                f"warning: {humanize.size(free)} free where {self.out.path} is; {count.todo:,} image(s) may need "
                f"about {humanize.size(need)}. The run stops cleanly if the disk fills, and can be resumed."
            )

    def _output_error(self, exc: OSError) -> None:
        self.stop.stop(StopReason.OUTPUT, output_problem(exc))

    def _append_record(self, record: dict[str, object]) -> None:
        from batch_runner.store.run_facts import run_facts

        record.update(run_facts(self.out.path, self._started_at))  # run id, host, failure reasons
        try:
            self.out.append_run_record(record)
        except OSError as exc:
            self.log(f"warning: could not append to {self.out.runs} ({exc.strerror})")

    # ------------------------------------------------------------------ the outcome

    def _outcome(self, count: PlanCount, final: Ledger, recovered: int) -> RunOutcome:
        if count.todo == 0:
            succeeded, failed = count.succeeded, count.failed  # nothing was sent: the counting pass holds
        else:
            succeeded, failed = self.items.finished(final)
        pending = count.total - succeeded - failed
        if self.stop.reason is None and pending and count.todo:
            # Every worker ended, yet work is left: never let that pass as success.
            self.stop.stop(StopReason.INTERNAL, f"{pending:,} item(s) were left unsent with no reason to stop")
        t = self.tally
        return RunOutcome(
            output=self.out.path,
            manifest=self.out.manifest,
            stop_reason=self.stop.reason,
            stop_message=self.stop.message,
            total=count.total,
            todo=count.todo,
            succeeded=succeeded,
            failed=failed,
            pending=pending,
            succeeded_this_run=t.succeeded,
            failed_this_run=t.failed,
            spent_run=t.spent,
            spent_total=final.spent,
            possibly_billed_run=t.possibly_billed,
            possibly_billed_total=final.unanswered * self.settings.price_per_image,
            unanswered=count.unanswered,
            unanswered_total=final.unanswered,
            recovered=recovered,
            lost_images=t.lost_images,
            rate_limited=t.rate_limited,
        )
