"""What the pacer learns of the limiter's shape, beyond a rate: a fixed window, an in-flight
limit, and the user's own per-minute allowance (--rpm). Pure state: the Pacer passes times and
tickets' facts in, holds the lock, and asks each model whether it governs the next send.
Why each rule: engine/pacing.py's docstring, "The limiter's shape"."""

from __future__ import annotations

import math
from collections import deque


class WindowModel:
    """A fixed window: `quota` requests per `length` seconds, all of it back at each opening.

    unknown  -> armed     a 429 named a reset time: an opening to probe from
    armed    -> probing   at that opening: send as fast as the concurrency allows, one probe gap
                          apart, until a 429 names the next reset. Its distance is the length,
                          the requests admitted before it the quota
    probing  -> known     if that fits every admission seen before (no aligned window held more)
             -> rejected  if not: a rolling window or a bucket, paced as a rate from then on
    known    -> rejected  a 429 whose reset is not on the grid of openings, or names no time
    """

    MIN_LENGTH_S, MAX_LENGTH_S = 0.5, 3600.0
    TOLERANCE_S, TOLERANCE_SHARE = 0.05, 0.02  # a reset this near an opening is that opening
    HISTORY = 4096  # admissions kept to test a hypothesis against

    def __init__(self) -> None:
        self.state = "unknown"
        self.opening: float | None = None  # armed, probing: the opening probed from; known: the grid's origin
        self.length: float | None = None
        self.quota: int | None = None
        self.margin_s = 0.0  # sends wait this long past an opening, for clock skew
        self.probed = 0  # admissions the probe saw before its 429
        self._armed_wait = 0.0  # the wait the arming 429 asked for
        self._raise_by = 0  # 1 while a lowered quota has not been seen twice: probe one over it
        self._seen = 0
        self._sent: dict[int, tuple[int, bool]] = {}  # serial -> (window index, answered 429)
        self._counts: dict[int, int] = {}  # window index -> sends in it
        self._last_send = -math.inf
        self._admitted: deque[float] = deque(maxlen=self.HISTORY)

    def governs(self, now: float) -> bool:
        if self.state == "armed" and self.opening is not None and now >= self.opening:
            self.state = "probing"
        return self.state in ("probing", "known")

    def wait(self, now: float, gap_s: float) -> float:
        """0 if a send may go now, else how long until one may (governs() must be True)."""
        if self.state == "probing":
            return max(0.0, self._last_send + gap_s - now)
        index = self._index(now)
        if self._counts.get(index, 0) < self.allowance():
            return 0.0
        return self._opening_of(index + 1) + self.margin_s - now

    def allowance(self) -> int:
        return (self.quota or 1) + self._raise_by

    def sent(self, serial: int, now: float) -> None:
        if self.state == "probing":
            self._sent[serial] = (0, False)
            self._last_send = now
        elif self.state == "known":
            index = self._index(now)
            self._roll(index)
            self._sent[serial] = (index, False)
            self._counts[index] = self._counts.get(index, 0) + 1

    def succeeded(self, sent_at: float) -> None:
        self._admitted.append(sent_at)

    def rate_limited(self, serial: int, retry_at: float | None, now: float) -> None:
        """A 429 for the send `serial`, answered at `now`, naming `retry_at` (or nothing)."""
        if self.state in ("unknown", "armed"):
            # A wait shorter than any window is a rolling limit's next slot: nothing to probe.
            if retry_at is not None and retry_at - now >= self.MIN_LENGTH_S / 2:
                self.state = "armed"
                self.opening = retry_at if self.opening is None else max(self.opening, retry_at)
                self._armed_wait = retry_at - now
            return
        if self.state not in ("probing", "known") or serial not in self._sent:
            return  # rejected, or sent before the model governed
        index, _ = self._sent[serial]
        self._sent[serial] = (index, True)
        if retry_at is None:
            self.state = "rejected"  # a window names its reset: this is some other limiter
        elif self.state == "probing":
            self._learn(serial, retry_at, now)
        else:
            self._check(serial, index, retry_at)

    def reject(self) -> None:
        """Learn no window: another rule already knows the limiter is not one."""
        self.state = "rejected"

    def rpm(self) -> float | None:
        """The window's allowance as a rate, once known."""
        if self.state != "known" or not self.length:
            return None
        return (self.quota or 1) / self.length * 60

    # ------------------------------------------------------------------ learning

    def _admitted_before(self, serial: int, index: int) -> int:
        return sum(1 for s, (i, limited) in self._sent.items() if i == index and s < serial and not limited)

    def _learn(self, serial: int, retry_at: float, now: float) -> None:
        opening = self.opening or 0.0
        quota = self.probed = self._admitted_before(serial, 0)
        wait = retry_at - now
        if abs(wait - self._armed_wait) <= max(self.TOLERANCE_S, self.TOLERANCE_SHARE * self._armed_wait):
            # Both 429s asked for the same wait, though one came well into a window and one at
            # its start: a fixed Retry-After (a bucket such as nginx's), not a window's reset.
            self.state = "rejected"
            return
        length = retry_at - opening
        if not (self.MIN_LENGTH_S <= length <= self.MAX_LENGTH_S and quota >= 1 and self._fits(opening, length, quota)):
            self.state = "rejected"
            return
        self.state, self.length, self.quota, self._seen = "known", length, quota, 1
        self._counts = {0: len(self._sent)}

    def _fits(self, opening: float, length: float, quota: int) -> bool:
        """No window of the hypothesis, aligned on `opening`, held more than `quota` admissions."""
        before: dict[int, int] = {}
        for sent_at in self._admitted:
            if sent_at < opening:
                k = math.floor((opening - sent_at) / length)
                before[k] = before.get(k, 0) + 1
        return max(before.values(), default=0) <= quota

    def _check(self, serial: int, index: int, retry_at: float) -> None:
        tolerance = max(self.TOLERANCE_S, self.TOLERANCE_SHARE * (self.length or 0.0))
        if abs(retry_at - self._opening_of(index + 1)) <= tolerance:
            # The window ran out early: the limit dropped, or another client shares the key.
            admitted = self._admitted_before(serial, index)
            quota = self.quota or 1
            if admitted < quota:
                self.quota, self._raise_by, self._seen = max(1, admitted), 1, 1
            elif admitted == quota and self._raise_by:
                self._seen += 1
                if self._seen >= 2:
                    self._raise_by = 0  # seen twice: never probe above it again
        elif abs(retry_at - self._opening_of(index)) <= tolerance:
            # The server was still in the window before: our clock runs ahead of its.
            self.margin_s = min(0.1 * (self.length or 1.0), max(2 * self.margin_s, self.TOLERANCE_S))
        else:
            self.state = "rejected"

    def _index(self, now: float) -> int:
        return math.floor((now - self.margin_s - (self.opening or 0.0)) / (self.length or 1.0))

    def _opening_of(self, index: int) -> float:
        return (self.opening or 0.0) + index * (self.length or 1.0)

    def _roll(self, index: int) -> None:
        """Entering window `index`: a probe one over the quota that went through raises it."""
        if index in self._counts:
            return
        last = max(self._counts, default=None)
        if last is not None and self._raise_by:
            went = sum(1 for i, limited in self._sent.values() if i == last and not limited)
            if went > (self.quota or 1):
                self.quota = went
        self._sent = {s: v for s, v in self._sent.items() if v[0] >= index - 1}
        self._counts = {i: c for i, c in self._counts.items() if i >= index - 1}
        self._counts[index] = 0


