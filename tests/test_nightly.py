"""Scheduled runs: silent on success, bad news on stderr, pings for a monitor, a run record per
run, a time window and a nightly budget, queued locks, and jobs that grow every day."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.helpers import (
    FAKE_KEY,
    done_lines,
    free_port,
    manifest,
    manifest_frame,
    run,
    run_cli,
    sandbox_with,
    start,
    wait_for,
)
from tests.hostile import Answer, HostileServer

PRICE = 0.063


def quiet(job: Path, out: Path, sb, *flags: str, **kwargs):
    # runner_helpers.run passes --progress log; a later --progress wins in argparse.
    return run(job, out, sb, *flags, "--progress", "quiet", **kwargs)


def runs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "runs.jsonl").read_text(encoding="utf-8").splitlines()]


def test_a_quiet_successful_run_prints_nothing_at_all(tmp_path):
    with sandbox_with() as sb:
        # A process of its own: "nothing at all" includes what a fresh interpreter might print.
        result = quiet(manifest(tmp_path, ["calm 1", "calm 2"]), tmp_path / "out", sb, process=True)
        assert result.returncode == 0
        assert (result.stdout, result.stderr) == ("", "")
        assert set(manifest_frame(tmp_path / "out").status) == {"succeeded"}


def test_a_quiet_stopped_run_puts_its_summary_and_resume_command_on_stderr(tmp_path):
    with sandbox_with(credits=2 * PRICE + 0.001) as sb:
        result = quiet(manifest(tmp_path, ["a", "b", "c", "d"]), tmp_path / "out", sb, "--concurrency", "1")
        assert result.returncode == 3
        assert result.stdout == ""
        assert "out of credits" in result.stderr and "resume with:" in result.stderr
        assert "batch-runner run" in result.stderr and "warning: the account has" in result.stderr


def test_pings_follow_the_healthchecks_convention_and_carry_no_key(tmp_path):
    with HostileServer(lambda seen: Answer(200, b"OK")) as monitor, sandbox_with() as sb:
        ping = monitor.url + "/ping/abc"
        assert quiet(manifest(tmp_path, ["pinged"]), tmp_path / "ok", sb, "--ping-url", ping).returncode == 0
        assert [s.path for s in monitor.seen] == ["/ping/abc/start", "/ping/abc"]

        monitor.seen.clear()
        bad = manifest(tmp_path, ["[sandbox:fail=401] refused"], name="bad")
        assert quiet(bad, tmp_path / "bad", sb, "--ping-url", ping).returncode == 4
        assert [s.path for s in monitor.seen] == ["/ping/abc/start", "/ping/abc/4"]
        assert not [s for s in monitor.seen if FAKE_KEY in json.dumps(s.headers)]


def test_a_dead_monitor_never_breaks_the_batch(tmp_path):
    with sandbox_with() as sb:
        dead = f"http://127.0.0.1:{free_port()}/ping"
        result = run(manifest(tmp_path, ["monitor down"]), tmp_path / "out", sb, "--ping-url", dead)
        assert result.returncode == 0, result.stderr
        assert "did not take the ping" in result.stderr
        assert set(manifest_frame(tmp_path / "out").status) == {"succeeded"}


def test_each_run_appends_one_record_for_monitors(tmp_path):
    with sandbox_with(credits=2 * PRICE + 0.001) as sb:
        job, out = manifest(tmp_path, ["r1", "r2", "r3"]), tmp_path / "out"
        assert run(job, out, sb, "--concurrency", "1").returncode == 3
        sb.api.add_credits(1)
        assert run(job, out, sb, "--concurrency", "1").returncode == 0
        first, second = runs(out)
        assert (first["exit_code"], first["stop_reason"]) == (3, "credits")
        assert (first["succeeded"], first["pending"], first["succeeded_this_run"]) == (2, 1, 2)
        assert first["spent_usd_this_run"] == pytest.approx(2 * PRICE)
        assert (second["exit_code"], second["stop_reason"], second["succeeded_this_run"]) == (0, None, 1)
        assert second["spent_usd_total"] == pytest.approx(3 * PRICE)
        assert second["possibly_billed_usd_total"] == 0
        assert second["started_at"] >= first["ended_at"]
        assert {"batch_runner", "python", "requests"} <= set(second["versions"])
        assert "rate_limited_this_run" in second and "learned_rpm" in second


def test_max_duration_closes_the_window_cleanly_with_75_and_the_next_run_goes_on(tmp_path):
    with sandbox_with(latency_s=0.4) as sb:
        job, out = manifest(tmp_path, [f"window {i}" for i in range(40)]), tmp_path / "out"
        result = run(job, out, sb, "--concurrency", "2", "--max-duration", "1.5s")
        assert result.returncode == 75, result.stdout + result.stderr
        assert "window of 2 s closed" in result.stdout or "window of 1 s closed" in result.stdout
        frame = manifest_frame(out)
        done = (frame.status == "succeeded").sum()
        assert 0 < done < 40 and (frame.status == "pending").sum() == 40 - done
        assert sb.stats()["billed"] == done  # requests in flight were let finish and recorded
        assert run(job, out, sb, "--concurrency", "4").returncode == 0


def test_max_cost_per_run_caps_a_night_while_max_cost_caps_the_job(tmp_path):
    with sandbox_with(latency_s=0.1) as sb:
        job, out = manifest(tmp_path, [f"nightly {i}" for i in range(10)]), tmp_path / "out"
        flags = ("--concurrency", "3", "--max-cost-per-run", "0.2", "--max-cost", "0.5")
        first = run(job, out, sb, *flags)
        # A night's share spent is "resume tomorrow" (75), like a closed window; not "out of money" (3).
        assert first.returncode == 75 and "--max-cost-per-run" in first.stdout
        assert sb.stats()["billed"] == 3
        assert run(job, out, sb, *flags).returncode == 75
        assert sb.stats()["billed"] == 6
        third = run(job, out, sb, *flags)
        assert third.returncode == 3 and "past --max-cost $0.50" in third.stdout
        assert sb.stats()["billed"] == 7 and sb.stats()["spent"] <= 0.5


def test_a_growing_prompt_file_sends_only_the_new_rows_each_night(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("day one a\nday one b\n", encoding="utf-8")
    job = tmp_path / "grow.yaml"
    job.write_text(
        "name: grow\ndefaults:\n  resolution: RESOLUTION_512_1536\ngrid:\n  prompt: {file: prompts.txt}\n",
        encoding="utf-8",
    )
    with sandbox_with() as sb:
        out = tmp_path / "out"
        assert quiet(job, out, sb).returncode == 0 and sb.stats()["received"] == 2
        with prompts.open("a", encoding="utf-8") as f:
            f.write("day two a\nday two b\nday two c\n")
        assert quiet(job, out, sb).returncode == 0
        assert sb.stats()["received"] == 5 and sb.stats()["billed"] == 5
        assert all(v["billed"] == 1 for v in sb.stats()["bodies"].values())
        assert len(manifest_frame(out)) == 5 and len(runs(out)) == 2


def test_wait_lock_queues_behind_a_running_job_instead_of_exiting_5(tmp_path):
    with sandbox_with(latency_s=0.3) as sb:
        job, out = manifest(tmp_path, [f"queued {i}" for i in range(6)]), tmp_path / "out"
        first = start(job, out, sb, "--concurrency", "1")
        wait_for(lambda: (out / "journal.jsonl").exists() and done_lines(out) >= 1)
        busy = run(job, out, sb)
        assert busy.returncode == 5 and "--wait-lock" in busy.stderr
        queued = run(job, out, sb, "--wait-lock", "60")
        assert first.wait(30) == 0
        assert queued.returncode == 0, queued.stderr
        assert set(manifest_frame(out).status) == {"succeeded"} and sb.stats()["billed"] == 6


def test_a_lock_held_by_a_killed_run_is_no_obstacle(tmp_path):
    with sandbox_with(latency_s=0.3) as sb:
        job, out = manifest(tmp_path, [f"dead lock {i}" for i in range(8)]), tmp_path / "out"
        proc = start(job, out, sb, "--concurrency", "2")
        wait_for(lambda: done_lines(out) >= 1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert (out / ".lock").exists()
        result = run(job, out, sb)  # no --wait-lock: the kernel released the dead run's lock
        assert result.returncode == 0, result.stderr


def test_the_manifest_can_carry_the_nightly_settings_and_bad_ones_name_their_line(tmp_path, write):
    with HostileServer(lambda seen: Answer(200, b"OK")) as monitor, sandbox_with() as sb:
        extra = f"ping_url: {monitor.url}/night\nmax_duration: 1h\nmax_cost_per_run: 1.5\nmax_wait: 30\n"
        job = manifest(tmp_path, ["from the manifest"], extra=extra)
        assert quiet(job, tmp_path / "out", sb).returncode == 0
        assert [s.path for s in monitor.seen] == ["/night/start", "/night"]

    bad = write("bad.yaml", "name: bad\ndefaults:\n  prompt: x\nping_url: ftp://nowhere\nmax_duration: 6 weeks\n")
    result = run_cli("plan", str(bad))
    assert result.returncode == 2
    assert "bad.yaml:4: ping_url 'ftp://nowhere' is not a URL" in result.stderr
    assert "bad.yaml:5: max_duration" in result.stderr and "90m, 6h" in result.stderr
