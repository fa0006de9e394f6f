"""One overall deadline per network call, status line and headers included.

A socket timeout bounds each read, not the answer: a server that sends its status line and
headers one byte a second holds a request for ever, and so does one that trickles its body.
So every connection used inside `overall_deadline(t)` is cut (shutdown, which wakes a thread
blocked in recv) at t, whichever phase it is in: connecting, sending, waiting for headers,
reading the body. One watchdog thread serves every deadline.

Use it for any requests call: mount a DeadlineAdapter on the session (its connections know the
deadline of the thread using them), then

    with overall_deadline(time.monotonic() + 10):
        session.get(url, timeout=(5, 10))

`shorten_all(grace_s)` brings every deadline in flight to at most grace_s from now: a stopping
run (SIGTERM) gives the requests in flight that long, whatever the server does.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class Watchdog:
    """One thread for every deadline: a heap of [when, handle, callback], instead of a new
    timer thread per request. `cancel(handle)` drops the callback (and what it holds) at once."""

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []
        self._live: dict[int, list[Any]] = {}
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, deadline: float, callback: Any) -> int:
        handle = next(self._ids)
        entry = [deadline, handle, callback]
        with self._cond:
            heapq.heappush(self._heap, entry)
            self._live[handle] = entry
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)
                self._thread.start()
            if self._heap[0] is entry:
                self._cond.notify()
        return handle

    def cancel(self, handle: int) -> None:
        with self._cond:
            entry = self._live.pop(handle, None)
            if entry is not None:
                entry[2] = None
            if len(self._heap) > 1024 and len(self._heap) > 4 * len(self._live):
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2] is None:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, handle, callback = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                self._live.pop(handle, None)
            callback()


_WATCHDOG = Watchdog()


class Scope:
    """One call's deadline and the connections it used."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.closed = False
        # A connection was cut: whatever it seemed to answer is no answer. A status line cut
        # mid-headers parses as a 200 with no headers and an empty body.
        self.fired = False
        self._lock = threading.Lock()
        self._connections: list[Any] = []
        self._handles: list[int] = []

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def watch(self, connection: Any) -> None:
        with self._lock:
            if self.closed or any(c is connection for c in self._connections):
                return
            self._connections.append(connection)
            self._handles.append(_WATCHDOG.schedule(self.deadline, lambda: self._cut(connection)))

    def shorten(self, deadline: float) -> None:
        with self._lock:
            if self.closed or deadline >= self.deadline:
                return
            self.deadline = deadline
            for connection in self._connections:
                self._handles.append(_WATCHDOG.schedule(deadline, lambda c=connection: self._cut(c)))

    def _cut(self, connection: Any) -> None:
        with self._lock:
            if self.closed:
                return  # the call ended; the connection may serve another one by now
            self.fired = True
        shutdown(getattr(connection, "sock", None))

    def close(self) -> None:
        with self._lock:
            self.closed = True
            handles, self._handles, self._connections = self._handles, [], []
        for handle in handles:
            _WATCHDOG.cancel(handle)


def shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# How long a stopping run lets its requests in flight go on: a normal image (~12.8 s) started a
# little earlier still arrives, and a server holding a request hostage loses it soon.
STOP_GRACE_S = 10.0

_local = threading.local()
_live: set[Scope] = set()
_live_lock = threading.Lock()


def cut_short() -> bool:
    """This thread's call had a connection cut at its deadline."""
    scope = current()
    return scope is not None and scope.fired


def current() -> Scope | None:
    """The innermost deadline of this thread's call, if any."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


@contextmanager
def overall_deadline(deadline: float) -> Iterator[Scope]:
    """Every connection this thread uses inside the block is cut at `deadline` (monotonic)."""
    stack = _local.__dict__.setdefault("stack", [])
    outer = stack[-1] if stack else None
    scope = Scope(min(deadline, outer.deadline) if outer is not None else deadline)
    stack.append(scope)
    with _live_lock:
        _live.add(scope)
    try:
        yield scope
    finally:
        stack.pop()
        with _live_lock:
            _live.discard(scope)
        scope.close()


def shorten_all(grace_s: float) -> None:
    """Every call in flight, in any thread, ends within grace_s from now."""
    deadline = time.monotonic() + grace_s
    with _live_lock:
        scopes = list(_live)
    for scope in scopes:
        scope.shorten(deadline)


class _Watched:
    """A urllib3 connection that puts itself under the deadline of the thread using it."""

    def _watched(self) -> None:
        scope = current()
        if scope is not None:
            scope.watch(self)

    def connect(self) -> None:
        self._watched()
        super().connect()  # type: ignore[misc]

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._watched()
        super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections (direct or through a proxy) honour overall_deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = dict(_POOLS)
        return manager
