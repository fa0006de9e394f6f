"""`batch-runner run`: the engine's outcome in words and an exit code, a monitor's pings, and
the signals. The engine reports facts (engine/outcome.py); every message that names a flag or
pastes back a command is composed here."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_runner import exit_codes, humanize
from batch_runner.cli.options import add_run_settings, load, setting
from batch_runner.errors import ManifestError, UsageError
from batch_runner.launch import API_KEY_ENV
from batch_runner.settings import DEFAULT_LOG_INTERVAL_S, DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S, Options, ProgressMode

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
        "75 temporary (endpoint unreachable or rate-limiting past --max-wait: run again later), 130 interrupted.",
    )
    p.add_argument("job", help="a .yaml or .csv/.tsv manifest")
    p.add_argument("--output", "-o", help="results folder (default outputs/<job name>)")
    p.add_argument("--endpoint", help="generation URL (default Segmind's; e.g. a sandbox or a proxy)")
    p.add_argument("--api-key-file", help=f"read the API key from this file (default: ${API_KEY_ENV})")
    p.add_argument("--sandbox", action="store_true", help="run against a built-in local sandbox: no key, no credits")
    p.add_argument("--retry-failed", action="store_true", help="send items that failed in earlier runs again")
    p.add_argument(
        "--max-attempts",
        type=setting("max_attempts"),
        default=DEFAULT_MAX_ATTEMPTS,
        help="tries per item for retryable errors",
    )
    p.add_argument(
        "--timeout", type=setting("timeout"), default=DEFAULT_TIMEOUT_S, help="overall seconds allowed per request"
    )
    p.add_argument(
        "--progress",
        choices=[mode.value for mode in ProgressMode],
        default=ProgressMode.AUTO.value,
        help="bar on a terminal, log lines otherwise (auto)",
    )
    p.add_argument(
        "--log-interval",
        type=setting("log_interval"),
        default=DEFAULT_LOG_INTERVAL_S,
        help="seconds between progress log lines",
    )
    p.add_argument(
        "--wait-lock",
        type=setting("wait_lock"),
        default=0.0,
        metavar="SECONDS",
        help="if another run holds the output folder, wait up to this long for it (default: exit 5 at once)",
    )
    add_run_settings(p)
    p.set_defaults(handler=cmd_run)


def _read_key(args: argparse.Namespace) -> str:
    if args.api_key_file:
        path = Path(args.api_key_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--api-key-file {path}: cannot read it ({exc.strerror})")
        except UnicodeDecodeError:
            raise UsageError(f"--api-key-file {path} is not UTF-8 text; put only the API key in it")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise UsageError(f"--api-key-file {path} is empty; put the API key in it")
        if len(lines) > 1:
            # Which line is the key? Guessing could send a password or a second account's key.
            raise UsageError(
                f"--api-key-file {path} has {len(lines)} non-empty lines; it must hold only the API key, on one line"
            )
        return lines[0]
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise UsageError(
            f"no API key: set {API_KEY_ENV} or pass --api-key-file FILE (or try the job for free with --sandbox)"
        )
    return key


def cmd_run(args: argparse.Namespace) -> int:
    """Run a job. Under --progress quiet a successful run prints nothing at all, and a failed
    or stopped one prints everything it held back to stderr: cron mails only bad news."""
    from batch_runner.cli.ping import Pinger

    quiet = args.progress == ProgressMode.QUIET
    held: list[str] = []

    def log(message: str) -> None:
        if quiet:
            held.append(message)
        else:
            print(message, file=sys.stderr, flush=True)

    pinger = Pinger(args.ping_url, log) if args.ping_url else None
    if pinger:
        pinger.start()
    code = exit_codes.INTERNAL
    try:
        job, settings = load(args)
        if pinger is None and settings.ping_url:
            pinger = Pinger(settings.ping_url, log)
            pinger.start()
        code, message = _run(args, job, settings, log)
    except (UsageError, ManifestError):
        code = exit_codes.USAGE
        raise
    except KeyboardInterrupt:
        code = exit_codes.INTERRUPTED
        raise
    finally:
        if pinger:
            pinger.finish(code)
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


def _run(args: argparse.Namespace, job: Job, settings: Settings, log: Callable[[str], None]) -> tuple[int, str]:
    from batch_runner.engine.runner import MixedOutput
    from batch_runner.launch import default_output, runner_for
    from batch_runner.store.output_dir import AlreadyRunning

    if args.sandbox and args.endpoint:
        raise UsageError("--sandbox and --endpoint cannot be used together")
    key = None if args.sandbox else _read_key(args)
    output = Path(args.output) if args.output else default_output(job, args.sandbox)
    options = Options(
        max_attempts=args.max_attempts,
        timeout=args.timeout,
        retry_failed=args.retry_failed,
        progress=ProgressMode(args.progress),
        log_interval=args.log_interval,
        wait_lock=args.wait_lock,
    )
    runner: Runner | None = None
    try:
        with runner_for(job, settings, options, output, args.sandbox, args.endpoint, key, log) as runner:
            with _signals_stop(runner, log):
                outcome = runner.run()
    except MixedOutput as exc:
        raise UsageError(f"{exc} Choose another --output.")
    except AlreadyRunning as exc:
        if runner is not None and runner.stop_reason is not None:  # Ctrl-C while queueing: nothing ran
            return exit_codes.INTERRUPTED, f"stopped: interrupted ({runner.stop_message}) while waiting: {exc}"
        return (
            exit_codes.LOCKED,
            f"error: {exc}; wait for it to finish (or pass --wait-lock SECONDS), or use another --output",
        )
    except OSError as exc:
        # Before anything was sent: the folder, its lock or its journal cannot be written.
        where = exc.filename or output
        return (
            exit_codes.OUTPUT_ERROR,
            f"error: cannot write to {where} ({exc.strerror or exc}); free some space or choose a writable --output",
        )
    return outcome.exit_code, describe(outcome, settings, _resume_command(args, output))


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
        Stop.TIMEOUT: f"stopped: {detail}",
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
