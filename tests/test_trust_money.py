"""Issue 23, money: v2 jobs on the server are on the books across kill -9s and a switch of mode,
no stated cost turns --max-cost off, and a price rise seen once is reserved by every later run.
Through the real CLI against a sandbox made to misbehave that way."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from batch_runner.sandbox import Sandbox
from tests.helpers import manifest, run, run_cli, sandbox_with, start, wait_for

PRICE = 0.063


class V2:
    def __init__(self, sandbox: Sandbox):
        self.endpoint = sandbox.endpoint_v2


def strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def status_json(out: Path) -> dict:
    result = run_cli("status", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return strict_json(result.stdout)


def books(out: Path) -> float:
    summary = status_json(out)
    return summary["spent_usd"] + summary["possibly_billed_usd"]


def submitted(out: Path) -> int:
    journal = out / "journal.jsonl"
    return journal.read_bytes().count(b'"e":"submitted"') if journal.exists() else 0


def test_async_kill_9s_then_a_sync_resume_keep_the_books_at_or_above_the_bill_and_the_bill_under_the_cap(tmp_path):
    cap = "0.63"  # 10 images
    with sandbox_with(latency_s=1.5) as sb:
        job, out = manifest(tmp_path, [f"async books {i}" for i in range(16)]), tmp_path / "out"
        for kill in range(3):
            proc = start(job, out, V2(sb), "--api", "async", "--concurrency", "4", "--max-cost", cap)
            wait_for(lambda k=kill: submitted(out) >= 2 * (k + 1), timeout=30)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            # Jobs submitted and never collected are billed by the server all the same.
            assert books(out) >= sb.stats()["spent"] - 1e-9, (kill, status_json(out), sb.stats()["spent"])
        assert status_json(out)["jobs_on_server"] >= 1

        # A sync run must not buy those again while the server holds their results.
        before = sb.stats()["received"]
        refused = run(job, out, sb, "--max-cost", cap)
        assert refused.returncode == 75, refused.stdout + refused.stderr
        assert "have a job on the server" in refused.stdout and "--api async" in refused.stdout
        assert sb.stats()["received"] == before
        assert books(out) >= sb.stats()["spent"] - 1e-9

        collected = run(job, out, V2(sb), "--api", "async", "--concurrency", "4", "--max-cost", cap)
        assert collected.returncode in (0, 3), collected.stdout + collected.stderr
        assert sb.stats()["spent"] <= float(cap) + 1e-9
        assert books(out) >= sb.stats()["spent"] - 1e-9
        assert status_json(out)["jobs_on_server"] == 0


def test_a_sync_run_past_the_results_hour_buys_again_and_keeps_the_forgotten_jobs_possibly_billed(tmp_path):
    with sandbox_with(latency_s=3.0) as sb:
        job, out = manifest(tmp_path, [f"old jobs {i}" for i in range(3)]), tmp_path / "out"
        proc = start(job, out, V2(sb), "--api", "async")
        wait_for(lambda: submitted(out) >= 3, timeout=30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # Two hours pass: the server has forgotten the jobs (and billed them).
        journal = out / "journal.jsonl"
        lines = []
        for raw in journal.read_text(encoding="utf-8").splitlines():
            event = json.loads(raw)
            if event.get("e") == "submitted":
                event["at"] -= 7200
            lines.append(json.dumps(event))
        journal.write_text("\n".join(lines) + "\n", encoding="utf-8")
        for ledger in out.glob("ledger-*.arrow"):
            ledger.unlink()

        result = run(job, out, sb, "--max-cost", "0.63")
        assert result.returncode == 0, result.stdout + result.stderr
        summary = status_json(out)
        assert summary["counts"]["succeeded"] == 3
        assert summary["unanswered_attempts"] >= 3  # the three jobs nobody collected
        assert books(out) >= sb.stats()["spent"] - 1e-9


@pytest.mark.parametrize("stated", ["nan", "inf", "-0.5", "1e300"])
def test_a_cost_that_is_no_price_is_booked_at_the_configured_one_and_the_cap_holds(tmp_path, stated):
    with sandbox_with(headers=(("x-cost", stated),)) as sb:
        job, out = manifest(tmp_path, [f"odd cost {i}" for i in range(12)]), tmp_path / "out"
        first = run(job, out, sb, "--max-cost", "0.19", "--concurrency", "2")  # 3 images
        assert first.returncode == 3, first.stdout + first.stderr
        assert sb.stats()["billed"] <= 3
        assert (first.stdout + first.stderr).count("booked at the configured") == 1  # warned once
        summary = status_json(out)
        assert summary["spent_usd"] == pytest.approx(sb.stats()["billed"] * PRICE)
        second = run(job, out, sb, "--max-cost", "0.19", "--concurrency", "2")
        assert second.returncode == 3, second.stdout + second.stderr
        assert sb.stats()["billed"] <= 3  # the next run's cap holds too


def test_v2_metrics_cost_nan_is_booked_at_the_configured_price(tmp_path):
    with sandbox_with(v2_metrics=(("cost", float("nan")),)) as sb:
        job, out = manifest(tmp_path, [f"nan metrics {i}" for i in range(3)]), tmp_path / "out"
        result = run(job, out, V2(sb), "--api", "async", "--max-cost", "0.13")
        assert result.returncode == 3, result.stdout + result.stderr
        assert sb.stats()["billed"] <= 2
        assert status_json(out)["spent_usd"] == pytest.approx(2 * PRICE)


def test_a_price_rise_seen_once_is_reserved_by_the_next_run_so_the_cap_holds(tmp_path):
    with sandbox_with(price=0.10, latency_s=0.3) as sb:
        job, out = manifest(tmp_path, [f"dearer {i}" for i in range(30)]), tmp_path / "out"
        first = run(job, out, sb, "--max-cost", "0.5", "--concurrency", "1")
        assert first.returncode == 3, first.stdout + first.stderr
        assert sb.stats()["spent"] <= 0.5 + 1e-9
        # Eight requests in flight at once: reserved at $0.063 they would overshoot $1 by far.
        second = run(job, out, sb, "--max-cost", "1", "--concurrency", "8")
        assert second.returncode == 3, second.stdout + second.stderr
        assert sb.stats()["spent"] <= 1.0 + 1e-9
        assert books(out) >= sb.stats()["spent"] - 1e-9
