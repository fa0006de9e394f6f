"""Watching a run's attempts for two ways of paying (or waiting) for nothing.

- TimeoutWatch: a --timeout shorter than the endpoint takes to make an image gives up on every
  attempt, and each may still be billed (the server finishes and charges). Once a few attempts
  have timed out and no request has succeeded in this run, nothing suggests the next one will:
  the run stops (exit 4, like any configuration the API cannot work with) and names --timeout,
  the wait it saw and the fix, instead of retrying every item --max-attempts times.
- ReachWatch: an endpoint that cannot be reached (connection refused, a name that does not
  resolve, a TLS failure, a connect timeout) is said at once, in the log and in the progress
  bar, with when the run will give up; under --progress quiet, which holds the log back, one
  line goes to stderr once the wait has lasted a minute (cron mails it).

Both are pure: they are told what each attempt came to (by engine/runner.py) and a clock, and
answer with text. The thresholds are class attributes.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from batch_runner import humanize
from batch_runner.api import spec as api_spec
from batch_runner.api.client import ApiError, TransientError, Unreachable

Clock = Callable[[], float]


class TimeoutWatch:
    """Counts attempts that gave up at --timeout while nothing has succeeded in time."""

    STOP_AFTER = 3  # timed-out attempts with no success: enough to tell a setting from bad luck
    SHARE = 0.9  # an unanswered attempt that lasted this share of --timeout ran into it

    def __init__(self, timeout_s: float, per_image_s: float = api_spec.TYPICAL_LATENCY_S):
        self.timeout_s = timeout_s
        self.per_image_s = per_image_s
        self._lock = threading.Lock()
        self._succeeded = False
        self._timed_out = 0
        self._waits: list[float] = []

    def succeeded(self) -> None:
        """An answer came in time: the timeout can work, so this watch never stops the run."""
        with self._lock:
            self._succeeded = True

    def failed(self, exc: ApiError, waited_s: float) -> str | None:
        """The stop message once STOP_AFTER attempts ran into --timeout and none succeeded."""
        if not _timed_out(exc) or waited_s < self.timeout_s * self.SHARE:
            return None
        with self._lock:
            if self._succeeded:
                return None
            self._timed_out += 1
            self._waits.append(waited_s)
            if self._timed_out != self.STOP_AFTER:
                return None
            waits = list(self._waits)
        longest = max(waits)
        suggested = max(math.ceil(self.per_image_s * 3), math.ceil(longest * 3))
        return (
            f"timeout {self.timeout_s:g} s is too short: {len(waits)} attempts waited {longest:.1f} s each with no "
            f"answer and none has succeeded, while an image takes ~{self.per_image_s:g} s at this endpoint; each may "
            f"have been billed. Use timeout {suggested} or more (the default is 120), then run again"
        )


def _timed_out(exc: ApiError) -> bool:
    # No status line before the deadline: the request reached the server, which may bill it.
    return isinstance(exc, TransientError) and not exc.answered and exc.reached and exc.http_status is None


class ReachWatch:
    """When the endpoint stopped being reachable, why, and when the run will give up."""

    QUIET_NOTICE_AFTER_S = 60.0

    def __init__(
        self,
        max_wait_s: float,
        log: Callable[[str], None],
        notice: Callable[[str], None] | None = None,
        clock: Clock = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ):
        self.max_wait_s = max_wait_s
        self.log = log
        self.notice = notice  # under --progress quiet: straight to stderr
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._gives_up_at: datetime | None = None
        self._why = ""
        self._pooled = True  # the whole pool waits (and gives up at max_wait), not each item
        self._noticed = False

    def failed(self, exc: ApiError) -> None:
        """An attempt that got no answer: if the endpoint could not be reached, say so at once."""
        reason = unreachable_reason(exc)
        if reason is None:
            return
        why, pooled = reason
        with self._lock:
            first = self._down_since is None
            self._why, self._pooled = why, pooled
            if first:
                self._down_since = self._clock()
                self._gives_up_at = self._wall() + timedelta(seconds=self.max_wait_s)
                self._noticed = False
        if first:
            self.log(f"warning: {self._sentence()}")

    def answered(self) -> None:
        """Any answer (an image, an error, a 429): the endpoint is reachable again."""
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            self.log(f"the endpoint answered again after {humanize.duration(self._clock() - since)} unreachable")

    def tick(self) -> None:
        """Called now and then by the run: the quiet mode's one stderr line, after a minute."""
        with self._lock:
            due = (
                self.notice is not None
                and not self._noticed
                and self._down_since is not None
                and self._clock() - self._down_since >= self.QUIET_NOTICE_AFTER_S
            )
            if due:
                self._noticed = True
        if due and self.notice is not None:
            self.notice(f"batch-runner: {self._sentence()}")

    def bar(self) -> str:
        """For the progress line (', unreachable 12 s: …'), or '' while the endpoint answers."""
        with self._lock:
            if self._down_since is None:
                return ""
            down = self._clock() - self._down_since
            left = max(0.0, self.max_wait_s - down)
            ends = f"gives up in {humanize.duration(left)}" if self._pooled else "items fail after their max_attempts"
            return f", unreachable {humanize.duration(down)}: {self._why}; {ends}"

    def _sentence(self) -> str:
        with self._lock:
            down = 0.0 if self._down_since is None else self._clock() - self._down_since
            at = self._gives_up_at.strftime("%H:%M:%S UTC") if self._gives_up_at else "?"
            why = self._why
        waited = f" for {humanize.duration(down)}" if down >= 1 else ""
        if not self._pooled:
            return (
                f"the endpoint is unreachable{waited}: {why}. Each item is tried max_attempts times, then fails; "
                "fix the endpoint or the network, then retry the failed items"
            )
        return (
            f"the endpoint is unreachable{waited}: {why}. Retrying with backoff; the run gives up at {at} "
            f"(max_wait {humanize.duration(self.max_wait_s)}) and exits 75 if it stays unreachable"
        )


