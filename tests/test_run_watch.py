"""Issue 19 items 3 and 4: a --timeout that no answer can meet stops the run after a few billed
attempts (exit 4, naming --timeout, the wait and the fix), and an unreachable endpoint is named
at once, with when the run gives up; under --progress quiet, one stderr line after a minute.

Through the real CLI against the sandbox (or a port nothing listens on), asserting on what the
sandbox received and billed; the watches' own rules are unit-tested on a fake clock."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest

from batch_runner.api.client import TransientError, Unreachable
from batch_runner.engine.attempt_watch import ReachWatch, TimeoutWatch
from tests.helpers import REPO, env_with_key, free_port, manifest, run, run_cli, sandbox_with


class _Endpoint:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint


def _books(out) -> tuple[float, float]:
    status = json.loads(run_cli("status", str(out), "--json").stdout)
    return status["spent_usd"], status["possibly_billed_usd"]


# ------------------------------------------------------------------ 3. timeouts that cannot succeed


@pytest.mark.parametrize("concurrency", [4, 32])
def test_a_timeout_shorter_than_any_answer_stops_after_a_few_billed_attempts(tmp_path, concurrency):
    # The case: 40 items, 3 s an image, --timeout 1 billed 198 attempts for 0 images.
    with sandbox_with(latency_s=3.0) as sb:
        job = manifest(tmp_path, [f"slow {i}" for i in range(40)])
        out = tmp_path / "out"
        result = run(job, out, sb, "--timeout", "1", "--concurrency", str(concurrency))
        time.sleep(3.5)  # let the server finish (and bill) what the client gave up on
        stats = sb.stats()
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert "stopped: --timeout 1 s is too short: 3 attempts waited 1.0 s each with no answer" in result.stdout
    assert "Use --timeout 39 or more" in result.stdout and "raise --timeout, then resume with" in result.stdout
    # What was in flight when the third attempt timed out, and no more: never 5 tries an item.
    assert stats["billed"] <= concurrency + TimeoutWatch.STOP_AFTER, stats["billed"]
    assert max(body["received"] for body in stats["bodies"].values()) <= 2
    spent, possibly = _books(out)
    assert spent + possibly >= stats["billed"] * 0.063 - 1e-9  # every billed attempt is on the books


def test_run_warns_at_once_when_the_timeout_is_below_an_image_time_and_goes_on_when_answers_come(tmp_path):
    with sandbox_with() as sb:  # 50 ms an image: a 5 s timeout works here
        result = run(manifest(tmp_path, ["a", "b"]), tmp_path / "out", sb, "--timeout", "5")
        assert sb.stats()["billed"] == 2
    assert result.returncode == 0, result.stderr
    assert "warning: --timeout 5 s is shorter than the ~12.8 s an image takes at this endpoint" in result.stderr


def test_the_timeout_watch_never_stops_a_run_that_has_had_an_answer_in_time():
    watch = TimeoutWatch(timeout_s=1.0)
    timed_out = TransientError("no answer within 1 s", answered=False)
    assert watch.failed(timed_out, 1.0) is None
    watch.succeeded()
    assert all(watch.failed(timed_out, 1.0) is None for _ in range(10))


def test_the_timeout_watch_counts_only_attempts_that_ran_into_the_timeout():
    watch = TimeoutWatch(timeout_s=10.0)
    reset = TransientError("connection failed (ConnectionError)", answered=False)
    assert all(watch.failed(reset, 0.2) is None for _ in range(5))  # quick resets are not timeouts
    assert all(watch.failed(TransientError("HTTP 502", 502), 10.0) is None for _ in range(5))  # answered
    late = TransientError("no answer within 10 s", answered=False)
    assert [watch.failed(late, 10.0) is None for _ in range(3)] == [True, True, False]


# ------------------------------------------------------------------ 4. an unreachable endpoint


def _lines_with_times(proc: subprocess.Popen, until: str, timeout: float) -> list[tuple[float, str]]:
    """stderr lines as they arrive, each with its time since start, up to one holding until."""
    started = time.monotonic()
    lines: list[tuple[float, str]] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
            if until in line:
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(timeout)
    return lines


def _start(job, out, endpoint: str, *flags: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "batch_runner", "run", str(job), "--output", str(out), "--endpoint", endpoint]
    return subprocess.Popen(
        [*args, *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env_with_key()
    )


def test_a_refused_endpoint_is_named_within_seconds_with_when_the_run_gives_up(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}/v1/ideogram-turbo-txt-2-img"
    proc = _start(manifest(tmp_path, ["a", "b"]), tmp_path / "out", endpoint, "--progress", "log", "--max-wait", "6")
    try:
        lines = _lines_with_times(proc, "the endpoint is unreachable", timeout=30)
        assert proc.wait(60) == 75
    finally:
        proc.kill()
    when, line = lines[-1]
    assert "the connection was refused" in line and "exits 75 if it stays unreachable" in line, lines
    assert re.search(r"the run gives up at \d\d:\d\d:\d\d UTC \(--max-wait 6 s\)", line), line  # the CLI says the flag
    run_line = next(t for t, text in lines if text.startswith("run job:"))
    assert when - run_line < 3.0, lines  # at once, not after --max-wait


def test_the_progress_line_says_unreachable_why_and_the_time_left(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}/v1/ideogram-turbo-txt-2-img"
    result = run(manifest(tmp_path, ["a"]), tmp_path / "out", _Endpoint(endpoint), "--max-wait", "3")
    assert result.returncode == 75, result.stderr
    progress = [line for line in result.stderr.splitlines() if " progress " in line and "unreachable" in line]
    assert progress and "the connection was refused; gives up in" in progress[0], result.stderr


def test_a_name_that_does_not_resolve_is_named(tmp_path):
    endpoint = "http://no-such-host.invalid/v1/ideogram-turbo-txt-2-img"
    result = run(manifest(tmp_path, ["a"]), tmp_path / "out", _Endpoint(endpoint), "--max-wait", "3")
    assert result.returncode == 75, result.stderr
    assert (
        "warning: the endpoint is unreachable: cannot reach no-such-host.invalid: the host name does not resolve"
        in (result.stderr)
    )


def test_a_tls_failure_is_named_and_says_items_fail_rather_than_the_run_waiting(tmp_path):
    with sandbox_with() as sb:  # plain HTTP, asked for over https://
        endpoint = sb.endpoint.replace("http://", "https://")
        result = run(manifest(tmp_path, ["a"]), tmp_path / "out", _Endpoint(endpoint), "--max-attempts", "2")
        assert sb.stats()["billed"] == 0
    assert result.returncode == 1, result.stderr
    assert "the TLS handshake failed" in result.stderr and "Each item is tried max_attempts times" in result.stderr


def test_under_quiet_one_stderr_line_comes_once_the_wait_has_lasted_a_minute(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}/v1/ideogram-turbo-txt-2-img"
    proc = _start(manifest(tmp_path, ["a"]), tmp_path / "out", endpoint, "--progress", "quiet", "--max-wait", "600")
    try:
        lines = _lines_with_times(proc, "batch-runner: the endpoint is unreachable", timeout=100)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        proc.kill()
    quiet = [(t, text) for t, text in lines if text.startswith("batch-runner: the endpoint is unreachable")]
    assert len(quiet) == 1, lines
    when, text = quiet[0]
    assert 60 <= when < 90 and "for 1 min" in text and "the connection was refused" in text, quiet
    assert not [text for t, text in lines if t < 60], lines  # quiet until then


def test_reach_watch_on_a_fake_clock():
    now = [0.0]
    logged: list[str] = []
    noticed: list[str] = []
    wall = datetime(2026, 12, 4, 15, 0, 0, tzinfo=timezone.utc)
    watch = ReachWatch(900, logged.append, noticed.append, clock=lambda: now[0], wall=lambda: wall)
    refused = Unreachable("cannot reach api.example: the connection was refused")
    watch.failed(refused)
    watch.failed(refused)
    assert logged == [
        "warning: the endpoint is unreachable: cannot reach api.example: the connection was refused. Retrying with "
        "backoff; the run gives up at 15:15:00 UTC (max_wait 15 min) and exits 75 if it stays unreachable"
    ]
    now[0] = 59.0
    watch.tick()
    assert noticed == [] and watch.bar() == (
        ", unreachable 59 s: cannot reach api.example: the connection was refused; gives up in 14 min 1 s"
    )
    now[0] = 61.0
    watch.tick()
    watch.tick()
    assert len(noticed) == 1 and noticed[0].startswith("batch-runner: the endpoint is unreachable for 1 min 1 s")
    now[0] = 70.0
    watch.answered()
    assert logged[-1] == "the endpoint answered again after 1 min 10 s unreachable" and watch.bar() == ""
