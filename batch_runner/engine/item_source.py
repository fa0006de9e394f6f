"""The items a run sends, streamed from the plan and looked up in the ledger in chunks: memory
holds the items in flight, never an object per finished item.

One pass counts (how many, how many to send, how many were sent before with no answer); the
pools then take items one at a time from `next()`, which returns None once the run stops.
"""

from __future__ import annotations

import gc
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from batch_runner.api import spec as api_spec
from batch_runner.engine.context import StopSignal
from batch_runner.job.items import Deduplicated, Item
from batch_runner.job.manifest import Job
from batch_runner.store.ledger import STATUS, Ledger

_CHUNK = 4096  # plan items looked up in the ledger at once
_SENT, _SUCCEEDED, _FAILED = STATUS.index("sent"), STATUS.index("succeeded"), STATUS.index("failed")

Chunk = tuple[list[Item], np.ndarray, np.ndarray, np.ndarray]


class Pending(NamedTuple):
    """An item to send, with its attempts over all runs and whether its row is journaled."""

    item: Item
    attempts: int
    has_row: bool


@dataclass
class PlanCount:
    """The counting pass over the plan against the ledger."""

    total: int = 0
    todo: int = 0
    unanswered: int = 0  # items to send that an earlier run sent with no answer on record
    succeeded: int = 0
    failed: int = 0
    todo_pixels: int = 0  # what the images to send will weigh, roughly
    digest: str = field(default="", repr=False)  # the plan's identity, for the manifest's stamp


class ItemSource:
    def __init__(self, job: Job, retry_failed: bool):
        self.job = job
        self.retry_failed = retry_failed
        # Held while the ledger is looked up or folded: the main thread folds news into the
        # same ledger the workers' chunks are looked up in.
        self.lock = threading.RLock()
        self._todo: Iterator[Pending] = iter(())
        self._stop: StopSignal | None = None

    def plan(self) -> Deduplicated:
        """The job's unique items, streamed afresh: memory stays flat however large the job."""
        return Deduplicated(self.job.iter_items())

    def scan(self, ledger: Ledger) -> Iterator[Chunk]:
        """The plan in chunks, each with its items' (status code, attempts, has a row) from the
        ledger: one vectorized lookup per chunk, never an object per finished item."""
        chunk: list[Item] = []
        for item in self.plan():
            chunk.append(item)
            if len(chunk) >= _CHUNK:
                yield chunk, *self._lookup(ledger, chunk)
                chunk = []
        if chunk:
            yield chunk, *self._lookup(ledger, chunk)

    def _lookup(self, ledger: Ledger, chunk: list[Item]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self.lock:
            return ledger.lookup([item.item_id for item in chunk])

    def _wanted(self, codes: np.ndarray) -> np.ndarray:
        wanted = (codes != _SUCCEEDED) & (codes != _FAILED)
        return wanted | (codes == _FAILED) if self.retry_failed else wanted

    def count(self, ledger: Ledger) -> PlanCount:
        """One pass over the plan: how many items, how many still to send, and how many of
        those were sent before with no answer on record (they may have been billed)."""
        # No worker runs yet and the pass makes no cycles: the collector would only rescan the
        # plan's live chunk over and over (a sixth of the pass at 10^6 items).
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._count_pass(ledger)
        finally:
            if enabled:
                gc.enable()

    def _count_pass(self, ledger: Ledger) -> PlanCount:
        count = PlanCount()
        meta_columns = self.job.meta_columns
        digest = hashlib.blake2b(repr(meta_columns).encode(), digest_size=16)
        for chunk, codes, _, _ in self.scan(ledger):
            count.total += len(chunk)
            if meta_columns:  # an item's id covers its parameters, not its metadata
                digest.update("".join(f"{i.item_id}{i.meta!r}\n" for i in chunk).encode("utf-8", "replace"))
            else:
                digest.update("".join([item.item_id for item in chunk]).encode())
            count.succeeded += int((codes == _SUCCEEDED).sum())
            count.failed += int((codes == _FAILED).sum())
            wanted = self._wanted(codes)
            count.todo += int(wanted.sum())
            count.unanswered += int((wanted & (codes == _SENT)).sum())
            for i in np.flatnonzero(wanted):
                width, height = api_spec.resolution_size(chunk[i].params.get("resolution"))
                count.todo_pixels += width * height
        count.digest = digest.hexdigest()
        return count

    def finished(self, ledger: Ledger) -> tuple[int, int]:
        """(succeeded, failed) over the whole plan, as the ledger has them now."""
        succeeded = failed = 0
        for _, codes, _, _ in self.scan(ledger):
            succeeded += int((codes == _SUCCEEDED).sum())
            failed += int((codes == _FAILED).sum())
        return succeeded, failed

    def start(self, ledger: Ledger, stop: StopSignal) -> None:
        """From now on next() hands out the items to send, until the run stops."""
        self._todo = self._pending(ledger)
        self._stop = stop

    def _pending(self, ledger: Ledger) -> Iterator[Pending]:
        for chunk, codes, attempts, has_row in self.scan(ledger):
            for i in np.flatnonzero(self._wanted(codes)):
                yield Pending(chunk[i], int(attempts[i]), bool(has_row[i]))

    def next(self) -> Pending | None:
        """The next item to send; None when there is none left or the run is stopping."""
        with self.lock:
            if self._stop is not None and self._stop.is_set():
                return None
            return next(self._todo, None)
