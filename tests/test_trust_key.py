"""Issue 23, key: a key echoed by the server (in a 200's x-request-id, in an error body that
straddles the 200-character cut) never lands in a file the runner writes, whole or as any 8
of its characters in a row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc

from batch_runner.api.redaction import FRAGMENT, redact
from tests.helpers import FAKE_KEY, manifest, run, run_cli, sandbox_with

FRAGMENTS = {FAKE_KEY[i : i + FRAGMENT] for i in range(len(FAKE_KEY) - FRAGMENT + 1)}


def leaks(text: str) -> list[str]:
    return sorted(piece for piece in FRAGMENTS if piece in text)


def texts_of(path: Path) -> str:
    """Everything a file says, decoded: Parquet and Arrow as their cells (compression could hide
    a fragment from a byte scan), anything else as its bytes."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path).astype(str).to_csv()
    if path.suffix == ".arrow":
        with pa.memory_map(str(path)) as source:
            table = ipc.open_file(source).read_all()
        return table.to_pandas().astype(str).to_csv() + str(table.schema.metadata)
    return path.read_bytes().decode("latin-1")


def assert_no_key_in(out: Path) -> None:
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files
    for path in files:
        found = leaks(texts_of(path))
        assert not found, f"{path.relative_to(out)} holds {found}"


def test_redaction_catches_any_run_of_eight_characters_of_the_key():
    assert redact(f"id {FAKE_KEY} end", FAKE_KEY) == "id [redacted] end"
    tail = FAKE_KEY[-9:]
    assert leaks(redact(f"cut: {tail}", FAKE_KEY)) == []
    assert redact(f"short {FAKE_KEY[:7]} ok", FAKE_KEY) == f"short {FAKE_KEY[:7]} ok"  # 7 in a row is no leak
    assert redact("nothing here", FAKE_KEY) == "nothing here"


def test_a_key_echoed_in_x_request_id_is_never_written_down(tmp_path):
    with sandbox_with() as sb:
        job, out = manifest(tmp_path, ["[sandbox:fault=echo-id] echo me", "plain"]), tmp_path / "out"
        result = run(job, out, sb)
        assert result.returncode == 0, result.stdout + result.stderr
        assert not leaks(result.stdout + result.stderr)
        frame = pd.read_parquet(out / "manifest.parquet").set_index("prompt")
        assert "[redacted]" in frame.loc["[sandbox:fault=echo-id] echo me", "request_id"]
        assert_no_key_in(out)


def test_a_key_straddling_the_cut_of_an_error_body_is_never_written_down(tmp_path):
    with sandbox_with() as sb:
        job, out = manifest(tmp_path, ["[sandbox:fault=echo-error] echo me", "plain"]), tmp_path / "out"
        result = run(job, out, sb, "--max-attempts", "1")
        assert result.returncode == 1, result.stdout + result.stderr
        assert not leaks(result.stdout + result.stderr)
        frame = pd.read_parquet(out / "manifest.parquet").set_index("prompt")
        assert frame.loc["[sandbox:fault=echo-error] echo me", "status"] == "failed"
        assert "[redacted]" in frame.loc["[sandbox:fault=echo-error] echo me", "error"]
        report = run_cli("report", str(out), "--csv")
        assert report.returncode == 0, report.stderr
        assert not leaks(report.stdout + report.stderr)
        status = run_cli("status", str(out))
        assert not leaks(status.stdout + status.stderr)
        assert_no_key_in(out)