def unreachable_reason(exc: ApiError) -> tuple[str, bool] | None:
    """Why an attempt could not reach the endpoint (refused, DNS, connect timeout, TLS, a proxy),
    and whether the whole pool waits for it (the pacer pauses on Unreachable) rather than each
    item using up its attempts; None when the attempt reached a server."""
    if isinstance(exc, Unreachable):
        return exc.message, True
    if isinstance(exc, TransientError) and not exc.answered and "SSLError" in exc.message:
        return f"{exc.message}: the TLS handshake failed (a certificate, or http:// meant?)", False
    if isinstance(exc, TransientError) and not exc.answered and "ProxyError" in exc.message:
        return f"{exc.message}: the proxy refused or failed the connection", False
    return None


class AttemptWatch:
    """Both watches behind the few calls the runner makes."""

    def __init__(self, timeout: TimeoutWatch, reach: ReachWatch):
        self.timeout = timeout
        self.reach = reach

    def succeeded(self) -> None:
        self.timeout.succeeded()
        self.reach.answered()

    def bar(self) -> str:
        return self.reach.bar()

    def tick(self) -> None:
        self.reach.tick()

    def failed(self, exc: ApiError, waited_s: float) -> str | None:
        """The message to stop the run with, or None to go on."""
        if exc.answered:
            self.reach.answered()
        else:
            self.reach.failed(exc)
        return self.timeout.failed(exc, waited_s)


def watch_for(
    timeout_s: float, max_wait_s: float, log: Callable[[str], None], quiet: bool, warn: bool = True
) -> AttemptWatch:
    """The run's watch; logs at once when --timeout is shorter than an image takes (not for the
    built-in sandbox, whose images take milliseconds)."""
    from batch_runner.job.plan import timeout_warning

    if warn and (warning := timeout_warning(timeout_s)):
        log(f"warning: {warning}")
    notice = (lambda line: print(line, file=sys.stderr, flush=True)) if quiet else None
    return AttemptWatch(TimeoutWatch(timeout_s), ReachWatch(max_wait_s, log, notice))
