"""`batch-runner plan`: what a job will do and cost, spending nothing. Loads only job/, so it
starts without pandas, Pillow or the sandbox."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from batch_runner import exit_codes, humanize
from batch_runner.api import spec as api_spec
from batch_runner.cli.options import add_run_settings, load, setting
from batch_runner.job.manifest import clash_reason
from batch_runner.job.plan import PLAN_RPMS, ItemsWriter, Plan, build_plan, timeout_warning


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="show what a job will do and cost, spending nothing")
    p.add_argument("job", help="a .yaml or .csv/.tsv manifest")
    p.add_argument("--json", action="store_true", help="print a JSON object for scripts")
    p.add_argument("--items", metavar="FILE", help="write every item to FILE (.csv, .tsv or .jsonl)")
    p.add_argument(
        "--timeout",
        type=setting("timeout"),
        metavar="SECONDS",
        help="the --timeout the run will use: plan warns when it is shorter than an image takes",
    )
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
    warnings = plan_warnings(plan, args.timeout)
    if args.json:
        print(json.dumps({**plan.to_json(), "warnings": warnings}, ensure_ascii=False, indent=2))
    else:
        print(render_plan(plan))
        if args.items:
            print(f"\nwrote {plan.items:,} items to {args.items}")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return exit_codes.OK


def plan_warnings(plan: Plan, timeout_s: float | None) -> list[str]:
    """What would make the run pay for less than the plan shows: a timeout no image can meet, a
    budget that fits only some of the items."""
    warnings = []
    if timeout_s is not None and (warning := timeout_warning(timeout_s, setting="--timeout")):
        warnings.append(warning)
    if (fit := plan.items_in_budget) is not None:
        warnings.append(
            f"max_cost {humanize.money(plan.settings.max_cost or 0)} pays for {fit:,} of the {plan.items:,} items at "
            f"{humanize.price(plan.settings.price_per_image)} each (less in an output folder that has spent "
            "already); the run stops there with exit 3. Raise --max-cost to buy them all"
        )
    return warnings


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
    if job.column_use:
        lines.append("  columns    " + _column_use(job.column_use))
    for i, expansion in enumerate(job.expansions):
        lines.append(("  expanded   " if i == 0 else "             ") + expansion)
    for note in job.notes:
        lines.append(f"  note       {note}")
    lines.append(
        f"  cost       {humanize.money(plan.estimated_cost)} estimated "
        f"({plan.items:,} × {humanize.price(s.price_per_image)})"
    )
    if s.max_cost is not None:
        fit = plan.items_in_budget
        fits = f": pays for {fit:,} of the {plan.items:,} items, then the run stops (exit 3)" if fit is not None else ""
        lines.append(f"  budget     {humanize.money(s.max_cost)} (max_cost){fits}")
    latency = f"~{api_spec.TYPICAL_LATENCY_S:g} s per image"
    fastest, slowest = plan.estimated_range
    if s.rpm:
        lines.append(
            f"  time       ~{humanize.duration(fastest)} at concurrency {s.concurrency}, {s.rpm:g} rpm ({latency})"
        )
    else:
        lines.append(
            f"  time       ~{humanize.duration(fastest)} to ~{humanize.duration(slowest)} at concurrency "
            f"{s.concurrency} ({latency}): your key's limit is unknown, and plans allow {min(PLAN_RPMS)} to "
            f"{max(PLAN_RPMS)} rpm; pass --rpm N for one figure"
        )
    if plan.first:
        columns = ["item_id", *job.param_columns, *job.meta_columns][:7]
        rows = [item.row() for item in plan.first]
        lines.append(f"\nfirst {len(rows)} items:")
        lines.append(humanize.table(rows, columns, {"prompt": 44, "negative_prompt": 24}))
    return "\n".join(lines)


def _column_use(use: list[tuple[str, str]]) -> str:
    """'sent: prompt, Style Type (as style_type); metadata: Category, status (as meta_status)'."""
    sent = [cell if cell == how else f"{cell} (as {how})" for cell, how in use if not how.startswith("metadata")]
    meta = [
        cell + (f" (as {how.rsplit(' ', 1)[1]})" if "renamed" in how else "")
        for cell, how in use
        if how.startswith("metadata")
    ]
    return "; ".join(
        part
        for part in (f"sent: {', '.join(sent)}" if sent else "", f"metadata: {', '.join(meta)}" if meta else "")
        if part
    )
