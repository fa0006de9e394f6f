"""Did the text come out right? Read each image's text with Tesseract and compare it with the
words its prompt quotes.

Runs after the run, from `batch-runner report`: only images whose prompt quotes text are read,
each once (results are cached in OUTPUT/report/text_check.jsonl, keyed by the image's size and
mtime, so a second report reads nothing), in a bounded pool of processes, one Tesseract each.

Tesseract comes through tesserocr, which calls the library in-process: 0.07-0.08 s an image here
against pytesseract's 0.23 s, which starts a tesseract process and writes a temporary PNG per
image; both read the same 39 of 40 test images right. It is optional: `pip install
'batch-runner[ocr]'` plus Debian's tesseract-ocr and tesseract-ocr-eng (its English data).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import time
import unicodedata
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from batch_runner.api.quoted import quoted_text

TEXT_COLUMNS = ("text_expected", "text_read", "text_score", "text_ok")
CACHE = Path("report") / "text_check.jsonl"
INSTALL = "pip install 'batch-runner[ocr]' and apt-get install tesseract-ocr tesseract-ocr-eng"
_TESSDATA = ("/usr/share/tesseract-ocr/5/tessdata", "/usr/share/tesseract-ocr/4.00/tessdata", "/usr/share/tessdata")
_READ_CHARS = 300  # of the text read, kept per item: enough to see what went wrong


def normalize(text: str) -> str:
    """Text as compared: NFKC, case-folded, punctuation dropped, whitespace collapsed."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s]|_", " ", folded).split())


def expected_text(prompt: object) -> str | None:
    """What the image should show: the prompt's quoted passages, joined by " / "."""
    quoted = quoted_text(prompt)
    return " / ".join(quoted) if quoted else None


def score(expected: str, read: str) -> float:
    """How well the text read matches the text expected, 0..1: for each quoted passage, the best
    similarity of any run of about as many words in the text read (the image holds other words
    too); the worst passage counts. 1.0 means every passage is there exactly (after normalize)."""
    words = normalize(read).split()
    found = normalize(" ".join(words))
    worst = 1.0
    for passage in (normalize(p) for p in expected.split(" / ")):
        if not passage:
            continue
        if re.search(rf"(?<!\w){re.escape(passage)}(?!\w)", found):
            continue
        n = len(passage.split())
        best = 0.0
        for size in {max(1, n - 1), n, n + 1}:
            for start in range(max(1, len(words) - size + 1)):
                window = " ".join(words[start : start + size])
                best = max(best, difflib.SequenceMatcher(None, passage, window).ratio())
        worst = min(worst, best)
    return round(worst, 4)


def missing_reason() -> str | None:
    """Why the check cannot run here, with how to fix it; None when it can."""
    try:
        import tesserocr  # noqa: F401
    except ImportError:
        return f"the Python package tesserocr is not installed; {INSTALL}"
    if _tessdata() is None:
        return f"Tesseract's English data (eng.traineddata) was not found; {INSTALL}"
    return None


def _tessdata() -> str | None:
    prefix = os.environ.get("TESSDATA_PREFIX")
    for folder in [prefix] if prefix else _TESSDATA:
        if Path(folder, "eng.traineddata").is_file():
            return folder
    return None


# ---------------------------------------------------------------- the cache


