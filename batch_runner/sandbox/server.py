"""The sandbox's HTTP server: real sockets on 127.0.0.1, a thread per connection.

Latency is slept in the connection's own thread, so requests never queue behind one another.
Each response leaves in one write with TCP_NODELAY set: a stdlib handler writing headers and
body separately meets Nagle's algorithm and delayed ACKs, ~40 ms per keep-alive request.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from batch_runner.sandbox.api import V1_PATH, V2_PATH, Reply, SandboxApi, SandboxConfig


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SegmindSandbox/1.0"
    timeout = 120  # an idle keep-alive connection gives its thread back
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a benchmark's thousands of requests must not flood the terminal

    def _serve(self) -> None:
        api = self.server.api
        record = api.begin(self.command, self.path)
        status, recorded = 0, False
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            reply = api.handle(record, self.headers, body)
            status = reply.status
            if reply.delay_s > 0:
                time.sleep(reply.delay_s)
            # Complete the record before the answer leaves, so a client that has its answer
            # never finds the request unfinished in /sandbox/stats.
            api.end(record, status)
            recorded = True
            self._write(reply)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        finally:
            if not recorded:
                api.end(record, status)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    def _write(self, reply: Reply) -> None:
        phrase = http.client.responses.get(reply.status, "Unknown")
        lines = [
            f"HTTP/1.1 {reply.status} {phrase}",
            f"Server: {self.server_version}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
        ]
        lines += [f"{name}: {value}" for name, value in reply.headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if reply.mode == "hangup":
            # The request was handled (a v2 job created and billed), but no byte of the answer
            # leaves: the client cannot tell this from a request that never arrived.
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif reply.mode == "drop":
            # Promise the whole body, send a part, hang up: a truncated, billed response.
            self.wfile.write(head + reply.body[: len(reply.body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif reply.mode == "slow-headers":
            # The status line and headers a byte at a time: every read gets data in time, so
            # only an overall deadline ends the request.
            for i in range(len(head)):
                self.wfile.write(head[i : i + 1])
                self.wfile.flush()
                time.sleep(reply.byte_s)
            self.wfile.write(reply.body)
            self.wfile.flush()
        elif reply.mode == "trickle":
            self.wfile.write(head)
            chunks = 20
            step = max(1, len(reply.body) // chunks)
            for start in range(0, len(reply.body), step):
                time.sleep(reply.trickle_s / chunks)
                self.wfile.write(reply.body[start : start + step])
                self.wfile.flush()
        else:
            self.wfile.write(head + reply.body)
            self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], api: SandboxApi):
        self.api = api
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Sandbox:
    """A running sandbox. Use as a context manager, or call close().

    >>> with Sandbox(SandboxConfig(latency_s=0.1)) as sandbox:
    ...     requests.post(sandbox.endpoint, json={...}, headers={"x-api-key": sandbox.key})
    """

    def __init__(self, config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.config = config or SandboxConfig()
        self.api = SandboxApi(self.config)
        self._server = _Server((host, port), self.api)
        address = self._server.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self.url = f"http://{self.host}:{self.port}"
        self.api.base_url = self.url
        self._thread = threading.Thread(target=self._server.serve_forever, name="sandbox", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return self.url + V1_PATH

    @property
    def endpoint_v2(self) -> str:
        """The asynchronous API's submit URL (POST, then poll the answer's status_url)."""
        return self.url + V2_PATH

    @property
    def key(self) -> str:
        return self.config.keys[0]

    def stats(self, include_log: bool = True) -> dict[str, Any]:
        return self.api.stats(include_log)

    def serve_until_interrupted(self) -> None:
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        finally:
            self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
