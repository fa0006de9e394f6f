"""The sandbox's behaviour: what the real endpoint would answer, with its accounting.

This module decides; server.py does the socket I/O. Every rule comes from the API fact sheet
(api_spec.py holds the validation), and every request is recorded so tests can assert on what
the server saw and billed, e.g. "no item was billed twice".

Tests can force an outcome for one item by putting a directive in its prompt:

    [sandbox:fail=CODE]        always answer CODE (400, 401, 403, 404, 406, 410, 422, 429, 500, 502, 504;
                               406-content-type and 406-spend-limit for those kinds of 406)
    [sandbox:fail-once=CODE]   answer CODE the first time this exact body arrives, then succeed
    [sandbox:fault=KIND]       always: slow (trickled body), drop (connection cut mid-body),
                               broken (corrupt JPEG), wrong-size (image of another size), unsafe,
                               slow-headers (status line and headers one byte a second),
                               short-png (a PNG whose pixel data stops short, every CRC right),
                               echo-id (the key sent comes back as x-request-id),
                               echo-error (a 500 whose body holds the key across its 200th character)
    [sandbox:fault-once=KIND]  the same, only the first time

The v2 queue (queue.py) reads the same directives at submit, and its own for polls.
"""

from __future__ import annotations

import base64
import collections
import io
import json
import math
import random
import re
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from batch_runner.api import spec as api_spec
from batch_runner.job.items import item_id_for
from batch_runner.sandbox import images
from batch_runner.sandbox.queue import V2_REQUESTS_PREFIX, JobQueue

V1_PATH = "/v1/ideogram-turbo-txt-2-img"
V2_PATH = "/v2/ideogram-turbo-txt-2-img"
CREDITS_PATH = "/v1/get-user-credits"
STATS_PATH = "/sandbox/stats"
MEDIA_PREFIX = "/sandbox/media/"
DEFAULT_KEY = "sandbox-key"
FAULT_KINDS = ("500", "502", "504", "slow", "drop")
_DIRECTIVE = re.compile(r"\[sandbox:([a-z-]+)=([A-Za-z0-9-]+)\]")
_ERROR_TEXT = {
    400: "Invalid parameters",
    401: "Unauthorized: invalid or missing API key",
    403: "Forbidden: insufficient permissions",
    404: "Not found",
    406: "Insufficient credits",
    410: "This model has been retired",
    422: "Safety check failed",
    500: "Internal server error",
    502: "Bad gateway",
    504: "Gateway timeout",
}
_HTML_405 = b"<html><head><title>405 Method Not Allowed</title></head><body><h1>Method Not Allowed</h1></body></html>"


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox behaves; the defaults give a quick, fault-free, rate-unlimited server."""

    rpm: float | None = None
    rate_window_s: float = 60.0  # tests shrink the window to keep the rolling limit fast
    # "rolling": at most rpm × window / 60 requests in any window_s; a 429 names when the oldest
    # leaves it (x-rate-limit-reset-at-utc, plus Retry-After unless retry_after=False).
    # "fixed": the same count per window [k·window_s, (k+1)·window_s) on the UTC clock, reset
    # all at once; a 429 carries only x-rate-limit-reset-at-utc, the window's end (no Retry-After).
    rate_limiter: str = "rolling"
    credits: float | None = 100.0  # dollars; None never runs out
    price: float = api_spec.PRICE_PER_IMAGE
    spend_limit: float | None = None  # a team spend limit, answered as its own 406
    latency_s: float = 0.0
    jitter_s: float = 0.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULT_KINDS
    slow_s: float = 5.0
    response: str = "bytes"  # bytes | json | url
    keys: tuple[str, ...] = (DEFAULT_KEY,)
    seed: int = 0
    retry_after: bool = True
    result_ttl_s: float = 3600.0  # v2 jobs are forgotten this long after submission (404)
    # Whether v2 polls count against the per-key rate limit is not published: a sandbox can
    # do either, so a client is tested against both.
    polls_rate_limited: bool = False
    # How long a v2 submit's answer takes after the job is created: the window in which a
    # crash leaves a billed job whose id the client never journaled.
    submit_latency_s: float = 0.0
    # (style, share) pairs: how often a quoted text is drawn misspelt ("*" for any other style)
    misspell: tuple[tuple[str, float], ...] = ()
    # Headers every generation answer carries instead of the honest ones (a 200's x-cost,
    # x-seed-value; a 429's x-rate-limit-reset-at-utc, Retry-After): a server stating nonsense.
    headers: tuple[tuple[str, str], ...] = ()
    # Keys of a COMPLETED v2 job's metrics replaced by these values (cost as an object, NaN...).
    v2_metrics: tuple[tuple[str, Any], ...] = ()
    slow_credits: bool = False  # the credit check's answer trickles its headers too
    header_byte_s: float = 1.0  # slow-headers: seconds per byte of the status line and headers

    def __post_init__(self) -> None:
        if self.response not in ("bytes", "json", "url"):
            raise ValueError(f"response must be bytes, json or url, not {self.response!r}")
        if self.rate_limiter not in ("rolling", "fixed"):
            raise ValueError(f"rate_limiter must be rolling or fixed, not {self.rate_limiter!r}")
        unknown = set(self.faults) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; use {', '.join(FAULT_KINDS)}")


@dataclass
class Reply:
    """What to send back, and how: 'normal', 'drop' (cut mid-body) or 'trickle' (slow body)."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    mode: str = "normal"
    trickle_s: float = 0.0
    byte_s: float = 0.0  # mode "slow-headers": seconds between bytes of the head


