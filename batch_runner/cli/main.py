"""The `batch-runner` command: one module per subcommand, wired here. Each registers its flags
and imports its heavy modules only when it runs, so `plan` starts without pandas or Pillow."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from batch_runner import __version__, exit_codes
from batch_runner.cli import init, plan, report, run, sandbox, status
from batch_runner.cli.options import worded
from batch_runner.errors import ManifestError, UsageError

COMMANDS = (
    init.register,
    plan.register,
    run.register,
    status.register,
    report.register_report,
    report.register_export,
    report.register_recipe,
    sandbox.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batch-runner",
        description="Turn a manifest of prompts into generated images with Segmind's Ideogram Turbo API.",
    )
    parser.add_argument("--version", action="version", version=f"batch-runner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
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
        print(f"error: {worded(exc)}", file=sys.stderr)  # a structured error, worded with flags
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
