"""runs.jsonl: one line per run, so a monitor can follow a job over weeks. Its keys are an
interface (documented in the README); add keys, never rename them."""

from __future__ import annotations

import platform
import time
from datetime import datetime, timezone
from typing import Any

from batch_runner.engine.context import Tally
from batch_runner.engine.outcome import RunOutcome, StopReason


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _versions() -> dict[str, str]:
    import requests

    from batch_runner.version import __version__

    return {"batch_runner": __version__, "python": platform.python_version(), "requests": requests.__version__}


def finished(job: str, started_at: float, r: RunOutcome, learned_rpm: float | None, sandbox: bool) -> dict[str, Any]:
    """The line for a run that returned its outcome."""
    return {
        "job": job,
        "started_at": iso(started_at),
        "ended_at": iso(time.time()),
        "exit_code": r.exit_code,
        "stop_reason": r.stop_reason.value if r.stop_reason else None,
        "stop_message": r.stop_message or None,
        "items": r.total,
        "to_send": r.todo,
        "succeeded": r.succeeded,
        "failed": r.failed,
        "pending": r.pending,
        "succeeded_this_run": r.succeeded_this_run,
        "failed_this_run": r.failed_this_run,
        "spent_usd_this_run": round(r.spent_run, 6),
        "possibly_billed_usd_this_run": round(r.possibly_billed_run, 6),
        "spent_usd_total": round(r.spent_total, 6),
        "possibly_billed_usd_total": round(r.possibly_billed_total, 6),
        "rate_limited_this_run": r.rate_limited,
        "learned_rpm": learned_rpm,
        "sandbox": sandbox,
        "versions": _versions(),
    }


def abandoned(
    job: str,
    started_at: float,
    exit_code: int,
    message: str,
    items: int | None,
    todo: int | None,
    t: Tally,
    price: float,
    sandbox: bool,
) -> dict[str, Any]:
    """The line for a run left at once (a second Ctrl-C): what this run did, as far as its
    counters know; the totals over all runs are left out (null), since the ledger was not read.
    The requests in flight when it left are possibly billed, and their `sent` lines say so."""
    return {
        "job": job,
        "started_at": iso(started_at),
        "ended_at": iso(time.time()),
        "exit_code": exit_code,
        "stop_reason": StopReason.INTERRUPTED.value,
        "stop_message": message,
        "items": items,
        "to_send": todo,
        "succeeded": None,
        "failed": None,
        "pending": None,
        "succeeded_this_run": t.succeeded,
        "failed_this_run": t.failed,
        "spent_usd_this_run": round(t.spent, 6),
        # The requests abandoned in flight may be billed too: their `sent` lines have no answer.
        "possibly_billed_usd_this_run": round(t.possibly_billed + max(t.in_flight, 0) * price, 6),
        "spent_usd_total": None,
        "possibly_billed_usd_total": None,
        "rate_limited_this_run": t.rate_limited,
        "in_flight_abandoned": t.in_flight,
        "learned_rpm": None,
        "sandbox": sandbox,
        "versions": _versions(),
    }
