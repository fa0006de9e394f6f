"""A discrete-event simulation of a worker pool sharing one Pacer against a rate-limited server.

Everything runs on a fake clock, so a simulated hour takes a fraction of a second and the
same seed gives the same run. The limiters, as met in practice:

- RollingWindow: at most N requests in any window of W seconds (the sandbox's default); a 429
  says when the oldest request in the window leaves it.
- FixedWindow: at most N per window [kW, (k+1)W); a 429 says when the window resets.
  `used` requests of the window the run starts in were spent before it (another job, last night).
- LeakyBucket: nginx's limit_req (rate r, burst b, nodelay); a 429 carries a fixed Retry-After
  (nginx sends none unless configured; `add_header Retry-After 1 always` is common). With a
  large burst it is a token bucket (300 RPM, burst 60).
- InFlightLimit: at most N requests open at once, whatever the rate; a 429 names no time.
- LimitDrop: a rolling or fixed window whose limit changes at a given time (a plan downgrade,
  another job starting on the key).

`simulate` drives one pacer, `simulate_shared` several on one limiter (two processes on one
key), and `ideal` is the client that knows the limiter: it sends whenever the limiter would
admit and a worker is free. Ratios are the ideal's span over the pacer's, start to last image.

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

    def next_admit(self, now: float) -> float:
        while self.times and self.times[0] <= now - self.window_s:
            self.times.popleft()
        return now if len(self.times) < self.limit else self.times[0] + self.window_s


class FixedWindow:
    def __init__(self, rpm: float, window_s: float = 60.0, origin: float = 0.0, used: int = 0):
        self.limit = max(1, math.floor(rpm * window_s / 60 + 1e-9))
        self.window_s = window_s
        self.rate = rpm / 60
        self.origin = origin
        self.current = None
        self.count = 0
        self.used = used  # spent in the first window seen, before the run

    def _enter(self, now: float) -> int:
        index = math.floor((now - self.origin) / self.window_s)
        if index != self.current:
            self.count = self.used if self.current is None else 0
            self.current = index
        return index

    def admit(self, now: float) -> tuple[bool, float | None]:
        index = self._enter(now)
        if self.count >= self.limit:
            return False, self.origin + (index + 1) * self.window_s
        self.count += 1
        return True, None

    def next_admit(self, now: float) -> float:
        index = self._enter(now)
        return now if self.count < self.limit else self.origin + (index + 1) * self.window_s


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

    def next_admit(self, now: float) -> float:
        if self.last is None:
            return now
        need = self.excess + 1 - self.burst  # the leak that must happen first
        return max(now, self.last + need / self.rate) if need > 1e-9 else now


class InFlightLimit:
    """At most `limit` requests open at once; a 429 names no time."""

    def __init__(self, limit: int, rate_hint: float = 0.0):
        self.limit = limit
        self.open = 0
        self.rate = rate_hint  # unused by the limiter: ratios here are against `ideal`

    def admit(self, now: float) -> tuple[bool, float | None]:
        if self.open >= self.limit:
            return False, None
        self.open += 1
        return True, None

    def finish(self, now: float) -> None:
        self.open -= 1

    def next_admit(self, now: float) -> float:
        return now if self.open < self.limit else math.inf


class LimitDrop:
    """A RollingWindow or FixedWindow whose limit becomes `rpm_after` at time `at`."""

    def __init__(self, inner, rpm_after: float, at: float):
        self.inner, self.rpm_after, self.at = inner, rpm_after, at
        self.rate = inner.rate

    def _switch(self, now: float) -> None:
        if now >= self.at and self.rate != self.rpm_after / 60:
            self.inner.limit = max(1, math.floor(self.rpm_after * self.inner.window_s / 60 + 1e-9))
            self.rate = self.inner.rate = self.rpm_after / 60

    def admit(self, now: float) -> tuple[bool, float | None]:
        self._switch(now)
        return self.inner.admit(now)

    def next_admit(self, now: float) -> float:
        self._switch(now)
        soon = self.inner.next_admit(now)
        return min(soon, self.at) if now < self.at else soon


@dataclass
class Result:
    ok_starts: list[float] = field(default_factory=list)
    limited: int = 0
    sent: int = 0
    max_in_flight: int = 0
    send_times: list[float] = field(default_factory=list)
    limited_times: list[float] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0

    @property
    def share_429(self) -> float:
        return self.limited / self.sent if self.sent else 0.0

    @property
    def span(self) -> float:
        """From the run's start to its last image."""
        return self.end - self.start

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
    [result] = simulate_shared(
        [(pacer, items)],
        clock,
        server,
        latency_s,
        jitter_s,
        workers,
        wake_lateness_s,
        seed,
        honour_retry_at,
        max_time_s,
    )
    return result


