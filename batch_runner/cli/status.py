"""`batch-runner status`: counts, spend and what is left in a results folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from batch_runner import exit_codes, humanize
from batch_runner.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="counts, spend and what is left in a results folder")
    p.add_argument("output", help="a results folder written by `batch-runner run`")
    p.add_argument("--json", action="store_true", help="print a JSON object for scripts")
    p.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from batch_runner.store.fold import summarize
    from batch_runner.store.output_dir import OutputDir

    out = OutputDir(Path(args.output))
    if not out.exists():
        raise UsageError(f"{args.output}: no run found here (no journal.jsonl or manifest.parquet)")
    # What is left is priced at the job's price per image as its last run recorded it.
    summary = summarize(out)
    if args.json:
        print(json.dumps(summary, indent=2))
        return exit_codes.OK
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
    if summary["unanswered_attempts"] or summary["jobs_on_server"]:
        print(
            f"  possibly    {humanize.money(summary['possibly_billed_usd']):>8}   "
            f"({summary['unanswered_attempts']:,} attempt(s) with no answer: may have been billed)"
        )
    if summary["jobs_on_server"]:
        on_server = summary["jobs_on_server"]
        print(f"  on server   {on_server:>8,}   (async jobs not yet collected: billed when they complete)")
    if summary["skipped_journal_lines"]:
        skipped = summary["skipped_journal_lines"]
        print(f"  skipped     {skipped:>8,}   (journal lines with wrongly typed fields: ignored)")
    print(f"  left        {summary['left']:>8,}   (~{humanize.money(summary['left_estimated_cost_usd'])})")
    if summary["rate_limited"]:
        print(f"  429s        {summary['rate_limited']:>8,}")
    return exit_codes.OK
