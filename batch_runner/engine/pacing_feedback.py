"""What the pacer learns from each answer: the outcome half of engine/pacing.py's Pacer.

A Ticket reports its request's end here (on_success, on_rate_limited, on_unreachable,
on_answer, on_release); each handler takes the pacer's lock and feeds the pure pieces (the
rate controller, the latency estimate, the limiter models, the pause gate and the give-up
clock). The send half (acquire, the window, the next send's wait) stays on the Pacer; the
design note is in its module's docstring. Split out so that neither half is too long to read
in one sitting; the state is the Pacer's own, declared here for the type checker.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from batch_runner.engine.limiter_model import InFlightModel, WindowModel
from batch_runner.engine.pacing_backoff import jittered_backoff_s
from batch_runner.engine.pacing_gates import GiveUpClock, PauseGate
from batch_runner.engine.pacing_latency import LatencyEstimator
from batch_runner.engine.pacing_rate import RateController, SendRateMeter

if TYPE_CHECKING:
    from batch_runner.engine.pacing import Ticket


class PacerTuning:
    """The pacer's numbers, on a class of their own so the Pacer and its tests share them."""

    # The numbers, tuned in tests/pacing_sim.py against nginx-like, fixed-window, rolling-window
    # and in-flight limiters (5 to 1000 RPM, latencies 0.3 to 12.8 s). The rate's own are on
    # RateController, and repeated here because the tests and the README name them so.
    DEFAULT_START_RPM = 60.0  # one a second: a Free key (5 RPM) meets a 429 or two, once
    SLOW_START_DOUBLING_S = RateController.SLOW_START_DOUBLING_S
    BETA = RateController.BETA
    FIRST_LIMIT = RateController.FIRST_LIMIT
    PROBE_SHARE = RateController.PROBE_SHARE
    FAST_CONVERGENCE = RateController.FAST_CONVERGENCE
    DRAIN = RateController.DRAIN
    REGROW_SENDS = RateController.REGROW_SENDS
    REGROW_MIN_S, REGROW_MAX_S = RateController.REGROW_MIN_S, RateController.REGROW_MAX_S
    DWELL = RateController.DWELL
    PROBE_STRETCH = RateController.PROBE_STRETCH
    CEILING_MARGIN = 0.99  # pace a hair under --rpm: clock noise never puts N+1 in a minute
    FLOOR_RPM = 0.5  # never slower than one request every two minutes
    HEADROOM = 1.25  # Little's law window: rate x latency x 1.25, plus one
    BACKOFF_BASE_S, BACKOFF_CAP_S = 0.5, 60.0  # a 429 that names no time: 0.5 s, 1 s, 2 s ... 60 s
    UNREACHABLE_BASE_S, UNREACHABLE_CAP_S = 1.0, 60.0
    CATCH_UP = 0.25  # a send that woke late lets the next one go this much of an interval early
    POLL_S = 0.25  # the longest a waiting worker sleeps before it looks at `stop` again
    RATE_EVIDENCE = 3  # admissions before a 429 that names a time may say anything of the rate
    PROBE_GAP_MIN_S = 0.005  # a probe's sends go at least this far apart...
    PROBE_GAP_RTT = 1.5  # ...and this many 429 round trips, so that one send meets the next 429
    PROBE_GAP_UNKNOWN_S = 0.05  # ...or this, before any 429 came back


