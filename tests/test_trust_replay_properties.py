"""Issue 23 item 9: any well-formed JSON line in the journal replays without an error, the same
way in journal.replay and the ledger, and the books stay finite numbers (status prints JSON)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_runner.store.fold import summarize
from batch_runner.store.journal import replay
from batch_runner.store.ledger import load
from batch_runner.store.output_dir import OutputDir

scalars = st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats() | st.text(max_size=12)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
kinds = st.sampled_from(["run", "sent", "submitted", "attempt", "expired", "done", "later-kind"])
fields = st.sampled_from(["id", "n", "cost", "status", "rid", "at", "http", "http_status", "error", "answered",
                          "reached", "latency", "seed_value", "image_path", "request_id", "remaining_credits",
                          "row", "price_per_image"])  # fmt: skip
ids = st.sampled_from(["a", "b", "c"])


@st.composite
def events(draw) -> dict:
    event = {"e": draw(kinds), "id": draw(ids | values)}
    for name in draw(st.lists(fields, max_size=6)):
        event[name] = draw(values | ids | st.sampled_from(["succeeded", "failed", "pending", "sent"]))
    return event


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), max_size=25))
def test_any_json_lines_replay_alike_and_keep_the_books_finite(lines):
    with tempfile.TemporaryDirectory() as folder:
        out = OutputDir(Path(folder))
        out.journal.write_text("".join(json.dumps(e) + "\n" for e in lines), encoding="utf-8")
        replayed = replay(out.journal)
        ledger = load(out)
        assert ledger.bad_lines == replayed.bad_lines
        assert math.isfinite(ledger.spent) and ledger.spent >= 0
        assert ledger.spent == replayed.spent or math.isclose(ledger.spent, replayed.spent)
        assert ledger.unanswered == replayed.unanswered
        assert ledger.on_server == replayed.on_server
        assert ledger.checkpoint()
        assert load(out).spent == ledger.spent
        summary = summarize(out)
        json.dumps(summary, allow_nan=False)  # status --json is JSON