def read_cache(out: Path) -> dict[str, dict[str, Any]]:
    """item_id -> its latest check; a torn or foreign line is skipped."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        lines = (out / CACHE).read_bytes().splitlines()
    except OSError:
        return checks
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("item_id"), str):
            checks[record["item_id"]] = record
    return checks


def attach(items: pd.DataFrame, out: Path) -> pd.DataFrame:
    """items with the text columns: text_expected for every item whose prompt quotes text, and
    text_read, text_score and text_ok for those checked (missing where not)."""
    checks = read_cache(out)
    prompts = items["prompt"] if "prompt" in items else pd.Series(None, index=items.index, dtype=object)
    expected = prompts.map(expected_text)
    current = [
        checks.get(i) if checks.get(i, {}).get("expected") == e and e is not None else None
        for i, e in zip(items.item_id, expected, strict=True)
    ]
    items["text_expected"] = expected.astype("string")
    items["text_read"] = pd.Series([c["read"] if c else None for c in current], index=items.index, dtype="string")
    items["text_score"] = pd.Series([c["score"] if c else None for c in current], index=items.index, dtype="Float64")
    items["text_ok"] = pd.Series([c["ok"] if c else None for c in current], index=items.index, dtype="boolean")
    return items


# ---------------------------------------------------------------- the check


@dataclass
class CheckReport:
    wanted: int  # succeeded images whose prompt quotes text
    read: int  # read now
    cached: int  # already read, unchanged since
    unreadable: int  # images that could not be opened
    seconds: float
    missing: str | None = None  # why nothing was read


def _stamp(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def check(items: pd.DataFrame, out: Path, workers: int | None = None, progress: bool = True) -> CheckReport:
    """Read the text of every succeeded image whose prompt quotes text and that is not in the cache
    as it is now; append each result to the cache as it comes (a killed report keeps what it read)."""
    started = time.perf_counter()
    cache = read_cache(out)
    todo: list[tuple[str, str, str, list[int]]] = []
    wanted = cached = unreadable = 0
    ok = items[(items.status == "succeeded") & items.image_path.notna()]
    for item_id, prompt, image_path in zip(ok.item_id, ok.prompt, ok.image_path, strict=True):
        expected = expected_text(prompt)
        if expected is None:
            continue
        wanted += 1
        path = out / image_path
        stamp = _stamp(path)
        if stamp is None:
            unreadable += 1
            continue
        known = cache.get(item_id)
        if known and known.get("expected") == expected and known.get("stamp") == stamp:
            cached += 1
            continue
        todo.append((item_id, str(path), expected, stamp))
    if not todo:
        return CheckReport(wanted, 0, cached, unreadable, time.perf_counter() - started)
    reason = missing_reason()
    if reason is not None:
        return CheckReport(wanted, 0, cached, unreadable, time.perf_counter() - started, missing=reason)
    (out / CACHE).parent.mkdir(parents=True, exist_ok=True)
    bar = _bar(len(todo), progress)
    read = 0
    with open(out / CACHE, "a", encoding="utf-8") as log:
        for item_id, text, expected, stamp in _read_all(todo, workers or _workers(len(todo))):
            bar.update(1)
            if text is None:
                unreadable += 1
                continue
            value = score(expected, text)
            record = {"item_id": item_id, "expected": expected, "read": " ".join(text.split())[:_READ_CHARS],
                      "score": value, "ok": value >= 1.0, "stamp": stamp}  # fmt: skip
            log.write(json.dumps(record, ensure_ascii=False) + "\n")
            read += 1
        log.flush()
        os.fsync(log.fileno())
    bar.close()
    return CheckReport(wanted, read, cached, unreadable, time.perf_counter() - started)


def _workers(jobs: int) -> int:
    return 1 if jobs < 16 else max(1, min(4, os.cpu_count() or 1))


def _bar(total: int, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="text check", unit="img", file=sys.stderr, disable=not progress or None)


def _read_all(
    todo: list[tuple[str, str, str, list[int]]], workers: int
) -> Iterator[tuple[str, str | None, str, list[int]]]:
    """(item_id, text read or None, expected, stamp) for each job, as they finish; at most a few
    jobs a worker are queued at once, so memory stays flat at any size."""
    if workers <= 1:
        _start_worker()
        for item_id, path, expected, stamp in todo:
            yield item_id, _read_one(path), expected, stamp
        return
    with ProcessPoolExecutor(workers, initializer=_start_worker) as pool:
        pending: dict[Future[str | None], tuple[str, str, list[int]]] = {}
        jobs = iter(todo)
        for item_id, path, expected, stamp in jobs:
            pending[pool.submit(_read_one, path)] = (item_id, expected, stamp)
            if len(pending) >= workers * 8:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    item_id_, expected_, stamp_ = pending.pop(future)
                    yield item_id_, future.result(), expected_, stamp_
        for future in list(pending):
            item_id_, expected_, stamp_ = pending.pop(future)
            yield item_id_, future.result(), expected_, stamp_


_API: Any = None


def _start_worker() -> None:
    """One Tesseract per process, single-threaded: the pool is the parallelism."""
    global _API
    if _API is not None:
        return
    os.environ["OMP_THREAD_LIMIT"] = "1"
    import tesserocr

    _API = tesserocr.PyTessBaseAPI(path=_tessdata(), lang="eng")


def _read_one(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            gray = image.convert("L")
    except OSError:
        return None
    _API.SetImage(gray)
    return str(_API.GetUTF8Text())
