"""Text files a job reads (the manifest, its value files): looked at before they are opened,
then read whole as UTF-8, with a problem naming the file when that cannot be done."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from batch_runner.errors import ManifestError, Problem


def display(path: Path) -> str:
    """The path as the user would type it: relative when under the current folder."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path.absolute()) if relative.startswith("..") else relative


def file_problem(path: Path, wanted: str) -> str | None:
    """Why path is not a file that can be read, or None. Looked at, never opened: opening a
    FIFO blocks until something writes to it, and /dev/zero never ends."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file; check the path"
    except (OSError, ValueError) as exc:
        return f"cannot be opened ({getattr(exc, 'strerror', None) or exc}); check the path"
    if stat.S_ISDIR(mode):
        return f"is a folder; give {wanted}"
    if not stat.S_ISREG(mode):
        return f"is not a regular file but a pipe, socket or device; save it as a file and give {wanted}"
    return None


def read_text(path: Path, shown: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError([Problem(shown, None, f"cannot read the file ({exc.strerror}); check its permissions")])
    if b"\0" in data:
        raise ManifestError([Problem(shown, None, "is a binary file, not a text manifest")])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError([Problem(shown, line, "is not valid UTF-8 text; save the file as UTF-8")])