class PacerFeedback(PacerTuning):
    """The answer-handling half of the Pacer (which see); the state is the Pacer's."""

    max_wait_s: float
    counts: dict[str, int]
    _clock: Callable[[], float]
    _rng: random.Random
    _cond: threading.Condition
    _rates: RateController
    _send_rate: SendRateMeter
    _latency: LatencyEstimator
    _paused: PauseGate
    _clocks: GiveUpClock
    _windows: WindowModel
    _slots: InFlightModel
    _bursting: bool
    _tat: float
    _last_send: float | None
    _in_flight: dict[int, float]
    _limited_rtt: float | None
    _streak: int
    _down_streak: int

    # The rate controller's state, under the names the pacer's tests have always used.
    @property
    def _rate(self) -> float:
        return self._rates.rate

    @_rate.setter
    def _rate(self, value: float) -> None:
        self._rates.rate = value

    def _wake_for_slots(self) -> None:
        raise NotImplementedError  # the Pacer's: wake the workers that a freed slot lets send

    def on_release(self, ticket: Ticket) -> None:
        with self._cond:
            if ticket.released:
                return
            ticket.released = True
            self._in_flight.pop(ticket.serial, None)
            self._wake_for_slots()

    def on_success(self, ticket: Ticket, latency_s: float | None) -> None:
        with self._cond:
            self._latency.observe(self._clock() - ticket.sent_at if latency_s is None else latency_s)
            self._streak = 0
            self._clocks.succeeded()
            self._down_streak = 0
            if ticket.serial:
                self._windows.succeeded(ticket.sent_at)
                self._slots.succeeded(ticket.in_flight)
            self.counts["succeeded"] += 1
            self._wake_for_slots()

    def on_answer(self) -> None:
        with self._cond:
            self._clocks.answered()
            self._down_streak = 0

    def on_rate_limited(self, ticket: Ticket, retry_at: float | None) -> None:
        with self._cond:
            now = self._clock()
            self._clocks.answered()
            self._down_streak = 0
            self.counts["rate_limited"] += 1
            if ticket.serial:
                rtt = max(0.0, now - ticket.sent_at)
                self._limited_rtt = rtt if self._limited_rtt is None else (7 * self._limited_rtt + rtt) / 8
            fresh = ticket.epoch == self._rates.epoch  # sent after the last cut
            says_rate = self._says_rate(ticket, retry_at)
            probing = self._windows.state == "probing"
            if self._bursting and (retry_at is None or self._admitted() >= self.RATE_EVIDENCE):
                # --rpm's minute cannot be spent at once here (a bucket, or a shorter window):
                # go on evenly at N, as the limit the user gave.
                self._bursting = False
                self._windows.reject()
            self._windows.rate_limited(ticket.serial, retry_at, now)
            if probing and self._windows.state == "rejected" and self._windows.probed <= 1:
                # One slot came back at the reset, not a window's worth: a rolling limit, and this
                # is the 429 a paced send would have met there.
                # Cut as for that send: from the paced rate (see _cut).
                says_rate = self._admitted() >= self.RATE_EVIDENCE
            self._slots.rate_limited(ticket.in_flight, retry_at is None, fresh, ticket.probe or ticket.burst)
            if fresh:
                self._streak += 1
                if says_rate:
                    self._cut(now, ticket)
                else:
                    self._rates.epoch += 1  # a new episode all the same: its 429s pause once
            self._clocks.rate_limited(now, retry_at)
            if retry_at is not None:
                self._pause(retry_at)
            elif fresh:
                # No time given: back off per episode, jittered so that clients sharing the key
                # do not come back in step.
                self._pause(now + jittered_backoff_s(self._streak, self.BACKOFF_BASE_S, self.BACKOFF_CAP_S, self._rng))
            self._clocks.check(now)
            self._cond.notify_all()

    def _says_rate(self, ticket: Ticket, retry_at: float | None) -> bool:
        """Whether this 429 tells anything of the rate. Not a probe's or --rpm's burst's (sent
        to find a window's edge, faster than any rate), not one at the very start that names a
        time (the window was spent before us), and not one a learned shape explains."""
        if ticket.probe or (ticket.burst and retry_at is not None):
            return False
        if retry_at is not None and self._admitted() < self.RATE_EVIDENCE:
            return False
        return self._windows.state != "known" and self._slots.state != "known"

    def _admitted(self) -> int:
        """Sends the server let through so far, as far as is known: a 429 comes back at once."""
        return self.counts["sent"] - self.counts["rate_limited"]

    def _cut(self, now: float, ticket: Ticket) -> None:
        # A probe went faster than the rate, over a pause: its measured rate means nothing.
        measured = None if ticket.probe else self._send_rate.measured(now, self._rate)
        drew = min(ticket.rate, measured) if measured else ticket.rate
        self._rates.cut(drew)
        self.counts["cuts"] += 1
        if self._last_send is not None:
            self._tat = max(self._tat, self._last_send + 1 / self._rate)

    def _pause(self, until: float) -> None:
        self._paused.pause(until)
        # Resume one send at a time at the paced rate, never all at once.
        self._tat = max(self._tat, self._paused.until)

    def on_unreachable(self, ticket: Ticket, why: str) -> None:
        with self._cond:
            now = self._clock()
            self.counts["unreachable"] += 1
            self._clocks.unreachable(now, why)
            if now >= self._paused.until:  # not one of the requests that left before this pause
                self._down_streak += 1
                backoff = jittered_backoff_s(
                    self._down_streak, self.UNREACHABLE_BASE_S, self.UNREACHABLE_CAP_S, self._rng
                )
                # End the last pause at the deadline, so giving up is not late by a whole backoff.
                self._pause(min(now + backoff, (self._clocks.down_since or now) + self.max_wait_s))
            self._clocks.check(now)
            self._cond.notify_all()
