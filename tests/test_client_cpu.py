"""The client's lighter machinery: group commit, one watchdog thread, the environment read once,
the generation POST straight to the adapter's pool, and image checks that find truncation
without decoding pixels."""

from __future__ import annotations

import io
import threading
import time

import pytest
from PIL import Image

from batch_runner.api.client import (
    Client,
    FatalApiError,
    ItemRejected,
    Unreachable,
    UnusableImage,
    Watchdog,
    check_image,
)
from batch_runner.engine.pacing import Pacer
from batch_runner.store.journal import GroupSync, Journal, replay
from tests.helpers import FAKE_KEY

PARAMS = {"prompt": "a fox", "resolution": "RESOLUTION_1024_1024", "magic_prompt_option": "OFF"}


def test_concurrent_writers_share_fsyncs_and_every_line_is_there(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")

    def write(worker: int) -> None:
        for n in range(50):
            journal.sent(f"w{worker}-{n}", 1, None)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    journal.close()
    assert len(replay(tmp_path / "journal.jsonl").items) == 400
    assert journal._sync.syncs <= 400  # never more than one per line; fewer when writers overlap


def _writers_on_a_group_sync(sync_fails_on: set[int]) -> tuple[GroupSync, list[str], list[threading.Thread]]:
    """8 writers x 100 writes on one GroupSync whose sync notes what it made durable: the writes
    complete when it started. Each writer checks, once wait_for returns, that its write is."""
    lock = threading.Lock()
    count = {"written": 0, "durable": 0, "calls": 0}
    problems: list[str] = []

    def sync(_fd: int) -> None:
        with lock:
            count["calls"] += 1
            call, covers = count["calls"], count["written"]
        time.sleep(0.0005)  # a disk flush takes a while, so writers pile up behind it
        if call in sync_fails_on:
            raise OSError(5, "Input/output error")
        with lock:
            count["durable"] = max(count["durable"], covers)

    group = GroupSync(-1, lambda: count["written"], sync)

    def writer() -> None:
        for _ in range(100):
            with lock:
                count["written"] += 1
                mine = count["written"]
            try:
                group.wait_for(mine)
            except OSError:
                continue  # the caller's write failed: it is not claimed durable
            with lock:
                if count["durable"] < mine:
                    problems.append(f"write {mine} returned before a sync covered it")

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return group, problems, threads


def test_group_sync_returns_each_writer_only_once_a_sync_begun_after_its_write_is_done():
    group, problems, threads = _writers_on_a_group_sync(set())
    assert not any(t.is_alive() for t in threads)
    assert problems == []
    assert group.syncs < 800  # writers that overlap share a sync


def test_a_failed_sync_reaches_its_caller_and_the_waiting_writers_still_get_a_sync_of_their_own():
    group, problems, threads = _writers_on_a_group_sync({3, 10, 11})
    assert not any(t.is_alive() for t in threads)  # nobody is left parked after a failure
    assert problems == []


class _CountingCondition(threading.Condition):
    waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        type(self).waits += 1
        return super().wait(timeout)


def test_workers_waiting_for_the_pacer_clock_do_not_all_wake_for_every_send():
    # 8 workers, 100 sends a second: before, each send woke every waiting worker (7.5 waits per
    # send); now one worker watches the clock and hands it on (about 2).
    pacer = Pacer(ceiling_rpm=6000, max_concurrency=32)
    pacer._cond = _CountingCondition(pacer._lock)
    stop = threading.Event()
    sent: list[float] = []

    def worker() -> None:
        for _ in range(25):
            with pacer.acquire(stop) as ticket:
                sent.append(ticket.sent_at)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(sent) == 200
    sent.sort()
    interval = 60 / (6000 * Pacer.CEILING_MARGIN)
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert min(gaps) >= interval * (1 - Pacer.CATCH_UP) - 1e-6  # still paced
    assert _CountingCondition.waits <= 4 * len(sent)


def test_a_stop_wakes_workers_parked_behind_the_clock_watcher():
    pacer = Pacer(ceiling_rpm=1, max_concurrency=32)  # one send a minute: the rest wait
    stop = threading.Event()
    outcomes: list[str] = []

    def worker() -> None:
        try:
            with pacer.acquire(stop):
                outcomes.append("sent")
        except Exception as exc:  # noqa: BLE001 - the outcome is what is checked
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    while pacer.counts["sent"] < 1:
        time.sleep(0.01)
    time.sleep(0.3)  # the others are parked now
    stop.set()
    pacer.wake()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["Stopping", "Stopping", "Stopping", "sent"]


def test_one_watchdog_fires_due_callbacks_in_order_and_never_a_cancelled_one():
    dog = Watchdog()
    fired: list[str] = []
    now = time.monotonic()
    dog.schedule(now + 0.15, lambda: fired.append("late"))
    cancelled = dog.schedule(now + 0.05, lambda: fired.append("cancelled"))
    dog.schedule(now + 0.1, lambda: fired.append("early"))
    dog.cancel(cancelled)
    time.sleep(0.4)
    assert fired == ["early", "late"]


def test_proxies_from_the_environment_are_read_once_and_still_honoured(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "media.example")
    client = Client("https://api.example/v1/x", "key-123456", pool_size=2)
    assert client.session.trust_env is False
    assert client._settings("https://api.example/v1/x")["proxies"].get("https") == "http://proxy.example:3128"
    assert client._settings("https://media.example/image.jpg")["proxies"] == {}
    monkeypatch.setenv("HTTPS_PROXY", "http://other.example:1")  # read at creation, not per call
    assert client._settings("https://api.example/v1/x")["proxies"].get("https") == "http://proxy.example:3128"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_truncated_image_is_refused_without_a_full_decode(fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, fmt)
    data = buffer.getvalue()
    assert check_image(data, (64, 48)) in ("jpg", "png")
    for broken in (data[: len(data) * 2 // 3], data[: len(data) // 3] + b"\x00" * 64):
        with pytest.raises(UnusableImage, match="truncated or corrupt|not an image"):
            check_image(broken, (64, 48))


def test_one_kept_alive_connection_carries_every_answer_and_each_image_is_checked(sandbox):
    client = Client(sandbox.endpoint, FAKE_KEY, pool_size=2)
    for seed in range(100, 112):
        generated = client.generate({**PARAMS, "seed": seed})
        assert Image.open(io.BytesIO(generated.image)).size == (1024, 1024) and generated.cost > 0
    for _ in range(3):  # an error answer's body is read too, so the connection stays usable
        with pytest.raises(ItemRejected, match="seed"):
            client.generate({**PARAMS, "seed": 1})
    assert client.generate({**PARAMS, "seed": 200}).extension == "jpg"
    stats = sandbox.stats()
    assert stats["received"] == 16 and stats["billed"] == 13
    pools = client._adapter.poolmanager.pools
    assert sum(pools[key].num_connections for key in pools.keys()) == 1
    assert FAKE_KEY not in repr(client)


def test_the_generation_post_goes_through_the_proxy_the_environment_names(monkeypatch, sandbox):
    # The sandbox stands in for the proxy: it gets the request, for a host that does not exist,
    # in a proxy's absolute form, and answers 404. Without the proxy the name would not resolve.
    monkeypatch.setenv("HTTP_PROXY", sandbox.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = Client("http://api.invalid/v1/ideogram-turbo-txt-2-img", FAKE_KEY, pool_size=1)
    with pytest.raises(FatalApiError) as answered:
        client.generate({**PARAMS, "seed": 100})
    assert answered.value.http_status == 404
    assert sandbox.stats()["requests"] == 1
    monkeypatch.delenv("HTTP_PROXY")
    direct = Client("http://api.invalid/v1/ideogram-turbo-txt-2-img", FAKE_KEY, pool_size=1)
    with pytest.raises(Unreachable, match="does not resolve|no connection"):
        direct.generate({**PARAMS, "seed": 100})
