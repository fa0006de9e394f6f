"""Tell a monitor how a run went, the healthchecks.io way: URL/start, then URL (success) or
URL/<exit code> (failure), each POSTing the run's summary as its body.

What turns a monitor red is a rule of its own (`is_success`): a monitor goes red exactly when
something new went wrong. A `--max-duration` window that closed on schedule (exit 75 for the
systemd unit) is a success with a body saying what is left; items that failed on an earlier
night fail no later night (the exit code says so too: 1 only when an item failed in this run).

A dead or mistyped monitor must never break the batch, nor go unnoticed: every ping is bounded
in time and retried a few times, and a ping that does not land is a warning on stderr, even
under `--progress quiet`, while the exit code stays the run's. Pings carry no API key: the
monitor is not the API.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import requests

from batch_runner import exit_codes

if TYPE_CHECKING:
    from batch_runner.engine.outcome import RunOutcome

PING_TIMEOUT_S = 10.0
PING_TRIES = 3
BODY_LIMIT = 100_000  # bytes healthchecks.io keeps of a ping's body


def ping_url(base: str, suffix: str) -> str:
    """base with /suffix added to its path, its query kept: `…/slug?create=1` + start is
    `…/slug/start?create=1` (pasting strings would give `…?create=1/start`, a success ping)."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/")
    return urlunsplit(parts._replace(path=f"{path}/{suffix}" if suffix else path or "/"))


def is_success(code: int, outcome: RunOutcome | None) -> bool:
    """Green for a run that did what it should: exit 0, or a night that ended on schedule (its
    window closed, or its --max-cost-per-run share spent): the rest is the next night's."""
    from batch_runner.engine.outcome import StopReason

    if code == exit_codes.OK:
        return True
    return (
        outcome is not None
        and code == exit_codes.TEMPORARY
        and outcome.stop_reason in (StopReason.DURATION, StopReason.RUN_BUDGET)
    )


def failures_text(outcome: RunOutcome, resume_command: str) -> str:
    """Lines for the run's summary (and so the cron mail and the ping body): why items failed,
    and, when only earlier runs' failures are left, that this run is green and how to retry."""
    from batch_runner.store.run_facts import failure_reasons

    if not outcome.failed:
        return ""
    lines = []
    reasons = failure_reasons(outcome.output)
    if reasons:
        lines.append("  why items failed: " + "; ".join(f"{r['items']:,} × {r['reason']}" for r in reasons))
    earlier = outcome.failed - outcome.failed_this_run
    only_earlier = outcome.failed_this_run == 0 and earlier and outcome.stop_reason is None
    if only_earlier and "--retry-failed" not in resume_command:
        lines.append(
            f"  {earlier:,} item(s) failed in earlier runs and nothing failed in this one, so it exits 0; "
            f"to send them again:\n    {resume_command} --retry-failed"
        )
    return "".join(f"\n{line}" for line in lines)


def ping_body(code: int, outcome: RunOutcome | None, summary: str) -> str:
    head = f"exit {code}"
    if outcome is not None and is_success(code, outcome) and code != exit_codes.OK:
        head += f": the --max-duration window closed on schedule; {outcome.pending:,} item(s) left for the next run"
    text = f"{head}\n{summary}".rstrip() + "\n"
    data = text.encode("utf-8")
    if len(data) <= BODY_LIMIT:
        return text
    return data[: BODY_LIMIT - 40].decode("utf-8", "ignore") + "\n[cut at 100 kB]\n"


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Pinger:
    def __init__(
        self,
        url: str,
        warn: Callable[[str], None] = _to_stderr,
        timeout_s: float = PING_TIMEOUT_S,
        tries: int = PING_TRIES,
        backoff_s: float = 1.0,
    ):
        self.url = url
        self.warn = warn
        self.timeout_s = timeout_s
        self.tries = tries
        self.backoff_s = backoff_s

    def start(self, body: str = "") -> bool:
        return self._ping(ping_url(self.url, "start"), body)

    def finish(self, code: int, outcome: RunOutcome | None = None, summary: str = "") -> bool:
        """The success URL or URL/<code>, by `is_success`, with the summary as the body."""
        url = ping_url(self.url, "" if is_success(code, outcome) else str(code))
        return self._ping(url, ping_body(code, outcome, summary))

    def _ping(self, url: str, body: str) -> bool:
        problem = ""
        for attempt in range(self.tries):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                # A fresh request with no session: nothing (cookies, the key) carries over.
                response = requests.post(
                    url,
                    data=body.encode("utf-8"),
                    headers={"Content-Type": "text/plain; charset=utf-8"},
                    timeout=self.timeout_s,
                    allow_redirects=True,
                )
                if response.status_code < 400:
                    return True
                problem = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                problem = type(exc).__name__
        self.warn(
            f"warning: the monitor at {url} did not take the ping ({problem}); check --ping-url. "
            "The run itself is not affected"
        )
        return False
