"""Runner throughput against the ceiling the sandbox imposes, measured in the same run.

1. Rate-limited: the sandbox allows R requests per rolling minute per key; the runner runs
   with --rpm R. Target: >= 95% of R, with < 2% of requests answered 429.
2. Unlimited: the sandbox answers every request after L seconds; with concurrency C the
   ceiling is C / L requests per second. Target: within 10% of it.

The runner is the real CLI in a subprocess (its peak RSS is read with wait4); the sandbox
runs in this process. Throughput is counted by the sandbox, from the first request received
to the last answered, so process start-up and the final manifest write are left out; the
wall-clock ratio, which includes them, is printed beside it.

    python benchmarks/bench_runner.py [--rpm 600] [--rate-items 300] [--concurrency 16]
                                      [--latency 0.5] [--items 640]
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

from batch_runner.sandbox import V1_PATH, Sandbox, SandboxConfig  # noqa: E402

KEY = "bench-key-not-real"


def write_job(folder: Path, items: int) -> Path:
    job = folder / "bench.yaml"
    job.write_text(
        "name: bench\n"
        "defaults: {resolution: RESOLUTION_1024_1024, magic_prompt_option: 'OFF'}\n"
        "grid:\n"
        "  prompt: ['a benchmark image of a lighthouse', 'a benchmark image of a fox']\n"
        f"  seed: 100-{100 + items // 2 - 1}\n",
        encoding="utf-8",
    )
    return job


def run_job(sandbox: Sandbox, items: int, *flags: str) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        job = write_job(Path(tmp), items)
        env = {**os.environ, "SEGMIND_API_KEY": KEY}
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "batch_runner", "run", str(job), "--output", f"{tmp}/out",
             "--endpoint", sandbox.endpoint, "--progress", "quiet", *flags],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"run failed: {proc.stderr.read().decode()[-2000:]}")
        return wall, usage.ru_maxrss / 1024, items


def served(sandbox: Sandbox) -> tuple[int, int, float]:
    """(200s, 429s, seconds from first generation request received to last answered)."""
    log = [e for e in sandbox.stats()["log"] if e["path"] == V1_PATH]
    ok = sum(e["status"] == 200 for e in log)
    limited = sum(e["status"] == 429 for e in log)
    window = max(e["ended"] for e in log) - min(e["started"] for e in log)
    return ok, limited, window


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpm", type=float, default=600)
    parser.add_argument("--rate-items", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--items", type=int, default=640)
    args = parser.parse_args()

    rpm = args.rpm
    config = SandboxConfig(keys=(KEY,), rpm=rpm, latency_s=args.latency, credits=None)
    with Sandbox(config) as sandbox:
        wall, rss, items = run_job(sandbox, args.rate_items, "--rpm", f"{rpm:g}", "--concurrency", "16")
        ok, limited, window = served(sandbox)
    ceiling = rpm / 60
    print(f"rate-limited: sandbox {rpm:g} rpm, runner --rpm {rpm:g}, {items} items, latency {args.latency:g} s")
    print(f"  served {ok / window:.2f} req/s over {window:.1f} s; ceiling {ceiling:.2f} req/s")
    print(f"  ratio {ok / window / ceiling:.3f} (target >= 0.95); wall-clock ratio {items / wall / ceiling:.3f}")
    print(f"  429s {limited} of {ok + limited} requests = {limited / (ok + limited):.2%} (target < 2%)")
    print(f"  runner peak RSS {rss:.0f} MB")

    c, latency = args.concurrency, args.latency
    config = SandboxConfig(keys=(KEY,), latency_s=latency, credits=None)
    with Sandbox(config) as sandbox:
        wall, rss, items = run_job(sandbox, args.items, "--concurrency", str(c))
        ok, limited, window = served(sandbox)
    ceiling = c / latency
    print(f"unlimited: concurrency {c}, latency {latency:g} s, {items} items")
    print(f"  served {ok / window:.2f} req/s over {window:.1f} s; ceiling {ceiling:.2f} req/s (concurrency / latency)")
    print(f"  ratio {ok / window / ceiling:.3f} (target >= 0.90); wall-clock ratio {items / wall / ceiling:.3f}")
    print(f"  runner peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