def _json_reply(status: int, payload: Any, **kwargs: Any) -> Reply:
    return Reply(status, json.dumps(payload).encode(), "application/json", **kwargs)


def _error(status: int, message: str | None = None, **kwargs: Any) -> Reply:
    return _json_reply(status, {"error": message or _ERROR_TEXT.get(status, "Error")}, **kwargs)


def short_png(jpeg: bytes) -> bytes:
    """The image as a PNG whose pixel data stops halfway, every chunk whole with a right CRC:
    what a chunk check (Pillow's verify) passes, and only decoding the pixels catches."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buffer, "PNG")
    data = buffer.getvalue()
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        chunks.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + length]))
        at += 12 + length
    pixels = b"".join(body for kind, body in chunks if kind == b"IDAT")

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    head = b"".join(chunk(k, b) for k, b in chunks if k not in (b"IDAT", b"IEND"))
    return data[:8] + head + chunk(b"IDAT", pixels[: len(pixels) // 2]) + chunk(b"IEND", b"")


@dataclass
class _Record:
    seq: int
    method: str
    path: str
    started: float
    item_id: str | None = None
    status: int | None = None
    ended: float | None = None
    billed: bool = False
    cost: float = 0.0
    keyed: bool = False  # an x-api-key header came with it (none may go to the media host)
    request_id: str | None = None  # the v2 job it created or polled
    drawn: str | None = None  # the quoted text the image shows, as drawn (misspelt or not)


class SandboxApi:
    """Thread-safe state and rules; one instance per running sandbox."""

    def __init__(self, config: SandboxConfig, base_url: str = ""):
        self.config = config
        self.base_url = base_url
        self._lock = threading.Lock()
        self._credits = config.credits
        self._spent = 0.0
        self._records: list[_Record] = []
        self._bodies: dict[str, dict[str, int]] = {}
        self._windows: dict[str, collections.deque[float]] = {}
        self._in_flight = 0
        self._max_in_flight = 0
        self._media: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._media_faults: dict[str, str] = {}
        self.queue = JobQueue(self)

    # ---------------------------------------------------------------- bookkeeping

    def begin(self, method: str, path: str) -> _Record:
        with self._lock:
            record = _Record(len(self._records) + 1, method, path, time.monotonic())
            self._records.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            return record

    def end(self, record: _Record, status: int) -> None:
        with self._lock:
            record.status = status
            record.ended = time.monotonic()
            self._in_flight -= 1

    def add_credits(self, amount: float) -> None:
        """Top up the balance, as a user would after a 406."""
        with self._lock:
            if self._credits is not None:
                self._credits += amount

    def stats(self, include_log: bool = True) -> dict[str, Any]:
        """Everything received and billed; the shape served at GET /sandbox/stats."""
        with self._lock:
            by_status = collections.Counter(str(r.status) for r in self._records if r.status is not None)
            generation = [r for r in self._records if r.path in (V1_PATH, V2_PATH)]
            stats: dict[str, Any] = {
                "received": len(generation),
                "requests": len(self._records),
                "billed": sum(r.billed for r in self._records),
                "spent": round(self._spent, 6),
                "credits": None if self._credits is None else round(self._credits, 6),
                "by_status": dict(by_status),
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "bodies": {k: dict(v) for k, v in self._bodies.items()},
                "v2": self.queue.stats(),
            }
            if include_log:
                stats["log"] = [
                    {
                        "seq": r.seq,
                        "method": r.method,
                        "path": r.path,
                        "item_id": r.item_id,
                        "status": r.status,
                        "started": r.started,
                        "ended": r.ended,
                        "billed": r.billed,
                        "cost": r.cost,
                        "keyed": r.keyed,
                        "request_id": r.request_id,
                        "drawn": r.drawn,
                    }
                    for r in self._records
                ]
            return stats

    def _note_body(self, record: _Record, item_id: str) -> int:
        """Count a received body; the answer is how many times it was seen before."""
        record.item_id = item_id
        entry = self._bodies.setdefault(item_id, {"received": 0, "billed": 0})
        entry["received"] += 1
        return entry["received"] - 1

    def _bill(self, record: _Record) -> bool:
        """Charge one image; False when the balance cannot pay for it."""
        price = self.config.price
        if self._credits is not None and self._credits + 1e-9 < price:
            return False
        if self._credits is not None:
            self._credits -= price
        self._spent += price
        record.billed, record.cost = True, price
        self._bodies[record.item_id or ""]["billed"] += 1
        return True

    def _refund(self, record: _Record) -> None:
        if not record.billed:
            return
        if self._credits is not None:
            self._credits += record.cost
        self._spent -= record.cost
        self._bodies[record.item_id or ""]["billed"] -= 1
        record.billed, record.cost = False, 0.0

    # ---------------------------------------------------------------- routing

    def handle(self, record: _Record, headers: Any, body: bytes) -> Reply:
        method, path = record.method, record.path.split("?", 1)[0]
        record.keyed = bool(headers.get("x-api-key"))
        if path == STATS_PATH and method == "GET":
            return _json_reply(200, self.stats(include_log="log=0" not in record.path))
        if path.startswith(MEDIA_PREFIX) and method == "GET":
            return self._media_reply(path[len(MEDIA_PREFIX) :])
        routes = {V1_PATH: "POST", V2_PATH: "POST", CREDITS_PATH: "GET"}
        if path.startswith(V2_REQUESTS_PREFIX):
            routes[path] = "GET"
        if path not in routes:
            return _error(404, f"Not found: {path}")
        if method != routes[path]:
            return Reply(405, _HTML_405, "text/html; charset=utf-8", {"Allow": routes[path]})
        key = headers.get("x-api-key")
        if not key or key not in self.config.keys:
            return _error(401, "Unauthorized: missing API key" if not key else None)
        if path == CREDITS_PATH:
            with self._lock:
                credits = self._credits if self._credits is not None else 1e9
            reply = _json_reply(200, {"credits": round(credits, 6), "free-credits": 0})
            if self.config.slow_credits:
                reply.mode, reply.byte_s = "slow-headers", self.config.header_byte_s
            return reply
        if path.startswith(V2_REQUESTS_PREFIX):
            return self.queue.poll(record, path[len(V2_REQUESTS_PREFIX) :], key)
        reply = self._generate(record, key, headers, body, queued=path == V2_PATH)
        if reply.status in (200, 429):
            reply.headers.update(dict(self.config.headers))
        return reply

    def _generate(self, record: _Record, key: str, headers: Any, body: bytes, queued: bool) -> Reply:
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            params = json.loads(body) if content_type == "application/json" else None
        except (ValueError, UnicodeDecodeError):
            params = None
        if not isinstance(params, dict):
            return _error(406, "Invalid content type: send a JSON object with Content-Type: application/json")

        item_id = item_id_for(params)
        with self._lock:
            seen_before = self._note_body(record, item_id)
            reset_at = self._admit(key, time.monotonic())
        if reset_at is not None:
            return self._rate_limited(reset_at)

        problems = api_spec.check_request(params)
        if problems:
            return _error(400, "; ".join(problems))

        forced = self._directive(params, seen_before)
        if forced and forced[:3].isdigit():
            return self._forced_status(forced)

        with self._lock:
            if self.config.spend_limit is not None and self._spent + self.config.price > self.config.spend_limit + 1e-9:
                return _error(406, "Team spend limit reached")
            if not self._bill(record):
                return _error(406, "Insufficient credits")
            remaining = self._credits

        fault = forced or self._random_fault(item_id, seen_before)
        if fault == "echo-error":
            with self._lock:
                self._refund(record)
            # The key straddles the 200th character: a cut there leaves most of it.
            text = "x" * (200 - len(key) // 3) + f"{key} (debug echo of x-api-key)"
            return Reply(500, text.encode(), "text/plain", delay_s=self._latency(item_id, seen_before))
        if fault in ("500", "502", "504"):
            with self._lock:
                self._refund(record)
            return _error(int(fault), delay_s=self._latency(item_id, seen_before))
        if fault == "unsafe":
            with self._lock:
                self._refund(record)
            return _error(422)

        seed = params.get("seed") or self._server_seed(item_id)
        if queued:
            return self.queue.submit(record, params, seed, fault, remaining, seen_before)
        width, height = api_spec.resolution_size(params.get("resolution"))
        if fault == "wrong-size":
            width, height = height + 16, width
        image = images.jpeg(params, seed, width, height, self.config.misspell)
        record.drawn = images.drawn_text(params, seed, self.config.misspell)
        if fault == "broken":
            image = image[: len(image) // 3] + b"\x00" * 64
        if fault == "short-png":
            image = short_png(images.jpeg(params, seed, width, height))
        reply = self._success(params, image, seed, remaining)
        if fault == "short-png":
            reply.content_type = "image/png"
        if fault == "echo-id":
            reply.headers["x-request-id"] = f"req-{key}"
        reply.delay_s = self._latency(item_id, seen_before)
        reply.headers["x-generation-time"] = f"{reply.delay_s:.3f}"
        if fault == "drop":
            reply.mode = "drop"
        elif fault == "slow":
            reply.mode, reply.trickle_s = "trickle", self.config.slow_s
        elif fault == "slow-headers":
            reply.mode, reply.byte_s = "slow-headers", self.config.header_byte_s
        return reply

    # ---------------------------------------------------------------- pieces

    def _admit(self, key: str, now: float) -> float | None:
        """Rate limit per key: None when admitted, else when a slot frees up (monotonic)."""
        if not self.config.rpm:
            return None
        window_s = self.config.rate_window_s
        limit = max(1, math.floor(self.config.rpm * window_s / 60 + 1e-9))
        window = self._windows.setdefault(key, collections.deque())
        if self.config.rate_limiter == "fixed":
            # Windows are aligned to the UTC clock, as a per-minute limit that resets on the
            # minute; `window` holds the admissions of the current one.
            wall = time.time() - time.monotonic()  # monotonic -> UTC seconds
            start = math.floor((now + wall) / window_s) * window_s - wall
            while window and window[0] < start:
                window.popleft()
            if len(window) >= limit:
                return start + window_s
            window.append(now)
            return None
        while window and window[0] <= now - window_s:
            window.popleft()
        if len(window) >= limit:
            return window[0] + window_s
        window.append(now)
        return None

    def _rate_limited(self, reset_at: float) -> Reply:
        wait = max(0.0, reset_at - time.monotonic())
        reset_wall = datetime.now(timezone.utc) + timedelta(seconds=wait)
        headers = {"x-rate-limit-reset-at-utc": reset_wall.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
        if self.config.retry_after and self.config.rate_limiter == "rolling":
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return _error(429, "Rate limit exceeded", headers=headers)

    def _forced_status(self, value: str) -> Reply:
        if value == "429":
            return self._rate_limited(time.monotonic() + 1.0)
        if value == "406-content-type":
            return _error(406, "Invalid content type")
        if value == "406-spend-limit":
            return _error(406, "Team spend limit reached")
        return _error(int(value[:3]))

    @staticmethod
    def directives(params: dict[str, Any]) -> Iterator[tuple[str, str]]:
        """Every [sandbox:name=value] in the prompt, in order."""
        yield from _DIRECTIVE.findall(str(params.get("prompt", "")))

    def _directive(self, params: dict[str, Any], seen_before: int) -> str | None:
        for name, value in self.directives(params):
            if name in ("fail", "fault") or (name in ("fail-once", "fault-once") and seen_before == 0):
                return value
        return None

    def _rng(self, item_id: str, seen_before: int, purpose: str) -> random.Random:
        # Seeded by the body and how often it was seen, not by arrival order, so a run
        # meets the same faults whatever the interleaving of its threads.
        return random.Random(f"{self.config.seed}:{item_id}:{seen_before}:{purpose}")

    def _random_fault(self, item_id: str, seen_before: int) -> str | None:
        if self.config.fault_rate <= 0 or not self.config.faults:
            return None
        rng = self._rng(item_id, seen_before, "fault")
        if rng.random() >= self.config.fault_rate:
            return None
        return rng.choice(self.config.faults)

    def _latency(self, item_id: str, seen_before: int) -> float:
        jitter = self.config.jitter_s
        if not jitter:
            return self.config.latency_s
        return max(0.0, self.config.latency_s + self._rng(item_id, seen_before, "latency").uniform(-jitter, jitter))

    @staticmethod
    def _server_seed(item_id: str) -> int:
        return api_spec.SEED_MIN + int(item_id, 16) % (api_spec.SAFE_SEED_MAX - api_spec.SEED_MIN)

    def _store_media(self, image: bytes, fault: str | None = None) -> str:
        name = f"{uuid.uuid4().hex}.jpg"
        with self._lock:
            self._media[name] = image
            if fault:
                self._media_faults[name] = fault
            while len(self._media) > 4096:
                self._media.popitem(last=False)
        return f"{self.base_url}{MEDIA_PREFIX}{name}"

    def _media_reply(self, name: str) -> Reply:
        with self._lock:
            image = self._media.get(name)
            fault = self._media_faults.get(name)
        if image is None:
            return _error(404, "media expired or unknown")
        reply = Reply(200, image, "image/jpeg")
        if fault == "slow-headers":
            reply.mode, reply.byte_s = "slow-headers", self.config.header_byte_s
        return reply

    def _success(self, params: dict[str, Any], image: bytes, seed: int, remaining: float | None) -> Reply:
        headers = {
            "x-cost": f"{self.config.price:.6g}",
            "x-seed-value": str(seed),
            "x-request-id": uuid.uuid4().hex,
        }
        if remaining is not None:
            headers["x-remaining-credits"] = f"{remaining:.6f}"
        shape = self.config.response
        if shape == "bytes":
            return Reply(200, image, "image/jpeg", headers)
        if shape == "json":
            payload = {"image": base64.b64encode(image).decode(), "status": "Succeeded", "seed": seed}
            return _json_reply(200, payload, headers=headers)
        width, height = api_spec.resolution_size(params.get("resolution"))
        payload = {
            "created": datetime.now(timezone.utc).isoformat(),
            "data": [
                {
                    "url": self._store_media(image),
                    "prompt": params.get("prompt"),
                    "resolution": f"{width}x{height}",
                    "seed": seed,
                    "style_type": params.get("style_type", "GENERAL"),
                    "is_image_safe": True,
                }
            ],
        }
        return _json_reply(200, payload, headers=headers)
