"""CPU per request of a real run at concurrency 16 against a zero-latency sandbox.

The runner is the real CLI in a subprocess; its CPU (user + system) is read with wait4. A second
run of the same job, with nothing left to send, measures start-up and the final fold; the
difference, divided by the requests, is what each request costs the client: sending, reading,
verifying, saving and journaling its image. Target: <= 2 ms. Context switches per request are
printed too: at concurrency 16 they are most of the system time.

    python benchmarks/bench_client.py [--items 2000] [--concurrency 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from batch_runner.sandbox import Sandbox, SandboxConfig  # noqa: E402
from benchmarks.bench_runner import KEY, write_job  # noqa: E402


def cpu_of(args: list[str]) -> tuple[float, float, float, int, float]:
    """(user CPU seconds, system CPU seconds, peak RSS MB, context switches, wall seconds) of one
    CLI run."""
    started = time.perf_counter()
    env = {**os.environ, "SEGMIND_API_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "batch_runner", *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else status}")
    switches = usage.ru_nvcsw + usage.ru_nivcsw
    return usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 1024, switches, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for _ in range(args.repeat):
        with Sandbox(SandboxConfig(keys=(KEY,), latency_s=0.0, credits=None)) as sandbox:
            with tempfile.TemporaryDirectory() as tmp:
                job = write_job(Path(tmp), args.items)
                argv = ["run", str(job), "--output", f"{tmp}/out", "--endpoint", sandbox.endpoint,
                        "--progress", "quiet", "--concurrency", str(args.concurrency)]  # fmt: skip
                user, system, rss, switches, wall = cpu_of(argv)
                idle_user, idle_system, _, idle_switches, _ = cpu_of(argv)
                sent = sandbox.stats()["received"]
        per_user = (user - idle_user) / sent * 1000
        per_system = (system - idle_system) / sent * 1000
        print(
            f"{sent} requests at concurrency {args.concurrency}: run {user + system:.2f} s CPU, "
            f"no-op {idle_user + idle_system:.2f} s; {per_user + per_system:.2f} ms CPU per request "
            f"({per_user:.2f} user + {per_system:.2f} system, {(switches - idle_switches) / sent:.1f} context "
            f"switches); peak RSS {rss:.0f} MB; run wall {wall:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
