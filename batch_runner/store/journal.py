"""An append-only log of every request sent and every answer, safe against kill -9.

Each event is one JSON line, written with a single write() on an O_APPEND descriptor and
fsynced before the call returns: when `sent` returns, the request is on disk before it goes
out; when `done` returns, the result is. A line torn by a crash is the last one and is skipped
on replay, so the journal always replays to a consistent state.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypedDict


class JournalEventKind(str, Enum):
    """The `e` of a journal line. The values are written to disk: never rename one."""

    RUN = "run"  # a run started: its settings and price
    SENT = "sent"  # a request is about to go out (v1 generation or v2 submit): it may be billed
    SUBMITTED = "submitted"  # v2: the server answered the submit with a request id to poll
    ATTEMPT = "attempt"  # an attempt's outcome that finished no item (an error, a FAILED job)
    EXPIRED = "expired"  # v2: the request id is unknown or expired (404); the item is sent again
    DONE = "done"  # the item's final outcome: succeeded (image saved) or failed


class SubmittedEvent(TypedDict):
    e: str  # JournalEventKind.SUBMITTED
    id: str
    n: int
    rid: str  # the server's request_id: poll it, never submit the item again while it lives
    at: float


class ExpiredEvent(TypedDict):
    e: str  # JournalEventKind.EXPIRED
    id: str
    n: int
    rid: str
    at: float


class ItemStatus(str, Enum):
    """Where an item stands. The values are written to the journal, the ledger and the
    manifest: never rename one. The order is the ledger's status codes (ledger.STATUS)."""

    PENDING = "pending"  # not sent, or its last attempt failed and it will be sent again
    SENT = "sent"  # a request is out (or was, when a run died) with no outcome on record
    SUCCEEDED = "succeeded"  # its image is saved
    FAILED = "failed"  # given up: rejected, or out of attempts

    def __str__(self) -> str:
        return self.value  # f-strings and messages show "sent", not "ItemStatus.SENT"


@dataclass
class ItemState:
    """What the journal says of one item."""

    status: str = ItemStatus.PENDING.value
    attempts: int = 0
    http_status: int | None = None
    error: str | None = None
    latency_s: float | None = None
    cost_usd: float = 0.0
    remaining_credits: float | None = None
    seed_value: int | None = None
    request_id: str | None = None
    image_path: str | None = None
    first_sent_at: float | None = None
    finished_at: float | None = None
    rate_limited: int = 0
    # Attempts that may have been billed with no answer on record: no status line came back,
    # or the run died between `sent` and the answer. They stay counted for good, even once a
    # later attempt succeeds: the server may have billed them all the same.
    unanswered: int = 0
    submitted_at: float | None = None  # v2: when the job behind request_id was submitted (epoch)
    row: dict[str, Any] = field(default_factory=dict)
    open_attempt: bool = field(default=False, repr=False)  # a `sent` with no outcome after it yet


@dataclass
class Replay:
    items: dict[str, ItemState]
    runs: list[dict[str, Any]]
    torn_lines: int
    bad_lines: int = 0  # whole lines whose fields have the wrong types: skipped
    max_cost: float = 0.0  # the highest cost one attempt was booked at

    @property
    def spent(self) -> float:
        return sum(s.cost_usd for s in self.items.values())

    @property
    def unanswered(self) -> int:
        return sum(s.unanswered for s in self.items.values())

    @property
    def on_server(self) -> int:
        return sum(holds_job(s) for s in self.items.values())

    @property
    def price(self) -> float | None:
        return latest_price(self.runs)


class _Waiter:
    """A writer parked until a sync covers its write, or until it is handed the next sync."""

    __slots__ = ("n", "gate", "lead")

    def __init__(self, n: int):
        self.n = n
        self.gate = threading.Lock()
        self.gate.acquire()  # released once, by the syncer that covers or chooses this writer
        self.lead = False


