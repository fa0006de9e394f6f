"""The sandbox behaves like the real endpoint, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest
import requests
from PIL import Image

from batch_runner.job.items import item_id_for
from batch_runner.sandbox import Sandbox, SandboxConfig
from tests.helpers import FAKE_KEY, REPO

KEY = FAKE_KEY  # the key the `sandbox` fixture (conftest.py) accepts


def post(sb, body, key=KEY, **kwargs):
    headers = {"x-api-key": key} if key else {}
    return requests.post(sb.endpoint, json=body, headers=headers, timeout=30, **kwargs)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_success_is_a_real_image_of_the_requested_size_with_headers(sandbox):
    r = post(sandbox, {"prompt": "a red fox", "seed": 4242, "resolution": "RESOLUTION_1280_800"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert decode(r.content).size == (1280, 800)
    assert r.headers["x-seed-value"] == "4242"
    assert float(r.headers["x-cost"]) == pytest.approx(0.063)
    assert float(r.headers["x-remaining-credits"]) == pytest.approx(100 - 0.063)
    assert r.headers["x-request-id"] and float(r.headers["x-generation-time"]) >= 0


def test_same_request_same_image_and_other_seed_other_image(sandbox):
    body = {"prompt": "a lighthouse", "seed": 555, "style_type": "ANIME"}
    first, again = post(sandbox, body).content, post(sandbox, body).content
    other = post(sandbox, {**body, "seed": 556}).content
    assert first == again and first != other
    assert decode(first).size == (1024, 1024)


def test_server_picks_and_reports_a_seed_when_none_is_given(sandbox):
    r = post(sandbox, {"prompt": "no seed"})
    assert 100 <= int(r.headers["x-seed-value"]) <= 999_999


@pytest.mark.parametrize("sandbox", [SandboxConfig(keys=(KEY,), response="json")], indirect=True)
def test_json_shape_carries_base64(sandbox):
    r = post(sandbox, {"prompt": "json please", "resolution": "RESOLUTION_640_1536"})
    assert r.headers["Content-Type"] == "application/json"
    assert decode(base64.b64decode(r.json()["image"])).size == (640, 1536)


@pytest.mark.parametrize("sandbox", [SandboxConfig(keys=(KEY,), response="url")], indirect=True)
def test_url_shape_is_served_by_the_sandbox(sandbox):
    r = post(sandbox, {"prompt": "by url", "seed": 321, "style_type": "DESIGN"})
    [data] = r.json()["data"]
    assert data["is_image_safe"] is True and data["seed"] == 321 and data["resolution"] == "1024x1024"
    image = requests.get(data["url"], timeout=10)
    assert image.status_code == 200 and decode(image.content).size == (1024, 1024)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompt": "x", "resolution": "RESOLUTION_1000_1000"}, "resolution"),
        ({"prompt": "x", "seed": 99}, "seed"),
        ({"prompt": "x", "seed": "abc"}, "seed"),
        ({"prompt": "x", "style_type": "PHOTO"}, "style_type"),
        ({"prompt": "x", "magic_prompt_option": "MAYBE"}, "magic_prompt_option"),
        ({"prompt": "x", "color_palette": {"name": "NEON"}}, "color_palette"),
        ({"prompt": "x", "color_palette": {"members": [{"color_hex": "#12345"}]}}, "color_palette"),
        ({"prompt": "x", "color_palette": {"members": [{"color_hex": "#123", "color_weight": 0.01}]}}, "color_weight"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ({"prompt": "   "}, "prompt"),
        ({"seed": 123}, "prompt"),
    ],
)
def test_invalid_parameters_are_400_naming_the_field(sandbox, body, field):
    r = post(sandbox, body)
    assert r.status_code == 400
    assert field in r.json()["error"]
    assert sandbox.stats()["billed"] == 0


def test_missing_or_unknown_key_is_401(sandbox):
    assert post(sandbox, {"prompt": "x"}, key=None).status_code == 401
    r = post(sandbox, {"prompt": "x"}, key="wrong-key")
    assert r.status_code == 401 and "error" in r.json()


def test_credits_run_out_with_406_and_the_balance_is_served():
    with Sandbox(SandboxConfig(keys=(KEY,), credits=0.13)) as sb:
        statuses = [post(sb, {"prompt": f"p{i}"}).status_code for i in range(4)]
        assert statuses == [200, 200, 406, 406]
        r = post(sb, {"prompt": "again"})
        assert r.json()["error"] == "Insufficient credits"
        balance = requests.get(sb.url + "/v1/get-user-credits", headers={"x-api-key": KEY}, timeout=5).json()
        assert balance["credits"] == pytest.approx(0.13 - 2 * 0.063)
        assert sb.stats()["billed"] == 2


def test_team_spend_limit_is_its_own_406():
    with Sandbox(SandboxConfig(keys=(KEY,), spend_limit=0.07)) as sb:
        assert post(sb, {"prompt": "one"}).status_code == 200
        r = post(sb, {"prompt": "two"})
        assert r.status_code == 406 and "spend limit" in r.json()["error"]


def test_non_json_body_is_406_invalid_content_type(sandbox):
    r = requests.post(sandbox.endpoint, data=b"prompt=x", headers={"x-api-key": KEY}, timeout=5)
    assert r.status_code == 406 and "Invalid content type" in r.json()["error"]
    r = requests.post(
        sandbox.endpoint, data=b"{not json", headers={"x-api-key": KEY, "Content-Type": "application/json"}, timeout=5
    )
    assert r.status_code == 406


def test_unknown_path_is_404_and_wrong_method_is_405_html(sandbox):
    assert requests.post(sandbox.url + "/v1/other-model", json={}, headers={"x-api-key": KEY}).status_code == 404
    r = requests.get(sandbox.endpoint, headers={"x-api-key": KEY}, timeout=5)
    assert r.status_code == 405 and r.headers["Content-Type"].startswith("text/html") and "<html" in r.text


def test_rolling_window_keeps_answering_429_to_a_client_that_ignores_it():
    config = SandboxConfig(keys=(KEY,), rpm=60, rate_window_s=2.0)  # 2 requests per rolling 2 s
    with Sandbox(config) as sb:
        first = [post(sb, {"prompt": f"p{i}"}) for i in range(2)]
        assert [r.status_code for r in first] == [200, 200]
        hammering = []
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            hammering.append(post(sb, {"prompt": "again"}))
        assert hammering and all(r.status_code == 429 for r in hammering)
        r = hammering[-1]
        assert int(r.headers["Retry-After"]) >= 1
        reset = datetime.fromisoformat(r.headers["x-rate-limit-reset-at-utc"].replace("Z", "+00:00"))
        wait = (reset - datetime.now(timezone.utc)).total_seconds()
        assert 0 < wait <= 2.0
        time.sleep(wait + 0.05)
        assert post(sb, {"prompt": "after reset"}).status_code == 200
        assert sb.stats()["billed"] == 3


def test_rate_limit_is_per_key():
    with Sandbox(SandboxConfig(keys=(KEY, "second-fake-key"), rpm=1)) as sb:
        assert post(sb, {"prompt": "a"}).status_code == 200
        assert post(sb, {"prompt": "b"}).status_code == 429
        assert post(sb, {"prompt": "b"}, key="second-fake-key").status_code == 200


def test_retry_after_can_be_switched_off():
    with Sandbox(SandboxConfig(keys=(KEY,), rpm=1, retry_after=False)) as sb:
        post(sb, {"prompt": "a"})
        r = post(sb, {"prompt": "b"})
        assert r.status_code == 429 and "Retry-After" not in r.headers and "x-rate-limit-reset-at-utc" in r.headers


def statuses_for(seed: int) -> list[object]:
    config = SandboxConfig(keys=(KEY,), fault_rate=0.5, faults=("500", "502", "504"), seed=seed)
    with Sandbox(config) as sb:
        return [post(sb, {"prompt": f"prompt {i}"}).status_code for i in range(30)]


def test_faults_are_reproducible_with_a_seed():
    first, again, other = statuses_for(7), statuses_for(7), statuses_for(8)
    assert first == again and first != other
    assert set(first) <= {200, 500, 502, 504} and 200 in first and len(set(first)) >= 3


@pytest.mark.parametrize("code", [400, 403, 404, 410, 422, 500, 502, 504])
def test_directives_force_a_status(sandbox, code):
    r = post(sandbox, {"prompt": f"[sandbox:fail={code}] cat"})
    assert r.status_code == code and "error" in r.json()
    assert sandbox.stats()["billed"] == 0


def test_fail_once_succeeds_on_the_second_try(sandbox):
    body = {"prompt": "[sandbox:fail-once=502] retry me"}
    assert [post(sandbox, body).status_code for _ in range(2)] == [502, 200]
    assert sandbox.stats()["bodies"][item_id_for(body)] == {"received": 2, "billed": 1}


def test_dropped_connection_mid_body_is_billed(sandbox):
    with pytest.raises(requests.exceptions.RequestException):
        post(sandbox, {"prompt": "[sandbox:fault=drop] cut"})
    assert sandbox.stats()["billed"] == 1


def test_slow_fault_trickles_the_body():
    with Sandbox(SandboxConfig(keys=(KEY,), slow_s=0.6)) as sb:
        start = time.monotonic()
        r = post(sb, {"prompt": "[sandbox:fault=slow] slow"})
        assert r.status_code == 200 and decode(r.content).size == (1024, 1024)
        assert time.monotonic() - start >= 0.55


def test_broken_and_wrong_size_images(sandbox):
    broken = post(sandbox, {"prompt": "[sandbox:fault=broken] x"})
    assert broken.status_code == 200
    with pytest.raises(OSError):
        decode(broken.content)
    wrong = post(sandbox, {"prompt": "[sandbox:fault=wrong-size] x", "resolution": "RESOLUTION_1280_800"})
    assert decode(wrong.content).size != (1280, 800)


def test_stats_record_every_request_and_what_was_billed(sandbox):
    a, b = {"prompt": "a"}, {"prompt": "b", "seed": 100}
    post(sandbox, a)
    post(sandbox, a)
    post(sandbox, b)
    post(sandbox, {"prompt": "a", "seed": 1})
    stats = requests.get(sandbox.url + "/sandbox/stats", timeout=5).json()
    assert stats["received"] == 4 and stats["billed"] == 3
    assert stats["bodies"][item_id_for(a)] == {"received": 2, "billed": 2}
    assert stats["bodies"][item_id_for(b)] == {"received": 1, "billed": 1}
    assert stats["spent"] == pytest.approx(3 * 0.063)
    assert [entry["status"] for entry in stats["log"]][:4] == [200, 200, 200, 400]


def test_v2_queue_submit_status_result():
    with Sandbox(SandboxConfig(keys=(KEY,), latency_s=0.4)) as sb:
        headers = {"x-api-key": KEY}
        submit = requests.post(sb.url + "/v2/ideogram-turbo-txt-2-img", json={"prompt": "queued"}, headers=headers)
        job = submit.json()
        assert job["status"] == "QUEUED" and {"poll_url", "status_url", "response_url"} <= set(job)
        early = requests.get(job["response_url"], headers=headers)
        assert early.status_code == 202 and early.json()["status"] in ("QUEUED", "PROCESSING")
        time.sleep(0.45)
        assert requests.get(job["status_url"], headers=headers).json()["status"] == "COMPLETED"
        done = requests.get(job["response_url"], headers=headers).json()
        assert done["metrics"]["cost"] == pytest.approx(0.063)
        assert decode(requests.get(done["output"]).content).size == (1024, 1024)
        again = requests.get(job["response_url"], headers=headers).json()
        assert again["status"] == "COMPLETED" and sb.stats()["billed"] == 1

        failed = requests.post(
            sb.url + "/v2/ideogram-turbo-txt-2-img", json={"prompt": "[sandbox:fault=broken] x"}, headers=headers
        ).json()
        time.sleep(0.45)
        r = requests.get(failed["response_url"], headers=headers)
        assert r.status_code == 422 and r.json()["status"] == "FAILED"
        assert sb.stats()["billed"] == 1  # a failed queued job is not billed


def test_64_concurrent_connections_are_served_in_parallel():
    with Sandbox(SandboxConfig(keys=(KEY,), latency_s=2.5)) as sb:  # time enough for 64 to connect
        barrier = threading.Barrier(64)
        results: list[int] = []

        def client(i: int) -> None:
            barrier.wait()
            results.append(post(sb, {"prompt": f"parallel {i}", "resolution": "RESOLUTION_512_1536"}).status_code)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results.count(200) == 64
        assert sb.stats()["max_in_flight"] == 64  # all 64 were sleeping their latency at once


def test_sandbox_command_serves_until_interrupted():
    proc = subprocess.Popen(
        [sys.executable, "-m", "batch_runner", "sandbox", "--port", "0", "--latency", "0", "--keys", KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("sandbox listening on http://127.0.0.1:")
        url = first.split()[3]
        r = requests.post(url + "/v1/ideogram-turbo-txt-2-img", json={"prompt": "cli"}, headers={"x-api-key": KEY})
        assert r.status_code == 200
        stats = requests.get(url + "/sandbox/stats", timeout=5).json()
        assert stats["billed"] == 1
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr.read()
    json.dumps(stats)
