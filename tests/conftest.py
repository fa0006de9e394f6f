"""Fixtures and Hypothesis profiles. Helpers that tests import by name are in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis.database import DirectoryBasedExampleDatabase

from batch_runner.sandbox import Sandbox
from tests.helpers import BUNDLED_PARTI, REPO, sandbox_config

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


@pytest.fixture
def sandbox(request: pytest.FixtureRequest):
    """A sandbox on an ephemeral port, fresh for each test: sandbox_config() unless the test asks
    for another, with @pytest.mark.parametrize("sandbox", [sandbox_config(...)], indirect=True)."""
    with Sandbox(getattr(request, "param", None) or sandbox_config()) as sb:
        yield sb
