"""Every default is written once (settings.py, api/spec.py) and the job's own values win: `status`
prices what is left at the job's price, not at the endpoint's default."""

from __future__ import annotations

import json

import pytest

from batch_runner.api import spec as api_spec
from batch_runner.cli.main import build_parser
from tests.helpers import manifest, run, run_cli, sandbox_with


def test_status_prices_what_is_left_at_the_jobs_price(tmp_path):
    extra = "price_per_image: 0.25\n"
    with sandbox_with(credits=2 * 0.063 + 0.01) as sb:
        job, out = manifest(tmp_path, [f"priced {i}" for i in range(6)], extra=extra), tmp_path / "out"
        assert run(job, out, sb, "--concurrency", "1").returncode == 3
    status = run_cli("status", str(out), "--json")
    summary = json.loads(status.stdout)
    assert (summary["counts"]["succeeded"], summary["left"]) == (2, 4)
    assert summary["left_estimated_cost_usd"] == pytest.approx(4 * 0.25)
    text = run_cli("status", str(out)).stdout
    assert "left               4   (~$1.00)" in text


def test_the_flags_defaults_are_the_settings_defaults():
    from batch_runner.settings import DEFAULT_LOG_INTERVAL_S, DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S, Options

    args = build_parser().parse_args(["run", "job.yaml"])
    assert (args.timeout, args.max_attempts, args.log_interval, args.wait_lock, args.progress) == (
        DEFAULT_TIMEOUT_S,
        DEFAULT_MAX_ATTEMPTS,
        DEFAULT_LOG_INTERVAL_S,
        Options().wait_lock,
        Options().progress.value,
    )
    sandbox_args = build_parser().parse_args(["sandbox"])
    assert sandbox_args.price == api_spec.PRICE_PER_IMAGE


def test_a_run_option_flag_is_checked_by_the_same_rule_as_run_keywords(tmp_path):
    result = run_cli("run", "jobs/quickstart.yaml", "--sandbox", "--timeout", "0", "--output", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "timeout 0 is out of range; use a duration in seconds (or e.g. 90m, 6h) above 0" in result.stderr
    assert not (tmp_path / "o").exists()
