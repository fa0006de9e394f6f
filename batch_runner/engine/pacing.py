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
  a 600 RPM limit is reached in about 1.2 s. A 5 RPM key meets one 429 in its first window,
  and one more while its window is learned (below).
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
- **The limiter's shape** (engine/limiter_model.py). An even rate is right for buckets and
  rolling windows, but wastes a fixed window (it resets all at once: spend it as it opens) and
  misreads an in-flight limit (it binds on requests open, not on their spacing). So the pacer
  tests for both, and the rate above governs only while neither is known:
  * A 429 that names a reset time arms a probe at that time. There the pool sends as fast as
    the concurrency allows, one probe gap apart (1.5 × a 429's round trip, so that only one
    send meets the next 429), until a 429 names the next reset. The distance is the window's
    length, the admissions before it its quota. The hypothesis must fit every admission seen
    before it: no window aligned on it may have held more. A rolling window or a bucket fails
    that at once (at the reset only one slot, or a few, come back). A window that fits is then
    spent at each opening, plus a small margin for clock skew, up to its quota. A 429 inside a
    window lowers the quota to what that window admitted, and the next window probes one
    above it until the lower quota has been seen twice. A 429 that names no reset, or a reset
    off the grid, drops the model.
  * A 429 at the very start (fewer than three admissions), or one sent by a probe, says where a
    window is, not how fast to go: it neither cuts the rate nor pins the estimate. So a window
    already used by another job costs one 429 and a wait, not the night's pace.
  * An in-flight limit shows as 429s that come only with more requests open than any success
    had. After one episode of such 429s that name no time (two, if they name one), the pool
    holds that many minus one in flight and sends as soon as one frees, with no spacing.
  * `--rpm N` (`ceiling_rpm`) says the limit is N per minute: at most N sends in any minute
    (a minute and 1% long), spent at once, a probe gap apart, from the first send. Against a
    fixed or rolling minute of N that is the ideal client. Its first 429 ends the burst: the
    pool goes on evenly at N, under the rate rules above, and any window is learned as above.
  pacing.json keeps only what was tested: a window's shape once a whole window was seen, a
  rate limit once the rate held it.
- **Shared pauses and giving up.** A 429 that names a time (Retry-After or
  x-rate-limit-reset-at-utc, already converted to a monotonic `retry_at`) pauses every worker
  until then. A 429 that names none pauses every worker for a jittered time that doubles with
  each episode (0.5 s, 1 s, ... up to 60 s). An unreachable endpoint pauses the pool in the same
  way. The pacer gives up in three cases: the server asks for a wait longer than `max_wait_s`,
  429s continue with no success for `max_wait_s`, or the endpoint stays unreachable for
  `max_wait_s`. `give_up()` then returns the `GiveUp` that `acquire` raises, and the runner ends
  the run as temporary (exit 75).

The pieces, split as botocore splits its adaptive mode (retries/adaptive.py's ClientRateLimiter
over bucket.py's TokenBucket, throttling.py's CubicCalculator and a RateClocker): pure state with
no lock and no clock of its own, behind this facade, which owns the lock, the clock and the
wake-ups. engine/pacing_rate.py: the rate (slow start, CUBIC) and the measured send rate;
engine/pacing_latency.py: the latency estimate and Little's law; engine/pacing_gates.py: the
shared pause and the give-up clock; engine/pacing_backoff.py: the one exponential backoff;
engine/limiter_model.py: the limiter's shape.

All state is behind one lock. The clock and the sleep can be swapped out, and `try_acquire` never
blocks, so tests drive simulated servers on a fake clock deterministically (tests/pacing_sim.py).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batch_runner.engine.limiter_model import InFlightModel, MinuteAllowance, WindowModel
from batch_runner.engine.pacing_feedback import PacerFeedback
from batch_runner.engine.pacing_gates import GiveUpClock, PauseGate
from batch_runner.engine.pacing_latency import LatencyEstimator, little_window
from batch_runner.engine.pacing_rate import RateController, SendRateMeter
from batch_runner.engine.policies import GiveUp, Stopping

