"""When to poll an async (v2) job: first near the time jobs are learned to take, then backing off.

A poll is free of charge but not of rate: whether polls count against the key's per-minute limit
is not published, so each one should count. The aim is one poll for most jobs and at most four:

- Nothing learned yet: poll at 1, 3, 7 and 15 s after the submit (gaps doubling from 1 s), so even
  the provider's typical ~12.8 s is reached in four polls, and a fast server (the sandbox) is
  found out within a second.
- Learned: the first poll at the 80th percentile of recent job times plus 5%, then gaps of 15%,
  30%, 60% ... of it (at most 30 s apart): a slow job costs a few polls more, never a busy loop.
- Learning: the server's own metrics (queue_time + inference_time) when it sends them. Otherwise
  the midpoint between the last poll that found the job running and the one that found it done;
  a job done at its first poll says only "at most this long", so that sample is taken 10% shorter,
  and the first poll creeps earlier until it starts to meet running jobs.
"""

from __future__ import annotations

import math
import threading
from collections import deque


class PollSchedule:
    PROBE_FIRST_S = 1.0  # nothing learned: 1, 3, 7, 15 s
    QUANTILE = 0.8
    MARGIN = 1.05
    BACKOFF_SHARE = 0.15  # the first gap after the first poll, as a share of the typical time
    MIN_GAP_S, MAX_GAP_S = 0.1, 30.0
    FIRST_POLL_CREEP = 0.9  # a job done at its first poll: it may have been done this much sooner
    SAMPLES = 64

    def __init__(self, typical_s: float | None = None):
        self._lock = threading.Lock()
        self._samples: deque[float] = deque(maxlen=self.SAMPLES)
        if typical_s is not None and typical_s > 0:
            self._samples.append(typical_s)
        self._typical: float | None = typical_s if typical_s and typical_s > 0 else None
        self.polls = 0
        self.jobs_done = 0

    @property
    def typical_s(self) -> float | None:
        """When a job's first poll goes out, once something is learned."""
        with self._lock:
            return self._typical

    def first_delay(self) -> float:
        with self._lock:
            return self.PROBE_FIRST_S if self._typical is None else self._typical

    def next_delay(self, polls: int) -> float:
        """The wait after a job's `polls`-th poll found it still running."""
        with self._lock:
            if self._typical is None:
                return min(self.MAX_GAP_S, self.PROBE_FIRST_S * 2 ** max(polls, 1))
            gap = self.BACKOFF_SHARE * self._typical * 2 ** max(polls - 1, 0)
            return min(self.MAX_GAP_S, max(self.MIN_GAP_S, gap))

    def polled(self) -> None:
        with self._lock:
            self.polls += 1

    def learn(self, done_at_s: float, running_at_s: float | None, server_s: float | None) -> None:
        """A job was found done `done_at_s` after its submit; the last poll that found it
        running was at `running_at_s` (None: it was done at its first poll)."""
        if server_s is not None and server_s > 0:
            sample = min(server_s, done_at_s)
        elif running_at_s is not None:
            sample = (running_at_s + done_at_s) / 2
        else:
            sample = done_at_s * self.FIRST_POLL_CREEP
        with self._lock:
            self.jobs_done += 1
            self._samples.append(max(sample, 0.0))
            ordered = sorted(self._samples)
            rank = min(len(ordered) - 1, math.ceil(self.QUANTILE * len(ordered)) - 1)
            self._typical = max(ordered[max(rank, 0)] * self.MARGIN, self.MIN_GAP_S)

    def describe(self) -> str:
        """The cadence for the progress line: polls per image so far, and the first poll's time."""
        with self._lock:
            per = f"{self.polls / self.jobs_done:.1f}" if self.jobs_done else "-"
            first = "probing" if self._typical is None else f"first at {self._typical:.1f} s"
        return f"polls {per}/image, {first}"
