"""The README's `--help` blocks, generated from the real CLI (as cog does for sqlite-utils and llm).

A block in README.md is written between two markers:

    <!-- help: run -->
    ```
    $ batch-runner run --help
    usage: batch-runner run [-h] ...
    ```
    <!-- /help -->

`python -m tests.readme_help` rewrites every such block with what the command prints now, and
writes a block for each command the CLI has and the README does not show yet, where the marker
`<!-- /help blocks -->` stands (the README's "Every command's flags"). `python -m
tests.readme_help --check` changes nothing and exits 1 naming the blocks that are missing or out
of date. tests/test_readme.py runs the check, so a flag or a command added without its README
text fails CI.

The help is made at a fixed width (COLUMNS=100) so it does not depend on the terminal. argparse
words its help a little differently from one Python release to another (3.13 writes
"-o, --output OUTPUT"), so the opening marker records the Python that made the text, and the test
compares only under that release.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.in_process import cli

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
WIDTH = 100
# Where blocks for commands the README does not show yet are written.
NEW_BLOCKS_GO_HERE = "<!-- /help blocks -->"
_BLOCK = re.compile(
    r"<!-- help: (?P<command>[a-z -]*?)(?: \(Python (?P<python>\d+\.\d+)\))? -->\n"
    r"(?P<body>.*?)"
    r"<!-- /help -->",
    re.S,
)


@dataclass(frozen=True)
class Block:
    command: str  # "" for the top-level help, else the subcommand: "run"
    python: str | None  # the Python release that made the text, as "3.11"
    text: str  # the whole block, markers included
    body: str  # what stands between the markers


def commands() -> tuple[str, ...]:
    """Every subcommand the CLI has, in its own order: the README must show each one's help."""
    from batch_runner.cli.main import build_parser

    return tuple(
        name
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    )


REQUIRED = commands()


def this_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def help_text(command: str) -> str:
    """What `batch-runner [command] --help` prints, at WIDTH columns."""
    env = {**os.environ, "COLUMNS": str(WIDTH), "LINES": "50", "NO_COLOR": "1", "PYTHON_COLORS": "0"}
    args = [*command.split(), "--help"]
    result = cli(args, cwd=REPO, env=env, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"batch-runner {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def render(command: str) -> str:
    """The whole block for command, markers included, as the README should hold it."""
    shown = " ".join(["batch-runner", *command.split(), "--help"])
    return (
        f"<!-- help: {command or 'batch-runner'} (Python {this_python()}) -->\n"
        f"```\n$ {shown}\n{help_text(command)}```\n"
        "<!-- /help -->"
    )


def blocks(readme: str) -> list[Block]:
    found = []
    for match in _BLOCK.finditer(readme):
        command = match["command"].strip()
        found.append(Block("" if command == "batch-runner" else command, match["python"], match[0], match["body"]))
    return found


def missing(readme: str) -> list[str]:
    shown = {block.command for block in blocks(readme)}
    return [command for command in REQUIRED if command not in shown]


def regenerate(readme: str) -> str:
    """readme with every help block made again from the CLI, and the missing ones added where
    NEW_BLOCKS_GO_HERE stands (if it does)."""
    readme = _BLOCK.sub(lambda m: render(blocks(m[0])[0].command), readme)
    if NEW_BLOCKS_GO_HERE in readme:
        added = "".join(f"{render(command)}\n\n" for command in missing(readme))
        readme = readme.replace(NEW_BLOCKS_GO_HERE, added + NEW_BLOCKS_GO_HERE, 1)
    return readme


def main(argv: list[str]) -> int:
    """python -m tests.readme_help [--check] [--readme PATH]"""
    path = Path(argv[argv.index("--readme") + 1]) if "--readme" in argv else README
    readme = path.read_text(encoding="utf-8")
    if "--check" not in argv:
        new = regenerate(readme)
        if new != readme:
            path.write_text(new, encoding="utf-8")
        readme = new
        names = ", ".join(block.command or "batch-runner" for block in blocks(readme))
        print(f"{path.name}: {len(blocks(readme))} help block(s) made again from the CLI ({names or 'none'})")
    problems = [
        f"{path.name}: no help block for {command!r}; "
        + (
            "run: python -m tests.readme_help"
            if NEW_BLOCKS_GO_HERE in readme
            else f"add '<!-- help: {command} -->' and '<!-- /help -->' (or {NEW_BLOCKS_GO_HERE}), "
            "then run: python -m tests.readme_help"
        )
        for command in missing(readme)
    ]
    if "--check" in argv:
        problems += [
            f"{path.name}: the help of {block.command or 'batch-runner'!r} is out of date; "
            "run: python -m tests.readme_help"
            for block in blocks(readme)
            if block.text != render(block.command)
        ]
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
