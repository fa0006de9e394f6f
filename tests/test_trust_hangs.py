"""Issue 23, hangs: a server sending its status line and headers one byte a second cannot hold
a request past --timeout, the credit check past its own 5 s, a v2 image fetch past --timeout,
nor a run past SIGTERM."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from batch_runner.api.client import TransientError
from batch_runner.api.v2 import Completed, V2Client
from tests.helpers import FAKE_KEY, manifest, run, run_cli, sandbox_with, start, wait_for

PRICE = 0.063


def status_json(out: Path) -> dict:
    result = run_cli("status", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_slow_headers_on_the_generation_post_end_at_the_timeout_and_stay_possibly_billed(tmp_path):
    with sandbox_with(header_byte_s=1.0) as sb:
        job, out = manifest(tmp_path, ["[sandbox:fault=slow-headers] hostage"]), tmp_path / "out"
        started = time.monotonic()
        result = run(job, out, sb, "--timeout", "3", "--max-attempts", "2", timeout=60)
        took = time.monotonic() - started
        assert result.returncode == 1, result.stdout + result.stderr
        assert took < 25, took  # two attempts of 3 s, not two of ~250 s of headers
        assert sb.stats()["received"] == 2
        summary = status_json(out)
        assert summary["counts"]["failed"] == 1
        assert summary["unanswered_attempts"] == 2  # no status line came: each may have been billed
        assert summary["spent_usd"] + summary["possibly_billed_usd"] >= sb.stats()["spent"] - 1e-9
        frame_error = run_cli("status", str(out)).stdout
        assert "failed" in frame_error


def test_slow_headers_on_the_credit_check_do_not_hold_the_run(tmp_path):
    with sandbox_with(slow_credits=True, header_byte_s=1.0) as sb:
        job, out = manifest(tmp_path, ["credits hostage"]), tmp_path / "out"
        started = time.monotonic()
        result = run(job, out, sb, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert time.monotonic() - started < 20  # the check gives up after 5 s, headers or not
        assert any(r["path"].endswith("/get-user-credits") for r in sb.stats()["log"])


def test_slow_headers_on_the_v2_image_host_end_at_the_timeout():
    with sandbox_with(header_byte_s=1.0) as sb:
        client = V2Client(sb.endpoint_v2, FAKE_KEY, pool_size=1, timeout_s=2.0)
        try:
            submitted = client.submit({"prompt": "[sandbox:media=slow-headers] fetch hostage"})
            wait_for(lambda: client.status(submitted.request_id).value == "COMPLETED", timeout=10)
            completed = client.result(submitted.request_id)
            assert isinstance(completed, Completed)
            started = time.monotonic()
            with pytest.raises(TransientError):
                client.fetch(completed, submitted.request_id, (1024, 1024))
            assert time.monotonic() - started < 4.5  # --timeout 2, not the ~200 s the headers take
        finally:
            client.close()


def test_sigterm_ends_a_run_held_by_slow_headers_within_seconds(tmp_path):
    with sandbox_with(header_byte_s=1.0) as sb:
        job, out = manifest(tmp_path, [f"[sandbox:fault=slow-headers] held {i}" for i in range(3)]), tmp_path / "out"
        proc = start(job, out, sb, "--timeout", "600", "--concurrency", "3")
        wait_for(lambda: sb.stats()["received"] >= 3, timeout=30)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=40)
        assert time.monotonic() - stopped < 20, "SIGTERM did not end the run within seconds"
        assert proc.returncode == 130, stdout + stderr
        summary = status_json(out)
        assert summary["unanswered_attempts"] == 3  # cut off: each stays possibly billed
        assert summary["spent_usd"] + summary["possibly_billed_usd"] >= sb.stats()["spent"] - 1e-9
