"""`batch-runner report`, `batch-runner export` and `batch-runner recipe`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from batch_runner.cli.options import positive_int
from batch_runner.errors import UsageError


def _picks(path: str, results):
    from batch_runner.results.picks import read_picks

    try:
        return read_picks(path, set(results.items.item_id))
    except UsageError as exc:
        raise UsageError(f"--picks {exc}")


def _results(path: str):
    from batch_runner.results.summaries import load

    try:
        return load(path)
    except FileNotFoundError as exc:
        raise UsageError(str(exc))


def register_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="contact sheets and an HTML report of a run (or --csv summaries)")
    p.add_argument("output", help="a results folder written by `batch-runner run`")
    p.add_argument("--rows", help="axis or metadata column for sheet rows (default prompt)")
    p.add_argument("--cols", help="axis or metadata column for sheet columns (default style_type)")
    p.add_argument(
        "--group",
        action="append",
        help="one sheet per value of this column (repeatable; default: every other axis that varies)",
    )
    p.add_argument("--csv", action="store_true", help="also write the summaries as CSV files in OUTPUT/report/")
    p.add_argument(
        "--compare",
        metavar="OTHER",
        help="another results folder to lay beside this one in the HTML report (items matched by item_id, "
        "else by the same parameters but one)",
    )
    p.add_argument(
        "--picks",
        metavar="FILE",
        help="the picks.json (or picks.csv) the viewer downloaded: the verdict counts them and their ratings",
    )
    p.add_argument(
        "--no-text-check",
        action="store_true",
        help="skip reading the images' text with Tesseract (cached results are still shown)",
    )
    p.set_defaults(handler=cmd_report)


def _text_check(results, skip: bool) -> None:
    """Read the quoted text back from the images (new ones only), and say what came of it."""
    from batch_runner.results import ocr

    if skip:
        return
    done = ocr.check(results.items, results.path)
    if done.missing:
        print(f"text check skipped for {done.wanted} image(s) that quote text: {done.missing}", file=sys.stderr)
    elif done.wanted:
        print(
            f"text check: {done.wanted} image(s) quote text; {done.read} read now, {done.cached} unchanged since "
            f"the last report" + (f", {done.unreadable} unreadable" if done.unreadable else "")
            + f" ({done.seconds:.1f} s)"
        )  # fmt: skip
    results.items = ocr.attach(results.items, results.path)


def cmd_report(args: argparse.Namespace) -> int:
    from batch_runner.results.report import choose_layout, contact_sheets, make_thumbs, write_csv
    from batch_runner.results.verdict import sentences, text_table, verdict
    from batch_runner.results.viewer import html_report

    results = _results(args.output)
    picks = _picks(args.picks, results) if args.picks else None
    other = _results(args.compare) if args.compare else None
    if other is not None and other.path.resolve() == results.path.resolve():
        raise UsageError(f"--compare {args.compare}: that is the run being reported; name another results folder")
    layout = choose_layout(results, args.rows, args.cols, args.group)
    folder = results.path / "report"
    make_thumbs(results, folder / "thumbs")  # the sheets are drawn from these
    _text_check(results, args.no_text_check)
    table = verdict(results, picks)
    sheets = contact_sheets(results, folder / "sheets", layout, folder / "thumbs")
    index = html_report(results, folder, sheets, layout, compare=other, verdict=table)
    if picks is not None:
        unknown = f" ({picks.unknown} not of this run)" if picks.unknown else ""
        print(f"picks: {len(picks.ids)} picked, {len(picks.ratings)} rated, from {picks.path}{unknown}")
    for line in sentences(table):
        print(f"verdict: {line}")
    print(
        f"{len(sheets)} contact sheet(s) in {folder / 'sheets'} ({layout.rows} × {layout.cols or '—'}"
        + (f", one set per {', '.join(layout.group)}" if layout.group else "")
        + ")"
    )
    if other is not None:
        print(f"compared with {other.path} (a 'run' column; rows pair each item with its match)")
    print(f"report: {index}")
    print(text_table(table))
    if args.csv:
        for path in write_csv(results, folder, {"verdict": table}):
            print(f"csv: {path}")
    return 0


def register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write succeeded items as a dataset (imagefolder or WebDataset)")
    p.add_argument("output", help="a results folder written by `batch-runner run`")
    p.add_argument("--format", choices=("imagefolder", "webdataset"), required=True)
    p.add_argument("--to", required=True, help="the dataset folder; exporting again adds only new items")
    p.add_argument("--shard-size", type=positive_int, default=1000, help="samples per WebDataset shard")
    p.add_argument("--picks", metavar="FILE", help="export only the items in the viewer's picks.json (or picks.csv)")
    p.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from batch_runner.results.export import to_imagefolder, to_webdataset

    results = _results(args.output)
    if args.picks:
        picks = _picks(args.picks, results)
        results.items = results.items[results.items.item_id.isin(picks.ids)]
        print(f"picks: exporting the {len(picks.ids)} item(s) picked in {picks.path}")
    to = Path(args.to)
    if args.format == "imagefolder":
        done = to_imagefolder(results, to)
    else:
        done = to_webdataset(results, to, args.shard_size)
    for note in done.notes:
        print(f"note: {note}")
    print(f"exported {done.added} new item(s) to {to} ({args.format}); {done.skipped} were there already")
    return 0


def register_recipe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipe", help="print the one-item manifest an image carries")
    p.add_argument("image", help="an image written by `batch-runner run`")
    p.set_defaults(handler=cmd_recipe)


def cmd_recipe(args: argparse.Namespace) -> int:
    from batch_runner.store import recipe

    path = Path(args.image)
    try:
        card = recipe.read(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file")
    except OSError as exc:
        raise UsageError(f"{path}: not a readable image ({exc})")
    if card is None:
        raise UsageError(f"{path} carries no batch-runner recipe (was it made by `batch-runner run`?)")
    sys.stdout.write(recipe.as_manifest(card, str(path)))
    return 0
