"""A fault-injecting HTTP proxy in front of an S3 server, on 127.0.0.1, for tests and benchmarks.

Point a client's endpoint at `proxy.endpoint_url` instead of the server's: every request is
forwarded as it came (headers included, so SigV4 signatures still match), except that a seeded
random share of them meets a fault instead:

  "503"    the answer is 503 SlowDown, as S3 says when throttling (not forwarded)
  "500"    the answer is 500 InternalError (not forwarded)
  "drop"   the request is forwarded, then the connection is closed without an answer: the
           server did the work (a PUT is stored) but the client cannot know
  "delay"  the request waits `delay_s` before it is forwarded

`stop()` closes the listening port and every open connection (clients get connection refused,
as from a stopped server) and `start()` opens the same port again, to play an outage;
`outage_after(predicate, seconds)` does both by itself once a matching request got its answer
(mid-job, at a point the test chooses). `hold_after(trigger, held)` makes the requests that match
`held` wait, once a request matching `trigger` got its answer, until `release()`: a job stalls at
a point the test chooses (a write it cannot finish) while the test does something to it.

    with FaultProxy(server.endpoint_url, rate=0.1, seed=0) as proxy:
        ...  # StorageOptions(endpoint_url=proxy.endpoint_url)
        proxy.injected  # Counter({"503": 4, "drop": 3, ...})

Nothing here needs pose-jobs: plain http.server and http.client.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import random
import socket
import threading
import time
import urllib.parse

KINDS = ("503", "500", "drop", "delay")
METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE")
_ERROR_BODIES = {
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
}
# Headers that describe one hop's connection and body framing, not the request: never forwarded.
_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


class FaultProxy:
    """A threaded HTTP proxy to `upstream_url` that injects faults of `kinds`, each request with
    probability `rate` (the kind drawn uniformly), on the requests whose method is in `methods`."""

    def __init__(
        self,
        upstream_url: str,
        rate: float = 0.0,
        kinds: tuple[str, ...] = KINDS,
        seed: int = 0,
        delay_s: float = 2.0,
        methods: tuple[str, ...] = METHODS,
    ):
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}: choose from {KINDS}")
        upstream = urllib.parse.urlsplit(upstream_url)
        self.upstream = (upstream.hostname, upstream.port)
        self.rate, self.kinds, self.delay_s, self.methods = rate, tuple(kinds), delay_s, tuple(methods)
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: collections.Counter = collections.Counter()
        self.requests = 0
        self.port = 0
        self.server: http.server.ThreadingHTTPServer | None = None
        self.connections: set[socket.socket] = set()
        self.outage: tuple | None = None  # (predicate, seconds or None), armed by outage_after
        self.outages = 0
        self.hold: tuple | None = None  # (trigger, held), armed by hold_after
        self.holding = False
        self.held = 0
        self.unanswered = 0  # requests the upstream did not answer (it was down)
        self.released = threading.Event()

    def outage_after(self, predicate, seconds: float | None) -> None:
        """Once a request for which `predicate(method, path)` is true has been answered, stop;
        start again after `seconds` (None: stay stopped until `start()`)."""
        self.outage = (predicate, seconds)

    def hold_after(self, trigger, held) -> None:
        """Once a request for which `trigger(method, path)` is true has been answered, every request
        for which `held(method, path)` is true waits (body read, not yet forwarded) until `release()`."""
        self.hold, self.holding = (trigger, held), False
        self.released.clear()

    def release(self) -> None:
        """Forward the held requests and hold no more."""
        self.hold = None
        self.released.set()

    def _maybe_hold(self, method: str, path: str) -> None:
        with self.lock:
            if self.hold is None or not self.holding or not self.hold[1](method, path):
                return
            self.held += 1
        self.released.wait()

    def _maybe_start_holding(self, method: str, path: str) -> None:
        with self.lock:
            if self.hold is not None and self.hold[0](method, path):
                self.holding = True

    def _maybe_go_down(self, method: str, path: str) -> None:
        with self.lock:
            if self.outage is None or not self.outage[0](method, path):
                return
            _, seconds = self.outage
            self.outage = None
            self.outages += 1

        def go_down():
            self.stop()
            if seconds is not None:
                time.sleep(seconds)
                self.start()

        threading.Thread(target=go_down, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def draw(self, method: str) -> str | None:
        """The fault for the next request (None: forward it as it is); counts both."""
        with self.lock:
            self.requests += 1
            if method not in self.methods or not self.kinds or self.random.random() >= self.rate:
                return None
            kind = self.random.choice(self.kinds)
            self.injected[kind] += 1
            return kind

    def start(self) -> FaultProxy:
        """Listen on 127.0.0.1 (the same port again after `stop`, a free one the first time)."""
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        for attempt in range(50):
            try:
                self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
                break
            except OSError:  # the old port still in TIME_WAIT for a moment after stop()
                if attempt == 49:
                    raise
                time.sleep(0.1)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection, as a server that went away."""
        server, self.server = self.server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self.lock:
            connections, self.connections = list(self.connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

    def setup(self):
        super().setup()
        with self.owner.lock:
            self.owner.connections.add(self.connection)
        self.upstream: http.client.HTTPConnection | None = None

    def finish(self):
        with self.owner.lock:
            self.owner.connections.discard(self.connection)
        if self.upstream is not None:
            self.upstream.close()
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format, *args):  # quiet: tests read counts, not logs
        pass

    def do_GET(self):
        self._forward()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _forward(self) -> None:
        body = self._read_body()
        self.owner._maybe_hold(self.command, self.path)
        kind = self.owner.draw(self.command)
        if kind in _ERROR_BODIES:
            self._answer_error(*_ERROR_BODIES[kind])
            return
        if kind == "delay":
            time.sleep(self.owner.delay_s)
        try:
            status, reason, headers, payload = self._ask_upstream(body)
        except OSError:  # upstream gone: as a proxy would, close without an answer
            with self.owner.lock:
                self.owner.unanswered += 1
            self.close_connection = True
            return
        if kind == "drop":
            self.close_connection = True
            return
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP_HEADERS and not (name.lower() == "content-length" and self.command != "HEAD"):
                self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()
        self.owner._maybe_start_holding(self.command, self.path)
        self.owner._maybe_go_down(self.command, self.path)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _ask_upstream(self, body: bytes):
        if self.upstream is None:
            self.upstream = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        connection = self.upstream
        try:
            connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_HEADERS and name.lower() != "content-length":
                    connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            self.upstream = None
            raise OSError("upstream did not answer") from None
        return response.status, response.reason, response.getheaders(), payload

    def _answer_error(self, status: int, code: str, message: str) -> None:
        payload = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{self.path.split('?')[0]}</Resource><RequestId>fault-proxy</RequestId></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
