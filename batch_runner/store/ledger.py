"""The journal's state as a columnar table, checkpointed so a resume replays only the tail.

journal.jsonl stays the truth: append-only, one fsynced write per event. ledger.arrow is a cache
of it: the state of every item the journal names, as of byte offset N of the journal, one row
per item sorted by item_id, in an uncompressed Arrow IPC file that is memory-mapped, not parsed.
Loading it costs milliseconds at 10^6 items; the journal past N (the tail) is replayed with
exactly the semantics of journal.replay, starting from each item's checkpointed state.

A checkpoint is written to a .partial file, fsynced, renamed into place and its folder fsynced,
so a crash leaves the old checkpoint or the new one, never a part. It records N and a hash of
the journal's bytes just before N; if the journal is shorter, or those bytes differ (the journal
was edited, or a power loss took unsynced lines the checkpoint had seen), the checkpoint is
ignored and the whole journal replayed: it can make a resume slow, never wrong.

Looking items up is vectorized: the sorted ids become a numpy bytes array, and a batch of plan
items is found with one searchsorted. The runner never creates an object per finished item.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from batch_runner.store.journal import ItemState, ItemStatus, apply_event, clean_event, latest_price
from batch_runner.store.output_dir import OutputDir, fsync_dir

VERSION = 2  # 2: submitted_at, and the counts of bad lines and the highest cost in the metadata
_META_KEY = b"batch_runner.ledger"
_CHECK_BYTES = 4096
_LINES_PER_CHUNK = 20_000  # journal lines parsed at once while replaying a tail
_MERGE_AT = 25_000  # touched items held as objects before they are folded into the table

STATUS = tuple(status.value for status in ItemStatus)  # status code i is STATUS[i]
NO_STATE = -1  # lookup(): the journal does not name the item

SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("status", pa.string()),
        ("attempts", pa.int64()),
        ("http_status", pa.int64()),
        ("error", pa.string()),
        ("latency_s", pa.float64()),
        ("cost_usd", pa.float64()),
        ("remaining_credits", pa.float64()),
        ("seed_value", pa.int64()),
        ("request_id", pa.string()),
        ("image_path", pa.string()),
        ("first_sent_at", pa.float64()),
        ("finished_at", pa.float64()),
        ("rate_limited", pa.int64()),
        ("unanswered", pa.int64()),  # closed attempts only; an open one is added when read
        ("submitted_at", pa.float64()),
        ("open_attempt", pa.bool_()),
        ("row", pa.string()),  # the item's row as JSON, "" when the journal has none
    ]
)
_STATE_NAMES = [f.name for f in SCHEMA][1:-1]


_COMPACT_AT = 0.25  # a new base once the segments after it hold a quarter as many rows
_MAX_SEGMENTS = 16


def segment_path(out: OutputDir, seq: int) -> Path:
    return out.path / f"ledger-{seq:06d}.arrow"


def segment_files(out: OutputDir) -> list[tuple[int, Path]]:
    """The checkpoint files in the folder, newest first."""
    found = []
    for path in out.path.glob("ledger-*.arrow"):
        try:
            found.append((int(path.stem.split("-", 1)[1]), path))
        except ValueError:
            continue
    return sorted(found, reverse=True)


def _hash_before(path: Path, offset: int) -> str:
    start = max(0, offset - _CHECK_BYTES)
    with path.open("rb") as f:
        f.seek(start)
        return hashlib.sha256(f.read(offset - start)).hexdigest()


def _table(states: dict[str, ItemState]) -> pa.Table:
    ids = list(states)
    values = list(states.values())
    columns: dict[str, Any] = {"item_id": ids}
    for name in _STATE_NAMES:
        columns[name] = [getattr(s, name) for s in values]
    columns["row"] = [_encode(s.row) if s.row else "" for s in values]
    return pa.table(columns, schema=SCHEMA)


def _keys(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The ids as a numpy bytes array (compared bytewise, like Arrow's sort)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
    if ids.type != pa.string():
        ids = ids.cast(pa.string())
    if len(ids) == 0:
        return np.array([], dtype="S1")
    lengths = pc.binary_length(ids)
    low, high = pc.min_max(lengths).values()
    width = high.as_py()
    if low.as_py() == width and width > 0 and ids.null_count == 0:
        # Item ids are 16 hex digits: view the Arrow buffer itself, no copy, no objects.
        offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32, count=len(ids) + 1, offset=ids.offset * 4)
        return np.frombuffer(ids.buffers()[2], dtype=f"S{width}", count=len(ids), offset=int(offsets[0]))
    return np.array([s.encode("utf-8") for s in ids.to_pylist()], dtype=f"S{max(width, 1)}")


_decode = json.JSONDecoder().decode
_encode = json.JSONEncoder(ensure_ascii=False).encode


def _parse(raw: bytes) -> Any:
    """json.loads(raw), as journal.replay reads a line, minus its per-call overhead (a tenth of
    a migration): a UTF-8 line is decoded directly; anything else takes json.loads' own path
    (a BOM, UTF-16), so a line means exactly what it means to the replay. None if unreadable."""
    try:
        return _decode(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        pass
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _take(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """table.take(rows), a record batch at a time. Arrow's own take concatenates a chunked
    string column whole before it takes anything: at 10^6 items that copied the 300 MB `row`
    column for every 50,000 rows taken (and the manifest's columns for every chunk it wrote)."""
    batches = table.to_batches()
    if len(batches) <= 1 or not len(rows):
        return table.take(pa.array(rows, pa.int64()))
    starts = np.cumsum([0] + [len(batch) for batch in batches])
    which = np.searchsorted(starts, rows, side="right") - 1
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(len(batches) + 1))
    parts = [
        batches[b].take(pa.array(rows[order[bounds[b] : bounds[b + 1]]] - starts[b]))
        for b in range(len(batches))
        if bounds[b] < bounds[b + 1]
    ]
    taken = pa.Table.from_batches(parts, schema=table.schema).combine_chunks()
    if bool(np.all(order[1:] > order[:-1])):
        return taken  # already in the order asked (rows ascending across batches)
    back = np.empty(len(order), dtype=np.int64)
    back[order] = np.arange(len(order))
    return taken.take(pa.array(back))


