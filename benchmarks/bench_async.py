"""Sync (v1) against async (v2) on the same job and the same sandbox rate limit, in one run.

Three measurements, each for `--api sync` and `--api async`, through the real CLI in a
subprocess against a sandbox in this process (real HTTP on 127.0.0.1):

  throughput   images per minute over the sandbox's rate limit (the ceiling), counted by the
               sandbox from the first request's start to the last image served. Async rows:
               polls free (the sandbox counts submits only); polls counted (whether the real
               service counts them is not published: each image then needs ~3 of the limit's
               slots); submits that take --submit-latency to answer (the pool keeps one submit
               unanswered at a time, the crash bound, so it tops out at 1/latency); and the same
               with --rpm, where the known limit lets it keep more submits going.
  polls        status polls and result requests per image, as the sandbox received them.
  kills        the job is killed with kill -9 at the same (seeded) moments K times, then run to
               the end; duplicate billing is the sum over items of (times billed - 1), from the
               sandbox's bill. v1 re-bills up to the number of requests in flight per kill;
               async at most one submit per kill (v2 submits answer in --submit-latency here, so
               a kill usually lands while one is unanswered).

The sandbox answers after --latency seconds (default 1.28 s: at 600 RPM that needs ~13 requests
in flight, like a Pro key's 50 RPM at the real ~12.8 s).

    python benchmarks/bench_async.py [--items 120] [--rpm 600] [--latency 1.28] [--kills 5] [--submit-latency 0.15]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from batch_runner.sandbox import V2_PATH, Sandbox, SandboxConfig  # noqa: E402

KEY = "fake-bench-key-not-real"


def write_job(folder: Path, items: int, tag: str) -> Path:
    job = folder / f"{tag}.yaml"
    job.write_text(
        f"name: {tag}\n"
        "defaults: {resolution: RESOLUTION_512_1536, magic_prompt_option: 'OFF'}\n"
        "grid:\n"
        f"  prompt: ['a benchmark lighthouse {tag}', 'a benchmark fox {tag}']\n"
        f"  seed: 100-{100 + items // 2 - 1}\n",
        encoding="utf-8",
    )
    return job


def command(job: Path, out: Path, sandbox: Sandbox, api: str, *flags: str) -> list[str]:
    endpoint = sandbox.endpoint_v2 if api == "async" else sandbox.endpoint
    return [sys.executable, "-m", "batch_runner", "run", str(job), "--output", str(out), "--endpoint", endpoint,
            "--api", api, "--progress", "quiet", *flags]  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "SEGMIND_API_KEY": KEY}


def sandbox(args: argparse.Namespace, **overrides: object) -> Sandbox:
    config = {"keys": (KEY,), "latency_s": args.latency, "jitter_s": args.latency / 5, "rpm": args.rpm,
              "rate_window_s": 6.0, "credits": None, **overrides}  # fmt: skip
    return Sandbox(SandboxConfig(**config))


def throughput(
    args: argparse.Namespace, folder: Path, tag: str, api: str, config: dict[str, object], flags: tuple[str, ...]
) -> dict[str, float]:
    with sandbox(args, **config) as sb:
        job = write_job(folder, args.items, tag)
        run = command(job, folder / tag, sb, api, *flags)
        result = subprocess.run(run, env=env(), capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{tag} exited {result.returncode}: {result.stderr[-2000:]}")
        stats = sb.stats()
    log = stats["log"]
    ok = [r for r in log if r["status"] == 200]
    start = min(r["started"] for r in ok)
    if api == "async":
        images = [r for r in log if r["path"].startswith("/sandbox/media/") and r["status"] == 200]
    else:
        images = [r for r in ok if r["path"] != V2_PATH and r["method"] == "POST"]
    end = max(r["ended"] for r in images)
    per_minute = len(images) / (end - start) * 60
    v2 = stats["v2"]
    return {
        "images": len(images),
        "seconds": end - start,
        "ratio": per_minute / args.rpm,
        "polls": v2["status_polls"] / max(1, len(images)),
        "results": v2["result_polls"] / max(1, len(images)),
        "429s": stats["by_status"].get("429", 0),
        "requests_per_image": sum(1 for r in log if not r["path"].startswith("/sandbox/")) / max(1, len(images)),
    }


def kills(args: argparse.Namespace, folder: Path, api: str) -> dict[str, float]:
    """Kill the run K times at seeded moments, then finish it; count what was bought twice."""
    rng = random.Random(7)
    tag = f"kill-{api}"
    with sandbox(args, rpm=None, submit_latency_s=args.submit_latency) as sb:
        job, out = write_job(folder, args.kill_items, tag), folder / tag
        in_flight = []
        for _ in range(args.kills):
            proc = subprocess.Popen(command(job, out, sb, api), env=env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(rng.uniform(1.5, 3.0))
            stats = sb.stats(include_log=False)
            # What a kill puts at risk: v1's requests in flight; v2's jobs on the server.
            in_flight.append(stats["v2"]["outstanding"] if api == "async" else stats["in_flight"])
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        final = subprocess.run(command(job, out, sb, api), env=env(), capture_output=True, text=True)
        if final.returncode != 0:
            raise SystemExit(f"{tag} final run exited {final.returncode}: {final.stderr[-2000:]}")
        bodies = sb.stats(include_log=False)["bodies"]
    duplicates = sum(max(0, v["billed"] - 1) for v in bodies.values())
    return {"duplicates": duplicates, "per_kill": duplicates / args.kills, "in_flight_at_kill": sum(in_flight)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=120)
    parser.add_argument("--rpm", type=float, default=600.0)
    parser.add_argument("--latency", type=float, default=1.28)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--kill-items", type=int, default=200)
    parser.add_argument("--submit-latency", type=float, default=0.15, help="seconds a v2 submit takes to answer")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"job: {args.items} images; sandbox: {args.rpm:g} RPM (rolling 6 s window), latency {args.latency:g} s")
        print(f"{'client':<30} {'images/min ÷ ceiling':>20} {'polls/img':>10} {'results/img':>12} "
              f"{'requests/img':>13} {'429s':>5}")  # fmt: skip
        slow = {"submit_latency_s": args.submit_latency}
        rpm = ("--rpm", f"{args.rpm:g}")
        rows: list[tuple[str, str, dict[str, object], tuple[str, ...]]] = [
            ("sync (v1)", "sync", {}, ()),
            ("async, polls free", "async", {}, ()),
            ("async, polls counted", "async", {"polls_rate_limited": True}, ()),
            (f"async, submit {args.submit_latency:g} s", "async", slow, ()),
            (f"async, submit {args.submit_latency:g} s, --rpm", "async", slow, rpm),
        ]
        for i, (label, api, config, flags) in enumerate(rows):
            r = throughput(args, folder, f"tp{i}", api, config, flags)
            polls = f"{r['polls']:.2f}" if api == "async" else "-"
            results = f"{r['results']:.2f}" if api == "async" else "-"
            print(f"{label:<30} {r['ratio']:>20.2f} {polls:>10} {results:>12} {r['requests_per_image']:>13.2f} "
                  f"{r['429s']:>5.0f}")  # fmt: skip

        print(f"\nkill -9 {args.kills} times during a {args.kill_items}-image job (no rate limit, v2 submits answer "
              f"in {args.submit_latency:g} s), then finish")  # fmt: skip
        print("(at risk: v1's requests in flight, v2's jobs on the server, summed over the kills)")
        print(f"{'client':<30} {'billed twice':>12} {'per kill':>9} {'at risk at the kills':>21}")
        for label, api in (("sync (v1)", "sync"), ("async (v2)", "async")):
            k = kills(args, folder, api)
            print(f"{label:<30} {k['duplicates']:>12.0f} {k['per_kill']:>9.1f} {k['in_flight_at_kill']:>21.0f}")


if __name__ == "__main__":
    main()
