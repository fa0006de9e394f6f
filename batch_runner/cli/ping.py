"""Tell a monitor how a run went, the healthchecks.io way: URL/start, then URL or URL/<exit code>.

A dead monitor must never break the batch: every ping is bounded in time, retried a few
times, and its failure is only a warning. Pings carry no API key: the monitor is not the API.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import requests

PING_TIMEOUT_S = 10.0
PING_TRIES = 3


class Pinger:
    def __init__(
        self,
        url: str,
        log: Callable[[str], None],
        timeout_s: float = PING_TIMEOUT_S,
        tries: int = PING_TRIES,
        backoff_s: float = 1.0,
    ):
        self.url = url.rstrip("/")
        self.log = log
        self.timeout_s = timeout_s
        self.tries = tries
        self.backoff_s = backoff_s

    def start(self) -> bool:
        return self._ping(f"{self.url}/start")

    def finish(self, exit_code: int) -> bool:
        return self._ping(self.url if exit_code == 0 else f"{self.url}/{exit_code}")

    def _ping(self, url: str) -> bool:
        problem = ""
        for attempt in range(self.tries):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                # A fresh request with no session: nothing (cookies, the key) carries over.
                response = requests.get(url, timeout=self.timeout_s, allow_redirects=True)
                if response.status_code < 400:
                    return True
                problem = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                problem = type(exc).__name__
        self.log(f"warning: the monitor at {url} did not take the ping ({problem}); the run is not affected")
        return False
