"""--api async: Segmind's v2 submit-and-poll API, end to end over real HTTP against the sandbox.

Every test drives the real CLI in a subprocess and asserts on what the sandbox received and
billed, the journal's lines, the manifest and the images on disk.
"""

from __future__ import annotations

import collections
import json
import random
import signal
import time
from pathlib import Path

import pytest

from batch_runner.sandbox import V1_PATH, V2_PATH, Sandbox
from tests.helpers import (
    FAKE_KEY,
    assert_images_valid,
    env_with_key,
    manifest,
    manifest_frame,
    run,
    run_cli,
    sandbox_with,
    start,
    wait_for,
)

PRICE = 0.063


class V2:
    """What helpers.run/start need of a sandbox (.endpoint), pointing at its v2 submit URL."""

    def __init__(self, sandbox: Sandbox):
        self.endpoint = sandbox.endpoint_v2


def run_async(job: Path, out: Path, sb: Sandbox, *flags: str, timeout: float = 120):
    return run(job, out, V2(sb), "--api", "async", *flags, timeout=timeout)


def start_async(job: Path, out: Path, sb: Sandbox, *flags: str):
    return start(job, out, V2(sb), "--api", "async", *flags)


def events(out: Path) -> list[dict]:
    lines = (out / "journal.jsonl").read_bytes().splitlines()
    found = []
    for line in lines:
        try:
            found.append(json.loads(line))
        except ValueError:
            continue  # a line torn by kill -9
    return found


def submitted_lines(out: Path) -> int:
    journal = out / "journal.jsonl"
    return journal.read_bytes().count(b'"e":"submitted"') if journal.exists() else 0


def submits(sb: Sandbox) -> list[dict]:
    return [r for r in sb.stats()["log"] if r["method"] == "POST" and r["path"] == V2_PATH]


def polls(sb: Sandbox) -> list[dict]:
    return [r for r in sb.stats()["log"] if r["path"].startswith("/v2/requests/") and r["path"].endswith("/status")]


def status_json(out: Path) -> dict:
    result = run_cli("status", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_no_journaled_id_resubmitted(out: Path, sb: Sandbox) -> None:
    """After the POST that created a journaled request id, the sandbox never received another
    POST for that item, unless the journal says the id expired or its job FAILED."""
    log = sb.stats()["log"]
    created = {r["request_id"]: r for r in log if r["method"] == "POST" and r["request_id"]}
    released = collections.Counter()
    for event in events(out):
        if event["e"] in ("expired", "attempt"):
            released[event["id"]] += 1
    for event in events(out):
        if event["e"] != "submitted" or released[event["id"]]:
            continue
        origin = created[event["rid"]]
        later = [r for r in log if r["method"] == "POST" and r["item_id"] == event["id"] and r["seq"] > origin["seq"]]
        assert later == [], f"item {event['id']} was submitted again after its id {event['rid']} was journaled"


# ------------------------------------------------------------------------ end to end


def test_an_async_run_submits_once_polls_a_few_times_and_saves_every_image(tmp_path):
    with sandbox_with(latency_s=0.3, jitter_s=0.1) as sb:
        job, out = manifest(tmp_path, [f"async fox {i}" for i in range(12)]), tmp_path / "out"
        result = run_async(job, out, sb, "--concurrency", "6")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "12 of 12 succeeded" in result.stdout

        frame = manifest_frame(out)
        assert set(frame.status) == {"succeeded"} and len(frame) == 12
        assert_images_valid(out, frame)
        stats = sb.stats()
        assert stats["billed"] == 12 and not [r for r in stats["log"] if r["path"] == V1_PATH]
        assert len(submits(sb)) == 12  # one submit per item
        assert len(polls(sb)) <= 4 * 12  # at most four polls per image
        # The key goes to the API only: never to the host that serves the image.
        media = [r for r in stats["log"] if r["path"].startswith("/sandbox/media/")]
        assert len(media) == 12 and not any(r["keyed"] for r in media)
        assert all(r["keyed"] for r in stats["log"] if r["path"].startswith("/v2/"))
        # Each request id is journaled as it arrives, before any poll of it, and ends in the manifest.
        journal = events(out)
        rids = {e["id"]: e["rid"] for e in journal if e["e"] == "submitted"}
        assert len(rids) == 12 and dict(zip(frame.item_id, frame.request_id, strict=True)) == rids
        assert frame.cost_usd.sum() == pytest.approx(12 * PRICE)
        assert frame.remaining_credits.notna().all()  # from the result's metrics
        assert "polls" in result.stderr and "/image" in result.stderr  # the cadence in the progress line
        assert FAKE_KEY not in (out / "journal.jsonl").read_text() + result.stdout + result.stderr


def test_fifty_outstanding_jobs_do_not_need_fifty_threads(tmp_path):
    with sandbox_with(latency_s=60) as sb:  # jobs stay on the server for the whole test
        job, out = manifest(tmp_path, [f"outstanding {i}" for i in range(60)]), tmp_path / "out"
        proc = start_async(job, out, sb, "--concurrency", "50")
        try:
            wait_for(lambda: sb.stats(include_log=False)["v2"]["outstanding"] >= 50, timeout=60)
            time.sleep(0.5)  # time to overshoot, if the pool would
            threads = int(Path(f"/proc/{proc.pid}/status").read_text().split("Threads:")[1].split()[0])
            assert threads <= 16, f"{threads} threads for 50 outstanding jobs"
            assert sb.stats(include_log=False)["v2"]["jobs"] == 50  # --concurrency caps the jobs outstanding
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)


