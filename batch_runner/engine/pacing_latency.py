"""How long requests take, and how many may be in flight for a rate (Little's law). Pure."""

from __future__ import annotations

import math


class LatencyEstimator:
    """Smoothed latency and its deviation, as TCP estimates its round trip (RFC 6298)."""

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0

    def observe(self, latency: float) -> None:
        if latency < 0:
            return
        if self.srtt is None:
            self.srtt, self.rttvar = latency, latency / 2
        else:
            self.rttvar += (abs(self.srtt - latency) - self.rttvar) / 4
            self.srtt += (latency - self.srtt) / 8

    def high(self) -> float | None:
        """A high estimate, mean plus two deviations, as TCP's retransmission timeout uses."""
        return None if self.srtt is None else self.srtt + 2 * self.rttvar


def little_window(rate: float, latency_s: float, headroom: float, most: int) -> int:
    """Requests in flight that `rate` needs at `latency_s`, with headroom and one spare: 1..most."""
    wanted = math.ceil(rate * latency_s * headroom) + 1
    return max(1, min(most, wanted))
