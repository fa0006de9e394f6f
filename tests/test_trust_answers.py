"""Issue 23, answers: no server value and no journal line makes a run crash or a folder unusable.
x-seed-value past 2^63, 429 resets of inf or 1e20, a v2 metrics.cost that is an object, a PNG
cut short with every CRC right, wrongly typed journal lines, a garbage manifest.parquet."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import manifest, run, run_cli, sandbox_with

PRICE = 0.063


class V2:
    def __init__(self, sandbox):
        self.endpoint = sandbox.endpoint_v2


def status_json(out: Path) -> dict:
    result = run_cli("status", str(out), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def assert_folder_usable(out: Path, job: Path, sb) -> dict:
    """status, report and a resume all work on the folder."""
    summary = status_json(out)
    human = run_cli("status", str(out))
    assert human.returncode == 0, human.stderr
    report = run_cli("report", str(out))
    assert report.returncode == 0, report.stdout + report.stderr
    again = run(job, out, sb)
    assert again.returncode in (0, 1), again.stdout + again.stderr
    return summary


def test_a_seed_past_2_63_is_not_recorded_and_never_fatal(tmp_path):
    with sandbox_with(headers=(("x-seed-value", str(2**64 + 5)),)) as sb:
        job, out = manifest(tmp_path, ["huge seed one", "huge seed two"]), tmp_path / "out"
        result = run(job, out, sb)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "x-seed-value" in result.stderr  # noted
        frame = pd.read_parquet(out / "manifest.parquet")
        assert set(frame.status) == {"succeeded"} and frame.seed_value.isna().all()
        assert_folder_usable(out, job, sb)


@pytest.mark.parametrize("reset", ["inf", "1e20", "nan"])
def test_a_429_whose_reset_is_no_time_is_waited_out_and_not_booked_as_possibly_billed(tmp_path, reset):
    with sandbox_with(headers=(("x-rate-limit-reset-at-utc", reset),)) as sb:
        job, out = manifest(tmp_path, ["[sandbox:fail-once=429] odd reset", "plain"]), tmp_path / "out"
        result = run(job, out, sb, timeout=90)
        assert result.returncode == 0, result.stdout + result.stderr
        summary = status_json(out)
        assert summary["counts"]["succeeded"] == 2
        assert summary["unanswered_attempts"] == 0 and summary["possibly_billed_usd"] == 0
        assert summary["rate_limited"] == 1


def test_a_v2_metrics_cost_that_is_an_object_books_the_configured_price(tmp_path):
    with sandbox_with(v2_metrics=(("cost", {"usd": 0.063, "credits": 1}),)) as sb:
        job, out = manifest(tmp_path, ["object cost one", "object cost two"]), tmp_path / "out"
        result = run(job, out, V2(sb), "--api", "async")
        assert result.returncode == 0, result.stdout + result.stderr
        summary = status_json(out)
        assert summary["counts"]["succeeded"] == 2
        assert summary["spent_usd"] == pytest.approx(2 * PRICE)
        assert "metrics.cost" in result.stderr


def test_a_png_cut_short_with_every_crc_right_is_no_image(tmp_path):
    with sandbox_with() as sb:
        job, out = manifest(tmp_path, ["[sandbox:fault=short-png] cut pixels", "plain"]), tmp_path / "out"
        result = run(job, out, sb, "--max-attempts", "2")
        assert result.returncode == 1, result.stdout + result.stderr
        frame = pd.read_parquet(out / "manifest.parquet").set_index("prompt")
        row = frame.loc["[sandbox:fault=short-png] cut pixels"]
        assert row.status == "failed" and "truncated or corrupt" in row.error
        assert row.cost_usd == pytest.approx(2 * PRICE)  # both were billed, and are on the books
        assert not list((out / "images").glob(f"{row.item_id}.*"))
        assert sb.stats()["billed"] == 3


@pytest.mark.parametrize(
    "line",
    [
        {"e": "done", "status": "succeeded", "cost": "abc", "image_path": "images/x.jpg"},
        {"e": "attempt", "n": "x", "cost": 0.0, "answered": True},
        {"e": "done", "status": 7, "cost": 0.0},
        {"e": "done", "status": "succeeded", "cost": float("nan"), "image_path": "images/x.jpg"},
        {"e": "done", "status": "succeeded", "cost": 0.063, "image_path": "images/x.jpg", "seed_value": 2**70},
        {"e": "submitted", "n": 1, "rid": {"not": "an id"}},
    ],
)
def test_a_wrongly_typed_journal_line_is_skipped_counted_and_shown(tmp_path, line):
    with sandbox_with() as sb:
        job, out = manifest(tmp_path, ["typed one", "typed two"]), tmp_path / "out"
        assert run(job, out, sb).returncode == 0
        first = json.loads((out / "journal.jsonl").read_text().splitlines()[1])
        with (out / "journal.jsonl").open("a", encoding="utf-8") as journal:
            journal.write(json.dumps({**line, "id": first["id"]}) + "\n")
        summary = assert_folder_usable(out, job, sb)
        skipped = 0 if "seed_value" in line else 1  # an outsize seed is dropped, the line kept
        assert summary["skipped_journal_lines"] == skipped
        assert summary["counts"]["succeeded"] == 2
        assert summary["spent_usd"] == pytest.approx(2 * PRICE + (PRICE if skipped == 0 else 0))
        if skipped:
            assert "skipped" in run_cli("status", str(out)).stdout


def test_a_garbage_manifest_does_not_brick_status_and_the_next_run_rebuilds_it(tmp_path):
    with sandbox_with() as sb:
        job, out = manifest(tmp_path, ["garbage one", "garbage two"]), tmp_path / "out"
        assert run(job, out, sb).returncode == 0
        (out / "manifest.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
        summary = status_json(out)
        assert summary["counts"]["succeeded"] == 2 and summary["manifest_unreadable"] is True
        report = run_cli("report", str(out))
        assert report.returncode == 0, report.stdout + report.stderr  # from the journal alone
        again = run(job, out, sb)
        assert again.returncode == 0, again.stdout + again.stderr
        assert set(pd.read_parquet(out / "manifest.parquet").status) == {"succeeded"}
        assert sb.stats()["billed"] == 2  # nothing bought again
