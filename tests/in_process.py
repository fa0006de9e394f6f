"""`batch-runner ARGS` as subprocess.run would give it back, but run inside the test process.

A new interpreter pays about a second of imports (pandas, pyarrow, Pillow, requests) before the
CLI does anything; over a hundred tests start one. `cli()` calls batch_runner.cli.main.main(argv)
instead and returns the same CompletedProcess (returncode, stdout, stderr), with what a child
process would have had:

- env is the whole environment, as in subprocess.run: an env without SEGMIND_API_KEY hides the
  key from the run; env=None inherits this process's. cwd defaults to the repository.
- SystemExit (argparse's errors and --help) becomes the return code; an exception that escapes
  main() is printed as a traceback and returns 1, as the interpreter would.
- stdout and stderr are text with universal newlines (a progress bar's "\r" reads as "\n").
  Only the calling thread and the threads it starts, transitively, are captured: a sandbox the
  test serves from a thread of its own keeps writing where it did, and its noise is not taken
  for the run's.
- A call that outlives its timeout raises subprocess.TimeoutExpired (SIGALRM ends it).
- Afterwards os.environ, the working directory, sys.argv, sys.stdout/stderr and the signal
  handlers are what they were before.

Some things only a process can do, and then cli() starts one: `process=True` (a test about the
process itself), an env that makes the process kill itself (BATCH_RUNNER_CRASH_AT: os._exit), a
call from a thread other than the main one (signal handlers and timers need it), or a call made
while another in-process call is running (stdout, env and cwd are process-wide).
BATCH_RUNNER_TEST_CLI=process in pytest's own environment makes every call a process, to tell an
in-process artefact from a real failure.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Variables that make the run end its own process (store/ledger.py's crash points): in here they
# would end pytest.
PROCESS_ONLY_ENV = ("BATCH_RUNNER_CRASH_AT",)
# The CLI installs handlers for these (cli/run.py); whatever it leaves behind is undone.
_HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)
_one_at_a_time = threading.Lock()
# Threads kept for the life of the process by design (api/client.py's one deadline thread for
# every request, tqdm's monitor), which a call may happen to be the first to start.
LONG_LIVED_THREADS = frozenset({"watchdog", "tqdm_monitor"})


def cli(
    args: Sequence[str],
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 120,
    process: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`batch-runner *args`: in this process when it can be equivalent, else in a child."""
    command = [sys.executable, "-m", "batch_runner", *args]
    where = Path(cwd or REPO)
    needs_process = (
        process
        or os.environ.get("BATCH_RUNNER_TEST_CLI") == "process"
        or any(name in (os.environ if env is None else env) for name in PROCESS_ONLY_ENV)
        or threading.current_thread() is not threading.main_thread()
    )
    if needs_process or not _one_at_a_time.acquire(blocking=False):
        return subprocess.run(command, capture_output=True, text=True, cwd=where, env=env, timeout=timeout)
    try:
        return _in_process(command, list(args), where, env, timeout)
    finally:
        _one_at_a_time.release()


class _Deadline(BaseException):
    """Raised by SIGALRM in the main thread when the call outlives its timeout. A BaseException,
    so that main()'s `except Exception` (the never-a-traceback promise) does not swallow it."""


def _in_process(
    command: list[str], args: list[str], cwd: Path, env: Mapping[str, str] | None, timeout: float | None
) -> subprocess.CompletedProcess[str]:
    from batch_runner.cli.main import main

    out, err = _Capture(sys.stdout), _Capture(sys.stderr)
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    saved_streams = sys.stdout, sys.stderr
    saved_handlers = {sig: signal.getsignal(sig) for sig in _HANDLED}
    owned, deadline = _Owned(), _Timer()
    code: int
    try:
        if env is not None:
            _replace_environ(env)
        os.chdir(cwd)
        sys.argv = [command[0], *args]
        sys.stdout, sys.stderr = out.bind(owned), err.bind(owned)
        if timeout is not None:
            signal.signal(signal.SIGALRM, deadline.expire)
            signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.001))
        with owned:
            try:
                code = _exit_status(main(args))
            except SystemExit as exc:
                code = _exit_status(exc.code)
            except _Deadline:
                raise
            except KeyboardInterrupt:
                raise  # someone pressed Ctrl-C at pytest: let it stop the session
            except BaseException:  # noqa: BLE001 - what the interpreter prints for an uncaught error
                traceback.print_exc()
                code = 1
            finally:
                deadline.disarm()
        owned.wait_for_the_rest()
    except _Deadline:
        raise subprocess.TimeoutExpired(command, timeout or 0, output=out.text(), stderr=err.text()) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in saved_handlers.items():
            signal.signal(sig, handler)
        sys.stdout, sys.stderr = saved_streams
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        if env is not None:
            _replace_environ(saved_env)
        out.close()
        err.close()
    return subprocess.CompletedProcess(command, code, out.text(), err.text())


