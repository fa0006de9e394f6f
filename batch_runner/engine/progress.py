"""Progress for people and for cron: a tqdm bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from tqdm import tqdm

from batch_runner import humanize
from batch_runner.settings import ProgressMode

__all__ = ["Progress", "ProgressMode"]


class Progress:
    def __init__(
        self,
        total: int,
        tally: Any,
        mode: ProgressMode | str,
        interval_s: float,
        log: Callable[[str], None],
        pace: Callable[[], str] | None = None,
    ):
        mode = ProgressMode(mode)
        if mode is ProgressMode.AUTO:
            mode = ProgressMode.BAR if sys.stderr.isatty() else ProgressMode.LOG
        self.mode = mode
        self.total = total
        self.tally = tally
        self.interval_s = interval_s
        self.log = log
        self.pace = pace  # what the pacer is doing: its rate and window, so a user sees it learn
        self.started = time.monotonic()
        self._last_log = self.started
        bar = mode is ProgressMode.BAR
        self._bar = tqdm(total=total, unit="img", dynamic_ncols=True, file=sys.stderr) if bar else None

    def _finished(self) -> int:
        return self.tally.succeeded + self.tally.failed

    def _summary(self) -> str:
        t = self.tally
        text = f"failed {t.failed} · spent {humanize.money(t.spent)} · in flight {t.in_flight} · 429s {t.rate_limited}"
        return f"{text} · {self.pace()}" if self.pace else text

    def refresh(self) -> None:
        if self._bar is not None:
            self._bar.n = self._finished()
            self._bar.set_postfix_str(self._summary(), refresh=False)
            self._bar.refresh()
        elif self.mode is ProgressMode.LOG and time.monotonic() - self._last_log >= self.interval_s:
            self._last_log = time.monotonic()
            self.log(self._line())

    def _line(self) -> str:
        done = self._finished()
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = humanize.duration((self.total - done) / rate) if rate > 0 else "?"
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{stamp} progress {done:,}/{self.total:,} · {self._summary()} · {rate * 60:.1f}/min · ETA {eta}"

    def close(self) -> None:
        if self._bar is not None:
            self.refresh()
            self._bar.close()
        elif self.mode is ProgressMode.LOG:
            self.log(self._line())
