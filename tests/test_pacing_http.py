"""The adaptive pacer in the real runner, against limits it is not told, over real HTTP.

Assertions are on what the server saw (429s, requests, bills), never on wall-clock rates:
tests/test_pacing.py proves the controller's numbers on a simulated clock, and
benchmarks/bench_pacing.py measures throughput against nginx and the sandbox side by side."""

from __future__ import annotations

import json
import time

import pytest

from batch_runner.sandbox import V1_PATH, Sandbox, SandboxConfig
from tests.helpers import FAKE_KEY, manifest, manifest_frame, run


def limited(rpm: float, window_s: float, limiter: str = "rolling", **kwargs) -> Sandbox:
    return Sandbox(
        SandboxConfig(keys=(FAKE_KEY,), rpm=rpm, rate_window_s=window_s, rate_limiter=limiter, latency_s=0.2, **kwargs)
    )


def answers(sb: Sandbox) -> dict[int, int]:
    counts: dict[int, int] = {}
    for entry in sb.stats()["log"]:
        if entry["path"] == V1_PATH:
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    return counts


@pytest.mark.parametrize("limiter", ["rolling", "fixed"])
def test_with_no_flags_the_runner_settles_under_an_unknown_limit(tmp_path, limiter):
    # 10 requests a second (600 RPM), told to nobody; the fixed window's 429s carry only
    # x-rate-limit-reset-at-utc. The old runner drew 25-62% 429s in this shape.
    with limited(rpm=600, window_s=1.0, limiter=limiter, retry_after=limiter == "rolling") as sb:
        out = tmp_path / "out"
        result = run(manifest(tmp_path, [f"unknown limit {i}" for i in range(150)]), out, sb)
        assert result.returncode == 0, result.stdout + result.stderr
        seen = answers(sb)
        assert seen[200] == 150 and sb.stats()["billed"] == 150
        assert seen.get(429, 0) / sum(seen.values()) <= 0.10, seen
        assert set(manifest_frame(out).status) == {"succeeded"}


def test_rpm_is_a_ceiling_that_meets_a_known_limit_without_429s(tmp_path):
    with limited(rpm=300, window_s=1.0) as sb:  # 5 a rolling second
        result = run(manifest(tmp_path, [f"ceiling {i}" for i in range(40)]), tmp_path / "out", sb, "--rpm", "300")
        assert result.returncode == 0
        assert answers(sb).get(429, 0) <= 1  # a send the scheduler delays can still meet one


def test_the_rate_learned_is_remembered_by_the_next_run(tmp_path):
    with limited(rpm=600, window_s=1.0) as sb:
        out = tmp_path / "out"
        first = run(manifest(tmp_path, [f"night one {i}" for i in range(100)]), out, sb)
        assert first.returncode == 0
        learned = json.loads((out / "pacing.json").read_text())
        assert 300 <= learned["limit_rpm"] <= 900  # near the 600 it was never told
        first_429s = answers(sb).get(429, 0)

        second = run(manifest(tmp_path, [f"night two {i}" for i in range(100)]), out, sb)
        assert second.returncode == 0
        second_429s = answers(sb).get(429, 0) - first_429s
        # Tonight starts on last night's plateau, not in slow start: no overshoot to pay for.
        assert second_429s <= max(2, first_429s // 2), (first_429s, second_429s)
        [_, record] = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
        assert 300 <= record["learned_rpm"] <= 900


def test_429s_that_go_on_past_max_wait_stop_with_75_and_leave_items_pending(tmp_path):
    with Sandbox(SandboxConfig(keys=(FAKE_KEY,), latency_s=0.05)) as sb:
        out = tmp_path / "out"
        prompts = ["[sandbox:fail=429] always busy", "[sandbox:fail=429] still busy"]
        result = run(manifest(tmp_path, prompts), out, sb, "--max-wait", "2")
        assert result.returncode == 75, result.stdout + result.stderr
        assert "rate-limiting" in result.stdout and "only 429" in result.stdout
        assert "run the same command later" in result.stdout
        assert set(manifest_frame(out).status) == {"pending"}
        assert sb.stats()["billed"] == 0


def test_a_demanded_wait_longer_than_max_wait_stops_at_once(tmp_path):
    # The fixed window resets each minute: a 429 names a reset up to 60 s away. The windows sit on
    # the UTC clock, so a run that starts in a minute's last seconds would see a reset well within
    # --max-wait and buy two more images in the next window: start where the minute has room.
    left = 60.0 - time.time() % 60.0
    if left < 20.0:
        time.sleep(left + 0.5)
    with limited(rpm=2, window_s=60.0, limiter="fixed", retry_after=False) as sb:
        out = tmp_path / "out"
        result = run(manifest(tmp_path, [f"long wait {i}" for i in range(6)]), out, sb, "--max-wait", "0.5")
        assert result.returncode == 75, result.stdout + result.stderr
        assert "asks to wait" in result.stdout
        frame = manifest_frame(out)
        assert (frame.status == "failed").sum() == 0 and (frame.status == "pending").sum() >= 4
