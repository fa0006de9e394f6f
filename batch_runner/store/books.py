"""What an output folder owes or may owe, across runs and modes: small pure functions of the
ledger that the engine's budget starts from.

- Possibly billed: every attempt with no answer, and every v2 job on the server that nobody
  collected (the server bills it when it completes, polled or not).
- The reservation price: the highest price this folder was ever billed, so a price rise seen
  once is never forgotten by the next run's budget.
- A sync run must not buy again what a v2 job on the server will deliver: within the result's
  hour it is refused (resume in async mode to collect); past it, the job is gone and stays on
  the books as possibly billed.
"""

from __future__ import annotations

import time
from typing import Protocol

from batch_runner.api.v2 import RESULT_TTL_S
from batch_runner.store.journal import ItemState, holds_job


class Books(Protocol):
    @property
    def spent(self) -> float: ...
    @property
    def unanswered(self) -> int: ...
    @property
    def on_server(self) -> int: ...
    @property
    def max_cost(self) -> float: ...


def reserve_price(books: Books, configured: float) -> float:
    """The price to reserve per request: the configured one, or the highest this folder paid."""
    return max(configured, books.max_cost)


def committed_usd(books: Books, price: float) -> float:
    """Spent, plus everything that may have been billed, valued at `price` each."""
    return books.spent + (books.unanswered + books.on_server) * price


def live_jobs(states: list[ItemState], now: float | None = None, ttl_s: float = RESULT_TTL_S) -> list[ItemState]:
    """The jobs among `states` whose result the server still keeps (submitted under ttl_s ago)."""
    now = time.time() if now is None else now
    return [s for s in states if holds_job(s) and (s.submitted_at or 0.0) > now - ttl_s]


def sync_refusal(states: list[ItemState], now: float | None = None, ttl_s: float = RESULT_TTL_S) -> str | None:
    """Why a sync run must not start, or None: v2 jobs whose results the server still holds
    would be bought a second time."""
    now = time.time() if now is None else now
    live = live_jobs(states, now, ttl_s)
    if not live:
        return None
    last = max(s.submitted_at or now for s in live) + ttl_s
    minutes = max(1, round((last - now) / 60))
    return (
        f"{len(live):,} item(s) have a job on the server from an earlier async run, paid for when it completes; "
        f"a sync run would buy them again. Resume in async mode (api: async) to collect them, or run again in about "
        f"{minutes} min, when the server has forgotten them (they stay on the books as possibly billed)"
    )