def simulate_shared(
    clients: list[tuple[Pacer, int]],
    clock: FakeClock,
    server,
    latency_s: float,
    jitter_s: float = 0.0,
    workers: int | None = None,
    wake_lateness_s: float = 0.001,
    seed: int = 0,
    honour_retry_at: bool = True,
    max_time_s: float = 1e6,
) -> list[Result]:
    """Several pacers (processes), each with its own items and workers, on one limiter (one key)."""
    rng = random.Random(seed)
    results = [Result(start=clock.now) for _ in clients]
    events: list[tuple[float, int, str, int, int, object]] = []
    order = itertools.count()
    waiting: list[set[int]] = [set() for _ in clients]
    remaining = [items for _, items in clients]
    in_flight = [0 for _ in clients]
    start = clock.now
    finish = getattr(server, "finish", None)

    def schedule(at: float, kind: str, c: int, worker: int, payload: object = None) -> None:
        heapq.heappush(events, (at, next(order), kind, c, worker, payload))

    for c, (pacer, _) in enumerate(clients):
        for w in range(workers or pacer.max_concurrency):
            schedule(clock.now, "try", c, w)

    def wake_all(c: int) -> None:
        for w in sorted(waiting[c]):
            schedule(clock.now + rng.uniform(0, wake_lateness_s), "try", c, w)
        waiting[c].clear()

    while events and any(r > 0 for r in remaining):
        at, _, kind, c, w, payload = heapq.heappop(events)
        clock.now = max(clock.now, at)
        if clock.now - start > max_time_s:
            break
        pacer, result = clients[c][0], results[c]
        if kind == "try":
            if remaining[c] - in_flight[c] <= 0:
                continue  # nothing left to send for this worker: it exits
            got = pacer.try_acquire()
            if isinstance(got, Ticket):
                in_flight[c] += 1
                result.sent += 1
                result.send_times.append(clock.now)
                result.max_in_flight = max(result.max_in_flight, in_flight[c])
                ok, retry_at = server.admit(clock.now)
                if ok:
                    result.ok_starts.append(clock.now)
                    latency = max(0.0, latency_s + rng.uniform(-jitter_s, jitter_s))
                    schedule(clock.now + latency, "done", c, w, (got, None, True))
                else:
                    schedule(clock.now + 0.002, "done", c, w, (got, retry_at, False))
            elif math.isinf(got):
                waiting[c].add(w)
            else:
                schedule(clock.now + got + rng.uniform(0, wake_lateness_s), "try", c, w)
        else:
            ticket, retry_at, ok = payload
            in_flight[c] -= 1
            if ok:
                remaining[c] -= 1
                if finish is not None:
                    finish(clock.now)
                ticket.succeeded()
                if remaining[c] == 0:
                    result.end = clock.now
            else:
                result.limited += 1
                result.limited_times.append(ticket.sent_at)
                ticket.rate_limited(retry_at if honour_retry_at else None)
            ticket.release()
            wake_all(c)
            schedule(clock.now, "try", c, w)
    for result, left in zip(results, remaining, strict=True):
        if left > 0:
            result.end = clock.now
    return results


def ideal(
    server, items: int, latency_s: float, jitter_s: float = 0.0, workers: int = 32, seed: int = 0, start: float = 1000.0
) -> Result:
    """The client that knows the limiter: it sends whenever the limiter would admit and one of
    its `workers` is free, and never meets a 429. Greedy is optimal for every limiter here."""
    rng = random.Random(seed)
    result = Result(start=start)
    now, free, sent = start, workers, 0
    done: list[float] = []
    finish = getattr(server, "finish", None)
    while sent < items:
        while done and done[0] <= now:
            heapq.heappop(done)
            free += 1
            if finish is not None:
                finish(now)
        soon = server.next_admit(now)
        if free and soon <= now:
            ok, _ = server.admit(now)
            if not ok:  # float rounding at a window's edge: a hair later it admits
                now += 1e-9
                continue
            sent += 1
            free -= 1
            result.sent += 1
            result.ok_starts.append(now)
            heapq.heappush(done, now + max(0.0, latency_s + rng.uniform(-jitter_s, jitter_s)))
            continue
        now = min(done[0] if done else math.inf, soon if free else math.inf)
    result.end = max(done) if done else now
    return result
