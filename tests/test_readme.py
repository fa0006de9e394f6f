"""The README's commands, paths and sample output are true of this repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests import readme_help
from tests.helpers import REPO, run_cli

README = (REPO / "README.md").read_text(encoding="utf-8")


def fresh_machine_commands() -> list[str]:
    section = README.split("## On a fresh machine", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_there_are_two_fresh_machine_commands_and_ci_runs_the_second_verbatim():
    commands = fresh_machine_commands()
    assert len(commands) == 2, commands
    example, tests = commands
    assert "jobs/quickstart.yaml --sandbox" in example and tests.endswith("pytest -q")
    # Both install into a virtual environment: a system pip under PEP 668 refuses to install.
    assert all(c.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install -e ") for c in commands)
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ci[-1] == tests


def test_the_validation_example_is_the_real_output():
    shown = README.split("$ batch-runner plan jobs/mistakes/bad.yaml\n", 1)[1].split("```", 1)[0]
    result = run_cli("plan", "jobs/mistakes/bad.yaml")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == shown


def test_paths_named_in_the_readme_are_inside_the_repository_and_exist():
    # No parent-relative path, and not this checkout's own absolute location.
    assert "../" not in README and str(REPO) not in README and str(REPO.parent) + "/" not in README
    named = set(re.findall(r"(?<![\w./-])((?:jobs|docs|benchmarks|batch_runner|tests|\.ci)/[\w./-]*[\w/])", README))
    assert "jobs/mistakes/bad.yaml" in named and "docs/segmind-ideogram-turbo-api.md" in named
    missing = sorted(path for path in named if not (REPO / path).exists())
    assert missing == []


def test_the_help_the_readme_shows_is_what_the_cli_prints():
    shown = readme_help.blocks(README)
    commands = [block.command for block in shown]
    assert set(readme_help.REQUIRED) <= set(commands), (
        f"README.md shows --help for {commands}; it must show {readme_help.REQUIRED}: "
        "add the markers, then run python -m tests.readme_help"
    )
    made_by = {block.python for block in shown}
    if made_by != {readme_help.this_python()}:
        pytest.skip(f"the README's help was made under Python {made_by}; argparse words it differently elsewhere")
    for block in shown:
        # Compared block by block, so a failure names the command; the fix is the script.
        assert block.text == readme_help.render(block.command), f"run: python -m tests.readme_help ({block.command})"


def test_the_help_script_rewrites_stale_blocks_and_its_check_fails_until_then(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Title\n\ntext before\n\n<!-- help: plan -->\n```\n$ batch-runner plan --help\nold text\n```\n"
        "<!-- /help -->\n\ntext after\n",
        encoding="utf-8",
    )

    def script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tests.readme_help", *args, "--readme", str(readme)],
            capture_output=True, text=True, cwd=REPO, timeout=120,
        )  # fmt: skip

    before = script("--check")
    assert before.returncode == 1
    assert "the help of 'plan' is out of date" in before.stdout and "no help block for 'run'" in before.stdout
    assert "old text" in readme.read_text(encoding="utf-8")  # --check changes nothing

    made = script()
    text = readme.read_text(encoding="utf-8")
    assert (
        "old text" not in text and text.startswith("# Title\n\ntext before\n\n") and text.endswith("\n\ntext after\n")
    )
    [block] = readme_help.blocks(text)
    assert block.command == "plan" and block.python == readme_help.this_python()
    assert (
        block.body == "```\n$ batch-runner plan --help\n" + run_cli("plan", "--help", env=_at_width()).stdout + "```\n"
    )
    assert "usage: batch-runner plan" in block.body and "--items FILE" in block.body
    assert made.returncode == 1 and "no help block for 'run'" in made.stdout  # every command is required
    assert "no help block for 'sandbox'" in made.stdout

    # The marker says where blocks for the commands not shown yet go: the script writes them there.
    readme.write_text(text + "\n<!-- /help blocks -->\n", encoding="utf-8")
    assert script("--check").returncode == 1
    assert script().returncode == 0
    assert script("--check").returncode == 0
    text = readme.read_text(encoding="utf-8")
    assert [b.command for b in readme_help.blocks(text)] == ["plan", *(c for c in readme_help.REQUIRED if c != "plan")]
    assert text.endswith("<!-- /help -->\n\n<!-- /help blocks -->\n")
    assert "usage: batch-runner status" in text and "usage: batch-runner sandbox" in text


def test_every_command_of_the_cli_must_have_its_help_in_the_readme():
    from batch_runner.cli.main import build_parser

    shown = build_parser().format_help()
    # Derived from the parser, so a command added to cli/main.py without README text fails.
    assert {"plan", "run", "status", "report", "export", "recipe", "sandbox"} <= set(readme_help.REQUIRED)
    assert all(command in shown for command in readme_help.REQUIRED)
    assert set(readme_help.REQUIRED) <= {block.command for block in readme_help.blocks(README)}


def _at_width() -> dict[str, str]:
    return {**os.environ, "COLUMNS": str(readme_help.WIDTH), "LINES": "50", "NO_COLOR": "1", "PYTHON_COLORS": "0"}