SNAPSHOT_VERSION = 1


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
    in_flight: int = 0  # requests open when it was sent, itself included
    probe: bool = False  # sent to find a window's shape: its 429 says nothing of the rate
    burst: bool = False  # sent in --rpm's burst: a 429 naming a time says nothing of the rate

    def succeeded(self, latency_s: float | None = None) -> None:
        """A 2xx. `latency_s` defaults to the time since `acquire` returned."""
        self.pacer.on_success(self, latency_s)

    def rate_limited(self, retry_at: float | None = None) -> None:
        """A 429. `retry_at` is when the server says to come back, on the pacer's clock."""
        self.pacer.on_rate_limited(self, retry_at)

    def unreachable(self, why: str = "the endpoint is unreachable") -> None:
        """Connection refused, DNS failure or connect timeout: no server answered."""
        self.pacer.on_unreachable(self, why)

    def answered(self) -> None:
        """Any other HTTP answer (4xx, 5xx). The endpoint is reachable; nothing else is learned."""
        self.pacer.on_answer()

    def release(self) -> None:
        """The request is over, whatever happened: free its slot. Calling it twice is harmless."""
        self.pacer.on_release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Pacer(PacerFeedback):
    """Adaptive rate and concurrency for a pool of workers that share one API key.

    ceiling_rpm      the user's --rpm: the limit is this many per minute; never exceeded in any
                     minute, and spent from the start
    start_rpm        where slow start begins when nothing is known (default 60 RPM)
    max_concurrency  most requests in flight, whatever Little's law says (default 32)
    max_wait_s       longest the pool waits on 429s or an unreachable endpoint before giving up
    clock, sleep     time.monotonic and a real wait by default; tests pass a fake clock
    """

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
        self._rates = RateController(start, self._floor, self._cap)
        self._send_rate = SendRateMeter()
        self._latency = LatencyEstimator()
        self._paused = PauseGate()
        self._clocks = GiveUpClock(max_wait_s)
        self._windows = WindowModel()
        self._slots = InFlightModel()
        self._minute = MinuteAllowance(ceiling_rpm, self.CEILING_MARGIN) if ceiling_rpm else None
        self._bursting = ceiling_rpm is not None  # --rpm: spend the minute at once, until a 429

        self._tat = -math.inf  # the earliest the next send may go (GCRA's theoretical arrival time)
        self._last_send: float | None = None
        self._in_flight: dict[int, float] = {}  # ticket serial -> sent_at
        self._limited_rtt: float | None = None  # how long a 429 takes to come back

        self._streak = 0  # 429 episodes since the last success
        self._down_streak = 0  # unreachable episodes since the last answer
        self.counts = {"sent": 0, "succeeded": 0, "rate_limited": 0, "cuts": 0, "unreachable": 0}

    # ------------------------------------------------------------------ reading

    @property
    def rate_rpm(self) -> float:
        """The paced rate now: a learned window's allowance while one governs."""
        with self._lock:
            return (self._windows.rpm() or self._rates.rate * 60) if self._windows.state == "known" else self._rate * 60

    @property
    def limit_rpm(self) -> float | None:
        """The limit as last seen (None before the first 429): a learned window's allowance."""
        with self._lock:
            return self._limit_rpm()

    def _limit_rpm(self) -> float | None:
        window = self._windows.rpm()
        if window is not None:
            return window
        return None if self._rates.w_max is None else self._rates.w_max * 60

    @property
    def shape(self) -> str:
        """What the limiter was found to be: 'window', 'in-flight' or 'rate' (bucket, rolling)."""
        with self._lock:
            if self._windows.state == "known":
                return "window"
            return "in-flight" if self._slots.state == "known" else "rate"

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
            return self._latency.srtt

    @property
    def paused_for_s(self) -> float:
        with self._lock:
            return self._paused.remaining(self._clock())

    def give_up(self) -> GiveUp | None:
        """Why the pool should stop waiting, once waiting has become pointless; else None."""
        with self._lock:
            return self._clocks.check(self._clock())

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
        if self._next_send_wait(now) > 0 or now < self._paused.until:
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
            return Ticket(self, 0, self._clock(), self._rate, self._rates.epoch, released=True)

    def wake(self) -> None:
        """Wake every waiting worker now, e.g. right after setting `stop`."""
        with self._cond:
            self._cond.notify_all()

    def _try_acquire(self, now: float) -> Ticket | float:
        gave_up = self._clocks.check(now)
        if gave_up is not None:
            raise gave_up
        if now < self._paused.until:
            # Wake at the give-up deadline too, so a long pause is not waited out in vain.
            return min(self._paused.until, self._clocks.deadline()) - now
        wait = self._next_send_wait(now)
        if wait > 0:
            return wait
        if len(self._in_flight) >= self._window(now):
            return self._window_wait(now)
        probe, burst = self._windows.state == "probing", self._bursting
        if self._shaped(now):
            self._tat = now  # a shape governs: the rate's spacing waits for nothing
        else:
            self._grow(now)
            interval = 1 / self._rate
            # A worker that woke a little late does not lose its slot for good: the next send may
            # come up to CATCH_UP of an interval early. Idle time earns nothing (no burst after it).
            base = self._tat if now - self._tat <= self.CATCH_UP * interval else now
            self._tat = base + interval
        self._last_send = now
        self._send_rate.record(now)
        if self._minute is not None:
            self._minute.record(now)
        self.counts["sent"] += 1
        serial = self.counts["sent"]
        self._in_flight[serial] = now
        self._windows.sent(serial, now)
        return Ticket(
            self, serial, now, self._rate, self._rates.epoch, in_flight=len(self._in_flight), probe=probe, burst=burst
        )

    def _shaped(self, now: float) -> bool:
        """A learned shape (or --rpm's burst) decides when the next send goes, not the rate."""
        return self._slots.state == "known" or self._windows.governs(now) or self._bursting

    def _probe_gap(self) -> float:
        if self._limited_rtt is None:
            gap = self.PROBE_GAP_UNKNOWN_S
        else:
            gap = max(self.PROBE_GAP_MIN_S, self.PROBE_GAP_RTT * self._limited_rtt)
        return min(gap, 1 / self._cap) if self._cap < math.inf else gap

    def _next_send_wait(self, now: float) -> float:
        """How long until the next send may go by the clock (0: now), before the window."""
        minute = self._minute.wait(now) if self._minute is not None else 0.0
        if self._slots.state == "known":
            return minute
        if self._windows.governs(now):
            return max(minute, self._windows.wait(now, self._probe_gap()))
        if self._bursting:
            last = self._last_send if self._last_send is not None else -math.inf
            return max(minute, last + self._probe_gap() - now)
        return max(minute, self._tat - now)

    def _window(self, now: float) -> int:
        if self._slots.state == "known":
            return min(self.max_concurrency, self._slots.limit or 1)
        if self._bursting or self._windows.governs(now):
            return self.max_concurrency
        latency = self._latency.high()
        if latency is None:
            latency = now - min(self._in_flight.values()) if self._in_flight else 0.0
        return little_window(self._rate, latency, self.HEADROOM, self.max_concurrency)

    def _window_wait(self, now: float) -> float:
        if (
            self._latency.srtt is None
            and self._in_flight
            and len(self._in_flight) < self.max_concurrency
            and not self._shaped(now)
        ):
            # The window opens as the oldest request ages: say when it will have room.
            oldest = min(self._in_flight.values())
            return max(1e-3, oldest + len(self._in_flight) / (self._rate * self.HEADROOM) - now)
        return math.inf  # a release will wake us

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
        srtt = self._latency.srtt
        top = min(self._cap, self.max_concurrency / srtt if srtt else math.inf)
        self._rates.grow(min(gap, interval), top)

    # ------------------------------------------------------------------ memory

    def snapshot(self) -> dict[str, Any]:
        """What was learned and tested, as JSON-able data, for the next run to start from. An
        estimate the rate never held (a first guess after one 429) is not kept."""
        with self._lock:
            limit = self._windows.rpm()
            rate = limit if limit is not None else self._rate * 60
            if limit is None and self._rates.tested is not None:
                limit = self._rates.tested * 60
            if limit is not None:
                rate = min(rate, limit)
            data: dict[str, Any] = {
                "version": SNAPSHOT_VERSION,
                "rate_rpm": round(rate, 4),
                "limit_rpm": None if limit is None else round(limit, 4),
                "latency_s": None if self._latency.srtt is None else round(self._latency.srtt, 4),
                "latency_dev_s": round(self._latency.rttvar, 4),
            }
            if self._slots.state == "known":
                data["in_flight_limit"] = self._slots.limit
            return data

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
                pacer._rates.resume(rate / 60, None if limit is None else limit / 60)
            if latency is not None:
                pacer._latency.srtt = latency
                pacer._latency.rttvar = positive("latency_dev_s") or latency / 4
        return pacer
