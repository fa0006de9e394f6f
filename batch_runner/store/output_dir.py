"""The run's folder: images, journal, manifest, and the lock that keeps one run at a time."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from batch_runner.errors import BatchRunnerError
from batch_runner.store.journal import GroupSync

IMAGES = "images"
JOURNAL = "journal.jsonl"
MANIFEST = "manifest.parquet"
METADATA = "metadata.jsonl"
RUNS = "runs.jsonl"
PACING = "pacing.json"
LOCK = ".lock"
_PARTIAL = ".partial"
# Never follow a link where the runner writes: a pre-made `.lock -> ~/.bashrc` would be truncated.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class AlreadyRunning(BatchRunnerError):
    """Another run holds the output folder (its lock); nothing was sent."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write data so that path holds either its old content or all of data, never a part.

    The temporary name ends in .partial, which nothing ever reads as a result."""
    _replace_durably(path, data)
    fsync_dir(path.parent)


def _replace_durably(path: Path, data: bytes) -> None:
    """Write data to a .partial sibling, fsync it, and rename it over path (the folder's own
    fsync, which makes the rename durable, is the caller's)."""
    tmp = path.with_name(f".{path.name}{_PARTIAL}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class OutputDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.images = self.path / IMAGES
        self.journal = self.path / JOURNAL
        self.manifest = self.path / MANIFEST
        self.metadata = self.path / METADATA
        self.runs = self.path / RUNS
        self.pacing = self.path / PACING
        self._lock_fd: int | None = None
        self._images_fd: int | None = None
        self._images_lock = threading.Lock()
        self._renamed = 0

    def exists(self) -> bool:
        return self.journal.exists() or self.manifest.exists()

    def prepare(self) -> None:
        self.images.mkdir(parents=True, exist_ok=True)

    def lock(self, wait_s: float = 0.0) -> None:
        """Take the folder for this process, waiting up to wait_s for another run to finish.
        flock is released by the kernel when the process dies, even by kill -9, so a crashed
        run never leaves the folder stuck."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.refuse_links()
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(min(0.5, max(0.01, deadline - time.monotonic())))
                    continue
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                waited = f" after waiting {wait_s:g} s" if wait_s else ""
                raise AlreadyRunning(f"{self.path} is in use by a running batch-runner (pid {holder}){waited}")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def refuse_links(self) -> None:
        """OSError(ELOOP) naming the first of the folder's own files that is a symbolic link:
        writing through it would overwrite whatever it points at."""
        names = [LOCK, JOURNAL, MANIFEST, METADATA, RUNS, PACING, IMAGES]
        names += [p.name for p in self.path.glob("ledger-*.arrow")]
        if self.images.is_dir() and not self.images.is_symlink():
            names += [f"{IMAGES}/{p.name}" for p in self.images.iterdir() if p.is_symlink()]
        for name in names:
            path = self.path / name
            if path.is_symlink():
                raise OSError(
                    errno.ELOOP,
                    f"{path} is a symbolic link; the runner never writes through links in its output folder: "
                    "remove it, or choose another output folder",
                    str(path),
                )

    def unlock(self) -> None:
        if self._images_fd is not None:
            os.close(self._images_fd)
            self._images_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def append_run_record(self, record: dict[str, Any]) -> None:
        """One line per run in runs.jsonl, for monitors and dashboards; fsynced like the journal."""
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        fd = os.open(self.runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def remove_partials(self) -> int:
        """Delete files a crash left half-written; they were never results."""
        removed = 0
        for folder in (self.path, self.images):
            if folder.is_dir():
                for partial in folder.glob(f".*{_PARTIAL}"):
                    partial.unlink(missing_ok=True)
                    removed += 1
        return removed

    def image_path(self, item_id: str, extension: str) -> Path:
        return self.images / f"{item_id}.{extension}"

    def save_image(self, item_id: str, data: bytes, extension: str) -> str:
        """Store a received image durably; returns its path relative to the folder."""
        path = self.image_path(item_id, extension)
        _replace_durably(path, data)
        # The rename is durable once the folder is fsynced; workers saving at once share one
        # fsync of it (group commit), each returning only after one that covers its rename.
        with self._images_lock:
            if self._images_fd is None:
                self._images_fd = os.open(self.images, os.O_RDONLY)
                self._images_sync = GroupSync(self._images_fd, lambda: self._renamed, os.fsync)
            self._renamed += 1
            mine = self._renamed
        self._images_sync.wait_for(mine)
        return path.relative_to(self.path).as_posix()

    def find_image(self, item_id: str) -> Path | None:
        matches = sorted(p for p in self.images.glob(f"{item_id}.*") if not p.name.endswith(_PARTIAL))
        return matches[0] if matches else None
