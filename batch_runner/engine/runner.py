"""Turn a plan into images: a bounded pool of workers, shared pacing, a journal of everything.

Data flows one way: plan items → the shared gate (pacing.Pacer, then the budget) → one attempt
(client.py) → journal → image on disk → manifest. Workers pull items from one shared iterator,
so memory holds the items in flight, not one future per item.
"""

from __future__ import annotations

import copy
import errno
import gc
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from batch_runner import humanize
from batch_runner.api import spec as api_spec
from batch_runner.api.client import (
    ApiError,
    Client,
    FatalApiError,
    Generated,
    ItemRejected,
    OutOfCredits,
    RateLimited,
    TransientError,
    Unreachable,
    check_image,
)
from batch_runner.api.v2 import V2Client
from batch_runner.engine.async_pool import AsyncPool, sync_mode_note
from batch_runner.engine.attempt_watch import watch_for
from batch_runner.engine.outcome import RunOutcome, StopReason
from batch_runner.engine.pacing import Pacer
from batch_runner.engine.policies import Budget, BudgetExhausted, GiveUp, Stopping, retrying
from batch_runner.engine.progress import Progress
from batch_runner.errors import UsageError
from batch_runner.job.items import Deduplicated, Item
from batch_runner.job.manifest import Job
from batch_runner.settings import (
    DEFAULT_LOG_INTERVAL_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TIMEOUT_S,
    ProgressMode,
    Settings,
)
from batch_runner.store import recipe
from batch_runner.store.fold import manifest_is_current, manifest_stamp, write_manifest
from batch_runner.store.journal import Journal
from batch_runner.store.ledger import STATUS, Ledger
from batch_runner.store.ledger import load as load_ledger
from batch_runner.store.output_dir import AlreadyRunning, OutputDir, write_atomic


@dataclass
class RunOptions:
    """Where and how one run sends. The job's settings (concurrency, budgets, pacing, windows)
    travel as one Settings object; the defaults are written once, in settings.py."""

    endpoint: str
    api_key: str = field(repr=False)
    output: Path
    settings: Settings
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry_failed: bool = False
    sandbox: bool = False
    progress: ProgressMode = ProgressMode.AUTO
    log_interval_s: float = DEFAULT_LOG_INTERVAL_S
    backoff_s: float = 1.0
    wait_lock_s: float = 0.0  # how long to queue behind another run of the same output


class MixedOutput(UsageError):
    """The output folder holds the other kind of results (sandbox placeholders or real ones)."""

    def __init__(self, path: Path, holds_sandbox: bool):
        self.path, self.holds_sandbox = path, holds_sandbox
        what = "sandbox placeholders" if holds_sandbox else "real results"
        run = "real" if holds_sandbox else "sandbox"
        super().__init__(f"{path} holds {what}; a {run} run must not mix with them.")


@dataclass
class Tally:
    """Counters the workers share; read by progress and the final report."""

    succeeded: int = 0
    failed: int = 0
    spent: float = 0.0  # confirmed by an answer
    possibly_billed: float = 0.0  # attempts with no answer that may have reached the server
    unanswered: int = 0
    lost_images: int = 0  # paid for, received, but could not be saved
    in_flight: int = 0
    rate_limited: int = 0
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: float) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


_CHUNK = 4096  # plan items looked up in the ledger at once
_SENT, _SUCCEEDED, _FAILED = STATUS.index("sent"), STATUS.index("succeeded"), STATUS.index("failed")


