"""Segmind's v2 API, one HTTP call at a time: submit a job, poll its status, fetch its result.

v2 answers a POST with a request id within milliseconds, and keeps the result for an hour;
polling is always safe to repeat, and only a submit can start a billable job. So the engine
journals the id the moment it arrives and, after a crash, polls instead of paying again.

The v1 client's rules hold here too, by reuse: the same session and proxy handling, the same
bounded body reads, the same classification of error statuses (406 stops, 401/403/404 are
fatal, 429 names a wait), the same image check, and the key is redacted from every message.
The key goes to the API's own origin only: poll URLs are built from the endpoint, never taken
from an answer, and the image URL in `output` is fetched without it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

import requests
import urllib3

from batch_runner.api.client import (
    MAX_ERROR_BODY_BYTES,
    ApiError,
    Client,
    Generated,
    ItemRejected,
    TransientError,
    Unreachable,
    UnusableImage,
    _float,
    _unreached_reason,
    check_image,
)
from batch_runner.api.deadline import current as current_deadline
from batch_runner.api.deadline import cut_short, overall_deadline

# The provider keeps a result an hour after submission, then answers 404.
RESULT_TTL_S = 3600.0
# Ids go into URLs and the journal: anything else is not an id this client will poll.
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def _metrics(payload: dict[str, Any]) -> dict[str, Any]:
    metrics = payload.get("metrics")
    return metrics if isinstance(metrics, dict) else {}


class JobStatus(str, Enum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class JobFailed(ItemRejected):
    """The server says FAILED (HTTP 422 with status FAILED): not billed; the item fails, and is
    submitted again only if --max-attempts allows."""

    def __init__(self, message: str):
        super().__init__(message, 422)


class JobExpired(ApiError):
    """404 on a poll: the server no longer knows the id (results are kept an hour). The job
    may have completed and been billed; the item must be submitted again."""

    def __init__(self, message: str):
        super().__init__(message, 404)


@dataclass(frozen=True)
class Submitted:
    request_id: str
    latency_s: float


@dataclass(frozen=True)
class Completed:
    """A COMPLETED job's answer, before its image is fetched."""

    output: str
    cost: float
    remaining_credits: float | None
    duration_s: float | None  # the server's own queue + inference time, when it says