class GroupSync:
    """One fdatasync for every writer waiting: `wait_for(n)` returns once a sync that started
    after write number n finished. `written()` says how many writes have completed.

    Each sync wakes only the writers it covers, plus the first one it does not cover, which runs
    the next sync: waking every waiter after each sync (a Condition's notify_all) cost each
    writer several context switches for nothing at concurrency 16."""

    def __init__(self, fd: int, written: Any, sync: Any = os.fdatasync):
        self._fd = fd
        self._fsync = sync
        self._written = written
        self._lock = threading.Lock()
        self._waiters: list[_Waiter] = []  # in write order: n only grows
        self._synced = 0
        self._syncing = False
        self.syncs = 0

    def wait_for(self, n: int) -> None:
        with self._lock:
            if self._synced >= n:
                return
            if self._syncing:
                waiter = _Waiter(n)
                self._waiters.append(waiter)
            else:
                self._syncing = True
                waiter = None
        if waiter is not None:
            waiter.gate.acquire()  # covered by a sync, or handed the next one
            if not waiter.lead:
                return
        self._lead()

    def _lead(self) -> None:
        """Run one sync, then release the writers it covers and hand the next sync on."""
        target = self._written()  # every write up to here is complete, and >= the leader's own
        try:
            self._fsync(self._fd)
        except BaseException:
            with self._lock:
                self._hand_on([])  # a waiter retries the sync itself, and meets its own error
            raise
        with self._lock:
            self.syncs += 1
            self._synced = max(self._synced, target)
            covered = 0
            while covered < len(self._waiters) and self._waiters[covered].n <= self._synced:
                covered += 1
            released, self._waiters = self._waiters[:covered], self._waiters[covered:]
            self._hand_on(released)

    def _hand_on(self, released: list[_Waiter]) -> None:
        """Under the lock: wake the covered writers, and make the first uncovered one the syncer."""
        if self._waiters:
            heir = self._waiters.pop(0)
            heir.lead = True
            released.append(heir)
        else:
            self._syncing = False
        for waiter in released:
            waiter.gate.release()


def holds_job(state: ItemState) -> bool:
    """A v2 job was submitted for the item and neither collected, nor known FAILED or expired:
    the server bills it when it completes, whether anyone polls it or not."""
    return state.status == ItemStatus.PENDING.value and bool(state.request_id) and not state.open_attempt


def latest_price(runs: list[dict[str, Any]]) -> float | None:
    """The price per image the latest run assumed, to value attempts with no answer."""
    for run in reversed(runs):
        if isinstance(run.get("price_per_image"), (int, float)):
            return float(run["price_per_image"])
    return None