# ------------------------------------------------------------------------ crashes


def test_kill_9_during_async_runs_never_resubmits_a_journaled_id_and_rebills_at_most_one_per_kill(tmp_path):
    rng = random.Random(12)
    # Submits answer 0.15 s after the job is created, so kills land while one is unanswered.
    with sandbox_with(latency_s=0.8, jitter_s=0.4, submit_latency_s=0.15) as sb:
        job, out = manifest(tmp_path, [f"async crash {i}" for i in range(60)]), tmp_path / "out"
        kills = 0
        for _ in range(4):
            target = len(submits(sb)) + rng.randint(2, 6)
            proc = start_async(job, out, sb, "--concurrency", "8")
            # Kill while submits are going out and jobs are on the server.
            wait_for(lambda target=target, proc=proc: len(submits(sb)) >= target or proc.poll() is not None, 60)
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1

        result = run_async(job, out, sb, "--concurrency", "8")
        assert result.returncode == 0, result.stdout + result.stderr
        frame = manifest_frame(out)
        assert set(frame.status) == {"succeeded"} and len(frame) == 60
        assert_images_valid(out, frame)
        assert "polled, not resubmitted" in result.stderr or "polling them" in result.stderr

        assert_no_journaled_id_resubmitted(out, sb)
        billed = {item: v["billed"] for item, v in sb.stats()["bodies"].items()}
        duplicates = sum(n - 1 for n in billed.values() if n > 1)
        assert duplicates <= kills
        # Every duplicate is on the books as possibly billed: the invoice never exceeds the ledger.
        summary = status_json(out)
        assert summary["unanswered_attempts"] >= duplicates
        assert summary["spent_usd"] + summary["possibly_billed_usd"] >= sb.stats()["spent"] - 1e-9