def _query(ids: list[str]) -> np.ndarray:
    try:
        return np.array(ids, dtype="S")
    except UnicodeEncodeError:
        return np.array([s.encode("utf-8") for s in ids], dtype="S")


class Ledger:
    """Every item the journal names, with its state; plus the runs and the torn-line count."""

    def __init__(self, out: OutputDir):
        self.out = out
        self.table = SCHEMA.empty_table()
        self.runs: list[dict[str, Any]] = []
        self._torn = 0  # torn lines before self.offset
        self._torn_tail = 0  # a last line with no newline yet: torn, or a writer mid-line
        self.bad_lines = 0  # whole lines skipped for wrongly typed fields (journal.clean_event)
        self.max_cost = 0.0  # the highest cost one attempt was booked at, in any run
        self.offset = 0  # journal bytes folded into the table (always just after a newline)
        self.item_offset = 0  # where the last item event ends: the manifest's freshness stamp
        self.from_snapshot = False
        self.replayed_lines = 0
        self.autosave = False  # checkpoint during a long replay (only the run, which holds the lock)
        self._chain: list[str] = []  # the checkpoint files this state is built on, base first
        self._maps: list[mmap.mmap] = []  # their mappings, for release_pages()
        self._seq = 0
        self._base_rows = 0  # rows of the chain's base
        self._saved_rows = 0  # rows of self.table already in checkpoint files
        self._index()

    # ------------------------------------------------------------------ building

    def _index(self) -> None:
        """The sorted ids as numpy bytes, and what the runner asks of each item as numpy
        columns: computed once per table, so a lookup is a searchsorted and three gathers.
        `row` is measured by its offsets alone: its text is never read (nor paged in).

        The table is the chain's segments one after another; an id may have a row in several,
        and the last one is its state. A base alone is sorted already: no sort at all."""
        table = self.table
        keys = _keys(table.column("item_id"))
        if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
            order = np.argsort(keys, kind="stable")
            ordered = keys[order]
            last = np.empty(len(ordered), dtype=bool)
            last[:-1] = ordered[1:] != ordered[:-1]
            last[-1] = True
            self._keys, self._rows = ordered[last], order[last]
        else:
            self._keys, self._rows = keys.copy(), np.arange(len(keys))  # in memory, not paged from the file
        self._live = np.zeros(len(table), dtype=bool)
        self._live[self._rows] = True
        if len(table):
            codes = pc.index_in(table.column("status"), value_set=pa.array(STATUS)).fill_null(0)
            self._codes = codes.to_numpy().astype(np.int8)
            self._attempts = table.column("attempts").fill_null(0).to_numpy()
            self._has_row = pc.greater(pc.binary_length(table.column("row")), 0).to_numpy()
        else:
            self._codes = np.zeros(0, np.int8)
            self._attempts = np.zeros(0, np.int64)
            self._has_row = np.zeros(0, bool)

    @staticmethod
    def _open(path: Path) -> tuple[dict[str, Any], pa.Table, mmap.mmap]:
        """A checkpoint file's metadata and rows, memory-mapped (zero copy), and its mapping."""
        with path.open("rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        reader = ipc.open_file(pa.BufferReader(pa.py_buffer(mapped)))
        meta = json.loads((reader.schema.metadata or {}).get(_META_KEY, b"{}"))
        if meta.get("version") != VERSION or reader.schema.remove_metadata() != SCHEMA:
            raise ValueError(f"{path.name}: not a ledger checkpoint of this version")
        return meta, reader.read_all().replace_schema_metadata(None), mapped

    def release_pages(self) -> None:
        """Unmap the checkpoint pages this process has read (they stay in the page cache, and
        come back on the next read). A mapped page read once counts in the RSS for good: a
        compaction reads the whole base, so at 10^6 items the RSS grew by the 400 MB file."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        for mapped in self._maps:
            try:
                mapped.madvise(mmap.MADV_DONTNEED)
            except (ValueError, OSError):
                pass  # closed, or a platform that refuses: only memory is at stake

    def _load_snapshot(self) -> None:
        """The newest checkpoint that belongs to this journal, with the segments it builds on."""
        for seq, path in segment_files(self.out):
            try:
                meta, last, mapped = self._open(path)
                offset = int(meta["offset"])
                if self.out.journal.stat().st_size < offset or _hash_before(self.out.journal, offset) != meta["check"]:
                    continue  # not a checkpoint of this journal (edited, or cut by a power loss)
                opened = [self._open(self.out.path / name) for name in meta["chain"][:-1]]
            except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
                continue
            tables = [table for _, table, _ in opened] + [last]
            self._maps = [m for _, _, m in opened] + [mapped]
            self.table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
            self.runs, self._torn = list(meta["runs"]), int(meta["torn"])
            self.bad_lines, self.max_cost = int(meta["bad"]), float(meta["max_cost"])
            self.offset, self.item_offset = offset, int(meta["item_offset"])
            self._chain, self._seq, self._meta_offset = list(meta["chain"]), seq, offset
            self._base_rows, self._saved_rows = len(tables[0]), len(self.table)
            self.from_snapshot = True
            self._index()
            self.release_pages()
            return

    def refresh(self) -> Ledger:
        """Fold in what the journal gained since (whole lines only: a writer may be mid-line)."""
        if not self.out.journal.exists():
            return self
        self._torn_tail = 0
        with self.out.journal.open("rb") as f:
            f.seek(self.offset)
            position = self.offset
            touched: dict[str, ItemState] = {}
            chunk: list[tuple[int, bytes]] = []
            for raw in f:
                position += len(raw)
                chunk.append((position, raw))
                if len(chunk) >= _LINES_PER_CHUNK:
                    self._replay_chunk(chunk, touched)
                    chunk = []
                    if len(touched) >= _MERGE_AT:
                        self._merge(touched)
                        touched = {}
                        if self.autosave and len(self.table) - self._saved_rows >= 2 * _MERGE_AT:
                            self.checkpoint()  # a long replay keeps its memory flat
            self._replay_chunk(chunk, touched)
            self._merge(touched)
        return self

    def _replay_chunk(self, chunk: list[tuple[int, bytes]], touched: dict[str, ItemState]) -> None:
        events: list[tuple[int, dict[str, Any]]] = []
        for end, raw in chunk:
            if not raw.endswith(b"\n"):
                self._torn_tail = 1  # the last line: never folded into a checkpoint
                continue
            self.offset = end
            self.replayed_lines += 1
            event = _parse(raw)
            if not isinstance(event, dict):
                self._torn += 1
                continue
            event = clean_event(event)
            if event is None:
                self.bad_lines += 1
                continue
            if event.get("e") == "run":
                self.runs.append(event)
                continue
            if isinstance(event.get("id"), str):
                events.append((end, event))
        if not events:
            return
        # Items this chunk names for the first time since the table: start from their row.
        fresh = list({e["id"] for _, e in events if e["id"] not in touched})
        for item_id, state in zip(fresh, self._states(fresh), strict=True):
            touched[item_id] = state or ItemState()
        for end, event in events:
            apply_event(event, touched[event["id"]])
            self.item_offset = end
            cost = event.get("cost")
            if cost and cost > self.max_cost:
                self.max_cost = float(cost)

    def _states(self, ids: list[str]) -> list[ItemState | None]:
        """Raw states (open attempt not yet counted) from the table, None where absent."""
        positions = self.positions(ids)
        found = positions >= 0
        result: list[ItemState | None] = [None] * len(ids)
        if not found.any():
            return result
        rows = _take(self.table, positions[found]).to_pylist()
        for i, row in zip(np.flatnonzero(found), rows, strict=True):
            result[i] = _state(row)
        return result

    def _merge(self, touched: dict[str, ItemState]) -> None:
        """Append the touched items' states: they supersede their earlier rows."""
        if not touched:
            return
        self.table = pa.concat_tables([self.table, _table(touched)]) if len(self.table) else _table(touched)
        self._index()

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self._keys)

    def new_seen(self) -> np.ndarray:
        """A mark per table row, for not_in()."""
        return np.zeros(len(self.table), dtype=bool)

    def stamp(self) -> str:
        """Names the item state exactly: where the last item event ends, and the bytes before it."""
        if not self.item_offset:
            return "0"
        return f"{self.item_offset}:{_hash_before(self.out.journal, self.item_offset)}"

    def positions(self, ids: list[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Row of each id in self.table, -1 where the journal does not name it."""
        if not len(ids) or not len(self._keys):
            return np.full(len(ids), -1, dtype=np.int64)
        query = _query(ids) if isinstance(ids, list) else _keys(ids)
        at = np.searchsorted(self._keys, query)
        clipped = np.minimum(at, len(self._keys) - 1)
        hit = (at < len(self._keys)) & (self._keys[clipped] == query)
        return np.where(hit, self._rows[clipped], -1).astype(np.int64)

    def lookup(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(status code, attempts, has a row) per id; code NO_STATE for an id with no events.
        Status codes index STATUS."""
        positions = self.positions(ids)
        found = positions >= 0
        at = np.where(found, positions, 0)
        if not len(self._codes):
            return np.full(len(ids), NO_STATE, np.int8), np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        codes = np.where(found, self._codes[at], NO_STATE).astype(np.int8)
        return codes, np.where(found, self._attempts[at], 0), found & self._has_row[at]

    def columns(self, positions: np.ndarray) -> dict[str, pa.Array]:
        """The manifest's state columns for these rows of the table (-1: no events, defaults)."""
        found = positions >= 0
        if len(self.table):
            taken = _take(self.table.select(_STATE_NAMES), np.where(found, positions, 0))
            absent = pa.array(~found)
            result = {
                name: pc.if_else(absent, pa.scalar(None, SCHEMA.field(name).type), taken.column(name).combine_chunks())
                if not found.all()
                else taken.column(name).combine_chunks()
                for name in _STATE_NAMES
            }
        else:
            result = {name: pa.nulls(len(positions), SCHEMA.field(name).type) for name in _STATE_NAMES}
        for name, default in (("attempts", 0), ("rate_limited", 0), ("unanswered", 0), ("cost_usd", 0.0)):
            result[name] = result[name].fill_null(default)
        result["status"] = result["status"].fill_null(ItemStatus.PENDING.value)
        result["cost_usd"] = pc.round(result["cost_usd"], 6)
        opened = pc.cast(result.pop("open_attempt").fill_null(False), pa.int64())
        result["unanswered"] = pc.add(result["unanswered"], opened)
        for name in ("first_sent_at", "finished_at"):
            epoch = result[name]
            millis = pc.cast(pc.floor(pc.multiply(epoch, 1000.0)), pa.int64())
            millis = pc.if_else(pc.equal(epoch, 0.0), pa.scalar(None, pa.int64()), millis)
            result[name] = pc.cast(millis, pa.timestamp("ms", tz="UTC"))
        return result

    def not_in(self, seen: np.ndarray) -> Iterator[tuple[str, ItemState]]:
        """(id, state) of the rows not marked in `seen`."""
        if not len(self.table):
            return
        for row in self.table.filter(pa.array(self._live & ~seen)).to_pylist():
            yield row["item_id"], _final(_state(row))

    def get(self, item_id: str) -> ItemState | None:
        state = self._states([item_id])[0]
        return _final(state) if state is not None else None

    def where_status(self, *statuses: str) -> Iterator[tuple[str, ItemState]]:
        """(id, state) of the items whose status is one of these: few, in a healthy output."""
        if not len(self.table):
            return
        mask = pc.and_(pc.is_in(self.table.column("status"), value_set=pa.array(statuses)), pa.array(self._live))
        for row in self.table.filter(mask).to_pylist():
            yield row["item_id"], _final(_state(row))

    def item_ids(self, batch: int = 50_000) -> Iterator[str]:
        for start in range(0, len(self._rows), batch):
            yield from _take(self.table.select(["item_id"]), self._rows[start : start + batch]).column(0).to_pylist()

    def states(self, batch: int = 50_000) -> Iterator[tuple[str, ItemState]]:
        for start in range(0, len(self._rows), batch):
            for row in _take(self.table, self._rows[start : start + batch]).to_pylist():
                yield row["item_id"], _final(_state(row))

    @property
    def items(self) -> _ItemsView:
        return _ItemsView(self)

    @property
    def torn_lines(self) -> int:
        return self._torn + self._torn_tail

    def _sum(self, column: str) -> float:
        if not len(self.table):
            return 0
        values = pc.cast(self.table.column(column), pa.float64()).fill_null(0).to_numpy()
        return float(values[self._live].sum())

    @property
    def spent(self) -> float:
        return float(self._sum("cost_usd"))

    @property
    def unanswered(self) -> int:
        return int(self._sum("unanswered") + self._sum("open_attempt"))

    @property
    def rate_limited(self) -> int:
        return int(self._sum("rate_limited"))

    @property
    def on_server(self) -> int:
        """Items whose v2 job is on the server, not yet collected (journal.holds_job)."""
        if not len(self.table):
            return 0
        table = self.table
        pending = pc.and_(pc.equal(table.column("status"), ItemStatus.PENDING.value), pa.array(self._live))
        has_id = pc.greater(pc.binary_length(table.column("request_id")), 0)
        polled = pc.and_(has_id, pc.invert(table.column("open_attempt")))
        mask = pc.and_(pending, polled).fill_null(False)
        return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)

    @property
    def price(self) -> float | None:
        return latest_price(self.runs)

    def status_counts(self) -> dict[str, int]:
        if not len(self.table):
            return {}
        counts = pc.value_counts(self.table.column("status").filter(pa.array(self._live)))
        return {str(v["values"]): int(v["counts"]) for v in counts.to_pylist()}

    # ------------------------------------------------------------------ writing

    def checkpoint(self) -> bool:
        """Write what the journal said up to self.offset, atomically; False if the folder
        refused it. Only the rows added since the last checkpoint are written, as a new
        segment; once those outgrow a quarter of the base, the live rows become a new base,
        sorted (so the total written stays linear in the news, as with a doubling array)."""
        new = len(self.table) - self._saved_rows
        if new == 0 and self._chain and self.offset == self._checkpointed_offset():
            return True
        compact = (
            not self._chain
            or len(self._chain) >= _MAX_SEGMENTS
            or len(self.table) - self._base_rows > _COMPACT_AT * max(self._base_rows, 1)
        )
        seq = max([self._seq, *(n for n, _ in segment_files(self.out))]) + 1
        path = segment_path(self.out, seq)
        batches: Iterator[pa.Table]
        if compact:
            # The live rows, in id order, a batch at a time: never a second copy of the table,
            # nor the old files' pages kept mapped once read.
            batches = self._live_batches()
            chain = [path.name]
        else:
            batches = iter([self.table.slice(self._saved_rows)])
            chain = [*self._chain, path.name]
        meta = {
            "version": VERSION,
            "offset": self.offset,
            "check": _hash_before(self.out.journal, self.offset) if self.out.journal.exists() else "",
            "item_offset": self.item_offset,
            "torn": self._torn,
            "bad": self.bad_lines,
            "max_cost": self.max_cost,
            "runs": self.runs,
            "chain": chain,
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            schema = SCHEMA.with_metadata({_META_KEY: json.dumps(meta).encode()})
            with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, schema) as writer:
                for batch in batches:
                    writer.write_table(batch.replace_schema_metadata(schema.metadata))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            _crash_point("ledger-before-rename")
            os.replace(tmp, path)
            fsync_dir(self.out.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            return False
        self._chain, self._seq, self._meta_offset = chain, seq, self.offset
        # Read the rows back memory-mapped: the pages are the file's, not the heap's.
        try:
            _, written, mapped = self._open(path)
        except (OSError, ValueError, pa.ArrowException):
            self._chain, self._seq, self._saved_rows = [], 0, 0  # unreadable: the next checkpoint starts afresh
            return False
        if compact:
            self.table = written
            self._base_rows = len(written)
            self._maps = [mapped]
        else:
            self.table = pa.concat_tables([self.table.slice(0, self._saved_rows), written])
            self._maps.append(mapped)
        self._index()
        self.release_pages()
        self._saved_rows = len(self.table)
        _crash_point("ledger-before-cleanup")
        for n, old in segment_files(self.out):
            if n < seq and old.name not in chain:
                old.unlink(missing_ok=True)  # superseded; a reader that has it open keeps it
        return True

    def _live_batches(self) -> Iterator[pa.Table]:
        for start in range(0, len(self._rows), _MERGE_AT):
            yield _take(self.table, self._rows[start : start + _MERGE_AT])
            self.release_pages()

    def _checkpointed_offset(self) -> int:
        return getattr(self, "_meta_offset", -1)


def _state(row: dict[str, Any]) -> ItemState:
    values = {name: row[name] for name in _STATE_NAMES}
    for name in ("attempts", "cost_usd", "rate_limited", "unanswered"):
        values[name] = values[name] or 0
    values["open_attempt"] = bool(values["open_attempt"])
    return ItemState(**values, row=json.loads(row["row"]) if row["row"] else {})


def _final(state: ItemState) -> ItemState:
    """As journal.replay returns it: a `sent` with no outcome after it counts as unanswered."""
    if state.open_attempt:
        state = dataclasses.replace(state, unanswered=state.unanswered + 1)
    return state


class _ItemsView(Mapping):
    """Replay.items' interface over the table, for the few callers that walk states one by one."""

    def __init__(self, ledger: Ledger):
        self._ledger = ledger

    def __getitem__(self, item_id: str) -> ItemState:
        state = self._ledger.get(item_id)
        if state is None:
            raise KeyError(item_id)
        return state

    def get(self, item_id: str, default: Any = None) -> Any:
        state = self._ledger.get(item_id)
        return default if state is None else state

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self._ledger.positions([item_id])[0] >= 0

    def __iter__(self) -> Iterator[str]:
        return self._ledger.item_ids()

    def __len__(self) -> int:
        return len(self._ledger)

    def items(self) -> Iterable[tuple[str, ItemState]]:  # type: ignore[override]
        return self._ledger.states()

    def values(self) -> Iterable[ItemState]:  # type: ignore[override]
        return (state for _, state in self._ledger.states())


def _crash_point(name: str) -> None:
    """Tests set BATCH_RUNNER_CRASH_AT to die here as kill -9 would."""
    if os.environ.get("BATCH_RUNNER_CRASH_AT") == name:
        os._exit(137)


def load(out: OutputDir, checkpoint_past: int | None = None) -> Ledger:
    """The ledger as of now: the checkpoint, then the journal past it. When more than
    `checkpoint_past` lines had to be replayed, a new checkpoint is written (best effort): only
    the run asks for that, as it holds the folder's lock; status and report only read."""
    ledger = Ledger(out)
    ledger.autosave = checkpoint_past is not None
    if out.journal.exists():
        ledger._load_snapshot()
    ledger.refresh()
    if checkpoint_past is not None and ledger.replayed_lines > checkpoint_past:
        ledger.checkpoint()
    return ledger
