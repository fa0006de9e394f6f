"""`batch-runner run`: the engine's outcome in words and an exit code, a monitor's pings, and
the signals. The engine reports facts (engine/outcome.py); every message that names a flag or
pastes back a command is composed here."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_runner import exit_codes, humanize
from batch_runner.cli.options import API_KEY_ENV, add_run_options, add_run_settings, flag_options, load, worded
from batch_runner.errors import ManifestError, UsageError
from batch_runner.settings import ProgressMode

if TYPE_CHECKING:
    from batch_runner.engine.outcome import RunOutcome
    from batch_runner.engine.runner import Runner
    from batch_runner.job.manifest import Job
    from batch_runner.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="generate every item of a job; resumes where it stopped",
        description="Generate every item of JOB. Running the same command again resumes: finished items are "
        "skipped. Exit codes: 0 all succeeded, 1 some failed, 2 bad input, 3 stopped on credits or budget, "
        "4 fatal API error, 5 output folder busy, 70 internal error, 74 output folder not writable, "
        "75 temporary (--max-duration or --max-cost-per-run reached, or the endpoint unreachable or "
        "rate-limiting past --max-wait: run again later), 130 interrupted.",
    )
    p.add_argument("job", help="a .yaml or .csv/.tsv manifest")
    p.add_argument("--output", "-o", help="results folder (default outputs/<job name>)")
    p.add_argument("--endpoint", help="generation URL (default Segmind's; e.g. a sandbox or a proxy)")
    p.add_argument("--api-key-file", help=f"read the API key from this file (default: ${API_KEY_ENV})")
    p.add_argument("--sandbox", action="store_true", help="run against a built-in local sandbox: no key, no credits")
    add_run_options(p)
    add_run_settings(p)
    p.set_defaults(handler=cmd_run)


_SETTING_WORDS = re.compile(r"\b(?<!-)(timeout|max_wait|max_attempts) (?=\d)")


def flagged(message: str) -> str:
    """The engine names a setting as run() does (`timeout 5 s`); the command says its flag."""
    message = message.replace("(api: async)", "(--api async)")
    return _SETTING_WORDS.sub(lambda m: "--" + m.group(1).replace("_", "-") + " ", message)


def cmd_run(args: argparse.Namespace) -> int:
    """Run a job. Under --progress quiet a successful run prints nothing at all, and a failed
    or stopped one prints everything it held back to stderr: cron mails only bad news."""
    from batch_runner.cli.ping import Pinger

    quiet = args.progress == ProgressMode.QUIET
    held: list[str] = []

    def log(message: str) -> None:
        message = flagged(message)
        if quiet:
            held.append(message)
        else:
            print(message, file=sys.stderr, flush=True)

    pinger = Pinger(args.ping_url) if args.ping_url else None
    if pinger:
        pinger.start()
    code, message, outcome = exit_codes.INTERNAL, "", None
    try:
        job, settings = load(args)
        if pinger is None and settings.ping_url:
            pinger = Pinger(settings.ping_url)
            pinger.start()
        code, message, outcome = _run(args, job, settings, log)
    except (UsageError, ManifestError):
        code = exit_codes.USAGE
        raise
    except KeyboardInterrupt:
        code = exit_codes.INTERRUPTED
        raise
    finally:
        if pinger:
            pinger.finish(code, outcome, message)
        if quiet and code != exit_codes.OK:
            for line in held:
                print(line, file=sys.stderr)
    # The run's report goes to stdout; an error that kept the run from starting, to stderr.
    # Quiet runs hold everything back unless there is bad news, and then it goes to stderr.
    if quiet:
        if code != exit_codes.OK:
            print(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr if message.startswith("error:") else sys.stdout)
    return code


def _run(
    args: argparse.Namespace, job: Job, settings: Settings, log: Callable[[str], None]
) -> tuple[int, str, RunOutcome | None]:
    from batch_runner.cli.ping import failures_text
    from batch_runner.launch import output_for, runner_for
    from batch_runner.store.output_dir import AlreadyRunning

    output = output_for(job, args.output, args.sandbox)
    options = flag_options(args)
    runner: Runner | None = None
    try:
        with runner_for(
            job, settings, options, output, args.sandbox, args.endpoint, log=log, key_file=args.api_key_file
        ) as runner:
            with _signals_stop(runner, log):
                outcome = runner.run()
    except UsageError as exc:  # KeyProblem, EndpointMismatch, MixedOutput: worded with flags
        raise UsageError(worded(exc)) from None
    except AlreadyRunning as exc:
        if runner is not None and runner.stop_reason is not None:  # Ctrl-C while queueing: nothing ran
            return exit_codes.INTERRUPTED, f"stopped: interrupted ({runner.stop_message}) while waiting: {exc}", None
        return (
            exit_codes.LOCKED,
            f"error: {exc}; wait for it to finish (or pass --wait-lock SECONDS), or use another --output",
            None,
        )
    except OSError as exc:
        # Before anything was sent: the folder, its lock or its journal cannot be written.
        where = exc.filename or output
        return (
            exit_codes.OUTPUT_ERROR,
            f"error: cannot write to {where} ({exc.strerror or exc}); free some space or choose a writable --output",
            None,
        )
    resume = _resume_command(args, output)
    return outcome.exit_code, describe(outcome, settings, resume) + failures_text(outcome, resume), outcome


@contextmanager
def _signals_stop(runner: Runner, log: Callable[[str], None]) -> Iterator[None]:
    """Ctrl-C or SIGTERM stops the run cleanly (requests in flight finish, exit 130); a second
    one leaves at once. Everything finished so far is on disk already (journal and images are
    written synchronously), so leaving corrupts nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupts = 0

    def stop(name: str) -> None:
        log(f"{name}: stopping after the {runner.in_flight} request(s) in flight; Ctrl-C again to quit now")
        runner.request_stop(name)

    def on_signal(signum: int, frame: Any) -> None:
        # A handler runs on the main thread between two bytecodes, maybe while that thread holds
        # stderr's or the pacer's lock; taking either here could deadlock. So the handler only
        # counts, and a thread does the logging and the stopping.
        nonlocal interrupts
        interrupts += 1
        if interrupts >= 2:
            os.write(2, b"second interrupt: exiting now; requests in flight are abandoned\n")
            try:  # the run's line in runs.jsonl, from its counters: a monitor still sees the run
                runner.record_abandoned(f"{signal.Signals(signum).name} twice: left with requests in flight")
            finally:
                os._exit(exit_codes.INTERRUPTED)
        name = signal.Signals(signum).name
        threading.Thread(target=stop, args=(name,), name="stop-on-signal", daemon=True).start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _resume_command(args: argparse.Namespace, output: Path) -> str:
    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    if not args.output:
        argv += ["--output", str(output)]
    return shlex.join(["batch-runner", *argv])


