"""`batch-runner init [DIR]`: a first job to edit, from an installed package as from a clone.

The wheel carries no `jobs/` folder, yet every first step in the README names
`jobs/quickstart.yaml`. So the package carries the starter (a commented manifest and the prompt
file it reads) and `init` writes it into DIR/jobs/. A file that is there already is kept, never
overwritten: in a clone, whose `jobs/` holds the same two files, `init` changes nothing.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from batch_runner import exit_codes
from batch_runner.errors import UsageError

STARTER = ("quickstart.yaml", "quickstart-prompts.txt")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init",
        help="write a starter job (jobs/quickstart.yaml and its prompt file) to edit",
        description="Write a commented starter manifest and the prompt file it reads into DIR/jobs/. "
        "Files that exist already are kept.",
    )
    p.add_argument("dir", nargs="?", default=".", help="the project folder (default: the current folder)")
    p.set_defaults(handler=cmd_init)


def starter_text(name: str) -> str:
    return resources.files("batch_runner.cli").joinpath("starter").joinpath(name).read_text(encoding="utf-8")


def cmd_init(args: argparse.Namespace) -> int:
    jobs = Path(args.dir) / "jobs"
    try:
        jobs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {jobs} ({exc.strerror}); choose a folder you can write to")
    for name in STARTER:
        target = jobs / name
        if target.exists():
            print(f"kept {target} (it is there already)")
            continue
        try:
            with open(target, "x", encoding="utf-8") as f:  # "x": never over a file made meanwhile
                f.write(starter_text(name))
        except OSError as exc:
            raise UsageError(f"cannot write {target} ({exc.strerror}); choose a folder you can write to")
        print(f"wrote {target}")
    manifest = jobs / STARTER[0]
    steps = [
        (f"batch-runner plan {manifest}", "what it will do and cost"),
        (f"batch-runner run {manifest} --sandbox", "try it free, with placeholder images"),
    ]
    width = max(len(command) for command, _ in steps)
    print(f"next: edit {jobs / STARTER[1]} (one prompt per line), then")
    for command, what in steps:
        print(f"  {command.ljust(width)}   {what}")
    return exit_codes.OK
