"""What one run shares, made once and handed to whichever pool runs it (sync_pool or async_pool).

- RunOptions: where and how the run sends, composed of the records settings.py defines.
- StopSignal: whether the run stops, and its typed StopReason; the first reason wins.
- Tally: the counters every thread adds to; read by progress and the outcome.
- RunContext: the journal, the budget, the tally, the stop signal, the item source, the log,
  and the key lanes (engine/key_lane.py: the client, pacer and credits of one API key). A
  pool asks the context for a lane instead of holding a client or a pacer of its own, so a
  pool of keys can hand out one lane per key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from batch_runner.engine.attempt_watch import AttemptWatch
from batch_runner.engine.outcome import StopReason
from batch_runner.settings import Options, Settings

if TYPE_CHECKING:
    from batch_runner.engine.item_source import ItemSource
    from batch_runner.engine.key_lane import KeyLane
    from batch_runner.engine.policies import Budget
    from batch_runner.job.manifest import Job
    from batch_runner.store.journal import Journal
    from batch_runner.store.output_dir import OutputDir


@dataclass(frozen=True)
class Target:
    """Where requests go: decided once, in launch.py (Segmind, a given endpoint, or a sandbox)."""

    endpoint: str
    api_key: str = field(repr=False)
    sandbox: bool = False  # the results are placeholders, kept apart from real ones


@dataclass(frozen=True)
class RunOptions:
    """One run: where it sends, into which folder, the job's settings and the run's options.
    Composed of settings.py's records, never copied field by field."""

    target: Target
    output: Path
    settings: Settings = field(default_factory=Settings)
    options: Options = field(default_factory=Options)
    backoff_s: float = 1.0  # the first retry's wait; tests shorten it


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


class StopSignal:
    """Whether the run is stopping, and why. Set from any thread or a signal handler; the
    first reason wins, later ones only set the event again. `event` is what the pacer and
    the retry policy wait on."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: StopReason | None = None
        self.message = ""
        # Reentrant: a Python caller's Ctrl-C may stop the run from the main thread while
        # that thread is inside stop() already.
        self._lock = threading.RLock()
        self._wakers: list[Callable[[], None]] = []

    def stop(self, reason: StopReason | str, message: str = "") -> None:
        with self._lock:
            if self.reason is None:
                self.reason, self.message = StopReason(reason), message
        self.event.set()
        for wake in list(self._wakers):
            wake()  # e.g. workers waiting for a send slot see the stop at once

    def is_set(self) -> bool:
        return self.event.is_set()

    def on_stop(self, wake: Callable[[], None]) -> None:
        """Call `wake` on every stop from now on (a pacer wakes its waiting workers)."""
        self._wakers.append(wake)
        if self.is_set():
            wake()


@dataclass
class RunContext:
    """Everything a pool needs for one run, made once by the Runner."""

    job: Job
    run: RunOptions
    out: OutputDir
    journal: Journal
    budget: Budget
    tally: Tally
    stop: StopSignal
    items: ItemSource
    log: Callable[[str], None]
    lanes: list[KeyLane]
    watch: AttemptWatch | None = None  # sync mode: a hopeless --timeout, an unreachable endpoint

    @property
    def settings(self) -> Settings:
        return self.run.settings

    @property
    def options(self) -> Options:
        return self.run.options

    def lane(self) -> KeyLane:
        """The lane (client, pacer, credits) the next request goes through. One key today."""
        return self.lanes[0]
