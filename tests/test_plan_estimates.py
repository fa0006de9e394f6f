"""Issue 19 item 9 (and the plan half of item 3): `plan` tells the truth about time and money.
Its time estimate includes the ~12.8 s an image takes, calls an unknown rate limit unknown with
the plans' 5 to 1000 RPM range, and a budget below the estimate says how many items fit."""

from __future__ import annotations

import json

import pytest

from batch_runner.api import spec as api_spec
from tests.helpers import manifest, run_cli

FAST = 30


def plan_json(path, *flags: str) -> dict:
    result = run_cli("plan", str(path), "--json", *flags, timeout=FAST)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_one_item_takes_one_image_time_not_zero(tmp_path):
    path = manifest(tmp_path, ["one"])
    plan = plan_json(path, "--rpm", "50")
    assert plan["estimated_duration_s"] == api_spec.TYPICAL_LATENCY_S
    assert plan["rate_limit_known"] is True
    text = run_cli("plan", str(path), "--rpm", "50", timeout=FAST).stdout
    assert "  time       ~13 s at concurrency 32, 50 rpm (~12.8 s per image)" in text


@pytest.mark.parametrize(
    "items, flags, expected",
    [
        (24, ["--rpm", "1000"], 23 * 60 / 1000 + 12.8),  # all in flight: sends, then one image time
        (24, ["--rpm", "50"], 23 * 60 / 50 + 12.8),  # the rate spaces the sends
        (64, ["--rpm", "1000", "--concurrency", "8"], 8 * 12.8),  # 8 rounds of 8 in flight
    ],
)
def test_the_estimate_follows_littles_law(tmp_path, items, flags, expected):
    plan = plan_json(manifest(tmp_path, [f"p{i}" for i in range(items)]), *flags)
    assert plan["estimated_duration_s"] == pytest.approx(expected, abs=0.1)


def test_an_unknown_limit_is_called_unknown_with_the_plans_range(tmp_path):
    path = manifest(tmp_path, [f"p{i}" for i in range(24)])
    plan = plan_json(path)
    assert plan["rate_limit_known"] is False and plan["rpm"] is None
    assert plan["estimated_duration_range_s"] == [round(23 * 60 / 1000 + 12.8, 1), round(23 * 60 / 5 + 12.8, 1)]
    text = run_cli("plan", str(path), timeout=FAST).stdout
    assert (
        "  time       ~14 s to ~4 min 49 s at concurrency 32 (~12.8 s per image): your key's limit is unknown" in text
    )
    assert "plans allow 5 to 1000 rpm; pass --rpm N for one figure" in text


def test_a_budget_below_the_estimate_says_how_many_items_fit_and_the_exit_code(tmp_path):
    path = manifest(tmp_path, [f"p{i}" for i in range(10)])
    result = run_cli("plan", str(path), "--max-cost", "0.2", timeout=FAST)
    assert result.returncode == 0, result.stderr
    assert "  budget     $0.20 (max_cost): pays for 3 of the 10 items, then the run stops (exit 3)" in result.stdout
    assert "warning: max_cost $0.20 pays for 3 of the 10 items" in result.stderr
    assert "Raise --max-cost to buy them all" in result.stderr
    assert plan_json(path, "--max-cost", "0.2")["items_in_budget"] == 3
    enough = run_cli("plan", str(path), "--max-cost", "0.63", timeout=FAST)
    assert "pays for" not in enough.stdout + enough.stderr
    assert plan_json(path, "--max-cost", "0.63")["items_in_budget"] is None


@pytest.mark.parametrize("timeout, warned", [("1", True), ("10", True), ("12.8", False), ("120", False)])
def test_plan_warns_when_the_timeout_is_shorter_than_an_image_takes(tmp_path, timeout, warned):
    path = manifest(tmp_path, ["one"])
    result = run_cli("plan", str(path), "--timeout", timeout, timeout=FAST)
    assert result.returncode == 0, result.stderr
    message = f"warning: --timeout {timeout} s is shorter than the ~12.8 s an image takes at this endpoint"
    assert (message in result.stderr) is warned, result.stderr
    assert ("use --timeout 39 or more" in result.stderr) is warned
    warnings = plan_json(path, "--timeout", timeout)["warnings"]
    assert any(w.startswith(message[len("warning: ") :]) for w in warnings) is warned