@dataclass
class _ItemProgress:
    attempts: int
    row: dict[str, Any] | None


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
        self.stop_event = threading.Event()
        self.stop_reason: StopReason | None = None
        self.stop_message = ""
        self.tally = Tally()
        # Reentrant: request_stop() may run in a signal handler that interrupted this same
        # (main) thread inside _stop.
        self._stop_lock = threading.RLock()
        self._items_lock = threading.RLock()
        self._start_fold: threading.Thread | None = None

    # ------------------------------------------------------------------ the run

    def run(self) -> RunOutcome:
        self._take_lock()
        try:
            self._started_at = time.time()
            outcome = self._run_locked()
            self._record_run(outcome)
            return outcome
        finally:
            self.out.unlock()

    def _take_lock(self) -> None:
        """Queue behind another run of the folder for up to wait_lock_s, but not past a stop
        request: AlreadyRunning, with stop_reason set when the wait was cut short."""
        waited = self.options.wait_lock_s
        deadline = time.monotonic() + waited
        while True:
            try:
                return self.out.lock(0.0)
            except AlreadyRunning as exc:
                if self.stop_reason is not None:
                    raise
                if time.monotonic() >= deadline:
                    raise AlreadyRunning(f"{exc} after waiting {waited:g} s" if waited else str(exc)) from None
            # A plain sleep, not stop_event.wait(): a signal handler may call request_stop()
            # in this thread, and must not find the event's lock held.
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def request_stop(self, message: str = "") -> None:
        """Stop cleanly, from any thread or a signal handler: no new request is sent, those in
        flight are let finish, and run() returns with StopReason.INTERRUPTED. Safe to repeat."""
        self._stop(StopReason.INTERRUPTED, message)

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return self.tally.in_flight

    def _record_run(self, r: RunOutcome) -> None:
        """One line in runs.jsonl per run, so a monitor can follow a job over weeks."""
        import platform

        import requests

        from batch_runner import __version__

        record = {
            "job": self.job.name,
            "started_at": _iso(self._started_at),
            "ended_at": _iso(time.time()),
            "exit_code": r.exit_code,
            "stop_reason": r.stop_reason.value if r.stop_reason else None,
            "stop_message": r.stop_message or None,
            "items": r.total,
            "to_send": r.todo,
            "succeeded": r.succeeded,
            "failed": r.failed,
            "pending": r.pending,
            "succeeded_this_run": r.succeeded_this_run,
            "failed_this_run": r.failed_this_run,
            "spent_usd_this_run": round(r.spent_run, 6),
            "possibly_billed_usd_this_run": round(r.possibly_billed_run, 6),
            "spent_usd_total": round(r.spent_total, 6),
            "possibly_billed_usd_total": round(r.possibly_billed_total, 6),
            "rate_limited_this_run": r.rate_limited,
            "learned_rpm": self._learned_rpm(),
            "sandbox": self.options.sandbox,
            "versions": {
                "batch_runner": __version__,
                "python": platform.python_version(),
                "requests": requests.__version__,
            },
        }
        try:
            self.out.append_run_record(record)
        except OSError as exc:
            self.log(f"warning: could not append to {self.out.runs} ({exc.strerror})")

    def _pace(self) -> str:
        pacer = self.pacer
        paused = pacer.paused_for_s
        text = f"pace {pacer.rate_rpm:,.0f} rpm, window {pacer.window}"
        return text + (f", paused {paused:.0f} s" if paused >= 1 else "") + self.watch.bar()

    def _learned_rpm(self) -> float | None:
        pacer = getattr(self, "pacer", None)
        if pacer is None:
            return None
        return round(pacer.limit_rpm or pacer.rate_rpm, 2)

    def _learned(self) -> dict[str, Any] | None:
        """What earlier runs of this output learned of the key's rate limit, if anything."""
        try:
            return json.loads(self.out.pacing.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _remember_pacing(self) -> None:
        """Tonight's run starts from what last night's learned, not from zero."""
        pacer = getattr(self, "pacer", None)
        if pacer is None or pacer.counts["sent"] == 0:
            return
        try:
            write_atomic(self.out.pacing, json.dumps(pacer.snapshot(), indent=2).encode("utf-8"))
        except OSError:
            pass  # only a hint for the next run

    def _run_locked(self) -> RunOutcome:
        self.out.prepare()
        removed = self.out.remove_partials()
        if removed:
            self.log(f"removed {removed} half-written file(s) left by an earlier crash")
        history = load_ledger(self.out, checkpoint_past=20_000)
        if not history.from_snapshot and history.replayed_lines > 1_000_000:
            self.log(f"note: {self.out.path} had no ledger checkpoint; one was written from the whole journal")
        self._refuse_mixing(history)
        journal = Journal(self.out.journal)
        try:
            recovered = self._adopt_saved_images(history, journal)
            if recovered:
                history.refresh()
            total, todo, unanswered = self._count(history)
            journal.run_started(
                job=self.job.name,
                items=total,
                todo=todo,
                sandbox=self.options.sandbox,
                pid=os.getpid(),
                price_per_image=self.settings.price_per_image,
            )
            history.refresh()
            self.ledger = history
            if not manifest_is_current(self.out, manifest_stamp(history, self._plan_digest)):
                if todo:
                    # The first request need not wait for a million-row manifest: write it
                    # beside the workers, from a copy of the ledger as of now.
                    self._start_fold = threading.Thread(
                        target=self._fold, args=(copy.copy(history),), name="start-fold", daemon=True
                    )
                    self._start_fold.start()
                else:
                    self._fold(history)
            return self._send_all(journal, history, total, todo, unanswered, recovered)
        finally:
            self._join_start_fold()
            journal.close()

    def _refuse_mixing(self, history: Ledger) -> None:
        kinds = {bool(r.get("sandbox")) for r in history.runs}
        if kinds and self.options.sandbox not in kinds:
            raise MixedOutput(self.out.path, holds_sandbox=True in kinds)

    def _adopt_saved_images(self, history: Ledger, journal: Journal) -> int:
        """An image saved just before a crash, but not yet journaled as done, was paid for and
        received: keep it rather than buy it again."""
        adopted = 0
        for item_id, state in history.where_status("sent", "pending"):
            path = self.out.find_image(item_id)
            if path is None or not state.row:
                continue
            try:
                check_image(path.read_bytes(), api_spec.resolution_size(state.row.get("resolution")))
            except TransientError:
                path.unlink(missing_ok=True)
                continue
            journal.done(
                item_id,
                "succeeded",
                n=state.attempts,
                http_status=200,
                cost=self.settings.price_per_image,
                image_path=path.relative_to(self.out.path).as_posix(),
                recovered=True,
            )
            adopted += 1
        return adopted

    def _plan(self) -> Deduplicated:
        """The job's unique items, streamed afresh: memory stays flat however large the job."""
        return Deduplicated(self.job.iter_items())

    def _scan(self, ledger: Ledger) -> Iterator[tuple[list[Item], np.ndarray, np.ndarray, np.ndarray]]:
        """The plan in chunks, each with its items' (status code, attempts, has a row) from the
        ledger: one vectorized lookup per chunk, never an object per finished item."""
        chunk: list[Item] = []
        for item in self._plan():
            chunk.append(item)
            if len(chunk) >= _CHUNK:
                yield chunk, *self._lookup(ledger, chunk)
                chunk = []
        if chunk:
            yield chunk, *self._lookup(ledger, chunk)

    def _lookup(self, ledger: Ledger, chunk: list[Item]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self._items_lock:  # the main thread may be folding news into the ledger
            return ledger.lookup([item.item_id for item in chunk])

    def _wanted(self, codes: np.ndarray) -> np.ndarray:
        wanted = (codes != _SUCCEEDED) & (codes != _FAILED)
        return wanted | (codes == _FAILED) if self.options.retry_failed else wanted

    def _count(self, history: Ledger) -> tuple[int, int, int]:
        """One pass over the plan: how many items, how many still to send, and how many of
        those were sent before with no answer on record (they may have been billed)."""
        # No worker runs yet and the pass makes no cycles: the collector would only rescan the
        # plan's live chunk over and over (a sixth of the pass at 10^6 items).
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._count_pass(history)
        finally:
            if enabled:
                gc.enable()

    def _count_pass(self, history: Ledger) -> tuple[int, int, int]:
        total = todo = unanswered = 0
        self._todo_pixels = 0
        self._plan_counts = {"succeeded": 0, "failed": 0}
        digest = hashlib.blake2b(repr(self.job.meta_columns).encode(), digest_size=16)
        for chunk, codes, _, _ in self._scan(history):
            total += len(chunk)
            if self.job.meta_columns:  # an item's id covers its parameters, not its metadata
                digest.update("".join(f"{i.item_id}{i.meta!r}\n" for i in chunk).encode("utf-8", "replace"))
            else:
                digest.update("".join([item.item_id for item in chunk]).encode())
            self._plan_counts["succeeded"] += int((codes == _SUCCEEDED).sum())
            self._plan_counts["failed"] += int((codes == _FAILED).sum())
            wanted = self._wanted(codes)
            todo += int(wanted.sum())
            unanswered += int((wanted & (codes == _SENT)).sum())
            for i in np.flatnonzero(wanted):
                width, height = api_spec.resolution_size(chunk[i].params.get("resolution"))
                self._todo_pixels += width * height
        self._plan_digest = digest.hexdigest()
        return total, todo, unanswered

    def _todo(self) -> Iterator[tuple[Item, int, bool]]:
        for chunk, codes, attempts, has_row in self._scan(self.ledger):
            for i in np.flatnonzero(self._wanted(codes)):
                yield chunk[i], int(attempts[i]), bool(has_row[i])

    def _checkpoint(self) -> None:
        """The periodic fold: the journal's news into the ledger, and a checkpoint of it. Work
        in proportion to the news and the ledger's columns, never to a manifest rewrite."""
        with self._items_lock:
            self.ledger.refresh()
        self.ledger.checkpoint()

    def _join_start_fold(self) -> None:
        fold = getattr(self, "_start_fold", None)
        if fold is not None:
            fold.join()
            self._start_fold = None

    def _fold(self, history: Ledger) -> None:
        try:
            stamp = manifest_stamp(history, self._plan_digest)
            write_manifest(self.out, self._plan(), history, self.job.meta_columns, stamp)
        except OSError as exc:
            # The journal holds everything; the manifest is a view rebuilt on the next run.
            self._stop_on_output_error(exc)
            self.log(f"warning: could not rewrite {self.out.manifest} ({exc.strerror}); the journal has every result")

    def _send_all(
        self, journal: Journal, history: Ledger, total: int, todo: int, unanswered: int, recovered: int
    ) -> RunOutcome:
        s, o = self.settings, self.options
        done_before = total - todo
        self.log(
            f"run {self.job.name}: {total:,} items, {todo:,} to send"
            + (f", {done_before:,} already done" if done_before else "")
            + f"; ~{humanize.money(todo * s.price_per_image)} at {humanize.price(s.price_per_image)} per image"
            + f"; output {self.out.path}"
        )
        if recovered:
            self.log(f"recovered {recovered} image(s) that arrived just before an earlier run stopped")
        if unanswered:
            self.log(
                f"note: {unanswered} item(s) were sent by an earlier run that stopped before their answer; "
                "they may have been billed, and will be sent again"
            )
        if todo == 0 or self.stop_reason is not None:
            return self._report(total, todo, history, recovered, unanswered)

        self._check_disk_space(todo)
        client_class = V2Client if s.api == "async" else Client  # async: v2's submit and poll
        self.client = client_class(
            o.endpoint, o.api_key, pool_size=s.concurrency, timeout_s=o.timeout_s, price_per_image=s.price_per_image
        )
        self._check_credits(todo)
        self.journal = journal
        # What the server may have billed already: confirmed spend, plus every attempt that
        # got no answer, across all runs of this output.
        spent_before = history.spent + history.unanswered * s.price_per_image
        self.budget = Budget(s.max_cost, spent_before, s.price_per_image, s.max_cost_per_run)
        self.pacer = Pacer.from_snapshot(
            self._learned(), ceiling_rpm=s.rpm, max_concurrency=s.concurrency, max_wait_s=s.max_wait
        )
        self.watch = watch_for(
            o.timeout_s, s.max_wait, self.log, ProgressMode(o.progress) is ProgressMode.QUIET, not o.sandbox
        )
        self._items = self._todo()
        # Async mode: jobs outstanding on the server, a few submit and poll threads (async_pool).
        pool = AsyncPool(self, self.client) if isinstance(self.client, V2Client) else None
        if pool is None and (note := sync_mode_note(self.ledger)):
            self.log(note)
        progress = Progress(
            todo, self.tally, mode=o.progress, interval_s=o.log_interval_s, log=self.log,
            pace=pool.pace if pool else self._pace,
        )  # fmt: skip
        workers = pool.threads() if pool else [
            threading.Thread(target=self._worker, name=f"worker-{i}", daemon=True)
            for i in range(min(s.concurrency, todo))
        ]  # fmt: skip
        crew = _Crew(workers)
        try:
            for worker in workers:
                worker.start()
            last_fold = time.monotonic()
            fold_every = 60.0
            window_closes = time.monotonic() + s.max_duration if s.max_duration else None
            while True:
                try:
                    if crew.wait(0.25):
                        break
                    progress.refresh()
                    self.watch.tick()
                    if window_closes is not None and time.monotonic() >= window_closes:
                        window = humanize.duration(s.max_duration or 0)
                        self._stop(StopReason.DURATION, f"the run's window of {window} closed")
                    if time.monotonic() - last_fold > fold_every:
                        started = time.monotonic()
                        self._checkpoint()
                        last_fold = time.monotonic()
                        fold_every = max(60.0, 20 * (last_fold - started))
                except KeyboardInterrupt:
                    # run() installs no handler, so a Python caller's Ctrl-C lands here. Leaving
                    # now would close the journal and free the folder under live workers: stop
                    # as the CLI does, let the requests in flight finish, and return the outcome.
                    self.request_stop("KeyboardInterrupt")
        finally:
            progress.close()
            if pool:
                pool.close()
            self.client.close()
            self._remember_pacing()
        final = self.ledger.refresh()
        final.checkpoint()
        self._join_start_fold()
        self._fold(final)
        return self._report(total, todo, final, recovered, unanswered)

    def _check_disk_space(self, todo: int) -> None:
        # Half a byte a pixel is a generous JPEG; a full disk stops the run cleanly anyway.
        need = int(self._todo_pixels * 0.5)
        try:
            free = shutil.disk_usage(self.out.path).free
        except OSError:
            return
        if free < need:
            self.log(
                f"warning: {humanize.size(free)} free where {self.out.path} is; {todo:,} image(s) may need about "
                f"{humanize.size(need)}. The run stops cleanly if the disk fills, and can be resumed."
            )

    def _check_credits(self, todo: int) -> None:
        balance = self.client.credits()
        need = todo * self.settings.price_per_image
        if balance is not None and balance < need:
            self.log(
                f"warning: the account has {humanize.money(balance)} of credits; this run may need "
                f"{humanize.money(need)}. It will stop cleanly when credits run out, and can be resumed."
            )

    # ------------------------------------------------------------------ workers

    def _next_item(self) -> tuple[Item, int, bool] | None:
        with self._items_lock:
            if self.stop_event.is_set():
                return None
            return next(self._items, None)

    def _worker(self) -> None:
        try:
            while True:
                entry = self._next_item()
                if entry is None:
                    return
                self._process(*entry)
        except OSError as exc:  # a journal line or an image that the disk refused
            self._stop_on_output_error(exc)
        except Exception as exc:  # noqa: BLE001 - a dead worker must stop the run, never vanish
            self._stop("internal", f"{type(exc).__name__}: {exc}")

    def _process(self, item: Item, attempts: int, has_row: bool) -> None:
        # The item's parameters go into the journal once, with its first request ever.
        progress = _ItemProgress(attempts, None if has_row else item.row())

        def before_sleep(_: Any) -> None:
            self.tally.add(retries=1)

        policy = retrying(self.options.max_attempts, self.stop_event, self.options.backoff_s, before_sleep=before_sleep)
        try:
            generated, attempt, latency = policy(self._attempt, item, progress)
        except OutOfCredits as exc:
            self._stop(exc.reason, exc.message)
        except FatalApiError as exc:
            self._stop("fatal", f"HTTP {exc.http_status}: {exc.message}")
        except BudgetExhausted as exc:
            self._stop("budget" if exc.scope == "total" else "run-budget", "")
        except GiveUp as exc:
            self._stop(exc.reason, exc.message)
        except (Stopping, Unreachable):
            pass  # the run is stopping; the item stays pending
        except ItemRejected as exc:
            self._fail(item, exc)
        except (TransientError, RateLimited) as exc:
            if not self.stop_event.is_set():  # out of attempts, not cut short by a stop
                self._fail(item, exc)
        except OSError as exc:
            self._stop_on_output_error(exc)  # the journal could not be written: nothing was sent
        else:
            self._succeed(item, generated, attempt, latency)

    def _attempt(self, item: Item, progress: _ItemProgress) -> tuple[Generated, int, float]:
        # The pacer hands out send slots (its rate, its shared pauses, its window of requests in
        # flight); it raises Stopping once the run stops and GiveUp once waiting is pointless.
        with self.pacer.acquire(self.stop_event) as ticket:
            return self._send(item, progress, ticket)

    def _send(self, item: Item, progress: _ItemProgress, ticket: Any) -> tuple[Generated, int, float]:
        progress.attempts += 1
        attempt = progress.attempts
        reserved = self._open_attempt(item.item_id, attempt, progress.row)
        progress.row = None
        started = time.monotonic()
        try:
            generated = self.client.generate(item.params)
        except ApiError as exc:
            self._book_failed_attempt(item.item_id, attempt, exc, reserved, started, ticket)
            raise
        except BaseException:
            # A bug, not an answer: the request may have gone out, so it stays possibly billed
            # (its `sent` line has no outcome after it).
            self.budget.settle(reserved, reserved)
            self.tally.add(in_flight=-1)
            raise
        latency = time.monotonic() - started
        self.budget.settle(reserved, generated.cost)
        ticket.succeeded(latency)
        self.watch.succeeded()
        self.tally.add(in_flight=-1, spent=generated.cost)
        return generated, attempt, latency

    def _open_attempt(self, item_id: str, attempt: int, row: dict[str, Any] | None) -> float:
        """Before a request (a v1 request or a v2 submit) leaves: reserve its price, then make
        its `sent` line durable. Returns the reservation. If the line cannot be written, nothing
        is sent and the reservation is given back."""
        reserved = self.budget.reserve()
        try:
            self.journal.sent(item_id, attempt, row)
        except BaseException:
            self.budget.settle(reserved, 0.0)
            raise
        self.tally.add(in_flight=1)
        return reserved

    def _book_failed_attempt(
        self, item_id: str, attempt: int, exc: ApiError, reserved: float, started: float, ticket: Any
    ) -> None:
        """An attempt (a v1 request or a v2 submit) that got an error or no answer: settle its
        budget reservation, count it, journal it, and tell the pacer what the server said.
        One with no status line may still have been billed: it counts against the budget and in
        the ledger as possibly billed, for good. One that provably never left costs nothing."""
        latency = time.monotonic() - started
        possibly = reserved if exc.possibly_billed else 0.0
        self.budget.settle(reserved, exc.cost if exc.answered else possibly)
        self.tally.add(in_flight=-1, spent=exc.cost, possibly_billed=possibly, unanswered=int(exc.possibly_billed))
        self.journal.attempt(
            item_id, attempt, exc.http_status, exc.message, exc.cost, exc.answered, latency, exc.reached
        )
        if isinstance(exc, RateLimited):
            ticket.rate_limited(exc.retry_at)
            self.tally.add(rate_limited=1)
        elif isinstance(exc, Unreachable):
            ticket.unreachable(exc.message)
        elif exc.answered:
            ticket.answered()
        if stop := self.watch.failed(exc, latency):
            self._stop(StopReason.TIMEOUT, stop)

    def _succeed(self, item: Item, generated: Generated, attempt: int, latency: float) -> None:
        # The image carries its own recipe, and is durable on disk before the journal calls
        # the item done.
        card = recipe.make(item.item_id, item.params, item.meta, self.job.name, generated.seed_value)
        image = recipe.embed(generated.image, generated.extension, card)
        try:
            image_path = self.out.save_image(item.item_id, image, generated.extension)
        except OSError as exc:
            self._lose_paid_image(item, generated, attempt, exc)
            return
        self.journal.done(
            item.item_id,
            "succeeded",
            n=attempt,
            http_status=200,
            error=None,
            cost=generated.cost,
            latency=round(latency, 4),
            image_path=image_path,
            seed_value=generated.seed_value,
            request_id=generated.request_id,
            remaining_credits=generated.remaining_credits,
        )
        self.tally.add(succeeded=1)

    def _lose_paid_image(self, item: Item, generated: Generated, attempt: int, exc: OSError) -> None:
        """The image was paid for and received, but the disk refused it. Put the charge on the
        books if the journal still takes a line (else its `sent` line keeps it possibly
        billed), leave the item pending, and stop: every later image would be lost too."""
        self.tally.add(lost_images=1)
        try:
            self.journal.attempt(
                item.item_id, attempt, 200, f"received but not saved: {exc.strerror}", generated.cost, True, 0.0
            )
        except OSError:
            pass
        self._stop_on_output_error(exc)

    def _stop_on_output_error(self, exc: OSError) -> None:
        if exc.errno == errno.ENOSPC:
            what = "the disk is full"
        elif exc.errno == errno.EROFS:
            what = "the file system is read-only"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            what = "permission denied"
        else:
            what = exc.strerror or type(exc).__name__
        self._stop("output", what)

    def _fail(self, item: Item, exc: ApiError) -> None:
        self.journal.done(item.item_id, "failed", error=exc.message, http_status=exc.http_status)
        self.tally.add(failed=1)

    # ------------------------------------------------------------------ stopping

    def _stop(self, reason: str, message: str) -> None:
        with self._stop_lock:
            if self.stop_reason is None:
                self.stop_reason, self.stop_message = StopReason(reason), message
        self.stop_event.set()
        pacer = getattr(self, "pacer", None)
        if pacer is not None:
            pacer.wake()  # workers waiting for a send slot see the stop at once

    # ------------------------------------------------------------------ report

    def _report(self, total: int, todo: int, final: Ledger, recovered: int, unanswered: int) -> RunOutcome:
        if todo == 0:
            counts = dict(self._plan_counts)  # nothing was sent: the counting pass still holds
        else:
            counts = {"succeeded": 0, "failed": 0}
            for _, codes, _, _ in self._scan(final):
                counts["succeeded"] += int((codes == _SUCCEEDED).sum())
                counts["failed"] += int((codes == _FAILED).sum())
        pending = total - counts["succeeded"] - counts["failed"]
        if self.stop_reason is None and pending and todo:
            # Every worker ended, yet work is left: never let that pass as success.
            self._stop(StopReason.INTERNAL, f"{pending:,} item(s) were left unsent with no reason to stop")
        t = self.tally
        return RunOutcome(
            output=self.out.path,
            manifest=self.out.manifest,
            stop_reason=self.stop_reason,
            stop_message=self.stop_message,
            total=total,
            todo=todo,
            succeeded=counts["succeeded"],
            failed=counts["failed"],
            pending=pending,
            succeeded_this_run=t.succeeded,
            failed_this_run=t.failed,
            spent_run=t.spent,
            spent_total=final.spent,
            possibly_billed_run=t.possibly_billed,
            possibly_billed_total=final.unanswered * self.settings.price_per_image,
            unanswered=unanswered,
            unanswered_total=final.unanswered,
            recovered=recovered,
            lost_images=t.lost_images,
            rate_limited=t.rate_limited,
        )


def _iso(epoch: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
