"""Adaptive pacing: one controller, shared by every worker, that learns the key's rate limit.

Segmind limits each key per minute, and users rarely know their limit (Free 5 RPM, Pro 50, other
pages say 60 to 1000). `Pacer` learns it from the server's answers and keeps just under it. With
`--rpm N` (`ceiling_rpm`) it starts at N and never goes faster.

How a worker uses it (the runner's `_attempt`)::

    with pacer.acquire(stop) as ticket:  # waits for the shared pause, the paced slot and a free slot
        ...send...
        ticket.succeeded()               # or .rate_limited(retry_at), .unreachable(why), .answered()

Design, and why:

- **Evenly spaced sends.** The whole pool sends 1/rate apart. This is a token bucket that holds at
  most one token (GCRA). Limiters with short memory, such as nginx's `limit_req` (a leaky bucket),
  reject bursts. After a pause the pool resumes one send at a time at the paced rate, so workers do
  not all fire at the reset and draw a second round of 429s.
- **Slow start.** With nothing known, the rate starts at 60 RPM and doubles every 0.35 s of
  sending at the rate until the first 429. A 429 comes back at admission, within milliseconds,
  long before a 12.8 s image is done. So growth follows time spent sending, not finished images:
  a 600 RPM limit is reached in about 1.2 s, and a 5 RPM key costs a handful of 429s once.
  Over the internet a 429 takes ~0.1-0.3 s to come back, so slow start overshoots a little more
  there: a few more 429s, once per run, and none on a run that starts from a snapshot.
- **Multiplicative cut and cubic regrowth: CUBIC, as in AWS botocore's adaptive retry mode.**
  botocore is in botocore/retries/{adaptive,throttling,bucket}.py. A 429 cuts the rate to
  β × the rate that drew it, with β = 0.7 as in botocore. "The rate that drew it" is the measured
  send rate when that is lower, as in botocore. The rate then regrows along a cubic: fast at
  first, flat at w_max (the limit as last seen), then probing beyond it, slowly at first.
  We chose this over Netflix concurrency-limits' AIMD (AIMDLimit: +1 per round, × 0.9 on a drop)
  for three reasons:
  * A rate limit is fixed, so the last known limit is the best guess. CUBIC spends most of its
    time on the plateau just under it. AIMD's sawtooth spends its time spread between β and 1 of
    it, about 85% on average at β = 0.7, which is under the 90% target.
  * AIMD's step is in absolute units, and no single step suits limits from 5 to 1000 RPM. The
    cubic here is scaled to the limit: it regrows over ~30 sends' worth of time (at least 2 s),
    so it behaves the same at any limit.
  * Every probe over the limit costs a 429 and a shared pause. nginx's `Retry-After: 1` is a
    whole second of capacity at 10 r/s. The cubic probes rarely and gently: it stays flat for
    another K, and probes four times slower than it regrew.
  Gradient2, which adjusts on a latency gradient, is not used for the rate: a rate limiter does
  not queue, so latency says nothing about it. Latency only sizes the concurrency window.
- **Estimating the limit.** Limiters with a burst, or with a window, hide an overshoot until
  their allowance runs out. So the rate that drew a 429 is an upper bound, not the limit. The
  estimate w_max is set as follows:
  * First 429, at the end of slow start: 0.6 × that rate. Slow start has overshot by then.
  * A 429 while probing above w_max: w_max moves 30% of the way towards that rate.
  * A 429 at or below w_max: w_max was too high, and becomes 0.95 × that rate. This is CUBIC's
    "fast convergence", made gentler.
  After a cut the rate is at most 0.9 × w_max, so the limiter can drain. Two more rules depart
  from botocore, both for per-minute windows whose 429s come late:
  * The cubic's clock runs only while sending at the rate, so a 60 s pause does not regrow the
    rate to the top.
  * A 429 for a request sent before the last cut does not cut again.
- **Concurrency from Little's law.** The window, the number of requests allowed in flight, is
  rate × latency × 1.25 + 1, up to `max_concurrency`. Latency here is a high estimate: mean plus
  two deviations, as in TCP's RTO. Until a latency is measured, the age of the oldest request in
  flight stands in for it, so the window opens as fast as requests are admitted. The rate stops
  growing at max_concurrency / latency: beyond it the window binds, and a larger rate would only
  turn each batch of releases into a burst.
  The default `max_concurrency` is 32. A Pro key (50 RPM at ~12.8 s, ~11 in flight) runs at its
  ceiling with room for slow answers, and 32 slots cover up to ~120 RPM at 12.8 s.
- **Shared pauses and giving up.** A 429 that names a time (Retry-After or
  x-rate-limit-reset-at-utc, already converted to a monotonic `retry_at`) pauses every worker
  until then. A 429 that names none pauses every worker for a jittered time that doubles with
  each episode (0.5 s, 1 s, ... up to 60 s). An unreachable endpoint pauses the pool in the same
  way. The pacer gives up in three cases: the server asks for a wait longer than `max_wait_s`,
  429s continue with no success for `max_wait_s`, or the endpoint stays unreachable for
  `max_wait_s`. `give_up()` then returns the `GiveUp` that `acquire` raises, and the runner ends
  the run as temporary (exit 75).

All state is behind one lock. The clock and the sleep can be swapped out, and `try_acquire` never
blocks, so tests drive simulated servers on a fake clock deterministically (tests/pacing_sim.py).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batch_runner.engine.policies import GiveUp, Stopping

SNAPSHOT_VERSION = 1


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


@dataclass(eq=False)
class Ticket:
    """Permission to send one request. Report what happened at most once, then release the
    ticket; a `with` block releases it."""

    pacer: Pacer = field(repr=False)
    serial: int
    sent_at: float
    rate: float  # the paced rate when it was sent, requests/s
    epoch: int  # how many cuts came before it: a 429 for an older epoch does not cut again
    released: bool = False

    def succeeded(self, latency_s: float | None = None) -> None:
        """A 2xx. `latency_s` defaults to the time since `acquire` returned."""
        self.pacer._succeeded(self, latency_s)

    def rate_limited(self, retry_at: float | None = None) -> None:
        """A 429. `retry_at` is when the server says to come back, on the pacer's clock."""
        self.pacer._rate_limited(self, retry_at)

    def unreachable(self, why: str = "the endpoint is unreachable") -> None:
        """Connection refused, DNS failure or connect timeout: no server answered."""
        self.pacer._unreachable(self, why)

    def answered(self) -> None:
        """Any other HTTP answer (4xx, 5xx). The endpoint is reachable; nothing else is learned."""
        self.pacer._answered()

    def release(self) -> None:
        """The request is over, whatever happened: free its slot. Calling it twice is harmless."""
        self.pacer._release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Pacer:
    """Adaptive rate and concurrency for a pool of workers that share one API key.

    ceiling_rpm      the user's --rpm: never exceeded (a hair under it), and the starting rate
    start_rpm        where slow start begins when nothing is known (default 60 RPM)
    max_concurrency  most requests in flight, whatever Little's law says (default 32)
    max_wait_s       longest the pool waits on 429s or an unreachable endpoint before giving up
    clock, sleep     time.monotonic and a real wait by default; tests pass a fake clock
    """

    # The numbers, tuned in tests/pacing_sim.py against nginx-like, fixed-window and rolling-window
    # limiters (5 to 1000 RPM, latencies 0.3 to 12.8 s):
    DEFAULT_START_RPM = 60.0  # one a second: a Free key (5 RPM) meets a 429 or two, once
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
    CEILING_MARGIN = 0.99  # pace a hair under --rpm: clock noise never puts N+1 in a minute
    FLOOR_RPM = 0.5  # never slower than one request every two minutes
    HEADROOM = 1.25  # Little's law window: rate x latency x 1.25, plus one
    BACKOFF_BASE_S, BACKOFF_CAP_S = 0.5, 60.0  # a 429 that names no time: 0.5 s, 1 s, 2 s ... 60 s
    UNREACHABLE_BASE_S, UNREACHABLE_CAP_S = 1.0, 60.0
    CATCH_UP = 0.25  # a send that woke late lets the next one go this much of an interval early
    POLL_S = 0.25  # the longest a waiting worker sleeps before it looks at `stop` again

    def __init__(
        self,
        ceiling_rpm: float | None = None,
        start_rpm: float | None = None,
        max_concurrency: int = 32,
        max_wait_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
    ):
        if ceiling_rpm is not None and not ceiling_rpm > 0:
            raise ValueError("ceiling_rpm must be positive")
        if start_rpm is not None and not start_rpm > 0:
            raise ValueError("start_rpm must be positive")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.ceiling_rpm = ceiling_rpm
        self.max_concurrency = max_concurrency
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._timing = False  # a worker in acquire() is waiting for the clock (see _wait)
        self._handing_on = False  # a watcher that got its ticket has woken a worker to take over

        # Rates are kept in requests per second; the API speaks RPM.
        self._cap = ceiling_rpm / 60 * self.CEILING_MARGIN if ceiling_rpm else math.inf
        self._floor = min(self.FLOOR_RPM / 60, self._cap)
        if start_rpm:
            start = start_rpm / 60
        else:
            start = self._cap if ceiling_rpm else self.DEFAULT_START_RPM / 60
        self._rate = max(self._floor, min(start, self._cap))
        self._slow_start = True  # until the first 429; under a ceiling it simply holds there
        self._w_max: float | None = None  # the limit as last seen
        self._k = 1.0  # seconds of sending for the cubic to regain _w_max
        self._since_cut = 0.0  # seconds of sending at the rate since the last cut
        self._epoch = 0

        self._tat = -math.inf  # the earliest the next send may go (GCRA's theoretical arrival time)
        self._last_send: float | None = None
        self._sends: deque[float] = deque()  # recent send times: the measured send rate
        self._pause_until = -math.inf
        self._in_flight: dict[int, float] = {}  # ticket serial -> sent_at

        self._srtt: float | None = None  # smoothed latency of successes (RFC 6298)
        self._rttvar = 0.0

        self._streak = 0  # 429 episodes (cuts) since the last success
        self._limited_since: float | None = None  # the first 429 since the last success
        self._down_since: float | None = None  # the first unreachable attempt since the last answer
        self._down_streak = 0
        self._down_why = ""
        self._give_up: GiveUp | None = None
        self.counts = {"sent": 0, "succeeded": 0, "rate_limited": 0, "cuts": 0, "unreachable": 0}

    # ------------------------------------------------------------------ reading

    @property
    def rate_rpm(self) -> float:
        """The paced rate now."""
        with self._lock:
            return self._rate * 60

    @property
    def limit_rpm(self) -> float | None:
        """The limit as last seen (None before the first 429)."""
        with self._lock:
            return None if self._w_max is None else self._w_max * 60

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    @property
    def window(self) -> int:
        """How many requests may be in flight now (Little's law, up to max_concurrency)."""
        with self._lock:
            return self._window(self._clock())

    @property
    def latency_s(self) -> float | None:
        with self._lock:
            return self._srtt

    @property
    def paused_for_s(self) -> float:
        with self._lock:
            return max(0.0, self._pause_until - self._clock())

    def give_up(self) -> GiveUp | None:
        """Why the pool should stop waiting, once waiting has become pointless; else None."""
        with self._lock:
            return self._check_give_up(self._clock())

    def give_up_reason(self) -> str | None:
        """'rate-limited' or 'unreachable' once the pacer has given up; else None."""
        gave_up = self.give_up()
        return gave_up.reason if gave_up else None

    # ------------------------------------------------------------------ sending

    def acquire(self, stop: threading.Event) -> Ticket:
        """Block until this worker may send. Raises Stopping once `stop` is set, and GiveUp
        once the pacer has given up."""
        with self._cond:
            timing = False  # this worker is the one waiting for the clock (the next send time)
            try:
                while True:
                    if stop.is_set():
                        raise Stopping()
                    got = self._try_acquire(self._clock())
                    if isinstance(got, Ticket):
                        return got
                    if self._sleep is None:
                        timing = self._wait(got, timing)
                        continue
                    delay = min(got, self.POLL_S)
                    self._cond.release()
                    try:
                        self._sleep(delay)
                    finally:
                        self._cond.acquire()
            finally:
                if timing:
                    # Hand the clock on: one parked worker takes the next send time.
                    self._timing = False
                    self._handing_on = True  # a release right after this need not wake another
                    self._cond.notify()

    def _wait(self, got: float, timing: bool) -> bool:
        """Under the lock: wait on the condition; True while this worker is the clock watcher.
        Only one worker sleeps until the next send time; the others park until it hands the
        clock on (or a release or an outcome wakes one), else each send would wake the whole
        pool to find one slot, several context switches per request."""
        if got < math.inf and (timing or not self._timing):
            self._timing = timing = True
            self._cond.wait(min(got, self.POLL_S))
            self._handing_on = False
            return True
        if timing:  # waiting for a release now, not the clock: let another worker watch it
            self._timing = False
        self._cond.wait(self.POLL_S)  # still looks at `stop` and giving up now and then
        self._handing_on = False
        return False

    def _wake_for_slots(self) -> None:
        """Under the lock, after a release or an outcome: wake as many workers as may send now,
        or, when the clock is what they wait for, one to watch it if nobody does."""
        now = self._clock()
        if now < self._tat or now < self._pause_until:
            if not (self._timing or self._handing_on):
                self._cond.notify()
            return
        free = self._window(now) - len(self._in_flight)
        if free > 0:
            self._cond.notify(free)

    def try_acquire(self) -> Ticket | float:
        """A ticket, or how long to wait before asking again (math.inf: until a release).
        Never blocks. Raises GiveUp."""
        with self._lock:
            return self._try_acquire(self._clock())

    def outside(self) -> Ticket:
        """A ticket for a request the pacer did not admit (an async job's poll), so that its
        429 still cuts the rate and pauses every worker, and an unreachable endpoint still
        counts towards giving up. It holds no slot: nothing to release."""
        with self._lock:
            return Ticket(self, 0, self._clock(), self._rate, self._epoch, released=True)

    def wake(self) -> None:
        """Wake every waiting worker now, e.g. right after setting `stop`."""
        with self._cond:
            self._cond.notify_all()

    def _try_acquire(self, now: float) -> Ticket | float:
        gave_up = self._check_give_up(now)
        if gave_up is not None:
            raise gave_up
        if now < self._pause_until:
            # Wake at the give-up deadline too, so a long pause is not waited out in vain.
            return min(self._pause_until, self._deadline()) - now
        if now < self._tat:
            return self._tat - now
        if len(self._in_flight) >= self._window(now):
            return self._window_wait(now)
        self._grow(now)
        interval = 1 / self._rate
        # A worker that woke a little late does not lose its slot for good: the next send may
        # come up to CATCH_UP of an interval early. Idle time earns nothing (no burst after it).
        base = self._tat if now - self._tat <= self.CATCH_UP * interval else now
        self._tat = base + interval
        self._last_send = now
        self._sends.append(now)
        self.counts["sent"] += 1
        ticket = Ticket(self, self.counts["sent"], now, self._rate, self._epoch)
        self._in_flight[ticket.serial] = now
        return ticket

    def _window(self, now: float) -> int:
        if self._srtt is not None:
            latency = self._srtt + 2 * self._rttvar
        else:
            latency = now - min(self._in_flight.values()) if self._in_flight else 0.0
        wanted = math.ceil(self._rate * latency * self.HEADROOM) + 1
        return max(1, min(self.max_concurrency, wanted))

    def _window_wait(self, now: float) -> float:
        if self._srtt is None and self._in_flight and len(self._in_flight) < self.max_concurrency:
            # The window opens as the oldest request ages: say when it will have room.
            oldest = min(self._in_flight.values())
            return max(1e-3, oldest + len(self._in_flight) / (self._rate * self.HEADROOM) - now)
        return math.inf  # a release will wake us

    def _measured_rate(self, now: float) -> float | None:
        horizon = max(1.0, 8 / self._rate)
        while self._sends and self._sends[0] < now - horizon:
            self._sends.popleft()
        if len(self._sends) < 4:
            return None
        span = now - self._sends[0]
        return (len(self._sends) - 1) / span if span > 0 else None

    def _grow(self, now: float) -> None:
        """Advance growth by the time spent sending at the rate since the last send."""
        if self._last_send is None:
            return
        interval = 1 / self._rate
        gap = now - self._last_send
        if gap > 2 * interval:
            return  # sending at under half the rate does not test it, so it must not grow
        # Past max_concurrency / latency the window binds, not the rate: growing further would
        # test nothing, and would turn each batch of releases into a burst.
        top = min(self._cap, self.max_concurrency / self._srtt if self._srtt else math.inf)
        if self._rate >= top:
            self._rate = max(self._floor, top)
            return
        active = min(gap, interval)
        if self._slow_start:
            self._rate *= 2 ** (active / self.SLOW_START_DOUBLING_S)
        else:
            self._since_cut += active
            self._rate = self._cubic(self._since_cut)
        self._rate = max(self._floor, min(self._rate, top))

    def _cubic(self, t: float) -> float:
        """β·w_max at t = 0, rising steeply then flattening to w_max at t = K; flat for DWELL·K;
        then probing beyond, PROBE_STRETCH times slower than it rose (+30% at 4K past the dwell)."""
        w_max, k = self._w_max or self._rate, self._k
        if t <= k:
            return w_max * (1 - (1 - self.BETA) * (1 - t / k) ** 3)
        x = (t - k * (1 + self.DWELL)) / (k * self.PROBE_STRETCH)
        return w_max * (1 + (1 - self.BETA) * max(0.0, x) ** 3)

    def _start_cubic(self, w_max: float) -> None:
        """Regrow from the current rate towards w_max: the cubic's clock starts where its curve
        meets the current rate (at 0 after a plain cut, on the plateau when already there)."""
        self._w_max = w_max
        self._k = min(self.REGROW_MAX_S, max(self.REGROW_MIN_S, self.REGROW_SENDS / w_max))
        depth = min(1.0, max(0.0, (w_max - self._rate) / ((1 - self.BETA) * w_max)))
        self._since_cut = self._k * (1 - depth ** (1 / 3))

    # ------------------------------------------------------------------ outcomes

    def _release(self, ticket: Ticket) -> None:
        with self._cond:
            if ticket.released:
                return
            ticket.released = True
            self._in_flight.pop(ticket.serial, None)
            self._wake_for_slots()

    def _succeeded(self, ticket: Ticket, latency_s: float | None) -> None:
        with self._cond:
            latency = self._clock() - ticket.sent_at if latency_s is None else latency_s
            if latency >= 0:
                if self._srtt is None:
                    self._srtt, self._rttvar = latency, latency / 2
                else:
                    self._rttvar += (abs(self._srtt - latency) - self._rttvar) / 4
                    self._srtt += (latency - self._srtt) / 8
            self._streak = 0
            self._limited_since = None
            self._reachable()
            self.counts["succeeded"] += 1
            self._wake_for_slots()

    def _answered(self) -> None:
        with self._cond:
            self._reachable()

    def _reachable(self) -> None:
        self._down_since = None
        self._down_streak = 0

    def _rate_limited(self, ticket: Ticket, retry_at: float | None) -> None:
        with self._cond:
            now = self._clock()
            self._reachable()
            self.counts["rate_limited"] += 1
            if self._limited_since is None:
                self._limited_since = now
            fresh = ticket.epoch == self._epoch  # sent after the last cut
            if fresh:
                self._cut(now, ticket)
            if retry_at is not None:
                if retry_at - now > self.max_wait_s and self._give_up is None:
                    self._give_up = GiveUp(
                        "rate-limited",
                        f"the server asks to wait {_seconds(retry_at - now)}, "
                        f"longer than the maximum wait of {_seconds(self.max_wait_s)}",
                    )
                self._pause(retry_at)
            elif fresh:
                # No time given: back off per episode, jittered so that clients sharing the key
                # do not come back in step.
                backoff = min(self.BACKOFF_CAP_S, self.BACKOFF_BASE_S * 2 ** (self._streak - 1))
                self._pause(now + backoff * self._rng.uniform(0.5, 1.0))
            self._check_give_up(now)
            self._cond.notify_all()

    def _cut(self, now: float, ticket: Ticket) -> None:
        measured = self._measured_rate(now)
        drew = min(ticket.rate, measured) if measured else ticket.rate
        previous = self._w_max
        if previous is None:
            w_max = self.FIRST_LIMIT * drew
        elif drew > previous * 1.02:
            w_max = previous + self.PROBE_SHARE * (drew - previous)
        else:
            w_max = self.FAST_CONVERGENCE * drew
        self._rate = max(self._floor, min(self._cap, self.BETA * drew, self.DRAIN * w_max))
        self._start_cubic(w_max)
        self._slow_start = False
        self._epoch += 1
        self._streak += 1
        self.counts["cuts"] += 1
        if self._last_send is not None:
            self._tat = max(self._tat, self._last_send + 1 / self._rate)

    def _pause(self, until: float) -> None:
        self._pause_until = max(self._pause_until, until)
        # Resume one send at a time at the paced rate, never all at once.
        self._tat = max(self._tat, self._pause_until)

    def _unreachable(self, ticket: Ticket, why: str) -> None:
        with self._cond:
            now = self._clock()
            self.counts["unreachable"] += 1
            self._down_why = why
            if self._down_since is None:
                self._down_since = now
            if now >= self._pause_until:  # not one of the requests that left before this pause
                self._down_streak += 1
                backoff = min(self.UNREACHABLE_CAP_S, self.UNREACHABLE_BASE_S * 2 ** (self._down_streak - 1))
                # End the last pause at the deadline, so giving up is not late by a whole backoff.
                self._pause(min(now + backoff * self._rng.uniform(0.5, 1.0), self._down_since + self.max_wait_s))
            self._check_give_up(now)
            self._cond.notify_all()

    def _deadline(self) -> float:
        starts = [t for t in (self._limited_since, self._down_since) if t is not None]
        return min(starts) + self.max_wait_s if starts else math.inf

    def _check_give_up(self, now: float) -> GiveUp | None:
        if self._give_up is None:
            if self._down_since is not None and now - self._down_since >= self.max_wait_s:
                self._give_up = GiveUp(
                    "unreachable", f"{self._down_why} (unreachable for {_seconds(now - self._down_since)})"
                )
            elif self._limited_since is not None and now - self._limited_since >= self.max_wait_s:
                self._give_up = GiveUp(
                    "rate-limited", f"the server has answered only 429 for {_seconds(now - self._limited_since)}"
                )
        return self._give_up

    # ------------------------------------------------------------------ memory

    def snapshot(self) -> dict[str, Any]:
        """What was learned, as JSON-able data, for the next run to start from."""
        with self._lock:
            return {
                "version": SNAPSHOT_VERSION,
                "rate_rpm": round(self._rate * 60, 4),
                "limit_rpm": None if self._w_max is None else round(self._w_max * 60, 4),
                "latency_s": None if self._srtt is None else round(self._srtt, 4),
                "latency_dev_s": round(self._rttvar, 4),
            }

    @classmethod
    def from_snapshot(cls, snapshot: Any, **kwargs: Any) -> Pacer:
        """A pacer that starts from what an earlier run learned; keyword arguments as for
        Pacer(). A missing, older or malformed snapshot gives a fresh pacer: it is only a hint,
        and a ceiling still wins over it."""
        pacer = cls(**kwargs)
        data = snapshot if isinstance(snapshot, dict) and snapshot.get("version") == SNAPSHOT_VERSION else {}

        def positive(name: str) -> float | None:
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None
            return float(value) if math.isfinite(value) and value > 0 else None

        rate, limit, latency = positive("rate_rpm"), positive("limit_rpm"), positive("latency_s")
        with pacer._lock:
            if rate is not None:
                # Start where the last run was, on the cubic: on its plateau if that was the limit.
                pacer._rate = max(pacer._floor, min(pacer._cap, rate / 60))
                pacer._slow_start = False
                pacer._start_cubic(max(pacer._rate, (limit or rate) / 60))
            if latency is not None:
                pacer._srtt = latency
                pacer._rttvar = positive("latency_dev_s") or latency / 4
        return pacer
