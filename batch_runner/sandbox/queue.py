"""The sandbox's v2 queue: submit answers a request id at once; polls say how the job is doing.

What the real v2 API does (docs/segmind-ideogram-turbo-api.md, "Asynchronous mode"), plus the
faults a client must survive, forced per item by a directive in its prompt (see api.py):

    [sandbox:fault=drop]        the job is created (and billed) but the submit's answer is lost:
                                the connection closes before a byte of it is sent
    [sandbox:fault=failed]      the job FAILS: HTTP 422 on both URLs, not billed ("broken" too)
    [sandbox:fault=slow]        a slow queue: the job takes slow_s longer than usual
    [sandbox:fault=stuck]       the job stays PROCESSING for ever
    [sandbox:media=slow-headers] the image's host sends its headers a byte a second
    [sandbox:poll-once=CODE]    the first poll of this job answers CODE (429 names a 1 s wait)
    [sandbox:poll=CODE]         every poll of this job answers CODE

Jobs are forgotten result_ttl_s after submission (404 "Unknown or expired request_id"), as
the real service forgets them after an hour.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batch_runner.api import spec as api_spec
from batch_runner.sandbox import images

if TYPE_CHECKING:
    from batch_runner.sandbox.api import Reply, SandboxApi, _Record

V2_REQUESTS_PREFIX = "/v2/requests/"
QUEUED_SHARE = 0.2  # the first fifth of a job's time is QUEUED, the rest PROCESSING


@dataclass
class QueuedJob:
    request_id: str
    record: _Record
    params: dict[str, Any]
    submitted: float
    ready_at: float
    fails_with: str | None
    seed: int
    cost: float
    remaining: float | None
    poll_fault: str | None  # "429" (every poll) or "429-once"
    media_fault: str | None = None
    polls: int = 0
    fetched: bool = False  # its result was served once: no longer outstanding


class JobQueue:
    """The v2 jobs of one sandbox, under the sandbox's lock."""

    def __init__(self, api: SandboxApi):
        self.api = api
        self.jobs: dict[str, QueuedJob] = {}
        self.created = 0
        self.status_polls = 0
        self.result_polls = 0

    def forget_all(self) -> int:
        """Forget every job, as the real service does an hour after submission; how many."""
        with self.api._lock:
            count = len(self.jobs)
            self.jobs.clear()
            return count

    def stats(self) -> dict[str, Any]:
        """Called under the sandbox's lock."""
        outstanding = sum(1 for j in self.jobs.values() if not j.fetched and not j.fails_with)
        return {
            "jobs": self.created,
            "outstanding": outstanding,
            "status_polls": self.status_polls,
            "result_polls": self.result_polls,
        }

    def submit(
        self, record: _Record, params: dict[str, Any], seed: int, fault: str | None, remaining: float | None, seen: int
    ) -> Reply:
        from batch_runner.sandbox.api import _json_reply

        now = time.monotonic()
        request_id = uuid.uuid4().hex
        duration = self.api._latency(record.item_id or "", seen) + (self.api.config.slow_s if fault == "slow" else 0.0)
        if fault == "stuck":
            duration = float("inf")
        poll_fault = None
        media_fault = None
        for name, value in self.api.directives(params):
            if name in ("poll", "poll-once"):
                poll_fault = value + ("-once" if name == "poll-once" else "")
            if name == "media":
                media_fault = value
        job = QueuedJob(
            request_id=request_id,
            record=record,
            params=params,
            submitted=now,
            ready_at=now + duration,
            fails_with="Generation failed: the model could not render this prompt"
            if fault in ("broken", "failed")
            else None,
            seed=seed,
            cost=self.api.config.price,
            remaining=remaining,
            poll_fault=poll_fault,
            media_fault=media_fault,
        )
        with self.api._lock:
            self.jobs[request_id] = job
            self.created += 1
            record.request_id = request_id
        base = f"{self.api.base_url}{V2_REQUESTS_PREFIX}{request_id}"
        reply = _json_reply(
            200,
            {
                "request_id": request_id,
                "status": "QUEUED",
                "poll_url": f"{base}/status",
                "status_url": f"{base}/status",
                "response_url": base,
            },
        )
        reply.delay_s = self.api.config.submit_latency_s
        if fault == "drop":
            reply.mode = "hangup"  # created and billed, but the client never hears of it
        return reply

    def _status(self, job: QueuedJob, now: float) -> str:
        if now >= job.ready_at:
            return "FAILED" if job.fails_with else "COMPLETED"
        queued_until = job.submitted + (job.ready_at - job.submitted) * QUEUED_SHARE
        return "QUEUED" if now < queued_until else "PROCESSING"

    def poll(self, record: _Record, rest: str, key: str) -> Reply:
        from batch_runner.sandbox.api import _error, _json_reply

        request_id, _, tail = rest.partition("/")
        now = time.monotonic()
        with self.api._lock:
            job = self.jobs.get(request_id)
            if job and now - job.submitted > self.api.config.result_ttl_s:
                del self.jobs[request_id]
                job = None
            record.request_id = request_id
            if tail == "status":
                self.status_polls += 1
            else:
                self.result_polls += 1
            if job is not None:
                record.item_id = job.record.item_id
                job.polls += 1
                forced = job.poll_fault
                if forced and forced.endswith("-once"):
                    job.poll_fault = None
            reset_at = self.api._admit(key, now) if self.api.config.polls_rate_limited else None
        if reset_at is not None:
            return self.api._rate_limited(reset_at)
        if job is None:
            return _error(404, "Unknown or expired request_id")
        if forced:
            return self.api._forced_status(forced.removesuffix("-once"))
        status = self._status(job, now)
        if status == "FAILED":
            with self.api._lock:
                self.api._refund(job.record)  # a failed queued job is not billed
            # The real service answers a FAILED job with 422 on both URLs, its body still JSON.
            return _json_reply(422, {"request_id": request_id, "status": "FAILED", "error": job.fails_with})
        if tail == "status":
            return _json_reply(200, {"request_id": request_id, "status": status})
        if tail:
            return _error(404, f"Not found: {rest}")
        if status in ("QUEUED", "PROCESSING"):
            return _json_reply(202, {"request_id": request_id, "status": status})
        width, height = api_spec.resolution_size(job.params.get("resolution"))
        url = self.api._store_media(
            images.jpeg(job.params, job.seed, width, height, self.api.config.misspell), job.media_fault
        )
        total = job.ready_at - job.submitted
        metrics = {
            "cost": job.cost,
            "remaining_credits": job.remaining,
            "inference_time": round(total * (1 - QUEUED_SHARE), 3),
            "queue_time": round(total * QUEUED_SHARE, 3),
            **dict(self.api.config.v2_metrics),
        }
        with self.api._lock:
            job.fetched = True
        return _json_reply(200, {"request_id": request_id, "status": "COMPLETED", "output": url, "metrics": metrics})
