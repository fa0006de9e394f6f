from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_PARTI = REPO.parent / "shared" / "data" / "PartiPrompts.tsv"
BUNDLED_PARTI = REPO / "jobs" / "data" / "PartiPrompts.tsv"


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
    return SHARED_PARTI if SHARED_PARTI.exists() else BUNDLED_PARTI
