"""Drive the real `batch-runner run` in a subprocess against a sandbox in this process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from PIL import Image

from tests.conftest import FAKE_KEY, REPO  # FAKE_KEY lives in conftest (its sandbox fixture); tests import it here too


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


def run_args(job: Path, out: Path, sandbox, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "batch_runner", "run", str(job),
        "--output", str(out), "--endpoint", sandbox.endpoint, "--progress", "log", "--log-interval", "0.5",
        *flags,
    ]  # fmt: skip


def run(job: Path, out: Path, sandbox, *flags: str, key: str = FAKE_KEY, timeout: float = 120):
    return subprocess.run(
        run_args(job, out, sandbox, *flags), capture_output=True, text=True, cwd=REPO, env=env_with_key(key),
        timeout=timeout,
    )  # fmt: skip


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
