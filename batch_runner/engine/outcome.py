"""What a run came to: a typed RunOutcome, its StopReason, and the one table that turns a stop
reason into an exit code.

The engine reports facts (why it stopped, what is done, what it cost); the CLI turns them into
messages and a process exit code, and Python callers read them as attributes. The StopReason
values are written to runs.jsonl, so they never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from batch_runner import exit_codes


class StopReason(str, Enum):
    """Why a run stopped before every item was sent. A run that finished has no stop reason."""

    CREDITS = "credits"  # the account is out of credits (406)
    SPEND_LIMIT = "spend-limit"  # the team's spend limit is reached (406)
    CONTENT_TYPE = "content-type"  # the server refused the request's content type (406): a proxy
    BUDGET = "budget"  # the next request could pass max_cost (all runs of the output folder)
    RUN_BUDGET = "run-budget"  # the next request could pass max_cost_per_run
    DURATION = "duration"  # the run's window (max_duration) closed
    FATAL = "fatal"  # the API refused the configuration: key, permissions, endpoint
    INTERRUPTED = "interrupted"  # request_stop(): Ctrl-C or SIGTERM in the CLI
    UNREACHABLE = "unreachable"  # the server could not be reached for longer than max_wait
    RATE_LIMITED = "rate-limited"  # the server kept rate-limiting for longer than max_wait
    OUTPUT = "output"  # the output folder cannot be written
    INTERNAL = "internal"  # a bug; results received so far are safe
    JOBS_ON_SERVER = "jobs-on-server"  # a sync run would buy again what v2 jobs on the server deliver
    TIMEOUT = "timeout"  # --timeout is shorter than any answer takes: attempts time out, billed

    def __str__(self) -> str:
        return self.value


# The one place a stop reason becomes an exit code (a documented contract: see the README).
EXIT_CODES: dict[StopReason, int] = {
    StopReason.CREDITS: exit_codes.BUDGET,
    StopReason.SPEND_LIMIT: exit_codes.BUDGET,
    StopReason.BUDGET: exit_codes.BUDGET,
    # A night's share spent ends the night like a closing window: cron's "resume tomorrow".
    StopReason.RUN_BUDGET: exit_codes.TEMPORARY,
    StopReason.DURATION: exit_codes.TEMPORARY,  # cron's "resume tomorrow"
    StopReason.FATAL: exit_codes.FATAL_API,
    StopReason.CONTENT_TYPE: exit_codes.FATAL_API,  # a proxy or client fault, not money
    StopReason.INTERRUPTED: exit_codes.INTERRUPTED,
    StopReason.UNREACHABLE: exit_codes.TEMPORARY,
    StopReason.RATE_LIMITED: exit_codes.TEMPORARY,
    StopReason.OUTPUT: exit_codes.OUTPUT_ERROR,
    StopReason.INTERNAL: exit_codes.INTERNAL,
    StopReason.JOBS_ON_SERVER: exit_codes.TEMPORARY,
    StopReason.TIMEOUT: exit_codes.FATAL_API,  # a setting the API cannot work with, as a bad key
}


def exit_code_for(stop_reason: StopReason | None, failed: int) -> int:
    """A stopped run exits with its reason's code; a finished one with 1 if any item failed."""
    if stop_reason is not None:
        return EXIT_CODES[stop_reason]
    return exit_codes.FAILED_ITEMS if failed else exit_codes.OK


@dataclass(frozen=True)
class RunOutcome:
    """One run of a job into an output folder: counts over the whole job, spend this run and in
    all runs of the folder, and why it stopped (None: every item it was asked to send was sent).

    Money follows the ledger's rule: `spent_*` is confirmed by the server's answers; `possibly_billed_*`
    is attempts that got no answer and may have been charged, priced at the job's price per image.
    """

    output: Path  # the results folder
    manifest: Path  # its results table, one row per item (what `batch_runner.load()` reads)
    stop_reason: StopReason | None
    stop_message: str  # the detail behind the reason ("SIGINT", the server's 406 text, ...)
    total: int  # unique items in the job
    todo: int  # items this run set out to send
    succeeded: int  # items succeeded, in all runs
    failed: int  # items failed, in all runs
    pending: int  # items neither succeeded nor failed
    succeeded_this_run: int
    failed_this_run: int
    spent_run: float
    spent_total: float
    possibly_billed_run: float
    possibly_billed_total: float
    unanswered: int  # attempts an earlier run left with no answer, found at the start
    unanswered_total: int  # attempts with no answer on record, in all runs
    recovered: int  # images an earlier run saved but did not journal, adopted at the start
    lost_images: int  # paid for and received, but the disk refused them
    rate_limited: int  # 429 answers this run

    @property
    def exit_code(self) -> int:
        # 1 only for items that failed in this run: an earlier night's failure fails no later night.
        return exit_code_for(self.stop_reason, self.failed_this_run)

    @property
    def ok(self) -> bool:
        """Every item of the job succeeded."""
        return self.stop_reason is None and self.failed == 0 and self.pending == 0
