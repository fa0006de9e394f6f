"""A discrete-event simulation of a worker pool sharing one Pacer against a rate-limited server.

Everything runs on a fake clock, so a simulated hour takes a fraction of a second and the
same seed gives the same run. Three limiters, as met in practice:

- RollingWindow: at most N requests in any window of W seconds (the sandbox's default); a 429
  says when the oldest request in the window leaves it.
- FixedWindow: at most N per window [kW, (k+1)W); a 429 says when the window resets.
- LeakyBucket: nginx's limit_req (rate r, burst b, nodelay); a 429 carries a fixed Retry-After
  (nginx sends none unless configured; `add_header Retry-After 1 always` is common).

429s are answered at once (a limiter rejects at admission); admitted requests take `latency_s`.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
import random
from dataclasses import dataclass, field

from batch_runner.engine.pacing import Pacer, Ticket


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class RollingWindow:
    def __init__(self, rpm: float, window_s: float = 60.0):
        self.limit = max(1, math.floor(rpm * window_s / 60 + 1e-9))
        self.window_s = window_s
        self.rate = rpm / 60
        self.times: collections.deque[float] = collections.deque()

    def admit(self, now: float) -> tuple[bool, float | None]:
        while self.times and self.times[0] <= now - self.window_s:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return False, self.times[0] + self.window_s
        self.times.append(now)
        return True, None


class FixedWindow:
    def __init__(self, rpm: float, window_s: float = 60.0, origin: float = 0.0):
        self.limit = max(1, math.floor(rpm * window_s / 60 + 1e-9))
        self.window_s = window_s
        self.rate = rpm / 60
        self.origin = origin
        self.current = None
        self.count = 0

    def admit(self, now: float) -> tuple[bool, float | None]:
        index = math.floor((now - self.origin) / self.window_s)
        if index != self.current:
            self.current, self.count = index, 0
        if self.count >= self.limit:
            return False, self.origin + (index + 1) * self.window_s
        self.count += 1
        return True, None


class LeakyBucket:
    """nginx limit_req: excess' = max(0, excess + 1 - rate*dt); reject when excess' > burst."""

    def __init__(self, rpm: float, burst: int = 0, retry_after_s: float | None = 1.0):
        self.rate = rpm / 60
        self.burst = burst
        self.retry_after_s = retry_after_s
        self.excess = 0.0
        self.last: float | None = None

    def admit(self, now: float) -> tuple[bool, float | None]:
        if self.last is None:
            self.last = now
            return True, None
        excess = max(0.0, self.excess + 1 - self.rate * (now - self.last))
        if excess > self.burst + 1e-9:
            return False, None if self.retry_after_s is None else now + self.retry_after_s
        self.excess, self.last = excess, now
        return True, None


@dataclass
class Result:
    ok_starts: list[float] = field(default_factory=list)
    limited: int = 0
    sent: int = 0
    max_in_flight: int = 0
    send_times: list[float] = field(default_factory=list)
    end: float = 0.0

    @property
    def share_429(self) -> float:
        return self.limited / self.sent if self.sent else 0.0

    def throughput(self) -> float:
        """Successful requests per second, at the limiter: first to last admitted start."""
        starts = self.ok_starts
        if len(starts) < 2:
            return 0.0
        return (len(starts) - 1) / (starts[-1] - starts[0])


def simulate(
    pacer: Pacer,
    clock: FakeClock,
    server,
    items: int,
    latency_s: float,
    jitter_s: float = 0.0,
    workers: int | None = None,
    wake_lateness_s: float = 0.001,
    seed: int = 0,
    honour_retry_at: bool = True,
    max_time_s: float = 1e6,
) -> Result:
    """Run `items` successes through `workers` simulated threads; returns what the server saw."""
    rng = random.Random(seed)
    workers = workers or pacer.max_concurrency
    result = Result()
    events: list[tuple[float, int, str, int, object]] = []
    order = itertools.count()
    waiting: set[int] = set()
    remaining = [items]
    start = clock.now

    def schedule(at: float, kind: str, worker: int, payload: object = None) -> None:
        heapq.heappush(events, (at, next(order), kind, worker, payload))

    for w in range(workers):
        schedule(clock.now, "try", w)

    def wake_all() -> None:
        for w in sorted(waiting):
            schedule(clock.now + rng.uniform(0, wake_lateness_s), "try", w)
        waiting.clear()

    in_flight = 0
    while events and remaining[0] > 0:
        at, _, kind, w, payload = heapq.heappop(events)
        clock.now = max(clock.now, at)
        if clock.now - start > max_time_s:
            break
        if kind == "try":
            if remaining[0] - in_flight <= 0:
                continue  # nothing left to send for this worker: it exits
            got = pacer.try_acquire()
            if isinstance(got, Ticket):
                in_flight += 1
                result.sent += 1
                result.send_times.append(clock.now)
                result.max_in_flight = max(result.max_in_flight, in_flight)
                ok, retry_at = server.admit(clock.now)
                if ok:
                    result.ok_starts.append(clock.now)
                    latency = max(0.0, latency_s + rng.uniform(-jitter_s, jitter_s))
                    schedule(clock.now + latency, "done", w, (got, None, True))
                else:
                    schedule(clock.now + 0.002, "done", w, (got, retry_at, False))
            elif math.isinf(got):
                waiting.add(w)
            else:
                schedule(clock.now + got + rng.uniform(0, wake_lateness_s), "try", w)
        else:
            ticket, retry_at, ok = payload
            in_flight -= 1
            if ok:
                remaining[0] -= 1
                ticket.succeeded()
            else:
                result.limited += 1
                ticket.rate_limited(retry_at if honour_retry_at else None)
            ticket.release()
            wake_all()
            schedule(clock.now, "try", w)
    result.end = clock.now
    return result