def test_jobs_left_on_the_server_by_a_crash_are_polled_not_resubmitted(tmp_path):
    with sandbox_with(latency_s=2.0) as sb:
        job, out = manifest(tmp_path, [f"left on server {i}" for i in range(5)]), tmp_path / "out"
        proc = start_async(job, out, sb)
        wait_for(lambda: submitted_lines(out) >= 5, timeout=30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

        result = run_async(job, out, sb)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "5 job(s) submitted by an earlier run" in result.stderr
        assert len(submits(sb)) == 5 and sb.stats()["billed"] == 5  # nothing bought twice
        frame = manifest_frame(out)
        assert set(frame.status) == {"succeeded"}
        assert_images_valid(out, frame)
        assert status_json(out)["unanswered_attempts"] == 0


def test_a_sync_run_after_an_async_crash_refuses_to_pay_again_for_jobs_on_the_server(tmp_path):
    with sandbox_with(latency_s=5.0) as sb:
        job, out = manifest(tmp_path, [f"mode switch {i}" for i in range(2)]), tmp_path / "out"
        proc = start_async(job, out, sb)
        wait_for(lambda: submitted_lines(out) >= 2, timeout=30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # The jobs on the server are billed when they complete: on the books as possibly billed.
        assert status_json(out)["possibly_billed_usd"] >= 2 * PRICE - 1e-9
        with sandbox_with() as fast:
            result = run(job, out, fast)  # v1, the default
            assert fast.stats()["received"] == 0  # nothing bought a second time
        assert result.returncode == 75, result.stdout + result.stderr
        assert "2 item(s) have a job on the server from an earlier async run" in result.stdout
        assert "--api async" in result.stdout


# ------------------------------------------------------------------------ faults


def test_a_submit_whose_answer_is_lost_is_possibly_billed_reported_and_sent_again(tmp_path):
    with sandbox_with() as sb:
        job, out = manifest(tmp_path, ["[sandbox:fault-once=drop] lost answer", "plain one"]), tmp_path / "out"
        result = run_async(job, out, sb)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 submit(s) got no answer" in result.stderr
        assert "possibly billed" in result.stdout
        lost = next(i for i, v in sb.stats()["bodies"].items() if v["billed"] == 2)  # the server made two jobs
        summary = status_json(out)
        assert summary["unanswered_attempts"] == 1
        assert summary["possibly_billed_usd"] == pytest.approx(PRICE)
        assert summary["spent_usd"] + summary["possibly_billed_usd"] == pytest.approx(sb.stats()["spent"])
        frame = manifest_frame(out).set_index("item_id")
        assert frame.loc[lost, "status"] == "succeeded" and frame.loc[lost, "unanswered"] == 1


def test_server_errors_on_submit_are_retried(tmp_path):
    with sandbox_with() as sb:
        prompts = ["[sandbox:fail-once=500] flaky", "[sandbox:fail-once=502] gateway"]
        job, out = manifest(tmp_path, prompts), tmp_path / "out"
        result = run_async(job, out, sb)
        assert result.returncode == 0, result.stdout + result.stderr
        assert set(manifest_frame(out).status) == {"succeeded"}
        assert [r["status"] for r in submits(sb)].count(200) == 2 and len(submits(sb)) == 4
        assert sb.stats()["billed"] == 2


def test_a_failed_job_fails_the_item_with_the_servers_message_after_max_attempts(tmp_path):
    with sandbox_with() as sb:
        prompts = ["[sandbox:fault=failed] never renders", "[sandbox:fault-once=failed] renders the second time"]
        job, out = manifest(tmp_path, prompts), tmp_path / "out"
        result = run_async(job, out, sb, "--max-attempts", "2")
        assert result.returncode == 1, result.stdout + result.stderr  # one item failed
        frame = manifest_frame(out).set_index("prompt")
        failed = frame.loc[prompts[0]]
        assert failed.status == "failed" and failed.http_status == 422
        assert "the model could not render this prompt" in failed.error
        assert frame.loc[prompts[1], "status"] == "succeeded"
        per_item = collections.Counter(r["item_id"] for r in submits(sb))
        assert sorted(per_item.values()) == [2, 2]  # retried as --max-attempts allows, never more
        assert sb.stats()["billed"] == 1  # FAILED jobs are not billed
        assert frame.cost_usd.sum() == pytest.approx(PRICE)


def test_expired_ids_are_submitted_again_and_the_run_says_how_many(tmp_path):
    with sandbox_with(latency_s=0.05, slow_s=60) as sb:
        prompts = [f"[sandbox:fault-once=slow] expires {i}" for i in range(3)]
        job, out = manifest(tmp_path, prompts), tmp_path / "out"
        proc = start_async(job, out, sb)
        wait_for(lambda: submitted_lines(out) >= 3, timeout=30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert sb.api.queue.forget_all() == 3  # an hour passes: the server forgets the jobs

        result = run_async(job, out, sb)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "3 item(s) were submitted again because the server no longer knew their job" in result.stderr
        assert [e["e"] for e in events(out)].count("expired") == 3
        frame = manifest_frame(out)
        assert set(frame.status) == {"succeeded"}
        assert_images_valid(out, frame)
        assert len(submits(sb)) == 6  # once each, then once more after the 404
        summary = status_json(out)
        assert summary["unanswered_attempts"] == 3  # the forgotten jobs may have been billed
        assert summary["spent_usd"] + summary["possibly_billed_usd"] >= sb.stats()["spent"] - 1e-9


def test_a_404_for_a_job_submitted_seconds_ago_stops_instead_of_paying_again(tmp_path):
    with sandbox_with(latency_s=0.5) as sb:
        job, out = manifest(tmp_path, [f"forgotten {i}" for i in range(4)]), tmp_path / "out"
        proc = start_async(job, out, sb, "--concurrency", "1")
        wait_for(lambda: submitted_lines(out) >= 1, timeout=30)
        sb.api.queue.forget_all()
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 4, stdout + stderr
        assert "does not know request" in stdout
        assert len(submits(sb)) <= 2  # no loop of billed resubmits


def test_429_on_submit_and_on_poll_pause_the_pool_and_lose_nothing(tmp_path):
    with sandbox_with(latency_s=0.2) as sb:
        prompts = ["[sandbox:fail-once=429] submit limited", "[sandbox:poll-once=429] poll limited", "plain"]
        job, out = manifest(tmp_path, prompts), tmp_path / "out"
        result = run_async(job, out, sb)
        assert result.returncode == 0, result.stdout + result.stderr
        assert set(manifest_frame(out).status) == {"succeeded"}
        log = sb.stats()["log"]
        assert [r["status"] for r in submits(sb)].count(429) == 1
        assert any(r["status"] == 429 and r["path"].startswith("/v2/requests/") for r in log)
        assert len(submits(sb)) == 4 and sb.stats()["billed"] == 3  # a 429 on a poll never resubmits


def test_polls_that_count_against_the_rate_limit_slow_the_pool_down_without_duplicates(tmp_path):
    with sandbox_with(latency_s=0.3, rpm=120, rate_window_s=2, polls_rate_limited=True) as sb:
        job, out = manifest(tmp_path, [f"shared limit {i}" for i in range(10)]), tmp_path / "out"
        result = run_async(job, out, sb, "--concurrency", "6")
        assert result.returncode == 0, result.stdout + result.stderr
        assert set(manifest_frame(out).status) == {"succeeded"}
        assert sb.stats()["billed"] == 10
        assert_no_journaled_id_resubmitted(out, sb)


def test_out_of_credits_stops_with_exit_3_and_keeps_the_jobs_already_submitted(tmp_path):
    with sandbox_with(latency_s=0.5, credits=3 * PRICE) as sb:
        job, out = manifest(tmp_path, [f"credits {i}" for i in range(6)]), tmp_path / "out"
        result = run_async(job, out, sb, "--concurrency", "6")
        assert result.returncode == 3, result.stdout + result.stderr
        assert "out of credits" in result.stdout
        frame = manifest_frame(out)
        assert (frame.status == "succeeded").sum() == 3 and (frame.status == "pending").sum() == 3
        assert_images_valid(out, frame)  # the paid jobs were polled to the end and saved

        sb.api.add_credits(10)
        again = run_async(job, out, sb, "--concurrency", "6")
        assert again.returncode == 0, again.stdout + again.stderr
        assert set(manifest_frame(out).status) == {"succeeded"}
        assert all(v["billed"] == 1 for v in sb.stats()["bodies"].values())  # nothing paid twice


def test_a_wrong_key_stops_the_run_at_the_first_submit_with_exit_4(tmp_path):
    with sandbox_with() as sb:
        job, out = manifest(tmp_path, [f"wrong key {i}" for i in range(5)]), tmp_path / "out"
        result = run(job, out, V2(sb), "--api", "async", key="fake-wrong-key-0000")
        assert result.returncode == 4, result.stdout + result.stderr
        assert "HTTP 401" in result.stdout and "fake-wrong-key-0000" not in result.stdout + result.stderr
        assert sb.stats()["billed"] == 0 and len(submits(sb)) <= 2
        assert set(manifest_frame(out).status) == {"pending"}


# ------------------------------------------------------------------------ refused before sending


@pytest.mark.parametrize(
    ("flags", "path", "expected"),
    [
        ((), V2_PATH, "pass --api async"),
        (("--api", "sync"), V2_PATH, "pass --api async"),
        (("--api", "async"), V1_PATH, "use the v2 URL"),
    ],
)
def test_an_endpoint_of_the_other_api_is_refused_before_anything_is_sent(tmp_path, flags, path, expected):
    with sandbox_with() as sb:
        job = manifest(tmp_path, ["refused"])
        result = run_cli("run", str(job), "--endpoint", sb.url + path, *flags, env=env_with_key())
        assert result.returncode == 2, result.stdout + result.stderr
        assert expected in result.stderr and "--endpoint" in result.stderr
        assert sb.stats()["requests"] == 0


def test_the_manifest_key_api_chooses_the_mode_and_a_flag_overrides_it(tmp_path):
    with sandbox_with() as sb:
        job = manifest(tmp_path, ["from the manifest"], extra="api: async\n")
        refused = run_cli("run", str(job), "--endpoint", sb.endpoint, env=env_with_key())
        assert refused.returncode == 2 and "--api async" in refused.stderr
        assert sb.stats()["requests"] == 0
        out = tmp_path / "out"
        ok = run(job, out, V2(sb))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert len(submits(sb)) == 1
        overridden = run_cli("run", str(job), "--endpoint", sb.endpoint_v2, "--api", "sync", env=env_with_key())
        assert overridden.returncode == 2 and "pass --api async" in overridden.stderr


def test_a_bad_api_value_names_the_line_and_the_choices(tmp_path):
    job = manifest(tmp_path, ["bad mode"], extra="api: asynchronous\n")
    result = run_cli("plan", str(job))
    assert result.returncode == 2
    assert "job.yaml:7:" in result.stderr and "use sync" in result.stderr and "or async" in result.stderr
    flag = run_cli("plan", str(job), "--api", "later")
    assert flag.returncode == 2 and "--api" in flag.stderr


def test_sandbox_mode_uses_the_sandboxs_v2_queue(tmp_path):
    job, out = manifest(tmp_path, ["sandboxed async"]), tmp_path / "out"
    result = run_cli("run", str(job), "--sandbox", "--api", "async", "--output", str(out), "--progress", "log")
    assert result.returncode == 0, result.stdout + result.stderr
    journal = [e["e"] for e in events(out)]
    assert "submitted" in journal and journal.count("done") == 1
