"""The paced rate: slow start, then CUBIC cuts and regrowth, as botocore's CubicCalculator, and the
measured send rate, as its RateClocker. Pure: the Pacer passes times in and holds the lock.
The reasons for every number are in engine/pacing.py's docstring. Rates are requests per second."""

from __future__ import annotations

from collections import deque


class SendRateMeter:
    """The rate actually sent over the last few sends (at least a second of them)."""

    def __init__(self) -> None:
        self._sends: deque[float] = deque()

    def record(self, now: float) -> None:
        self._sends.append(now)

    def measured(self, now: float, rate: float) -> float | None:
        horizon = max(1.0, 8 / rate)
        while self._sends and self._sends[0] < now - horizon:
            self._sends.popleft()
        if len(self._sends) < 4:
            return None
        span = now - self._sends[0]
        return (len(self._sends) - 1) / span if span > 0 else None


class RateController:
    """Slow start until the first cut, then a multiplicative cut per 429 episode and cubic regrowth
    towards w_max, the limit as last seen."""

    SLOW_START_DOUBLING_S = 0.35  # of sending at the rate: 60 -> 600 RPM in ~1.2 s
    BETA = 0.7  # the multiplicative cut (botocore's and CUBIC's)
    FIRST_LIMIT = 0.6  # slow start overshoots: its first 429 suggests a limit this far under
    PROBE_SHARE = 0.3  # a 429 while probing moves the limit this part of the way to it
    FAST_CONVERGENCE = 0.95  # a 429 at or under the limit: it was too high
    DRAIN = 0.9  # after a cut, run at most this much of the limit, so the limiter drains
    REGROW_SENDS = 30.0  # the cubic regains the limit over this many sends' worth of time...
    REGROW_MIN_S, REGROW_MAX_S = 2.0, 600.0  # ...but within these bounds
    DWELL = 1.0  # then holds the limit for another K...
    PROBE_STRETCH = 4.0  # ...then probes beyond it, four times slower than it regrew
    TESTED_SHARE = 0.97  # a limit is tested once the rate has held this much of it

    def __init__(self, rate: float, floor: float, cap: float) -> None:
        self.floor, self.cap = floor, cap
        self.rate = max(floor, min(rate, cap))
        self.slow_start = True  # until the first 429; under a ceiling it simply holds there
        self.w_max: float | None = None
        self.k = 1.0  # seconds of sending for the cubic to regain w_max
        self.since_cut = 0.0  # seconds of sending at the rate since the last cut
        self.epoch = 0  # cuts so far: a 429 for a request sent before the last cut does not cut again
        self.tested: float | None = None  # the last w_max the rate reached and held

    def grow(self, active_s: float, top: float) -> None:
        """Advance by `active_s` seconds of sending at the rate, never past `top`."""
        if self.rate >= top:
            self.rate = max(self.floor, top)
            return
        if self.slow_start:
            self.rate *= 2 ** (active_s / self.SLOW_START_DOUBLING_S)
        else:
            self.since_cut += active_s
            self.rate = self.cubic(self.since_cut)
        self.rate = max(self.floor, min(self.rate, top))
        if self.w_max is not None and self.rate >= self.TESTED_SHARE * self.w_max:
            self.tested = self.w_max

    def cubic(self, t: float) -> float:
        """β·w_max at t = 0, rising steeply then flattening to w_max at t = K; flat for DWELL·K;
        then probing beyond, PROBE_STRETCH times slower than it rose (+30% at 4K past the dwell)."""
        w_max, k = self.w_max or self.rate, self.k
        if t <= k:
            return w_max * (1 - (1 - self.BETA) * (1 - t / k) ** 3)
        x = (t - k * (1 + self.DWELL)) / (k * self.PROBE_STRETCH)
        return w_max * (1 + (1 - self.BETA) * max(0.0, x) ** 3)

    def start_cubic(self, w_max: float) -> None:
        """Regrow from the current rate towards w_max: the cubic's clock starts where its curve
        meets the current rate (at 0 after a plain cut, on the plateau when already there)."""
        self.w_max = w_max
        self.k = min(self.REGROW_MAX_S, max(self.REGROW_MIN_S, self.REGROW_SENDS / w_max))
        depth = min(1.0, max(0.0, (w_max - self.rate) / ((1 - self.BETA) * w_max)))
        self.since_cut = self.k * (1 - depth ** (1 / 3))

    def cut(self, drew: float) -> None:
        """A fresh 429 for a request sent at `drew` requests/s: estimate the limit, cut under it."""
        previous = self.w_max
        if previous is None:
            w_max = self.FIRST_LIMIT * drew
        elif drew > previous * 1.02:
            w_max = previous + self.PROBE_SHARE * (drew - previous)
        else:
            w_max = self.FAST_CONVERGENCE * drew
        self.rate = max(self.floor, min(self.cap, self.BETA * drew, self.DRAIN * w_max))
        self.start_cubic(w_max)
        self.slow_start = False
        self.epoch += 1

    def resume(self, rate: float, limit: float | None) -> None:
        """Start from an earlier run's rate, on the cubic: on its plateau if that was the limit."""
        self.rate = max(self.floor, min(self.cap, rate))
        self.slow_start = False
        self.start_cubic(max(self.rate, limit or rate))
        self.tested = self.w_max

    def hold(self, rate: float) -> None:
        """Go on from `rate` on the cubic's plateau: what a learned limiter shape ran at."""
        self.rate = max(self.floor, min(self.cap, rate))
        self.slow_start = False
        self.start_cubic(self.rate)