class _Timer:
    """SIGALRM's handler: raises _Deadline until disarmed, so that an alarm arriving just as
    main() returns cannot break the clean-up that follows."""

    def __init__(self) -> None:
        self.armed = True

    def expire(self, signum: int, frame: Any) -> None:
        if self.armed:
            self.armed = False
            raise _Deadline

    def disarm(self) -> None:
        self.armed = False


def _exit_status(code: object) -> int:
    """What a process's parent sees for sys.exit(code) (or main()'s return value)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)  # sys.exit("message"): the interpreter prints it, exit status 1
    return 1


def _replace_environ(env: Mapping[str, str]) -> None:
    tz = os.environ.get("TZ")
    os.environ.clear()
    os.environ.update(env)
    if os.environ.get("TZ") != tz:
        time.tzset()


class _Owned:
    """The calling thread and every thread started from an owned thread while the call lasts:
    what a child process would have held. Thread.start is wrapped only for that time."""

    def __init__(self) -> None:
        self.threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        self._start = threading.Thread.start

    def __contains__(self, thread: object) -> bool:
        return thread in self.threads

    def __enter__(self) -> _Owned:
        owned, start = self.threads, self._start

        def start_owned(thread: threading.Thread) -> None:
            if threading.current_thread() in owned:
                owned.add(thread)
            start(thread)

        owned.add(threading.current_thread())
        threading.Thread.start = start_owned  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        threading.Thread.start = self._start  # type: ignore[method-assign]
        self.threads.discard(threading.current_thread())

    def wait_for_the_rest(self, timeout_s: float = 5.0) -> None:
        """A child's threads end with it; here they would live on and keep sending into the
        test's sandbox or folder. The CLI joins its pool before it returns, so this waits only
        for stragglers, and warns of any still alive (a leak that Python callers of run() have too)."""
        deadline = time.monotonic() + timeout_s
        rest = [t for t in self.threads if t.name not in LONG_LIVED_THREADS and t is not threading.current_thread()]
        for thread in rest:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = sorted(thread.name for thread in rest if thread.is_alive())
        if alive:
            warnings.warn(f"batch-runner left thread(s) running after main() returned: {alive}", stacklevel=1)


class _Capture(io.TextIOBase):
    """sys.stdout or sys.stderr during a call: owned threads' text is kept, any other thread's
    goes on to the stream this one replaced (pytest's capture, a sandbox thread's noise)."""

    encoding = "utf-8"  # a child's pipe is UTF-8 text; tqdm picks its bar characters by it
    errors = "strict"

    def __init__(self, replaced: Any):
        super().__init__()
        self._replaced = replaced
        self._owned: _Owned | None = None
        self._parts: list[str] = []
        self._lock = threading.Lock()

    def bind(self, owned: _Owned) -> _Capture:
        self._owned = owned
        return self

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # a pipe, as subprocess.run(capture_output=True) gives the child

    def write(self, text: str) -> int:
        if self._owned is not None and threading.current_thread() in self._owned:
            with self._lock:
                self._parts.append(text)
            return len(text)
        return self._replaced.write(text)

    def flush(self) -> None:
        if self._owned is None or threading.current_thread() not in self._owned:
            self._replaced.flush()

    def close(self) -> None:
        # A thread of the run that outlives the call (an idle connection, the client's
        # watchdog) writes to where the text would have gone without us from now on.
        self._owned = None

    @property
    def closed(self) -> bool:
        return False

    def text(self) -> str:
        with self._lock:
            joined = "".join(self._parts)
        return joined.replace("\r\n", "\n").replace("\r", "\n")
