"""`batch-runner plan`: what a job will do and cost, spending nothing. Loads only job/, so it
starts without pandas, Pillow or the sandbox."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from batch_runner import exit_codes, humanize
from batch_runner.api import spec as api_spec
from batch_runner.cli.options import add_run_settings, load
from batch_runner.job.manifest import clash_reason
from batch_runner.job.plan import ItemsWriter, Plan, build_plan


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="show what a job will do and cost, spending nothing")
    p.add_argument("job", help="a .yaml or .csv/.tsv manifest")
    p.add_argument("--json", action="store_true", help="print a JSON object for scripts")
    p.add_argument("--items", metavar="FILE", help="write every item to FILE (.csv, .tsv or .jsonl)")
    add_run_settings(p)
    p.set_defaults(handler=cmd_plan)


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
    latency = f"{api_spec.TYPICAL_LATENCY_S:g}"
    lines.append(f"  time       ~{humanize.duration(plan.estimated_seconds)} at {pace} (~{latency} s per request)")
    if plan.first:
        columns = ["item_id", *job.param_columns, *job.meta_columns][:7]
        rows = [item.row() for item in plan.first]
        lines.append(f"\nfirst {len(rows)} items:")
        lines.append(humanize.table(rows, columns, {"prompt": 44, "negative_prompt": 24}))
    return "\n".join(lines)
