"""Helpers the tests share: the real CLI (in-process, or in a subprocess where the test is about
the process), sandboxes, manifests, and checks on an output.

Fixtures live in conftest.py; everything a test imports by name lives here, so `from tests.helpers
import ...` works under plain `pytest` from any folder (tests/ is a package).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from batch_runner.sandbox import Sandbox, SandboxConfig
from tests.in_process import cli

REPO = Path(__file__).resolve().parent.parent
BUNDLED_PARTI = REPO / "jobs" / "data" / "PartiPrompts.tsv"
FAKE_KEY = "fake-test-key-0000-not-a-real-key"


def run_cli(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    process: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`batch-runner *args`: exit code, stdout and stderr as a user sees them. It runs in this
    process (tests/in_process.py: same env, cwd and timeout semantics as subprocess.run, about a
    second faster); process=True starts a real one, for a test about the process itself."""
    return cli(args, cwd=cwd or REPO, env=env, timeout=timeout, process=process)


def sandbox_config(**overrides: Any) -> SandboxConfig:
    """The tests' usual sandbox: it accepts FAKE_KEY and answers after 50 ms; overrides change any field."""
    return SandboxConfig(**{"keys": (FAKE_KEY,), "latency_s": 0.05, **overrides})


def sandbox_with(**overrides: Any) -> Sandbox:
    """A running sandbox of sandbox_config(**overrides); use it as a context manager."""
    return Sandbox(sandbox_config(**overrides))


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick, released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Driving `batch-runner run` against a sandbox in this process: run() waits for it (in-process
# unless process=True), start() is always a real process, for tests that signal or kill it.


def env_with_key(key: str = FAKE_KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SEGMIND_API_KEY"}
    env["SEGMIND_API_KEY"] = key
    env["PYTHONUNBUFFERED"] = "1"
    return env


def manifest(tmp_path: Path, prompts: list[str], name: str = "job", extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    listed = "\n".join(f"    - {json.dumps(p)}" for p in prompts)
    path.write_text(
        f"name: {name}\ndefaults:\n  resolution: RESOLUTION_512_1536\ngrid:\n  prompt:\n{listed}\n{extra}",
        encoding="utf-8",
    )
    return path


def cli_args(job: Path, out: Path, sandbox, *flags: str) -> list[str]:
    """The arguments of `batch-runner run` for job against sandbox, logging progress lines."""
    return [
        "run", str(job),
        "--output", str(out), "--endpoint", sandbox.endpoint, "--progress", "log", "--log-interval", "0.5",
        *flags,
    ]  # fmt: skip


def run_args(job: Path, out: Path, sandbox, *flags: str) -> list[str]:
    """cli_args as a command line for a process of its own."""
    return [sys.executable, "-m", "batch_runner", *cli_args(job, out, sandbox, *flags)]


def run(
    job: Path, out: Path, sandbox, *flags: str, key: str = FAKE_KEY, timeout: float = 120, process: bool = False
) -> subprocess.CompletedProcess[str]:
    return cli(cli_args(job, out, sandbox, *flags), cwd=REPO, env=env_with_key(key), timeout=timeout, process=process)


def start(job: Path, out: Path, sandbox, *flags: str, key: str = FAKE_KEY) -> subprocess.Popen:
    return subprocess.Popen(
        run_args(job, out, sandbox, *flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env=env_with_key(key),
    )  # fmt: skip


def done_lines(out: Path) -> int:
    journal = out / "journal.jsonl"
    if not journal.exists():
        return 0
    return sum(1 for line in journal.read_bytes().splitlines() if b'"e":"done"' in line)


def wait_for(predicate, timeout: float = 30.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError("condition not met in time")


def manifest_frame(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "manifest.parquet")


def assert_images_valid(out: Path, frame: pd.DataFrame) -> None:
    for row in frame[frame.status == "succeeded"].itertuples():
        image = Image.open(io.BytesIO((out / row.image_path).read_bytes()))
        image.load()
        assert image.size == (512, 1536)
