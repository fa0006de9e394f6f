"""The sandbox's fixed-window limiter, over real HTTP on 127.0.0.1.

A fixed window allows N requests per window on the UTC clock, resets all at once, and its 429s say
only when: x-rate-limit-reset-at-utc, with no Retry-After.
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import datetime, timezone

import pytest
import requests

from batch_runner.api.client import retry_at_from
from batch_runner.cli.sandbox import config_from, register
from batch_runner.sandbox import Sandbox, SandboxConfig

KEY = "test-key-not-real"
WINDOW_S = 2.0


def post(sb, body, key=KEY):
    return requests.post(sb.endpoint, json=body, headers={"x-api-key": key}, timeout=30)


def reset_of(response) -> datetime:
    return datetime.fromisoformat(response.headers["x-rate-limit-reset-at-utc"].replace("Z", "+00:00"))


def start_of_a_fresh_window() -> None:
    """Sleep to just after the next window boundary on the UTC clock, so a test's few requests
    all fall in one window."""
    now = time.time()
    time.sleep(math.floor(now / WINDOW_S) * WINDOW_S + WINDOW_S - now + 0.02)


def fixed(rpm: float = 60, **kwargs) -> SandboxConfig:
    # 60 rpm over a 2 s window: 2 requests per window.
    return SandboxConfig(keys=(KEY, "second-fake-key"), rpm=rpm, rate_window_s=WINDOW_S, rate_limiter="fixed", **kwargs)


def test_fixed_window_admits_n_then_429s_with_only_the_reset_time():
    with Sandbox(fixed()) as sb:
        start_of_a_fresh_window()
        assert [post(sb, {"prompt": f"p{i}"}).status_code for i in range(2)] == [200, 200]
        limited = post(sb, {"prompt": "one too many"})
        assert limited.status_code == 429 and limited.json() == {"error": "Rate limit exceeded"}
        assert "Retry-After" not in limited.headers  # even though retry_after=True by default
        reset = reset_of(limited)
        # The reset is the window's end: a multiple of the window on the UTC clock.
        epoch = reset.timestamp()
        assert abs(epoch / WINDOW_S - round(epoch / WINDOW_S)) * WINDOW_S < 0.01
        wait = (reset - datetime.now(timezone.utc)).total_seconds()
        assert 0 < wait <= WINDOW_S
        # The client's parser reads it into a monotonic time to come back at.
        assert retry_at_from(limited.headers) == pytest.approx(time.monotonic() + wait, abs=0.1)
        assert post(sb, {"prompt": "still limited"}).status_code == 429
        stats = sb.stats()
        assert stats["billed"] == 2 and stats["by_status"].get("429") == 2


def test_fixed_window_resets_all_at_once():
    # Unlike a rolling window, where slots come back one by one as old requests age out, the
    # whole allowance returns at the reset.
    with Sandbox(fixed()) as sb:
        start_of_a_fresh_window()
        post(sb, {"prompt": "a"})
        post(sb, {"prompt": "b"})
        limited = post(sb, {"prompt": "c"})
        assert limited.status_code == 429
        time.sleep(max(0.0, (reset_of(limited) - datetime.now(timezone.utc)).total_seconds()) + 0.02)
        assert [post(sb, {"prompt": f"after {i}"}).status_code for i in range(3)] == [200, 200, 429]


def test_fixed_window_is_per_key():
    with Sandbox(fixed(rpm=30)) as sb:  # 1 per 2 s window
        start_of_a_fresh_window()
        assert post(sb, {"prompt": "a"}).status_code == 200
        assert post(sb, {"prompt": "b"}).status_code == 429
        assert post(sb, {"prompt": "b"}, key="second-fake-key").status_code == 200


def test_rolling_window_still_sends_retry_after_by_default():
    config = SandboxConfig(keys=(KEY,), rpm=30, rate_window_s=WINDOW_S)
    with Sandbox(config) as sb:
        post(sb, {"prompt": "a"})
        limited = post(sb, {"prompt": "b"})
        assert limited.status_code == 429 and "Retry-After" in limited.headers


def test_unknown_rate_limiter_is_refused():
    with pytest.raises(ValueError, match="rate_limiter must be rolling or fixed"):
        SandboxConfig(rpm=60, rate_limiter="sliding")


def test_sandbox_command_takes_rate_limiter():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["sandbox", "--rpm", "50", "--rate-window", "60", "--rate-limiter", "fixed"])
    config = config_from(args)
    assert config.rate_limiter == "fixed" and config.rpm == 50 and config.rate_window_s == 60
    assert config_from(parser.parse_args(["sandbox", "--rpm", "50"])).rate_limiter == "rolling"
    with pytest.raises(SystemExit):
        parser.parse_args(["sandbox", "--rate-limiter", "leaky"])