def describe(r: RunOutcome, settings: Settings, resume_command: str) -> str:
    """The run's report in words: what stopped it, counts and spend, and what to do next."""
    from batch_runner.engine.outcome import StopReason as Stop

    detail = r.stop_message
    headline = {
        None: "done",
        Stop.CREDITS: f"stopped: the account is out of credits (406: {detail})",
        Stop.SPEND_LIMIT: f"stopped: the team's spend limit is reached (406: {detail})",
        Stop.CONTENT_TYPE: f"stopped: the server rejected the request's content type (406: {detail}); "
        "a proxy may be rewriting requests",
        Stop.BUDGET: f"stopped: the next request could take spending past --max-cost "
        f"{humanize.money(settings.max_cost or 0)}",
        Stop.RUN_BUDGET: f"stopped: the next request could take this run's spending past --max-cost-per-run "
        f"{humanize.money(settings.max_cost_per_run or 0)}",
        Stop.DURATION: f"stopped: {detail}; requests in flight were let finish",
        Stop.FATAL: f"stopped: the API refused the configuration ({detail}); "
        "check the key, its permissions and --endpoint",
        Stop.INTERRUPTED: f"stopped: interrupted ({detail})",
        Stop.UNREACHABLE: f"stopped: {detail}; the items it could not send are pending, not failed",
        Stop.RATE_LIMITED: f"stopped: the server is rate-limiting ({detail})",
        Stop.OUTPUT: f"stopped: cannot write to {r.output} ({detail})",
        Stop.INTERNAL: f"stopped: internal error ({detail}); this is a bug, please report it",
        Stop.JOBS_ON_SERVER: f"stopped before sending anything: {flagged(detail)}",
        Stop.TIMEOUT: f"stopped: {flagged(detail)}",
    }[r.stop_reason]
    lines = [headline]
    lines.append(
        f"  {r.succeeded:,} of {r.total:,} succeeded, {r.failed:,} failed, {r.pending:,} pending; "
        f"spent {humanize.money(r.spent_run)} this run, {humanize.money(r.spent_total)} in all"
    )
    if r.unanswered_total:
        lines.append(
            f"  possibly billed: {humanize.money(r.possibly_billed_total)} more in all, for "
            f"{r.unanswered_total:,} attempt(s) with no answer ({humanize.money(r.possibly_billed_run)} this run); "
            "the API cannot say whether it charged them"
        )
    if r.stop_reason is Stop.OUTPUT:
        if r.lost_images:
            lines.append(
                f"  {r.lost_images:,} paid image(s) arrived but could not be saved: they are on the books as "
                "billed, and will be generated (and billed) again when the run is resumed"
            )
        else:
            lines.append("  no paid image was lost: every image received before the stop is saved")
    lines.append(f"  results: {r.manifest}")
    if r.failed and r.stop_reason is None:
        lines.append("  failed items are retried only with --retry-failed")
    if r.stop_reason is not None and r.pending:
        what = {
            Stop.CREDITS: "add credits, then resume with",
            Stop.SPEND_LIMIT: "raise the team's spend limit, then resume with",
            Stop.BUDGET: "raise --max-cost, then resume with",
            Stop.RUN_BUDGET: "the next run goes on; or now, with",
            Stop.DURATION: "the next run goes on; or now, with",
            Stop.FATAL: "fix the configuration, then resume with",
            Stop.UNREACHABLE: "run the same command later",
            Stop.RATE_LIMITED: "run the same command later",
            Stop.OUTPUT: "free some space (or fix the folder's permissions), then resume with",
            Stop.INTERNAL: "results received so far are safe; resume with",
            Stop.TIMEOUT: "raise --timeout, then resume with",
        }.get(r.stop_reason, "resume with")
        lost = "nothing is lost" if not r.lost_images else "every result that was saved is kept"
        lines.append(f"  {lost}; {what}:\n    {resume_command}")
    return "\n".join(lines)
