"""Facts about one run for its line in runs.jsonl, beyond the engine's counts: which run, on
which host and process, how long, into which folder, and why items failed.

A monitor that follows a job over weeks needs to tell two runs apart (run id, host, pid) and
needs the reasons, not only a count: "3 failed" says nothing; "3 × safety check failed (422)"
says what to do. The reasons are read from manifest.parquet, which the run has just rewritten:
two columns, so it stays cheap at a million items.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from batch_runner.store.output_dir import MANIFEST

TOP_REASONS = 5


def failure_reasons(folder: Path, top: int = TOP_REASONS) -> list[dict[str, Any]]:
    """The most common errors of the folder's failed items, most frequent first:
    [{"reason": text, "items": n}, ...]; empty when nothing failed or nothing is readable."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(folder / MANIFEST, columns=["status", "error"])
    except (OSError, ValueError, KeyError):
        return []
    failed = table.filter(pc.equal(table.column("status"), "failed")).column("error")
    counts = pc.value_counts(pc.fill_null(failed.cast("string"), "(no message)")).to_pylist()
    ranked = sorted(counts, key=lambda c: (-c["counts"], c["values"]))[:top]
    return [{"reason": c["values"], "items": int(c["counts"])} for c in ranked]


def run_facts(folder: Path, started_at: float) -> dict[str, Any]:
    """The run's identity and its top failure reasons, to merge into its runs.jsonl record."""
    return {
        "run_id": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "duration_s": round(time.time() - started_at, 3),
        "output": str(Path(folder).resolve()),
        "failure_reasons": failure_reasons(folder),
    }
