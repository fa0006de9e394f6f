"""The client's lighter machinery: group commit, one watchdog thread, the environment read once,
and image checks that find truncation without decoding pixels."""

from __future__ import annotations

import io
import threading
import time

import pytest
from PIL import Image

from batch_runner.api.client import Client, UnusableImage, Watchdog, check_image
from batch_runner.store.journal import Journal, replay


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
