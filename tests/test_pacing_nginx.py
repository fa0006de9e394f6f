"""The runner with no pacing flags behind a limiter it was not written against: nginx `limit_req`.

Real HTTP through Debian's nginx (tests/nginx.py) to the sandbox. nginx's leaky bucket rejects
bursts, answers 429 within a millisecond, and either says `Retry-After: 1` or nothing at all.
Assertions are on what the server side saw: nginx's access log and the sandbox's own record,
never on wall-clock rates (benchmarks/bench_pacing.py measures those).
"""

from __future__ import annotations

import os

import pytest

from batch_runner.sandbox import V1_PATH, Sandbox, SandboxConfig
from tests.helpers import FAKE_KEY, manifest, manifest_frame, run
from tests.nginx import Nginx, nginx_binary

ITEMS = 150


@pytest.fixture(scope="module", autouse=True)
def needs_nginx():
    if nginx_binary() is None:
        reason = "needs Debian's nginx (apt-get install nginx-light)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the nginx test: {reason}")
        pytest.skip(reason)


@pytest.mark.parametrize("retry_after", [True, False], ids=["retry-after", "bare-429"])
def test_with_no_flags_the_runner_learns_an_nginx_limit(tmp_path, retry_after):
    # 10 requests a second (600 RPM), burst 5, told to nobody.
    config = SandboxConfig(keys=(FAKE_KEY,), latency_s=0.2, credits=None)
    with Sandbox(config) as sb, Nginx(sb.port, rate_rps=10, burst=5, retry_after=retry_after) as proxy:
        out = tmp_path / "out"
        result = run(manifest(tmp_path, [f"behind nginx {i}" for i in range(ITEMS)]), out, proxy)
        seen = proxy.statuses()
        stats = sb.stats()
    assert result.returncode == 0, result.stdout + result.stderr

    # nginx answered every request itself (429) or passed it on and relayed the sandbox's 200.
    assert set(seen) <= {"200", "429"}, seen
    assert seen["200"] == ITEMS, seen
    assert seen["429"] / sum(seen.values()) <= 0.10, seen

    # The sandbox saw only what nginx let through: each item once, billed once.
    passed = [e for e in stats["log"] if e["path"] == V1_PATH]
    assert len(passed) == ITEMS and {e["status"] for e in passed} == {200}
    assert stats["billed"] == ITEMS
    assert len(stats["bodies"]) == ITEMS
    assert all(body == {"received": 1, "billed": 1} for body in stats["bodies"].values())

    frame = manifest_frame(out)
    assert len(frame) == ITEMS and set(frame.status) == {"succeeded"}
    assert frame.rate_limited.sum() == seen["429"]  # the runner's journal agrees with nginx
