"""One request to the generation endpoint, and what its answer means for the run.

`Client.generate` makes exactly one attempt and returns a verified image or raises one of the
ApiError subclasses below; retrying and pacing are the policies' job (policies.py). The API
key goes only to the endpoint: never into a message, a log line, or a request to an image URL.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import requests
import urllib3
from PIL import Image

from batch_runner.api import spec as api_spec
from batch_runner.api.deadline import _WATCHDOG, DeadlineAdapter, cut_short, overall_deadline
from batch_runner.api.deadline import Watchdog as Watchdog  # where tests and benchmarks find it
from batch_runner.api.redaction import redact

_CHUNK = 64 * 1024
# The largest answer read in full. The biggest image the API makes is 1536x640; even as a
# lossless PNG in base64 JSON that is under 10 MB. Past this the body is not an image, and
# reading on (a gzip bomb inflated 2.2 GB for one request) only costs memory.
MAX_BODY_BYTES = 64 * 1024 * 1024
# An error body is read only for its message.
MAX_ERROR_BODY_BYTES = 64 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)
# A stated price this many times the configured one is no price rise but a broken header (or
# a unit slip): it is booked at the configured price, like a missing one.
MAX_PRICE_FACTOR = 20
SEED_COLUMN_MAX = 2**63 - 1  # the journal's and manifest's seed column is a signed 64-bit integer
MAX_RETRY_WAIT_S = 86_400.0  # a 429 naming a later time than this is read as naming none
_MESSAGE_CHARS = 200


class ApiError(Exception):
    """An attempt that produced no usable image. `cost` is what the attempt was billed.

    Billing is known only when a status line came back (`answered`). Without one, the request
    may or may not have reached the server and been billed (`reached`), except when it
    provably never left: a refused connection, a name that does not resolve, a connect
    timeout (`reached=False`)."""

    def __init__(
        self,
        message: str,
        http_status: int | None = None,
        cost: float = 0.0,
        answered: bool = True,
        reached: bool = True,
    ):
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.cost = cost
        self.answered = answered
        self.reached = reached

    @property
    def possibly_billed(self) -> bool:
        """No answer, but the request may have reached the server: the ledger must assume it."""
        return not self.answered and self.reached


class RateLimited(ApiError):
    """429: every worker should pause until retry_at (a time.monotonic() value) if known."""

    def __init__(self, message: str, retry_at: float | None):
        super().__init__(message, 429)
        self.retry_at = retry_at


class TransientError(ApiError):
    """Worth retrying: 5xx, timeouts, dropped connections, truncated or broken images."""


class UnusableImage(TransientError):
    """A billed 200 whose body is not the image asked for (a proxy's HTML page, a JSON error,
    a corrupt or wrongly sized image). Retried once, since each try is paid for."""


class Unreachable(ApiError):
    """The request never reached a server: nothing was billed, and the item is not at fault.
    The whole pool waits for the endpoint to come back."""

    def __init__(self, message: str):
        super().__init__(message, None, 0.0, answered=False, reached=False)


class ItemRejected(ApiError):
    """400/422 and unsafe images: this item fails for good; the run goes on."""


class OutOfCredits(ApiError):
    """406: stop the run cleanly. `reason` is credits, content-type or spend-limit."""

    def __init__(self, message: str, reason: str):
        super().__init__(message, 406)
        self.reason = reason


class FatalApiError(ApiError):
    """401/403/404/405/410: configuration is wrong; nothing else can succeed."""


@dataclass(frozen=True)
class Generated:
    image: bytes
    extension: str
    cost: float
    remaining_credits: float | None
    seed_value: int | None
    request_id: str | None
    generation_time_s: float | None


def _float(value: Any) -> float | None:
    """A finite number, or None: NaN and infinity are no answer, and must never reach a sum
    (or the journal, whose JSON cannot hold them)."""
    if isinstance(value, bool) or value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None


def plausible_cost(value: Any, price: float) -> tuple[float, str | None]:
    """What an answer's stated cost books: the stated cost, or `price` with the reason when the
    statement is missing (None) or not a believable price (not a number, NaN, infinite,
    negative, or more than MAX_PRICE_FACTOR times the configured price)."""
    if value is None or value == "":
        return price, None
    cost = _float(value)
    if cost is None:
        return price, f"a cost of {str(value)[:40]!r} is not a number"
    if cost < 0:
        return price, f"a cost of {cost:g} is negative"
    if cost > MAX_PRICE_FACTOR * price:
        return price, f"a cost of {cost:g} is more than {MAX_PRICE_FACTOR} times the price of ${price:g}"
    return cost, None


def seed_from(value: Any) -> int | None:
    """x-seed-value as the seed column can hold it; None for anything else."""
    seed = _int(value)
    return seed if seed is not None and 0 <= seed <= SEED_COLUMN_MAX else None


def retry_at_from(headers: Any, now: float | None = None) -> float | None:
    """When a 429 says to come back, as a monotonic time: Retry-After (seconds or an HTTP
    date) or x-rate-limit-reset-at-utc (ISO 8601 or epoch seconds); None if neither parses."""
    now = time.monotonic() if now is None else now
    wall = datetime.now(timezone.utc)
    reset = headers.get("x-rate-limit-reset-at-utc")
    if reset:
        wait = _wait_until(reset.strip(), wall)
        if wait is not None:
            return now + wait
    after = headers.get("Retry-After")
    if after:
        text = after.strip()
        seconds = _float(text)
        if seconds is None:
            try:
                seconds = (parsedate_to_datetime(text) - wall).total_seconds()
            except (TypeError, ValueError, OverflowError):
                return None
        if seconds > MAX_RETRY_WAIT_S:
            return None
        return now + max(0.0, seconds)
    return None


def _wait_until(text: str, wall: datetime) -> float | None:
    """Seconds from `wall` until the reset time `text` (epoch seconds or ISO 8601); None when
    it does not parse or lies beyond MAX_RETRY_WAIT_S (inf, 1e20: no real limit resets then)."""
    epoch = _float(text)
    try:
        if epoch is not None:
            when = datetime.fromtimestamp(epoch, timezone.utc)
        else:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    wait = (when - wall).total_seconds()
    return max(0.0, wait) if wait <= MAX_RETRY_WAIT_S else None


def _error_message(response: Response, body: bytes, key: str | None) -> str:
    """The server's own words, the key redacted from them before they are cut."""
    try:
        payload = json.loads(body)
        if isinstance(payload, dict) and payload.get("error"):
            return redact(str(payload["error"]), key)[: _MESSAGE_CHARS * 5]
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass
    text = redact(body.decode("utf-8", "replace"), key)[:_MESSAGE_CHARS].strip()
    return f"HTTP {response.status_code}" + (f": {text}" if text and "<html" not in text.lower() else "")