class Journal:
    def __init__(self, path: Path):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        self._lock = threading.Lock()
        self._written = 0  # lines written; line k is durable once self._sync has covered k
        self._sync = GroupSync(self._fd, lambda: self._written)
        self._repair_tail()

    def _repair_tail(self) -> None:
        # A crash mid-line leaves the file without a final newline; start ours on a new line
        # so the torn fragment stays a separate (skipped) line instead of corrupting ours.
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(self._fd, b"\n")

    def write(self, event: dict[str, Any]) -> None:
        """Append one line; return once an fdatasync that began after the line was written is
        done. Group commit: writers append under the lock, and one fdatasync covers every line
        written before it started, so concurrent writers share it. Durability is unchanged:
        no call returns before its own bytes are on disk."""
        data = (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            self._written += 1
            mine = self._written
        self._sync.wait_for(mine)

    def run_started(self, **info: Any) -> None:
        self.write({"e": "run", "at": time.time(), **info})

    def submitted(self, item_id: str, attempt: int, request_id: str) -> None:
        """The v2 submit's answer: written (and fsynced) before anything else is done with it,
        so a crash after this line costs a poll, not a second billed job."""
        event: SubmittedEvent = {
            "e": JournalEventKind.SUBMITTED.value, "id": item_id, "n": attempt, "rid": request_id, "at": time.time()
        }  # fmt: skip
        self.write(dict(event))

    def expired(self, item_id: str, attempt: int, request_id: str) -> None:
        """The server no longer knows the request id: its job may have been billed, and the item
        will be submitted again."""
        event: ExpiredEvent = {
            "e": JournalEventKind.EXPIRED.value, "id": item_id, "n": attempt, "rid": request_id, "at": time.time()
        }  # fmt: skip
        self.write(dict(event))

    def sent(self, item_id: str, attempt: int, row: dict[str, Any] | None) -> None:
        event: dict[str, Any] = {"e": "sent", "id": item_id, "n": attempt, "at": time.time()}
        if row is not None:
            event["row"] = row
        self.write(event)

    def attempt(
        self,
        item_id: str,
        attempt: int,
        http_status: int | None,
        error: str | None,
        cost: float,
        answered: bool,
        latency_s: float,
        reached: bool = True,
    ) -> None:
        event = {
            "e": "attempt",
            "id": item_id,
            "n": attempt,
            "http": http_status,
            "error": error,
            "cost": cost,
            "answered": answered,
            "latency": round(latency_s, 4),
        }
        if not reached:
            event["reached"] = False  # provably never left: no connection was opened
        self.write(event)

    def done(self, item_id: str, status: str, **fields: Any) -> None:
        self.write({"e": "done", "id": item_id, "status": status, "at": time.time(), **fields})

    def close(self) -> None:
        os.close(self._fd)


def read_events(path: Path) -> Iterator[dict[str, Any] | None]:
    """Events in order; None for a line that is torn or unreadable."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                yield None
                continue
            try:
                event = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                yield None
                continue
            yield event if isinstance(event, dict) else None


def apply_event(event: dict[str, Any], state: ItemState) -> None:
    """One item event onto its item's state: the replay's rules, shared with the ledger."""
    kind = event.get("e")
    if kind == JournalEventKind.SENT:
        if state.open_attempt:
            state.unanswered += 1  # the previous attempt was cut off by a crash
        elif holds_job(state):
            state.unanswered += 1  # bought again while its v2 job was never collected: billed too
        state.open_attempt = True
        state.status = ItemStatus.SENT.value
        state.request_id = None  # a new request: an earlier v2 job id no longer stands for the item
        state.attempts = max(state.attempts, int(event.get("n", state.attempts + 1)))
        state.first_sent_at = state.first_sent_at or event.get("at")
        if event.get("row"):
            state.row = event["row"]
    elif kind == JournalEventKind.SUBMITTED:
        # The submit was answered: the job is queued on the server, billed once it completes.
        # The item stays pending with the id to poll; it is no unanswered attempt.
        state.open_attempt = False
        state.status = ItemStatus.PENDING.value
        state.request_id = event.get("rid")
        state.submitted_at = event.get("at")
        state.attempts = max(state.attempts, int(event.get("n") or 0))
    elif kind == JournalEventKind.EXPIRED:
        # The job was created, and may have completed and been billed before its result expired.
        state.open_attempt = False
        state.status = ItemStatus.PENDING.value
        state.request_id = None
        state.http_status = 404
        state.error = "the v2 request id expired or is unknown; submitted again"
        state.unanswered += 1
    elif kind == JournalEventKind.ATTEMPT:
        state.open_attempt = False
        state.status = ItemStatus.PENDING.value
        state.request_id = None  # a FAILED v2 job's id is spent
        state.http_status = event.get("http")
        state.error = event.get("error")
        state.cost_usd += float(event.get("cost") or 0.0)
        state.latency_s = event.get("latency")
        state.rate_limited += event.get("http") == 429
        state.unanswered += not event.get("answered", True) and event.get("reached", True)
    elif kind == JournalEventKind.DONE:
        state.open_attempt = False
        state.status = event.get("status", state.status)
        state.finished_at = event.get("at")
        # A success carries its attempt's outcome itself: one fsync fewer per image.
        state.cost_usd += float(event.get("cost") or 0.0)
        state.attempts = max(state.attempts, int(event.get("n") or 0))
        if "latency" in event:
            state.latency_s = event["latency"]
        for name in ("image_path", "seed_value", "request_id", "remaining_credits", "error", "http_status"):
            if name in event:
                setattr(state, name, event[name])


def replay(path: Path) -> Replay:
    items: dict[str, ItemState] = {}
    runs: list[dict[str, Any]] = []
    torn = bad = 0
    max_cost = 0.0
    for raw in read_events(path):
        if raw is None:
            torn += 1
            continue
        event = clean_event(raw)
        if event is None:
            bad += 1
            continue
        kind = event.get("e")
        if kind == "run":
            runs.append(event)
            continue
        item_id = event.get("id")
        if not isinstance(item_id, str):
            continue
        max_cost = max(max_cost, event.get("cost") or 0.0)
        apply_event(event, items.setdefault(item_id, ItemState()))
    # A request on record as sent with no answer on record was cut off by a crash.
    for state in items.values():
        if state.open_attempt:
            state.unanswered += 1
    return Replay(items, runs, torn, bad, max_cost)


# ---------------------------------------------------------------------- what a line may hold

MAX_BOOKED_COST = 100.0  # dollars for one attempt: the settings' own ceiling on a price
SEED_MAX = 2**63 - 1  # the seed column is a signed 64-bit integer
_KINDS = {kind.value for kind in JournalEventKind}
_STATUSES = {status.value for status in ItemStatus}
# Fields that only describe an item: one of the wrong type is dropped, never fatal.
_NUMBERS = ("latency", "remaining_credits", "at")
_INTEGERS = ("http", "http_status")
_TEXTS = ("request_id", "error")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any, high: int = SEED_MAX) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high


def clean_event(event: dict[str, Any]) -> dict[str, Any] | None:
    """The event as replay may apply it, or None when it cannot be trusted (skipped, counted).

    A line is skipped when a field that decides the books or the item's fate has the wrong type:
    the kind, the id, the attempt number, a cost (finite, 0 to MAX_BOOKED_COST), a done line's
    status, a success's image path, a v2 request id. Skipping is safe: the attempt's `sent`
    line then has no outcome, so it counts as possibly billed, and an image saved on disk is
    adopted again. A descriptive field of the wrong type (a seed past 2^63, a latency that is
    text) is dropped and the rest of the line kept."""
    kind = event.get("e")
    if kind == JournalEventKind.RUN:
        odd = [name for name in ("price_per_image", "at") if name in event and not _number(event[name])]
        return {k: v for k, v in event.items() if k not in odd} if odd else event
    if kind not in _KINDS:
        return {"e": kind}  # a kind from a later version: replay ignores it
    if not isinstance(event.get("id"), str):
        return None
    if "n" in event and event["n"] is not None and not _whole(event["n"]):
        return None
    cost = event.get("cost")
    if cost is not None and not (_number(cost) and 0 <= cost <= MAX_BOOKED_COST):
        return None
    if kind in (JournalEventKind.SUBMITTED, JournalEventKind.EXPIRED) and not isinstance(event.get("rid"), str):
        return None
    if kind == JournalEventKind.DONE:
        status = event.get("status")
        if status not in _STATUSES:
            return None
        if status == ItemStatus.SUCCEEDED.value and not isinstance(event.get("image_path"), str):
            return None
    if kind in (JournalEventKind.SENT, JournalEventKind.ATTEMPT):
        for flag in ("answered", "reached"):
            if flag in event and not isinstance(event[flag], bool):
                return None
    given = {name: value for name, value in event.items() if value is not None}
    dropped = [name for name in _NUMBERS if name in given and not _number(given[name])]
    dropped += [name for name in _INTEGERS if name in given and not _whole(given[name], 999)]
    dropped += [name for name in _TEXTS if name in given and not isinstance(given[name], str)]
    if "seed_value" in given and not _whole(given["seed_value"]):
        dropped.append("seed_value")
    if "row" in event and not isinstance(event["row"], dict):
        dropped.append("row")
    if not dropped:
        return event
    return {k: v for k, v in event.items() if k not in dropped}
