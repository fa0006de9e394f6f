"""One API key's lane: its client (the pooled connections), its pacer (rate, window, shared
pauses) and its credits, with what earlier runs learned of its rate limit (pacing.json).

A run has one lane today. A key pool would hold one per key, each with its own pacer and
credits, and the pools would keep asking RunContext.lane() for where the next request goes.
"""

from __future__ import annotations

import json
from typing import Any

from batch_runner import humanize
from batch_runner.api.client import Client
from batch_runner.api.v2 import V2Client
from batch_runner.engine.context import RunOptions, StopSignal
from batch_runner.engine.pacing import Pacer
from batch_runner.store.output_dir import OutputDir, write_atomic


class KeyLane:
    """The client, pacer and credits of one key. `client` is a V2Client in async mode."""

    def __init__(self, client: Client | V2Client, pacer: Pacer):
        self.client = client
        self.pacer = pacer

    @classmethod
    def open(cls, run: RunOptions, out: OutputDir, stop: StopSignal) -> KeyLane:
        """A lane for the run's key, its pacer starting from what earlier runs of `out` learned."""
        s, o = run.settings, run.options
        client_class = V2Client if s.api == "async" else Client  # async: v2's submit and poll
        client = client_class(
            run.target.endpoint,
            run.target.api_key,
            pool_size=s.concurrency,
            timeout_s=o.timeout,
            price_per_image=s.price_per_image,
        )
        pacer = Pacer.from_snapshot(
            _learned(out), ceiling_rpm=s.rpm, max_concurrency=s.concurrency, max_wait_s=s.max_wait
        )
        stop.on_stop(pacer.wake)
        return cls(client, pacer)

    def pace(self) -> str:
        """The progress line's view of the pacer: its rate, window and any pause."""
        pacer = self.pacer
        paused = pacer.paused_for_s
        text = f"pace {pacer.rate_rpm:,.0f} rpm, window {pacer.window}"
        return text + (f", paused {paused:.0f} s" if paused >= 1 else "")

    def learned_rpm(self) -> float:
        return round(self.pacer.limit_rpm or self.pacer.rate_rpm, 2)

    def credits_warning(self, need: float) -> str | None:
        """A warning when the account's balance is below what the run may need."""
        balance = self.client.credits()
        if balance is None or balance >= need:
            return None
        return (
            f"warning: the account has {humanize.money(balance)} of credits; this run may need "
            f"{humanize.money(need)}. It will stop cleanly when credits run out, and can be resumed."
        )

    def remember(self, out: OutputDir) -> None:
        """Tonight's run starts from what last night's learned, not from zero."""
        if self.pacer.counts["sent"] == 0:
            return
        try:
            write_atomic(out.pacing, json.dumps(self.pacer.snapshot(), indent=2).encode("utf-8"))
        except OSError:
            pass  # only a hint for the next run

    def close(self) -> None:
        self.client.close()


def _learned(out: OutputDir) -> dict[str, Any] | None:
    """What earlier runs of this output learned of the key's rate limit, if anything."""
    try:
        return json.loads(out.pacing.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
