"""Shared test helpers and fixtures.

`tests/` is a package (tests/__init__.py), so pytest puts the repository root on sys.path and
`from tests.conftest import ...` works under plain `pytest`, `python -m pytest`, and from any
folder (`pytest /path/to/repo/tests`), with this module imported once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis.database import DirectoryBasedExampleDatabase

from batch_runner.sandbox import Sandbox, SandboxConfig

REPO = Path(__file__).resolve().parent.parent
BUNDLED_PARTI = REPO / "jobs" / "data" / "PartiPrompts.tsv"
FAKE_KEY = "fake-test-key-0000-not-a-real-key"

# Hypothesis profiles. "dev" (the default) keeps failing examples in the repository's .hypothesis/
# (gitignored) wherever pytest is started from, and replays them first: a failure found once is
# shown again until it is fixed. A replayed example that passes is dropped, so a fixed test does
# not keep failing; and the key is a digest of the test function's source, so an edited test does
# not replay the old test's examples at all. "ci" (when CI is set) has no database: a CI run
# depends on the commit and the random seed only, and a failure prints a @reproduce_failure blob
# to replay it anywhere. `pytest --hypothesis-profile=...` overrides the choice.
hypothesis_settings.register_profile("dev", database=DirectoryBasedExampleDatabase(REPO / ".hypothesis" / "examples"))
hypothesis_settings.register_profile("ci", database=None, print_blob=True)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120):
    """The real command in a subprocess: exit code, stdout and stderr as a user sees them."""
    return subprocess.run(
        [sys.executable, "-m", "batch_runner", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def write(tmp_path: Path):
    """write('name.yaml', text) -> path, for manifests made inside a test."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return _write


@pytest.fixture
def parti_prompts() -> Path:
    return BUNDLED_PARTI


def sandbox_config(**overrides: Any) -> SandboxConfig:
    """The tests' usual sandbox: it accepts FAKE_KEY and answers after 50 ms; overrides change any field."""
    return SandboxConfig(**{"keys": (FAKE_KEY,), "latency_s": 0.05, **overrides})


def sandbox_with(**overrides: Any) -> Sandbox:
    """A running sandbox of sandbox_config(**overrides); use it as a context manager."""
    return Sandbox(sandbox_config(**overrides))


@pytest.fixture
def sandbox(request: pytest.FixtureRequest):
    """A sandbox on an ephemeral port, fresh for each test: sandbox_config() unless the test asks
    for another, with @pytest.mark.parametrize("sandbox", [sandbox_config(...)], indirect=True)."""
    with Sandbox(getattr(request, "param", None) or sandbox_config()) as sb:
        yield sb
