"""The pacer's two clocks that stop sending: the shared pause and the give-up deadline. Pure
state (no lock, no clock of their own): the Pacer passes `now` in and holds the lock."""

from __future__ import annotations

import math

from batch_runner.engine.policies import GiveUp


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


class PauseGate:
    """Every worker waits until `until`. A later pause extends it; an earlier one never shortens it."""

    def __init__(self) -> None:
        self.until = -math.inf

    def pause(self, until: float) -> None:
        self.until = max(self.until, until)

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)


class GiveUpClock:
    """When waiting has become pointless: 429s with no success, or no answer at all, for
    `max_wait_s`, or a server that asks for a longer wait than that. Once given up, it stays so."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self.limited_since: float | None = None  # the first 429 since the last success
        self.down_since: float | None = None  # the first unreachable attempt since the last answer
        self.down_why = ""
        self.gave_up: GiveUp | None = None

    def succeeded(self) -> None:
        self.limited_since = None
        self.answered()

    def answered(self) -> None:
        self.down_since = None

    def rate_limited(self, now: float, retry_at: float | None) -> None:
        if self.limited_since is None:
            self.limited_since = now
        if retry_at is not None and retry_at - now > self.max_wait_s and self.gave_up is None:
            self.gave_up = GiveUp(
                "rate-limited",
                f"the server asks to wait {_seconds(retry_at - now)}, "
                f"longer than the maximum wait of {_seconds(self.max_wait_s)}",
            )

    def unreachable(self, now: float, why: str) -> None:
        self.down_why = why
        if self.down_since is None:
            self.down_since = now

    def deadline(self) -> float:
        starts = [t for t in (self.limited_since, self.down_since) if t is not None]
        return min(starts) + self.max_wait_s if starts else math.inf

    def check(self, now: float) -> GiveUp | None:
        if self.gave_up is None:
            if self.down_since is not None and now - self.down_since >= self.max_wait_s:
                self.gave_up = GiveUp(
                    "unreachable", f"{self.down_why} (unreachable for {_seconds(now - self.down_since)})"
                )
            elif self.limited_since is not None and now - self.limited_since >= self.max_wait_s:
                self.gave_up = GiveUp(
                    "rate-limited", f"the server has answered only 429 for {_seconds(now - self.limited_since)}"
                )
        return self.gave_up
