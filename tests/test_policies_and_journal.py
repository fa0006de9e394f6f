"""Unit tests of the pieces the end-to-end runner tests cannot isolate."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from batch_runner.api.client import RateLimited, TransientError, Unreachable, UnusableImage, retry_at_from
from batch_runner.engine.policies import Budget, BudgetExhausted, retrying
from batch_runner.sandbox import Sandbox, SandboxConfig
from batch_runner.store.journal import Journal, replay
from tests.helpers import FAKE_KEY, manifest, manifest_frame, run


def test_retry_after_in_seconds_http_date_iso_and_epoch():
    now = 1000.0
    assert retry_at_from({"Retry-After": "7"}, now) == pytest.approx(1007.0)
    http_date = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert retry_at_from({"Retry-After": http_date}, now) == pytest.approx(1030.0, abs=1.5)
    iso = (datetime.now(timezone.utc) + timedelta(seconds=12)).isoformat().replace("+00:00", "Z")
    assert retry_at_from({"x-rate-limit-reset-at-utc": iso}, now) == pytest.approx(1012.0, abs=0.5)
    epoch = str(time.time() + 5)
    assert retry_at_from({"x-rate-limit-reset-at-utc": epoch}, now) == pytest.approx(1005.0, abs=0.5)
    assert retry_at_from({}, now) is None
    assert retry_at_from({"Retry-After": "soon"}, now) is None
    past = (datetime.now(timezone.utc) - timedelta(seconds=60)).isoformat()
    assert retry_at_from({"x-rate-limit-reset-at-utc": past}, now) == pytest.approx(now)


def test_429s_do_not_use_up_attempts_but_other_failures_do():
    stop = threading.Event()
    calls: list[str] = []
    outcomes = iter(["429", "429", "429", "500", "500", "ok"])

    def attempt() -> str:
        outcome = next(outcomes)
        calls.append(outcome)
        if outcome == "429":
            raise RateLimited("slow down", retry_at=None)
        if outcome == "500":
            raise TransientError("boom", 500)
        return outcome

    assert retrying(3, stop, backoff_s=0.001)(attempt) == "ok"
    assert calls == ["429", "429", "429", "500", "500", "ok"]

    failing = iter(["500"] * 5)

    def always_500() -> None:
        next(failing)
        raise TransientError("boom", 500)

    with pytest.raises(TransientError):
        retrying(2, stop, backoff_s=0.001)(always_500)
    assert len(list(failing)) == 3  # two attempts used, three left unused


def test_budget_counts_reservations_in_flight():
    budget = Budget(max_cost=0.2, spent=0.0, price=0.063)
    held = [budget.reserve() for _ in range(3)]
    with pytest.raises(BudgetExhausted):
        budget.reserve()
    budget.settle(held[0], 0.0)  # that request was not billed: its money is free again
    budget.reserve()


def test_budget_caps_one_run_apart_from_the_folder():
    budget = Budget(max_cost=1.0, spent=0.5, price=0.1, max_run_cost=0.25)
    held = [budget.reserve(), budget.reserve()]
    with pytest.raises(BudgetExhausted) as stopped:
        budget.reserve()
    assert stopped.value.scope == "run"
    for reserved in held:
        budget.settle(reserved, 0.1)
    assert budget.spent == pytest.approx(0.7) and budget.spent_this_run == pytest.approx(0.2)


def test_a_billed_answer_without_an_image_is_tried_twice_at_most():
    calls = []

    def unusable():
        calls.append(1)
        raise UnusableImage("the body is not an image (an HTML page)", 200, 0.063)

    with pytest.raises(UnusableImage):
        retrying(5, threading.Event(), backoff_s=0.001)(unusable)
    assert len(calls) == 2


def test_an_unreachable_endpoint_does_not_use_up_attempts():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) <= 6:
            raise Unreachable("cannot reach host: the connection was refused")
        return "ok"

    assert retrying(2, threading.Event(), backoff_s=0.001)(flaky) == "ok" and len(calls) == 7


def test_an_attempt_cut_off_by_a_crash_stays_unanswered_after_the_retry_succeeds(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.sent("a", 1, {"prompt": "x"})  # the process died here, mid-request
    journal.sent("a", 2, None)  # the next run sent it again...
    journal.done("a", "succeeded", n=2, cost=0.063, image_path="images/a.jpg")  # ...and it worked
    journal.sent("b", 1, {"prompt": "y"})
    journal.attempt("b", 1, None, "cannot reach host", 0.0, answered=False, latency_s=0.0, reached=False)
    journal.sent("b", 2, None)
    journal.attempt("b", 2, None, "no answer within 120 s", 0.0, answered=False, latency_s=120.0)
    journal.close()
    history = replay(path)
    assert history.items["a"].status == "succeeded" and history.items["a"].unanswered == 1
    assert history.items["b"].unanswered == 1  # the timeout may have been billed; the refusal not
    assert history.spent == pytest.approx(0.063) and history.unanswered == 2


def test_a_torn_last_line_is_skipped_and_the_next_event_starts_clean(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.sent("a", 1, {"prompt": "x"})
    journal.done("a", "succeeded", n=1, cost=0.063, image_path="images/a.jpg")
    journal.close()
    with path.open("ab") as f:
        f.write(b'{"e":"sent","id":"b","n":1')  # the process died mid-write
    state = replay(path)
    assert state.torn_lines == 1 and set(state.items) == {"a"}
    journal = Journal(path)
    journal.sent("c", 1, None)
    journal.close()
    state = replay(path)
    assert set(state.items) == {"a", "c"} and state.items["c"].status == "sent"
    assert state.items["a"].cost_usd == pytest.approx(0.063) and state.spent == pytest.approx(0.063)


def test_sent_without_answer_counts_as_possibly_billed(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.sent("x", 1, {"prompt": "p"})
    journal.close()
    assert replay(path).unanswered == 1


def test_an_image_saved_just_before_a_crash_is_adopted_not_bought_again(tmp_path):
    with Sandbox(SandboxConfig(keys=(FAKE_KEY,))) as sb:
        job, out = manifest(tmp_path, ["kept", "other"]), tmp_path / "out"
        assert run(job, out, sb).returncode == 0
        kept = manifest_frame(out).set_index("prompt").loc["kept"]
        # Rewind the journal to the instant after the image was renamed into place but
        # before its 'done' line was written.
        lines = (out / "journal.jsonl").read_text().splitlines()
        cut = [line for line in lines if not (json.loads(line)["e"] == "done" and kept.item_id in line)]
        (out / "journal.jsonl").write_text("\n".join(cut) + "\n")
        (out / "manifest.parquet").unlink()
        received = sb.stats()["received"]

        again = run(job, out, sb)
        assert again.returncode == 0 and "recovered 1 image" in again.stderr
        assert sb.stats()["received"] == received
        recovered = manifest_frame(out).set_index("prompt").loc["kept"]
        assert recovered.status == "succeeded" and recovered.http_status == 200


def test_a_half_written_image_is_never_taken_for_a_result(tmp_path):
    with Sandbox(SandboxConfig(keys=(FAKE_KEY,))) as sb:
        job, out = manifest(tmp_path, ["only"]), tmp_path / "out"
        (out / "images").mkdir(parents=True)
        partial = out / "images" / ".deadbeef.jpg.partial"
        partial.write_bytes(b"\xff\xd8 half an image")
        assert run(job, out, sb).returncode == 0
        assert not partial.exists()
        assert [p.name for p in (out / "images").iterdir()] == [manifest_frame(out).iloc[0].image_path.split("/")[1]]