def _reason_406(message: str) -> str:
    lowered = message.lower()
    if "content" in lowered and "type" in lowered:
        return "content-type"
    if "spend" in lowered or "limit" in lowered:
        return "spend-limit"
    return "credits"


def _cut(response: Response) -> None:
    # urllib3 keeps the socket on its connection object; shutdown (unlike close) wakes a
    # thread blocked in recv on it.
    sock = getattr(getattr(response.raw, "_connection", None), "sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        else:
            response.close()
    except OSError:
        pass


def check_image(data: bytes, size: tuple[int, int]) -> str:
    """The file extension for a decodable image of exactly `size`; UnusableImage otherwise.

    Messages are stable (no reprs, no addresses): they are grouped and counted in reports."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - Pillow raises many types for bad data
        raise UnusableImage(f"the body is not an image ({_sniff(data)})")
    try:
        fmt = (image.format or "").lower()
        actual = image.size
        _check_whole(image, fmt, data)
    except Exception:  # noqa: BLE001
        raise UnusableImage(f"the {fmt.upper() or 'image'} is truncated or corrupt")
    if actual != size:
        raise UnusableImage(f"the image is {actual[0]}x{actual[1]}, not the requested {size[0]}x{size[1]}")
    return {"jpeg": "jpg", "png": "png", "webp": "webp"}.get(fmt, fmt or "img")


def _check_whole(image: Image.Image, fmt: str, data: bytes) -> None:
    """Raise if the stream is cut short or its structure is broken, without decoding pixels.

    Pillow has parsed the header already. A JPEG must end with its EOI marker (entropy-coded
    data cannot contain one: 0xFF is stuffed there); a PNG's every chunk, IEND included, must be
    whole with a correct CRC (Pillow's verify); a WebP's RIFF size must match. Other formats are
    decoded at 1/8 scale. Where a full decode cost 2.1 ms (PNG) or 0.6 ms (JPEG), these take
    tens of microseconds; a PNG is decoded in full all the same (see below)."""
    if fmt == "jpeg":
        if data.rstrip(b"\r\n")[-2:] != b"\xff\xd9":
            raise ValueError("no end-of-image marker")
    elif fmt == "png":
        image.verify()  # every chunk whole, with its CRC
        # CRCs say nothing of the zlib stream inside IDAT: a stream cut short and re-chunked
        # passes verify(), and only decoding the pixels finds it (~2 ms for the largest image).
        Image.open(io.BytesIO(data)).load()
    elif fmt == "webp":
        declared = struct.unpack("<I", data[4:8])[0] + 8
        if len(data) < declared:
            raise ValueError("short RIFF")
    else:
        image.draft("RGB", (max(1, image.size[0] // 8), max(1, image.size[1] // 8)))
        image.load()


def _sniff(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if not head:
        return "empty"
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "an HTML page"
    if head[:1] in (b"{", b"["):
        return "JSON"
    return f"{len(data):,} bytes of unknown data"


def _cause(exc: BaseException) -> BaseException | None:
    """The urllib3 error under a requests exception, or under urllib3's own MaxRetryError."""
    if isinstance(exc, requests.RequestException):
        exc = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None  # type: ignore[assignment]
    return getattr(exc, "reason", None) or exc  # MaxRetryError wraps the real cause


def _unreached_reason(exc: requests.RequestException | urllib3.exceptions.HTTPError) -> str | None:
    """Why a request provably never reached a server, or None if it may have.

    urllib3 raises NewConnectionError (and its NameResolutionError) and ConnectTimeoutError
    only while opening a connection, before a byte of the request is written. Anything later
    (a reset, a read timeout, a dropped keep-alive connection) may have reached the server."""
    cause = _cause(exc)
    if isinstance(cause, urllib3.exceptions.NameResolutionError):
        return "the host name does not resolve"
    if isinstance(cause, urllib3.exceptions.NewConnectionError):
        text = str(cause).lower()
        return "the connection was refused" if "refused" in text else "no connection could be opened"
    if isinstance(exc, requests.ConnectTimeout) or isinstance(cause, urllib3.exceptions.ConnectTimeoutError):
        return "connecting timed out"
    return None


def _kind(exc: urllib3.exceptions.HTTPError | requests.RequestException) -> str:
    """The failure's name as requests would give it, so messages (grouped in reports) stay put."""
    cause = _cause(exc)
    if isinstance(cause, urllib3.exceptions.ProxyError):
        return "ProxyError"
    if isinstance(cause, urllib3.exceptions.SSLError):
        return "SSLError"
    return "ConnectionError"


class _Answer:
    """A urllib3 response as the rest of this module reads a requests.Response: status_code,
    headers (case-insensitive), raw, and a context that gives the connection back to the pool
    when the body was read to the end, and closes it otherwise."""

    def __init__(self, raw: urllib3.BaseHTTPResponse):
        self.raw = raw
        self.status_code = raw.status
        self.headers = raw.headers

    def __enter__(self) -> _Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self.raw.closed:
            self.raw.close()  # unread bytes: the connection cannot be reused
        self.raw.release_conn()


# What the reading and classifying methods take: requests' answer (v2, credits, downloads) or
# the generation POST's own.
Response = requests.Response | _Answer


class Client:
    """Sends generation requests over one shared, pooled requests.Session."""

    def __init__(
        self,
        endpoint: str,
        api_key: str,
        pool_size: int,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        price_per_image: float = api_spec.PRICE_PER_IMAGE,
    ):
        self.endpoint = endpoint
        self._key = api_key
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.price_per_image = price_per_image
        # Where notes about odd answers go (the runner sets its log); each kind is noted once.
        self.warn: Callable[[str], None] = lambda message: None
        self._noted: set[str] = set()
        self._notes_lock = threading.Lock()
        self.session = requests.Session()
        # requests reads the environment (proxies, CA bundle, .netrc) on every call: two scans
        # of os.environ per request. Read it once here, for the endpoint, and pass it
        # explicitly; HTTPS_PROXY, NO_PROXY and REQUESTS_CA_BUNDLE keep working.
        self._env: dict[str, dict[str, Any]] = {}
        self._settings(endpoint)
        self.session.trust_env = False
        adapter = DeadlineAdapter(pool_connections=2, pool_maxsize=max(pool_size, 1), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # The generation POST skips requests' per-call machinery (merging settings, preparing
        # the URL, cookies, hooks: 0.4 ms of CPU a request) and goes to the adapter's urllib3
        # pool, chosen as requests would choose it: same proxies, CA bundle and TLS settings.
        self._adapter = adapter
        self._post_template = requests.Request("POST", endpoint).prepare()
        settings = self._settings(endpoint)
        self._post_url = adapter.request_url(self._post_template, settings["proxies"])
        # requests' own defaults too (User-Agent, Accept-Encoding...): the same request on the wire.
        self._post_headers: dict[str, str] = {
            **{name: str(value) for name, value in self.session.headers.items()},
            "x-api-key": api_key,
            "Content-Type": "application/json",
        }
        self._post_timeout = urllib3.Timeout(connect=connect_timeout_s, read=timeout_s)
        self._no_retries = urllib3.Retry(0, read=False, redirect=False)

    def __repr__(self) -> str:
        return f"Client(endpoint={self.endpoint!r})"  # never the key

    def _settings(self, url: str) -> dict[str, Any]:
        """proxies and verify for url's host as the environment says, read once per host (the
        same rules as requests' own merge_environment_settings)."""
        parsed = urllib3.util.parse_url(url)
        host = f"{parsed.scheme}://{parsed.netloc}"
        settings = self._env.get(host)
        if settings is None:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            settings = {"proxies": requests.utils.get_environ_proxies(url), "verify": verify}
            self._env[host] = settings
        return settings

    def close(self) -> None:
        self.session.close()

    @property
    def credits_url(self) -> str:
        base, _, _ = self.endpoint.rstrip("/").rpartition("/")
        return f"{base}/get-user-credits"

    def credits(self) -> float | None:
        """The account balance, or None when the endpoint does not say."""
        deadline = time.monotonic() + 5
        try:
            with (
                overall_deadline(deadline),
                self.session.get(
                    self.credits_url,
                    headers={"x-api-key": self._key},
                    timeout=5,
                    allow_redirects=False,
                    stream=True,
                    **self._settings(self.credits_url),
                ) as r,
            ):
                if r.status_code != 200:
                    return None
                body = self._read(r, deadline, 0.0, MAX_ERROR_BODY_BYTES, truncate=True)
            return float(json.loads(body)["credits"])
        except (ApiError, requests.RequestException, ValueError, KeyError, TypeError):
            return None

    def generate(self, params: dict[str, Any]) -> Generated:
        try:
            with overall_deadline(time.monotonic() + self.timeout_s):
                return self._generate(params)
        except ApiError as exc:
            # Servers echo what they were sent; the key must never reach a journal or a screen.
            exc.message = self.redact(exc.message)
            exc.args = (exc.message,)
            raise

    def redact(self, text: str) -> str:
        """text without the key or any 8 of its characters in a row (api/redaction.py)."""
        return redact(text, self._key)

    def note_once(self, kind: str, message: str) -> None:
        """Tell the run's log about an odd answer, once per kind per run."""
        with self._notes_lock:
            if kind in self._noted:
                return
            self._noted.add(kind)
        self.warn(f"warning: {self.redact(message)}")

    def booked_cost(self, stated: Any, where: str) -> float:
        """The cost an answer books: its own statement when believable, else the configured
        price (noted once), so that no NaN, infinity or absurd figure enters a budget sum."""
        cost, problem = plausible_cost(stated, self.price_per_image)
        if problem:
            self.note_once(
                f"cost:{where}",
                f"the server stated {problem} ({where}); such answers are booked at the configured "
                f"${self.price_per_image:g} per image",
            )
        return cost

    def seed_of(self, stated: Any) -> int | None:
        seed = seed_from(stated)
        if seed is None and stated not in (None, ""):
            self.note_once("seed", f"an x-seed-value of {str(stated)[:40]!r} is not a seed; it is not recorded")
        return seed

    def stored_id(self, stated: Any) -> str | None:
        """A server-supplied id as it may be stored: text, at most 200 characters, no key."""
        if stated in (None, ""):
            return None
        return self.redact(str(stated))[:_MESSAGE_CHARS]

    def _generate(self, params: dict[str, Any]) -> Generated:
        size = api_spec.resolution_size(params.get("resolution"))
        deadline = time.monotonic() + self.timeout_s
        try:
            response = self._post(json.dumps(params, ensure_ascii=False).encode("utf-8"))
        except (urllib3.exceptions.HTTPError, requests.RequestException) as exc:
            unreached = _unreached_reason(exc)
            if unreached:
                raise Unreachable(f"cannot reach {self._host}: {unreached}")
            if isinstance(_cause(exc), urllib3.exceptions.TimeoutError) or time.monotonic() >= deadline:
                raise TransientError(f"no answer within {self.timeout_s:g} s", answered=False)
            raise TransientError(f"connection failed ({_kind(exc)})", answered=False)
        if cut_short():
            response.close()
            raise TransientError(f"no answer within {self.timeout_s:g} s", answered=False)

        with response:
            status = response.status_code
            if status in _REDIRECTS:
                raise self._redirected(response)
            billed = self._cost(response) if status == 200 else 0.0
            limit = MAX_BODY_BYTES if status == 200 else MAX_ERROR_BODY_BYTES
            body = self._read(response, deadline, billed, limit, truncate=status != 200)
            if status == 200:
                try:
                    image = self._image_bytes(response, body, deadline, billed)
                    extension = check_image(image, size)
                except UnusableImage as exc:
                    exc.cost, exc.http_status = billed, 200
                    raise
                headers = response.headers
                return Generated(
                    image=image,
                    extension=extension,
                    cost=billed,
                    remaining_credits=_float(headers.get("x-remaining-credits")),
                    seed_value=self.seed_of(headers.get("x-seed-value")),
                    request_id=self.stored_id(headers.get("x-request-id")),
                    generation_time_s=_float(headers.get("x-generation-time")),
                )
            raise self._classify(response, body)

    def _post(self, data: bytes) -> _Answer:
        """One POST of data to the endpoint, its body left to read: what requests'
        session.post(stream=True) does, minus its per-call work. Redirects are never followed:
        requests strips only Authorization when a redirect changes host, so it would hand
        x-api-key to whoever the Location names, and replay or drop the POST."""
        settings = self._settings(self.endpoint)
        # Asked per call, not kept: the adapter's pool manager may close a pool it evicts.
        pool: urllib3.HTTPConnectionPool = self._adapter.get_connection_with_tls_context(  # type: ignore[assignment]
            self._post_template, settings["verify"], settings["proxies"]
        )
        raw = pool.urlopen(
            "POST",
            self._post_url,
            body=data,
            headers=dict(self._post_headers),
            redirect=False,
            assert_same_host=False,
            preload_content=False,
            decode_content=False,
            retries=self._no_retries,
            timeout=self._post_timeout,
        )
        return _Answer(raw)

    @property
    def _host(self) -> str:
        return urllib3.util.parse_url(self.endpoint).netloc or self.endpoint

    def _redirected(self, response: Response) -> FatalApiError:
        target = urllib3.util.parse_url(response.headers.get("Location") or "")
        where = f"{target.scheme}://{target.netloc}" if target.netloc else "another path"
        return FatalApiError(
            f"HTTP {response.status_code}: the endpoint redirects to {where}; redirects are not followed, "
            "so the API key stays with the endpoint you named (give the final URL as the endpoint if you trust it)",
            response.status_code,
        )

    def _cost(self, response: Response) -> float:
        return self.booked_cost(response.headers.get("x-cost"), "x-cost")

    def _read(self, response: Response, deadline: float, billed: float, limit: int, truncate: bool = False) -> bytes:
        """The body (decoded), within the overall deadline and at most `limit` bytes.

        A read timeout bounds each socket read, not the body: a server trickling a byte at a
        time would hold a worker for ever. So a timer cuts the connection at the deadline,
        which makes the blocked read fail at once. Past `limit` the body is cut off
        (`truncate`, for error messages) or refused."""
        status = response.status_code
        declared = _int(response.headers.get("Content-Length"))
        if declared is not None and declared > limit and not truncate:
            raise UnusableImage(f"the body is {declared:,} bytes, more than any image ({limit:,})", status, billed)
        watchdog = _WATCHDOG.schedule(deadline, lambda: _cut(response))
        chunks, size = [], 0
        # gzip and deflate are inflated here, never past the limit: urllib3's own decoding inflates
        # a whole read at once, and one read of a bomb that arrived in full is a gigabyte.
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        inflater = zlib.decompressobj(32 + zlib.MAX_WBITS) if encoding in ("gzip", "x-gzip", "deflate") else None
        try:
            while raw := response.raw.read1(_CHUNK, decode_content=inflater is None):
                chunk = raw if inflater is None else inflater.decompress(raw, limit + 1 - size)
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    if truncate:
                        break
                    raise UnusableImage(f"the body is larger than any image ({limit:,} bytes)", status, billed)
            if inflater is not None and size <= limit:
                chunks.append(inflater.flush())
        except zlib.error as exc:
            raise UnusableImage(f"the body does not inflate as {encoding} ({exc})", status, billed)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if time.monotonic() >= deadline:
                raise TransientError(f"the body took longer than {self.timeout_s:g} s", status, billed)
            raise TransientError(f"the connection broke mid-body ({type(exc).__name__})", status, billed)
        finally:
            _WATCHDOG.cancel(watchdog)
        return b"".join(chunks)[:limit]

    def _image_bytes(self, response: Response, body: bytes, deadline: float, billed: float) -> bytes:
        """Raw image bytes from any of the three documented shapes of a 200."""
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return body
        try:
            payload = json.loads(body)
        except ValueError:
            raise UnusableImage("the JSON body does not parse", 200, billed)
        if isinstance(payload, dict) and isinstance(payload.get("image"), str):
            try:
                return base64.b64decode(payload["image"], validate=False)
            except (binascii.Error, ValueError):
                raise UnusableImage("the base64 image does not decode", 200, billed)
        data = payload.get("data") if isinstance(payload, dict) else None
        if isinstance(data, list) and data and isinstance(data[0], dict):
            entry = data[0]
            if entry.get("is_image_safe") is False or not entry.get("url"):
                raise ItemRejected("the provider flagged the image as unsafe and sent no URL", 200, billed)
            return self._download(entry["url"], deadline, billed)
        url = payload.get("output") or payload.get("url") if isinstance(payload, dict) else None
        if isinstance(url, str) and url.startswith("http"):
            return self._download(url, deadline, billed)
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, str) and error:
            raise UnusableImage(f"the JSON body holds an error, not an image: {self.redact(error)[:200]}", 200, billed)
        raise UnusableImage("the JSON body holds no image, base64 or URL", 200, billed)

    def _download(self, url: str, deadline: float, billed: float) -> bytes:
        remaining = max(1.0, deadline - time.monotonic())
        try:
            # No API key here: the media host is not the API.
            response = self.session.get(
                url, timeout=(self.connect_timeout_s, remaining), stream=True, **self._settings(url)
            )
        except requests.RequestException as exc:
            raise TransientError(f"downloading the image failed ({type(exc).__name__})", 200, billed)
        if cut_short():
            response.close()
            raise TransientError(f"downloading the image took longer than {self.timeout_s:g} s", 200, billed)
        with response:
            if response.status_code != 200:
                raise TransientError(f"downloading the image answered HTTP {response.status_code}", 200, billed)
            return self._read(response, deadline, billed, MAX_BODY_BYTES)

    def _classify(self, response: Response, body: bytes) -> ApiError:
        status = response.status_code
        message = _error_message(response, body, self._key)
        if status == 429:
            return RateLimited(message, retry_at_from(response.headers))
        if status == 406:
            return OutOfCredits(message, _reason_406(message))
        if status in (400, 422):
            return ItemRejected(message, status)
        if status in (401, 403, 404, 405, 410):
            return FatalApiError(message, status)
        if status >= 500 or status in (408, 425):
            return TransientError(message, status)
        return ItemRejected(f"unexpected answer: {message}", status)
