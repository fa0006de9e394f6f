"""The sync (v1) pool: a bounded set of worker threads, each sending one request at a time and
waiting for its image. Workers pull items from the run's one item source, so memory holds the
items in flight, not one future per item.

One item's life: the lane's pacer hands out a send slot (its rate, its shared pauses, its window
of requests in flight) → Attempts.open() (the price reserved, the `sent` line durable) → the
client's one request → Attempts settles the answer → the retry policy (policies.retrying) decides
whether to try again → classify() judges how the item ended → the ResultSink saves the image.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from batch_runner.api.client import ApiError, Client, Generated
from batch_runner.engine.attempts import JUDGED, Attempts, classify
from batch_runner.engine.context import RunContext
from batch_runner.engine.item_source import Pending
from batch_runner.engine.key_lane import KeyLane
from batch_runner.engine.outcome import StopReason
from batch_runner.engine.policies import retrying
from batch_runner.engine.sink import ResultSink
from batch_runner.job.items import Item


class SyncPool:
    def __init__(self, ctx: RunContext, lane: KeyLane, workers: int):
        assert isinstance(lane.client, Client)
        self.ctx = ctx
        self.lane = lane
        self.client: Client = lane.client
        self.workers = workers
        self.attempts = Attempts(ctx)
        self.sink = ResultSink(ctx)

    # ------------------------------------------------------------------ wiring (as AsyncPool's)

    def threads(self) -> list[threading.Thread]:
        """The pool's threads, not started; the runner starts and supervises them."""
        return [threading.Thread(target=self._worker, name=f"worker-{i}", daemon=True) for i in range(self.workers)]

    def pace(self) -> str:
        """The progress line's pace: the lane's pacer."""
        return self.lane.pace()

    def close(self) -> None:
        """Nothing to say beyond the run's report."""

    # ------------------------------------------------------------------ one worker

    def _worker(self) -> None:
        try:
            while (entry := self.ctx.items.next()) is not None:
                self._process(entry)
        except OSError as exc:  # a journal line or an image that the disk refused
            self.sink.output_error(exc)
        except Exception as exc:  # noqa: BLE001 - a dead worker must stop the run, never vanish
            self.ctx.stop.stop(StopReason.INTERNAL, f"{type(exc).__name__}: {exc}")

    def _process(self, entry: Pending) -> None:
        item = entry.item
        attempts = _ItemAttempts(entry.attempts, None if entry.has_row else item.row())

        def before_sleep(_: Any) -> None:
            self.ctx.tally.add(retries=1)

        policy = retrying(
            self.ctx.options.max_attempts, self.ctx.stop.event, self.ctx.run.backoff_s, before_sleep=before_sleep
        )
        try:
            generated, attempt, latency = policy(self._attempt, item, attempts)
        except JUDGED as exc:
            self.attempts.settle_item(item, classify(exc, self.ctx.stop.is_set()))
        else:
            self.sink.succeed(item, generated, attempt, latency)

    def _attempt(self, item: Item, attempts: _ItemAttempts) -> tuple[Generated, int, float]:
        # The pacer raises Stopping once the run stops and GiveUp once waiting is pointless.
        with self.lane.pacer.acquire(self.ctx.stop.event) as ticket:
            return self._send(item, attempts, ticket)

    def _send(self, item: Item, attempts: _ItemAttempts, ticket: Any) -> tuple[Generated, int, float]:
        attempts.n += 1
        attempt = attempts.n
        reserved = self.attempts.open(item.item_id, attempt, attempts.row)
        attempts.row = None  # the item's parameters go into the journal once, with its first request ever
        started = time.monotonic()
        try:
            generated = self.client.generate(item.params)
        except ApiError as exc:
            self.attempts.book_failed(item.item_id, attempt, exc, reserved, started, ticket)
            raise
        except BaseException:
            self.attempts.abandoned(reserved)
            raise
        latency = time.monotonic() - started
        self.attempts.paid(reserved, generated.cost)
        ticket.succeeded(latency)
        if self.ctx.watch is not None:
            self.ctx.watch.succeeded()
        return generated, attempt, latency


class _ItemAttempts:
    """An item's requests over all runs, and its row until the first one journals it."""

    def __init__(self, n: int, row: dict[str, Any] | None):
        self.n = n
        self.row = row
