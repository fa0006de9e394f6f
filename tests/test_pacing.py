"""The adaptive Pacer, on a fake clock: deterministic, no real sleeping, no timing assertions.

Most tests run tests/pacing_sim.py: a pool of simulated workers sharing one Pacer against a
simulated rate limiter (rolling window, fixed window, or nginx's leaky bucket). Throughput is
counted at the limiter, from the first admitted request to the last, against its ceiling.
"""

from __future__ import annotations

import json
import math
import random
import threading
from itertools import pairwise

import pytest

from batch_runner.engine.pacing import Pacer, Ticket
from batch_runner.engine.policies import GiveUp, Stopping
from tests.pacing_sim import FakeClock, FixedWindow, LeakyBucket, RollingWindow, simulate


def make(clock: FakeClock | None = None, seed: int = 0, **kwargs) -> tuple[Pacer, FakeClock]:
    clock = clock or FakeClock()
    return Pacer(clock=clock, sleep=clock.sleep, rng=random.Random(seed), **kwargs), clock


def most_in_any_window(times: list[float], window_s: float) -> int:
    """The largest number of `times` in any half-open interval of length window_s."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def take(pacer: Pacer) -> Ticket:
    got = pacer.try_acquire()
    assert isinstance(got, Ticket), f"expected a ticket, was told to wait {got}"
    return got


# ---------------------------------------------------------------------------- learning the limit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_converges_below_an_unknown_per_minute_limit(seed):
    # A Pro key: 50 requests per rolling minute, images take 12.8 s ± 2 s; the pacer is told nothing.
    pacer, clock = make(seed=seed)
    server = RollingWindow(rpm=50, window_s=60)
    result = simulate(pacer, clock, server, items=1500, latency_s=12.8, jitter_s=2.0, seed=seed)
    assert result.throughput() / server.rate >= 0.90
    assert result.share_429 <= 0.05
    assert 0.8 * 50 <= pacer.limit_rpm <= 1.1 * 50  # what it learned
    assert most_in_any_window(result.send_times, 60) <= 50 * 2  # never a runaway


@pytest.mark.parametrize(
    "server",
    [
        pytest.param(lambda: LeakyBucket(rpm=600, burst=5, retry_after_s=1.0), id="nginx-retry-after"),
        pytest.param(lambda: LeakyBucket(rpm=600, burst=5, retry_after_s=None), id="nginx-bare-429"),
        pytest.param(lambda: FixedWindow(rpm=600, window_s=2.0, origin=0.37), id="fixed-window-reset-at"),
    ],
)
@pytest.mark.parametrize("latency_s", [0.3, 1.28])
def test_unknown_limit_reaches_90_percent_with_few_429s(server, latency_s):
    # The benchmark's cells (benchmarks/bench_pacing.py): 10 r/s, 300 items, about 30 s.
    pacer, clock = make()
    limiter = server()
    result = simulate(pacer, clock, limiter, items=300, latency_s=latency_s, jitter_s=0.1 * latency_s)
    assert result.throughput() / limiter.rate >= 0.90
    assert result.share_429 <= 0.05


@pytest.mark.parametrize(
    "server, latency_s",
    [
        pytest.param(lambda: RollingWindow(rpm=50, window_s=60), 12.8, id="pro-rolling-minute"),
        pytest.param(lambda: LeakyBucket(rpm=600, burst=5), 0.3, id="nginx"),
        pytest.param(lambda: FixedWindow(rpm=600, window_s=2.0, origin=0.37), 1.28, id="fixed-window"),
    ],
)
def test_ceiling_at_the_true_limit_runs_at_97_percent_without_429s(server, latency_s):
    limiter = server()
    pacer, clock = make(ceiling_rpm=limiter.rate * 60)
    result = simulate(pacer, clock, limiter, items=600, latency_s=latency_s, jitter_s=0.1 * latency_s)
    assert result.throughput() / limiter.rate >= 0.97
    assert result.share_429 <= 0.01


def test_a_pro_key_runs_at_its_ceiling_with_the_default_concurrency():
    # 50 RPM at ~12.8 s a request needs ~11 in flight; the default maximum leaves room.
    pacer, clock = make(ceiling_rpm=50)
    assert pacer.max_concurrency >= 16
    result = simulate(pacer, clock, RollingWindow(rpm=50), items=400, latency_s=12.8, jitter_s=3.0)
    assert result.throughput() / (50 / 60) >= 0.97
    assert 10 <= result.max_in_flight <= pacer.max_concurrency
    # --rpm spends each minute's 50 at once (issue 24), so the window is the maximum, not
    # Little's law's rate × latency: at least what the rate needs.
    assert math.ceil(50 / 60 * 12.8) <= pacer.window <= pacer.max_concurrency


def test_never_exceeds_the_ceiling_even_when_the_server_allows_more():
    pacer, clock = make(ceiling_rpm=120)
    result = simulate(pacer, clock, RollingWindow(rpm=10_000), items=1000, latency_s=1.0, wake_lateness_s=0.005)
    assert most_in_any_window(result.send_times, 60) <= 120
    assert result.limited == 0


def test_never_exceeds_the_ceiling_while_recovering_from_429s():
    # The user's --rpm is above the real limit: the pacer learns the lower limit, and never
    # goes over the ceiling while probing.
    pacer, clock = make(ceiling_rpm=100)
    rates = []
    original = pacer._grow

    def watch(now: float) -> None:
        original(now)
        rates.append(pacer._rate * 60)

    pacer._grow = watch
    result = simulate(pacer, clock, RollingWindow(rpm=60, window_s=60), items=600, latency_s=5.0, jitter_s=1.0)
    assert max(rates) <= 100
    assert most_in_any_window(result.send_times, 60) <= 100
    assert pacer.limit_rpm is not None and pacer.limit_rpm < 100


def test_slow_start_does_not_burst():
    # 32 idle workers, no limit in sight, latency unknown: the first requests go out one at a
    # time from 60 RPM, growing, not as one volley from the pool.
    pacer, clock = make()
    result = simulate(pacer, clock, RollingWindow(rpm=10_000), items=200, latency_s=12.8)
    sends = result.send_times
    assert sum(t < sends[0] + 0.5 for t in sends) == 1
    assert sends[9] - sends[0] > 1.2
    assert min(b - a for a, b in pairwise(sends[:32])) > 0.01


def test_concurrency_is_capped_when_the_window_not_the_limit_binds():
    # No rate limit in sight: the rate stops growing at what the window can carry, rather than
    # growing without end and releasing requests in bursts.
    pacer, clock = make(max_concurrency=16)
    result = simulate(pacer, clock, RollingWindow(rpm=100_000), items=500, latency_s=2.0)
    assert result.max_in_flight <= 16
    assert pacer.rate_rpm <= 16 / 2.0 * 60 * 1.01


# ---------------------------------------------------------------------------- 429s and pauses


def test_shared_pause_is_honoured_by_every_worker():
    pacer, clock = make(ceiling_rpm=600)
    early = take(pacer)
    clock.now += 0.2
    late = take(pacer)
    resume = clock.now + 30
    early.rate_limited(retry_at=resume)  # one worker is told 429: everyone waits
    early.release()
    late.release()
    assert pacer.paused_for_s == pytest.approx(30)
    asked = 0
    while clock.now < resume:  # workers keep asking; none is let through before the time
        got = pacer.try_acquire()
        assert not isinstance(got, Ticket) and 0 < got <= resume - clock.now + 1e-9
        clock.now += min(got, 0.7)
        asked += 1
    assert asked > 40
    take(pacer)


def test_a_late_retry_after_extends_the_pause_and_an_earlier_one_does_not_shorten_it():
    pacer, clock = make(ceiling_rpm=600)
    a = take(pacer)
    clock.now += 0.2
    b = take(pacer)
    a.rate_limited(retry_at=clock.now + 10)
    b.rate_limited(retry_at=clock.now + 4)
    assert pacer.paused_for_s == pytest.approx(10)
    b.rate_limited(retry_at=clock.now + 20)
    assert pacer.paused_for_s == pytest.approx(20)


def test_no_burst_after_a_pause():
    # 32 workers wait out a 10 s pause; when it ends they go one at a time, not as one volley.
    # Since issue 24 a pause that names its end is a window's edge: they go a probe gap apart
    # (tests/test_pacing_shapes.py shows the paced rate after a rolling window's pause).
    pacer, clock = make(ceiling_rpm=600)
    first = take(pacer)
    first.rate_limited(retry_at=clock.now + 10)
    first.release()
    resume = clock.now + 10
    sends = []
    waiting_until = [clock.now] * 32
    while len(sends) < 20:
        w = min(range(32), key=lambda i: waiting_until[i])
        clock.now = max(clock.now, waiting_until[w])
        got = pacer.try_acquire()
        if isinstance(got, Ticket):
            sends.append(clock.now)
            got.succeeded(0.0)
            got.release()
            waiting_until[w] = clock.now
        else:
            waiting_until[w] = clock.now + (got if got < math.inf else 0.01)
    assert sends[0] >= resume
    assert min(b - a for a, b in pairwise(sends)) >= Pacer.PROBE_GAP_MIN_S - 1e-9


def test_a_429_cuts_once_however_many_requests_were_already_in_flight():
    pacer, clock = make(ceiling_rpm=600)
    tickets = []
    for _ in range(5):
        tickets.append(take(pacer))
        clock.now += 0.2
    before = pacer.rate_rpm
    for ticket in tickets:
        ticket.rate_limited(retry_at=None)
        ticket.release()
    assert pacer.counts["cuts"] == 1
    assert pacer.rate_rpm <= before * Pacer.BETA


def test_429_without_a_time_backs_off_exponentially_with_jitter():
    pacer, clock = make(ceiling_rpm=6000)
    pauses = []
    for _ in range(6):
        while not isinstance(got := pacer.try_acquire(), Ticket):
            clock.now += got
        got.rate_limited(None)
        got.release()
        pauses.append(pacer.paused_for_s)
    for n, pause in enumerate(pauses):
        full = min(Pacer.BACKOFF_CAP_S, Pacer.BACKOFF_BASE_S * 2**n)
        assert 0.5 * full <= pause <= full
    assert pauses[-1] > 4 * pauses[0]


def test_success_ends_the_backoff_streak():
    pacer, clock = make(ceiling_rpm=6000)
    for _ in range(4):
        while not isinstance(got := pacer.try_acquire(), Ticket):
            clock.now += got
        got.rate_limited(None)
        got.release()
    while not isinstance(got := pacer.try_acquire(), Ticket):
        clock.now += got
    got.succeeded()
    got.release()
    while not isinstance(got := pacer.try_acquire(), Ticket):
        clock.now += got
    got.rate_limited(None)
    assert pacer.paused_for_s <= Pacer.BACKOFF_BASE_S


# ---------------------------------------------------------------------------- giving up


def test_gives_up_at_once_when_the_server_asks_for_more_than_max_wait():
    pacer, clock = make(max_wait_s=900)
    ticket = take(pacer)
    ticket.rate_limited(retry_at=clock.now + 3600)
    ticket.release()
    assert pacer.give_up_reason() == "rate-limited"
    with pytest.raises(GiveUp) as raised:
        pacer.acquire(threading.Event())
    assert raised.value.reason == "rate-limited" and "longer than the maximum wait" in raised.value.message


def test_gives_up_when_429s_go_on_for_longer_than_max_wait():
    pacer, clock = make(max_wait_s=300)
    start = clock.now
    stop = threading.Event()
    with pytest.raises(GiveUp) as raised:
        while True:  # a server that answers nothing but 429, Retry-After: 20
            with pacer.acquire(stop) as ticket:
                ticket.rate_limited(retry_at=clock.now + 20)
    assert raised.value.reason == "rate-limited"
    assert 300 <= clock.now - start <= 300 + 20
    assert pacer.counts["rate_limited"] <= 300 / 20 + 1  # it waited, it did not spin


def test_gives_up_when_the_endpoint_stays_unreachable():
    pacer, clock = make(max_wait_s=120)
    start = clock.now
    stop = threading.Event()
    with pytest.raises(GiveUp) as raised:
        while True:
            with pacer.acquire(stop) as ticket:
                ticket.unreachable("connection refused")
    assert raised.value.reason == "unreachable" and "connection refused" in raised.value.message
    assert 120 <= clock.now - start <= 121  # the last pause ends at the deadline, not after it
    assert pacer.counts["unreachable"] <= 12  # backed off exponentially: 1 s, 2 s, 4 s ...


def test_an_answer_resets_unreachable_and_a_success_resets_rate_limited():
    pacer, clock = make(max_wait_s=100)
    stop = threading.Event()
    for _ in range(3):
        with pacer.acquire(stop) as ticket:
            ticket.unreachable()
    with pacer.acquire(stop) as ticket:
        ticket.answered()  # a 500: the server is there
    clock.now += 95
    with pacer.acquire(stop) as ticket:
        ticket.rate_limited(retry_at=clock.now + 60)
    clock.now += 61
    with pacer.acquire(stop) as ticket:
        ticket.succeeded()
    clock.now += 1000
    assert pacer.give_up_reason() is None


def test_acquire_stops_when_asked():
    pacer, clock = make(ceiling_rpm=60)
    stop = threading.Event()
    take(pacer).release()
    stop.set()
    with pytest.raises(Stopping):
        pacer.acquire(stop)


# ---------------------------------------------------------------------------- memory


def test_snapshot_round_trips_through_json_and_skips_slow_start():
    pacer, clock = make(seed=1)
    simulate(pacer, clock, RollingWindow(rpm=50, window_s=60), items=600, latency_s=12.8, jitter_s=2.0)
    saved = json.loads(json.dumps(pacer.snapshot()))
    assert saved["version"] == 1 and saved["limit_rpm"] == pytest.approx(pacer.limit_rpm, rel=1e-3)

    clock2 = FakeClock(5000.0)
    tonight = Pacer.from_snapshot(saved, clock=clock2, rng=random.Random(0))
    assert tonight.rate_rpm == pytest.approx(saved["rate_rpm"], rel=1e-3)
    assert tonight.limit_rpm == pytest.approx(max(saved["limit_rpm"], saved["rate_rpm"]), rel=1e-3)
    assert tonight.latency_s == pytest.approx(saved["latency_s"], rel=1e-3)
    assert json.loads(json.dumps(tonight.snapshot()))["limit_rpm"] == pytest.approx(tonight.limit_rpm, rel=1e-3)

    # Tonight starts near last night's limit instead of at 60 RPM, with hardly a 429.
    result = simulate(tonight, clock2, RollingWindow(rpm=50, window_s=60), items=300, latency_s=12.8, jitter_s=2.0)
    assert result.throughput() / (50 / 60) >= 0.9
    assert result.share_429 <= 0.05


@pytest.mark.parametrize(
    "snapshot",
    [None, {}, {"version": 99, "rate_rpm": 50}, {"version": 1, "rate_rpm": "fast"}, {"version": 1, "rate_rpm": -5}],
)
def test_a_missing_or_malformed_snapshot_gives_a_fresh_pacer(snapshot):
    pacer = Pacer.from_snapshot(snapshot, clock=FakeClock())
    assert pacer.rate_rpm == Pacer.DEFAULT_START_RPM and pacer.limit_rpm is None


def test_the_ceiling_wins_over_a_snapshot():
    pacer = Pacer.from_snapshot({"version": 1, "rate_rpm": 300, "limit_rpm": 300}, ceiling_rpm=50, clock=FakeClock())
    assert pacer.rate_rpm <= 50


# ---------------------------------------------------------------------------- threads


def test_real_threads_share_the_window():
    # A smoke test on the real clock at a high rate: the in-flight count never passes the window
    # and every ticket is released. No timing is asserted.
    pacer = Pacer(ceiling_rpm=600_000, max_concurrency=4)
    stop = threading.Event()
    seen = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(30):
            with pacer.acquire(stop) as ticket:
                with lock:
                    seen.append(pacer.in_flight)
                ticket.succeeded(0.001)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert max(seen) <= 4 and pacer.in_flight == 0 and pacer.counts["succeeded"] == 240
