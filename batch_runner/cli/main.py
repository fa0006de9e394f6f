"""The `batch-runner` command: plan, run, status, sandbox."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from batch_runner import __version__, humanize
from batch_runner.cli import exit_codes
from batch_runner.errors import ManifestError, UsageError
from batch_runner.job.manifest import Job, clash_reason, load_job
from batch_runner.job.plan import ItemsWriter, Plan, build_plan
from batch_runner.settings import RunSettings, Settings, check_url, parse_setting, resolve


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def _setting(name: str) -> Callable[[str], int | float]:
    """The argparse type of a run-setting flag: the same limits as the manifest's key."""

    def parse(text: str) -> int | float:
        try:
            return parse_setting(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc))

    return parse


# Every run setting's flag: (group, flag, metavar, help). The value's limits live in
# settings.LIMITS, shared with the manifest's keys; --ping-url is the one text setting.
_SETTINGS_GROUP = "run settings (override the manifest)"
_NIGHTLY_GROUP = "scheduled runs (cron, systemd timers; override the manifest)"
_SETTING_FLAGS: list[tuple[str, str, str, str]] = [
    (_SETTINGS_GROUP, "--concurrency", "N",
     "most requests in flight; the pacer opens as many as the learned rate needs (default: manifest, else 32)"),
    (_SETTINGS_GROUP, "--rpm", "N",
     "your key's limit in requests per minute, if you know it: a ceiling never exceeded, and the starting pace"),
    (_SETTINGS_GROUP, "--max-cost", "USD",
     "never let spent + possibly billed + in flight pass this many dollars in this output folder, across runs"),
    (_SETTINGS_GROUP, "--price-per-image", "USD", "dollars per image when the server sends no x-cost (default 0.063)"),
    (_NIGHTLY_GROUP, "--ping-url", "URL",
     "tell a monitor how the run went: URL/start, then URL on success or URL/<exit code> (healthchecks.io)"),
    (_NIGHTLY_GROUP, "--max-duration", "TIME",
     "stop cleanly when this much time has passed (e.g. 6h, 90m, 3600), exit 75: the next run goes on"),
    (_NIGHTLY_GROUP, "--max-cost-per-run", "USD",
     "this run's share of the budget; --max-cost stays the cap for all runs of the output folder"),
    (_NIGHTLY_GROUP, "--max-wait", "SECONDS",
     "how long the pool waits for an unreachable or rate-limiting server before it stops with exit 75 (default 900)"),
]  # fmt: skip


def add_run_settings(parser: argparse.ArgumentParser) -> None:
    groups: dict[str, Any] = {}
    for title, flag, metavar, help_text in _SETTING_FLAGS:
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        name = flag[2:].replace("-", "_")
        kind = _url if name == "ping_url" else _setting(name)
        group.add_argument(flag, type=kind, metavar=metavar, help=help_text)


def _url(text: str) -> str:
    if problem := check_url("--ping-url", text):
        raise argparse.ArgumentTypeError(problem)
    return text.strip()


def flag_settings(args: argparse.Namespace) -> RunSettings:
    return RunSettings(**{f.name: getattr(args, f.name, None) for f in fields(RunSettings)})


def load(args: argparse.Namespace) -> tuple[Job, Settings]:
    job = load_job(args.job)
    return job, resolve(job.settings, flag_settings(args))


# ------------------------------------------------------------------------------------------- plan


def cmd_plan(args: argparse.Namespace) -> int:
    job, settings = load(args)
    writer = ItemsWriter(Path(args.items), job) if args.items else None
    try:
        plan = build_plan(job, settings, on_item=writer)
    finally:
        if writer:
            writer.close()
    if args.json:
        print(json.dumps(plan.to_json(), ensure_ascii=False, indent=2))
    else:
        print(render_plan(plan))
        if args.items:
            print(f"\nwrote {plan.items:,} items to {args.items}")
    return exit_codes.OK


def render_plan(plan: Plan) -> str:
    job, s = plan.job, plan.settings
    lines = [f"job {job.name} ({humanize.clip(job.source, 80)})"]
    lines.append(f"  items      {plan.items:,} unique ({plan.duplicates:,} duplicates dropped)")
    if job.axes:
        lines.append("  axes       " + " × ".join(a.name for a in job.axes))
        width = max(len(a.name) for a in job.axes)
        for axis in job.axes:
            count = f"{axis.count:,}{'+' if axis.capped else ''}"
            sample = ", ".join(humanize.clip(v, 32) for v in axis.sample[:4])
            more = ", …" if axis.count > 4 else ""
            lines.append(f"    {axis.name.ljust(width)}  {count.rjust(7)}  {sample}{more}")
    for old, new in job.renamed.items():
        lines.append(f"  renamed    {old} → {new} ({clash_reason(old)})")
    lines.append(
        f"  cost       {humanize.money(plan.estimated_cost)} estimated "
        f"({plan.items:,} × {humanize.price(s.price_per_image)})"
    )
    if s.max_cost is not None:
        lines.append(f"  budget     {humanize.money(s.max_cost)} (max_cost)")
    pace = f"concurrency {s.concurrency}" + (f", {s.rpm:g} rpm" if s.rpm else "")
    lines.append(f"  time       ~{humanize.duration(plan.estimated_seconds)} at {pace} (~12.8 s per request)")
    if plan.first:
        columns = ["item_id", *job.param_columns, *job.meta_columns][:7]
        rows = [item.row() for item in plan.first]
        lines.append(f"\nfirst {len(rows)} items:")
        lines.append(humanize.table(rows, columns, {"prompt": 44, "negative_prompt": 24}))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batch-runner",
        description="Turn a manifest of prompts into generated images with Segmind's Ideogram Turbo API.",
    )
    parser.add_argument("--version", action="version", version=f"batch-runner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    plan = sub.add_parser("plan", help="show what a job will do and cost, spending nothing")
    plan.add_argument("job", help="a .yaml or .csv/.tsv manifest")
    plan.add_argument("--json", action="store_true", help="print a JSON object for scripts")
    plan.add_argument("--items", metavar="FILE", help="write every item to FILE (.csv, .tsv or .jsonl)")
    add_run_settings(plan)
    plan.set_defaults(handler=cmd_plan)

    from batch_runner.cli.commands import REGISTER  # the other commands import their heavy modules lazily

    for register in REGISTER:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.handler(args)
    except ManifestError as exc:
        count = len(exc.problems)
        print(f"error: the job cannot be planned ({count} problem{'s' * (count != 1)}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return exit_codes.USAGE
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except BrokenPipeError:
        # `batch-runner plan ... | head` closed the pipe: not an error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exit_codes.OK
    except Exception as exc:  # noqa: BLE001 - the promise is: never a traceback
        if os.environ.get("BATCH_RUNNER_DEBUG"):
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "Nothing paid for is lost: results are journaled as they arrive. "
            "Set BATCH_RUNNER_DEBUG=1 to see the traceback, and please report it.",
            file=sys.stderr,
        )
        return exit_codes.INTERNAL
