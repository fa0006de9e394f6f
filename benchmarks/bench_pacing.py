"""Pacing against rate limiters the client knows nothing about, measured in the same run.

Clients (side by side, one after another, each against a fresh limiter):

  runner      this runner's CLI with no pacing flags (the limit is unknown to it)
  runner-rpm  this runner's CLI with --rpm set to the limiter's ceiling
  naive       a thread pool (16 threads) where each thread retries its 429s with tenacity's
              jittered exponential backoff and ignores Retry-After: the usual first attempt
  pacer       (only if asked for: --clients ...,pacer,pacer-rpm) batch_runner.engine.pacing.Pacer
  pacer-rpm   driving a bare thread pool, without and with ceiling_rpm: what the runner should
              reach once it is wired to the Pacer

Limiters (ceiling R requests per second, 10 r/s = 600 RPM by default):

  nginx+RA    Debian's nginx `limit_req` (rate R, burst 5, nodelay) on 127.0.0.1 in front of the
              sandbox, answering 429 with `Retry-After: 1`
  nginx       the same without Retry-After (a bare 429)
  fixed       the sandbox's fixed-window limiter (R × W per window of W seconds on the UTC clock),
              whose 429s carry only x-rate-limit-reset-at-utc

each at two sandbox latencies (0.3 s and 1.28 s: at 10 r/s, 1.28 s needs ~13 requests in flight,
like a Pro key's 50 RPM at ~12.8 s per image).

For each cell it prints `ratio / share`: ratio is the successful requests per second, counted by
the sandbox from the first admitted request's start to the last one's, divided by the ceiling;
share is the part of all requests answered 429, counted by the server side (nginx's access log,
or the sandbox's own record), never by the client. A fixed window lets a client that bursts at
each window's start show a ratio up to 1 + 1/(number of windows), so the run spans many windows.

nginx is started by this benchmark with its own prefix and configuration in a temporary folder
(`nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'`), listens on 127.0.0.1 only, and is stopped
after each cell. Nothing leaves 127.0.0.1.

    python benchmarks/bench_pacing.py [--quick] [--items 300] [--rpm 600]
        [--clients runner,runner-rpm,naive] [--limiters nginx+RA,nginx,fixed] [--latencies 0.3,1.28]
        [--repo DIR]   # run the CLI from another checkout, e.g. `git archive HEAD` unpacked
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from tenacity import Retrying, retry_if_exception_type, retry_if_result, stop_after_attempt, wait_random_exponential

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from batch_runner.sandbox import V1_PATH, Sandbox, SandboxConfig  # noqa: E402
from tests.nginx import Nginx, nginx_binary  # noqa: E402

KEY = "sandbox-key"
NAIVE_THREADS = 16
CLIENTS = ("runner", "runner-rpm", "naive", "pacer", "pacer-rpm")
LIMITERS = ("nginx+RA", "nginx", "fixed")


# ---------------------------------------------------------------------------- the job


def write_job(folder: Path, items: int, tag: str) -> Path:
    """`items` distinct requests: every cell renders new images, as a real job would."""
    job = folder / "bench.yaml"
    job.write_text(
        "name: bench\n"
        "defaults: {resolution: RESOLUTION_1024_1024, magic_prompt_option: 'OFF'}\n"
        "grid:\n"
        f"  prompt: ['a benchmark image of a lighthouse {tag}', 'a benchmark image of a fox {tag}']\n"
        f"  seed: 100-{100 + items // 2 - 1}\n",
        encoding="utf-8",
    )
    return job


def bodies(items: int, tag: str) -> list[dict]:
    return [
        {
            "prompt": f"a benchmark image of a {animal} {tag}",
            "seed": seed,
            "resolution": "RESOLUTION_1024_1024",
            "magic_prompt_option": "OFF",
        }
        for seed in range(100, 100 + items // 2)
        for animal in ("lighthouse", "fox")
    ]


# ---------------------------------------------------------------------------- clients


def run_cli(repo: Path, endpoint: str, items: int, tag: str, *flags: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        job = write_job(Path(tmp), items, tag)
        env = {**os.environ, "SEGMIND_API_KEY": KEY, "PYTHONPATH": str(repo)}
        proc = subprocess.run(
            [sys.executable, "-m", "batch_runner", "run", str(job), "--endpoint", endpoint,
             "--output", f"{tmp}/out", "--progress", "log", "--log-interval", "3600", *flags],
            cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=1800,
        )  # fmt: skip
        if proc.returncode != 0:
            print(f"    (runner exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]})", flush=True)


def run_naive(endpoint: str, items: int, tag: str) -> None:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=NAIVE_THREADS, max_retries=0)
    session.mount("http://", adapter)
    policy = Retrying(
        retry=retry_if_result(lambda r: r.status_code in (429, 500, 502, 503, 504))
        | retry_if_exception_type(requests.ConnectionError),
        wait=wait_random_exponential(multiplier=0.25, max=8),
        stop=stop_after_attempt(200),
        retry_error_callback=lambda state: None,
    )

    def one(body: dict) -> None:
        def post() -> requests.Response:
            r = session.post(endpoint, json=body, headers={"x-api-key": KEY}, timeout=120)
            r.content  # noqa: B018 - read the whole image, as a client would
            return r

        policy(post)

    with ThreadPoolExecutor(NAIVE_THREADS) as pool:
        list(pool.map(one, bodies(items, tag)))


def run_pacer(endpoint: str, items: int, tag: str, ceiling_rpm: float | None) -> None:
    from batch_runner.api.client import retry_at_from
    from batch_runner.engine.pacing import Pacer

    pacer = Pacer(ceiling_rpm=ceiling_rpm)
    stop = threading.Event()
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=pacer.max_concurrency, max_retries=0))
    todo = bodies(items, tag)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                body = todo.pop()
            while True:
                with pacer.acquire(stop) as ticket:
                    try:
                        r = session.post(endpoint, json=body, headers={"x-api-key": KEY}, timeout=120)
                        r.content  # noqa: B018
                    except requests.ConnectionError:
                        ticket.unreachable()
                        continue
                    if r.status_code == 200:
                        ticket.succeeded()
                        break
                    if r.status_code == 429:
                        ticket.rate_limited(retry_at_from(r.headers))
                    else:
                        ticket.answered()

    threads = [threading.Thread(target=worker) for _ in range(pacer.max_concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ---------------------------------------------------------------------------- one cell


def admitted_starts(sandbox: Sandbox) -> tuple[list[float], Counter]:
    log = [e for e in sandbox.stats()["log"] if e["path"] == V1_PATH]
    starts = sorted(e["started"] for e in log if e["status"] == 200)
    return starts, Counter(str(e["status"]) for e in log)


def cell(args: argparse.Namespace, client: str, limiter: str, latency: float, tag: str) -> tuple[float, float, float]:
    rate = args.rpm / 60
    fixed = limiter == "fixed"
    config = SandboxConfig(
        keys=(KEY,),
        latency_s=latency,
        credits=None,
        rpm=args.rpm if fixed else None,
        rate_window_s=args.fixed_window,
        rate_limiter="fixed" if fixed else "rolling",
    )
    with Sandbox(config) as sandbox:
        proxy = None if fixed else Nginx(sandbox.port, rate, args.nginx_burst, retry_after=limiter == "nginx+RA")
        endpoint = sandbox.endpoint if proxy is None else proxy.endpoint
        started = time.monotonic()
        try:
            if client == "runner":
                run_cli(args.repo, endpoint, args.items, tag)
            elif client == "runner-rpm":
                run_cli(args.repo, endpoint, args.items, tag, "--rpm", f"{args.rpm:g}")
            else:
                # In a process of its own, like the CLI: the sandbox's threads keep this one's GIL.
                subprocess.run(
                    [sys.executable, __file__, "--as-client", client, "--endpoint", endpoint,
                     "--items", str(args.items), "--tag", tag, "--rpm", str(args.rpm)],
                    cwd=REPO, check=True, timeout=1800,
                )  # fmt: skip
        finally:
            wall = time.monotonic() - started
            statuses = proxy.statuses() if proxy else None
            if proxy:
                proxy.close()
        starts, by_status = admitted_starts(sandbox)
    if statuses is None:
        statuses = by_status
    total = sum(statuses.values())
    limited = statuses.get("429", 0)
    ratio = (len(starts) - 1) / (starts[-1] - starts[0]) / rate if len(starts) > 1 else 0.0
    return ratio, (limited / total if total else 0.0), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=float, default=600, help="every limiter's ceiling (default 600 = 10 r/s)")
    parser.add_argument("--items", type=int, default=300, help="items per cell (default 300; --quick: 150)")
    parser.add_argument("--quick", action="store_true", help="150 items per cell")
    parser.add_argument("--clients", default="runner,runner-rpm,naive", help=f"any of {','.join(CLIENTS)}")
    parser.add_argument("--limiters", default=",".join(LIMITERS), help=f"any of {','.join(LIMITERS)}")
    parser.add_argument("--latencies", default="0.3,1.28", help="sandbox latencies in seconds")
    parser.add_argument("--nginx-burst", type=int, default=5, help="limit_req burst (default 5)")
    parser.add_argument("--fixed-window", type=float, default=2.0, help="fixed window length in seconds (default 2)")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose CLI to run (default this one)")
    parser.add_argument("--as-client", choices=("naive", "pacer", "pacer-rpm"), help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_client == "naive":
        return run_naive(args.endpoint, args.items, args.tag)
    if args.as_client:
        return run_pacer(args.endpoint, args.items, args.tag, args.rpm if args.as_client == "pacer-rpm" else None)
    if args.quick:
        args.items = 150
    clients = [c for c in args.clients.split(",") if c]
    limiters = [x for x in args.limiters.split(",") if x]
    latencies = [float(x) for x in args.latencies.split(",") if x]
    unknown = (set(clients) - set(CLIENTS)) | (set(limiters) - set(LIMITERS))
    if unknown:
        raise SystemExit(f"unknown clients or limiters: {sorted(unknown)}")
    if any(x.startswith("nginx") for x in limiters) and not nginx_binary():
        raise SystemExit("nginx is not installed (apt-get install nginx-light), or pass --limiters fixed")
    args.repo = args.repo.resolve()

    print(
        f"ceiling {args.rpm:g} RPM ({args.rpm / 60:g} r/s); {args.items} items per cell; nginx burst "
        f"{args.nginx_burst}; fixed window {args.fixed_window:g} s; CLI from {args.repo}",
        flush=True,
    )
    columns = [(limiter, latency) for latency in latencies for limiter in limiters]
    results: dict[tuple[str, str, float], tuple[float, float]] = {}
    begun = time.monotonic()
    for n, (limiter, latency) in enumerate(columns):
        for client in clients:
            ratio, share, wall = cell(args, client, limiter, latency, tag=f"c{n}{client}")
            results[client, limiter, latency] = (ratio, share)
            print(
                f"  {client:10} {limiter:8} {latency:4g} s: ratio {ratio:.3f}, 429s {share:.1%}  ({wall:.0f} s)",
                flush=True,
            )
    print(f"\nratio of the ceiling / share of requests answered 429   ({time.monotonic() - begun:.0f} s in all)")
    heads = [f"{limiter} {latency:g}s" for limiter, latency in columns]
    print(f"{'client':12}" + "".join(f"{h:>17}" for h in heads))
    for client in clients:
        row = "".join(
            f"{results[client, limiter, latency][0]:>10.3f}/{results[client, limiter, latency][1]:<6.1%}"
            for limiter, latency in columns
        )
        print(f"{client:12}{row}")


if __name__ == "__main__":
    main()
