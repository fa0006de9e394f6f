"""The README's commands, paths and sample output are true of this repository."""

from __future__ import annotations

import re

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
