"""The results table (manifest.parquet) kept in step with the journal: rewritten at the start
when it is stale (beside the workers, so the first request need not wait for it), folded into
a ledger checkpoint now and then while the run goes on, and rewritten once at the end."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable

from batch_runner.engine.item_source import ItemSource
from batch_runner.store.fold import manifest_is_current, manifest_stamp, write_manifest
from batch_runner.store.ledger import Ledger
from batch_runner.store.output_dir import OutputDir


class ManifestFold:
    MIN_EVERY_S = 60.0  # between checkpoints; more when a checkpoint takes long

    def __init__(
        self,
        out: OutputDir,
        items: ItemSource,
        digest: str,
        on_output_error: Callable[[OSError], None],
        log: Callable[[str], None],
    ):
        self.out = out
        self.items = items
        self.digest = digest  # the plan's identity (PlanCount.digest), stamped on the manifest
        self._on_output_error = on_output_error
        self._log = log
        self._start: threading.Thread | None = None
        self._last = time.monotonic()
        self._every = self.MIN_EVERY_S

    def at_start(self, history: Ledger, todo: int) -> None:
        """Rewrite a stale manifest: beside the workers when there is work to do, from a copy of
        the ledger as of now, so a million-row manifest does not delay the first request."""
        if manifest_is_current(self.out, manifest_stamp(history, self.digest)):
            return
        if not todo:
            self.fold(history)
            return
        self._start = threading.Thread(target=self.fold, args=(copy.copy(history),), name="start-fold", daemon=True)
        self._start.start()

    def now_and_then(self, ledger: Ledger) -> None:
        """The periodic fold: the journal's news into the ledger, and a checkpoint of it. Work
        in proportion to the news and the ledger's columns, never to a manifest rewrite."""
        if time.monotonic() - self._last <= self._every:
            return
        started = time.monotonic()
        with self.items.lock:  # the workers look their chunks up in the same ledger
            ledger.refresh()
        ledger.checkpoint()
        self._last = time.monotonic()
        self._every = max(self.MIN_EVERY_S, 20 * (self._last - started))

    def join(self) -> None:
        if self._start is not None:
            self._start.join()
            self._start = None

    def fold(self, history: Ledger) -> None:
        try:
            stamp = manifest_stamp(history, self.digest)
            write_manifest(self.out, self.items.plan(), history, self.items.job.meta_columns, stamp)
        except OSError as exc:
            # The journal holds everything; the manifest is a view rebuilt on the next run.
            self._on_output_error(exc)
            self._log(f"warning: could not rewrite {self.out.manifest} ({exc.strerror}); the journal has every result")