class InFlightModel:
    """A limit on requests open at once: 429s come only when more than N are in flight.

    unknown -> known     every 429 so far named no time (an in-flight limit has no reset) and
                         came with more in flight than any success had, over two episodes
            -> rejected  a 429 that names a time, or a success with as many in flight as a
                         429 had: the limit is not on requests open, and is paced as a rate
    known   -> rejected  a 429 at or under the limit held
    """

    EPISODES = 2  # of bare 429s, each sent with more in flight than any success had

    def __init__(self) -> None:
        self.state = "unknown"
        self.limit: int | None = None
        self._most_ok = 0  # the most in flight at a send that succeeded
        self._least_limited: int | None = None  # the fewest in flight at a send that drew a 429
        self._episodes = 0

    def succeeded(self, in_flight_at_send: int) -> None:
        self._most_ok = max(self._most_ok, in_flight_at_send)
        if self.state == "unknown" and self._least_limited is not None and self._most_ok >= self._least_limited:
            self.state = "rejected"

    def rate_limited(self, in_flight_at_send: int, bare: bool, fresh: bool, probe: bool) -> None:
        if self.state == "rejected" or in_flight_at_send < 1:
            return
        if not bare:
            self.state = "rejected"  # it named a time: a window or a rate, not requests open
            return
        if self.state == "known":
            if in_flight_at_send <= (self.limit or 0):
                self.state = "rejected"
            return
        least = in_flight_at_send if self._least_limited is None else min(self._least_limited, in_flight_at_send)
        self._least_limited = least
        if self._most_ok >= least or least < 2:
            self.state = "rejected"
            return
        # A probe's or a burst's 429 came with many sends in flight at once, whatever the limit:
        # consistent, but no evidence.
        self._episodes += int(fresh and not probe)
        if self._episodes >= self.EPISODES:
            self.state, self.limit = "known", least - 1


class MinuteAllowance:
    """--rpm N: at most N sends in any minute, spent as fast as the limiter lets them go. A
    little over a minute, so that clock noise never puts N + 1 in the server's minute."""

    def __init__(self, rpm: float, margin: float) -> None:
        self.quota = max(1, math.floor(rpm + 1e-9))
        self.span_s = 60 * self.quota / rpm / margin
        self._sends: deque[float] = deque()

    def wait(self, now: float) -> float:
        while self._sends and self._sends[0] <= now - self.span_s:
            self._sends.popleft()
        return 0.0 if len(self._sends) < self.quota else self._sends[0] + self.span_s - now

    def record(self, now: float) -> None:
        self._sends.append(now)
