"""`batch-runner run` and `batch-runner status`."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from batch_runner import humanize
from batch_runner.cli import exit_codes
from batch_runner.errors import ManifestError, UsageError
from batch_runner.store.output_dir import AlreadyRunning, OutputDir

if TYPE_CHECKING:
    from batch_runner.job.manifest import Job
    from batch_runner.settings import Settings

API_KEY_ENV = "SEGMIND_API_KEY"


def register_run(sub: argparse._SubParsersAction) -> None:
    from batch_runner.cli.main import _non_negative, _positive, _positive_int, add_run_settings

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
    p.add_argument("--max-attempts", type=_positive_int, default=5, help="tries per item for retryable errors")
    p.add_argument("--timeout", type=_positive, default=120.0, help="overall seconds allowed per request")
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "log", "quiet"),
        default="auto",
        help="bar on a terminal, log lines otherwise (auto)",
    )
    p.add_argument("--log-interval", type=_positive, default=30.0, help="seconds between progress log lines")
    p.add_argument(
        "--wait-lock",
        type=_non_negative,
        default=0.0,
        metavar="SECONDS",
        help="if another run holds the output folder, wait up to this long for it (default: exit 5 at once)",
    )
    add_run_settings(p)
    p.set_defaults(handler=cmd_run)


def register_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="counts, spend and what is left in a results folder")
    p.add_argument("output", help="a results folder written by `batch-runner run`")
    p.add_argument("--json", action="store_true", help="print a JSON object for scripts")
    p.set_defaults(handler=cmd_status)


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
    from batch_runner.cli.main import load
    from batch_runner.cli.ping import Pinger

    quiet = args.progress == "quiet"
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
    from batch_runner.api import spec as api_spec
    from batch_runner.engine.runner import Runner, RunOptions

    sandbox = None
    if args.sandbox:
        if args.endpoint:
            raise UsageError("--sandbox and --endpoint cannot be used together")
        from batch_runner.sandbox import Sandbox, SandboxConfig

        # A balance no example job exhausts: the sandbox is for trying a job, not for budgeting.
        sandbox = Sandbox(SandboxConfig(latency_s=1.0, jitter_s=0.3, credits=10_000.0))
        endpoint, key = sandbox.endpoint, sandbox.key
        log(
            f"SANDBOX: running against a local stand-in at {sandbox.url}. No credits are spent and the "
            "images are placeholders."
        )
    else:
        endpoint = args.endpoint or api_spec.ENDPOINT
        if "/v2/" in endpoint:
            # v2 answers a POST with a queued job, not an image: posting to it as if it were v1
            # would pay for a job per attempt and never fetch one.
            raise UsageError(
                f"--endpoint {endpoint} is the asynchronous v2 API, which this version does not speak; "
                f"use the v1 URL ({endpoint.replace('/v2/', '/v1/', 1)})"
            )
        key = _read_key(args)
    output = Path(args.output) if args.output else Path("outputs") / (job.name + ("-sandbox" if args.sandbox else ""))
    options = RunOptions(
        endpoint=endpoint,
        api_key=key,
        output=output,
        settings=settings,
        max_attempts=args.max_attempts,
        timeout_s=args.timeout,
        retry_failed=args.retry_failed,
        sandbox=args.sandbox,
        progress=args.progress,
        log_interval_s=args.log_interval,
        resume_command=_resume_command(args, output),
        max_wait_s=settings.max_wait,
        wait_lock_s=args.wait_lock,
        max_duration_s=settings.max_duration,
        max_cost_per_run=settings.max_cost_per_run,
    )
    try:
        report = Runner(job, options, log=log).run()
    except AlreadyRunning as exc:
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
    finally:
        if sandbox is not None:
            sandbox.close()
    return report.exit_code, report.message


def _resume_command(args: argparse.Namespace, output: Path) -> str:
    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    if not args.output:
        argv += ["--output", str(output)]
    return shlex.join(["batch-runner", *argv])


def cmd_status(args: argparse.Namespace) -> int:
    from batch_runner.store.fold import summarize

    out = OutputDir(Path(args.output))
    if not out.exists():
        raise UsageError(f"{args.output}: no run found here (no journal.jsonl or manifest.parquet)")
    summary = summarize(out)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    c = summary["counts"]
    flags = ", sandbox" if summary["sandbox"] else ""
    print(
        f"{summary['output']}  (job {summary['job']}, {summary['runs']} run(s), last {summary['last_run_at']}{flags})"
    )
    print(f"  items       {summary['items']:>8,}")
    print(f"  succeeded   {c['succeeded']:>8,}")
    print(f"  failed      {c['failed']:>8,}")
    print(f"  pending     {c['pending']:>8,}")
    if c["sent"]:
        print(f"  sent        {c['sent']:>8,}   (no answer on record: may have been billed)")
    print(f"  spent       {humanize.money(summary['spent_usd']):>8}   (confirmed by the server's answers)")
    if summary["unanswered_attempts"]:
        print(
            f"  possibly    {humanize.money(summary['possibly_billed_usd']):>8}   "
            f"({summary['unanswered_attempts']:,} attempt(s) with no answer: may have been billed)"
        )
    print(f"  left        {summary['left']:>8,}   (~{humanize.money(summary['left_estimated_cost_usd'])})")
    if summary["rate_limited"]:
        print(f"  429s        {summary['rate_limited']:>8,}")
    return 0
