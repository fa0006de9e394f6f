"""Requests per second the sandbox serves at zero latency.

The sandbox runs in its own process (`batch-runner sandbox`), the clients here, over loopback
keep-alive connections. Distinct bodies pay for drawing and encoding a 1024×1024 JPEG each;
repeated bodies are served from the sandbox's image cache and measure the HTTP path alone.

    python benchmarks/bench_sandbox.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
KEY = "bench-key-not-real"


def start_sandbox() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batch_runner",
            "sandbox",
            "--port",
            "0",
            "--latency",
            "0",
            "--credits",
            "1e9",
            "--keys",
            KEY,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    url = proc.stdout.readline().split()[3]
    return proc, url + "/v1/ideogram-turbo-txt-2-img"


def blast(endpoint: str, clients: int, total: int, distinct: bool) -> float:
    counter = iter(range(total))
    lock = threading.Lock()
    errors = []

    def worker() -> None:
        session = requests.Session()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            body = {"prompt": f"bench {i if distinct else 0}", "seed": 100 + (i if distinct else 0) % 900000}
            r = session.post(endpoint, json=body, headers={"x-api-key": KEY}, timeout=30)
            if r.status_code != 200:
                errors.append(r.status_code)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} non-200 answers: {set(errors)}")
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    total = parser.parse_args().requests
    proc, endpoint = start_sandbox()
    try:
        print(f"{'bodies':>9} {'clients':>8} {'requests':>9} {'req/s':>8}")
        for distinct in (False, True):
            for clients in (1, 8, 64):
                rps = blast(endpoint, clients, total, distinct)
                print(f"{'distinct' if distinct else 'repeated':>9} {clients:>8} {total:>9} {rps:>8.0f}")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