class V2Client(Client):
    """One submit, poll or fetch per call; raises the ApiError family like Client.generate."""

    def __init__(self, endpoint: str, api_key: str, pool_size: int, **kwargs: Any):
        super().__init__(endpoint, api_key, pool_size, **kwargs)
        parsed = urllib3.util.parse_url(endpoint)
        self.origin = f"{parsed.scheme}://{parsed.netloc}"
        # The submit URL's path before /v2/: a proxy may mount the API under a prefix.
        prefix = (parsed.path or "").split("/v2/", 1)[0]
        self._requests_base = f"{self.origin}{prefix}/v2/requests/"

    def __repr__(self) -> str:
        return f"V2Client(endpoint={self.endpoint!r})"  # never the key

    @property
    def credits_url(self) -> str:
        return f"{self._requests_base.removesuffix('/v2/requests/')}/v1/get-user-credits"

    def status_url(self, request_id: str) -> str:
        return f"{self._requests_base}{request_id}/status"

    def response_url(self, request_id: str) -> str:
        return f"{self._requests_base}{request_id}"

    # ------------------------------------------------------------------ calls

    def submit(self, params: dict[str, Any]) -> Submitted:
        """POST the job. A 2xx without a usable request id is an error that may have been billed."""
        return self._redacting(self._submit, params)

    def status(self, request_id: str) -> JobStatus:
        """The job's status; JobFailed, JobExpired, RateLimited... as the answer says."""
        return self._redacting(self._status, request_id)

    def result(self, request_id: str) -> Completed | None:
        """The COMPLETED job's output and metrics; None while it is still running."""
        return self._redacting(self._result, request_id)

    def fetch(self, completed: Completed, request_id: str, size: tuple[int, int]) -> Generated:
        """The image at `output`, checked like a v1 image. No key is sent to the media host."""
        return self._redacting(self._fetch, completed, request_id, size)

    def _redacting(self, call: Any, *args: Any) -> Any:
        """One call under one overall deadline (headers included), its errors without the key."""
        try:
            with overall_deadline(time.monotonic() + self.timeout_s):
                return call(*args)
        except ApiError as exc:
            exc.message = self.redact(exc.message)
            exc.args = (exc.message,)
            raise

    # ------------------------------------------------------------------ the work

    def _send(self, method: str, url: str, body: bytes | None = None) -> requests.Response:
        headers = {"x-api-key": self._key}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self.session.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=(self.connect_timeout_s, self.timeout_s),
                stream=True,
                allow_redirects=False,  # a redirect would hand the key to whoever Location names
                **self._settings(url),
            )
        except requests.RequestException as exc:
            unreached = _unreached_reason(exc)
            if unreached:
                raise Unreachable(f"cannot reach {self._host}: {unreached}")
            # The request may have arrived: for a submit the job may exist, and be billed.
            scope = current_deadline()
            if isinstance(exc, requests.Timeout) or (scope is not None and scope.expired):
                raise TransientError(f"no answer within {self.timeout_s:g} s", answered=False)
            raise TransientError(f"connection failed ({type(exc).__name__})", answered=False)
        if cut_short():  # cut mid-headers: what parsed is no answer
            response.close()
            raise TransientError(f"no answer within {self.timeout_s:g} s", answered=False)
        return response

    def _json(self, response: requests.Response, deadline: float) -> tuple[int, Any, bytes]:
        status = response.status_code
        if status in (301, 302, 303, 307, 308):
            raise self._redirected(response)
        body = self._read(response, deadline, 0.0, MAX_ERROR_BODY_BYTES, truncate=True)
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            payload = None
        return status, payload, body

    def _submit(self, params: dict[str, Any]) -> Submitted:
        started = time.monotonic()
        deadline = started + self.timeout_s
        data = json.dumps(params, ensure_ascii=False).encode("utf-8")
        with self._send("POST", self.endpoint, data) as response:
            try:
                status, payload, body = self._json(response, deadline)
            except TransientError as exc:
                # A status line came, but the answer (and its id) broke off: the job may exist.
                exc.answered = False
                raise
        if 200 <= status < 300:
            request_id = payload.get("request_id") if isinstance(payload, dict) else None
            has_urls = isinstance(payload, dict) and payload.get("status_url") and payload.get("response_url")
            if isinstance(request_id, str) and self.redact(request_id) != request_id:
                # An id that holds the key cannot be journaled, so it cannot be polled after a
                # crash either: like an answer without an id, the job may exist and be billed.
                raise TransientError(
                    f"HTTP {status}: the submit's answer holds the API key in its request_id", status, answered=False
                )
            if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id) or not has_urls:
                # Not something to poll; the server may have queued (and will bill) a job all the same.
                raise TransientError(
                    f"HTTP {status}: the submit's answer has no usable request_id, status_url and response_url",
                    status,
                    answered=False,
                )
            return Submitted(request_id, time.monotonic() - started)
        raise self._classify(response, body)

    def _status(self, request_id: str) -> JobStatus:
        deadline = time.monotonic() + self.timeout_s
        with self._send("GET", self.status_url(request_id)) as response:
            status, payload, body = self._json(response, deadline)
        return self._read_status(request_id, status, payload, body, response)

    def _read_status(self, request_id: str, status: int, payload: Any, body: bytes, response: Any) -> JobStatus:
        said = payload.get("status") if isinstance(payload, dict) else None
        if said == JobStatus.FAILED or (status == 422 and isinstance(payload, dict)):
            error = payload.get("error") if isinstance(payload, dict) else None
            raise JobFailed(self.redact(str(error or "the job failed (the server gave no reason)"))[:1000])
        if status == 404:
            raise JobExpired(f"request {request_id} is unknown or expired (404)")
        if 200 <= status < 300:
            try:
                return JobStatus(said)
            except ValueError:
                raise TransientError(f"HTTP {status}: unknown job status {self.redact(str(said))[:40]!r}", status)
        raise self._classify(response, body)

    def _result(self, request_id: str) -> Completed | None:
        deadline = time.monotonic() + self.timeout_s
        with self._send("GET", self.response_url(request_id)) as response:
            status, payload, body = self._json(response, deadline)
        state = self._read_status(request_id, status, payload, body, response)
        if state != JobStatus.COMPLETED or not isinstance(payload, dict):
            return None
        output = payload.get("output")
        if isinstance(output, list) and output:
            output = output[0]
        if not isinstance(output, str) or not output.startswith(("http://", "https://")):
            raise UnusableImage("the COMPLETED job names no image URL in output", status, self._price(payload))
        metrics = _metrics(payload)
        queue, inference = _float(metrics.get("queue_time")), _float(metrics.get("inference_time"))
        duration = (queue or 0.0) + inference if inference is not None else None
        return Completed(output, self._price(payload), _float(metrics.get("remaining_credits")), duration)

    def _price(self, payload: dict[str, Any]) -> float:
        return self.booked_cost(_metrics(payload).get("cost"), "v2 metrics.cost")

    def _fetch(self, completed: Completed, request_id: str, size: tuple[int, int]) -> Generated:
        deadline = time.monotonic() + self.timeout_s
        # _download sends no key; a failed download is worth retrying (the result is kept).
        image = self._download(completed.output, deadline, completed.cost)
        try:
            extension = check_image(image, size)
        except UnusableImage as exc:
            exc.cost, exc.http_status = completed.cost, 200
            raise
        return Generated(
            image=image,
            extension=extension,
            cost=completed.cost,
            remaining_credits=completed.remaining_credits,
            seed_value=None,
            request_id=request_id,
            generation_time_s=completed.duration_s,
        )
