"""A fault-injecting HTTP/1.1 reverse proxy for tests: put it between any HTTP client and a real
server (moto's S3, say) and make chosen responses fail the way networks and S3 fail.

    from support.http_fault_proxy import Fault, FaultProxy, OBJECT_GETS

    with FaultProxy(s3_endpoint, [Fault.slow_down(first=3, match=OBJECT_GETS)]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)   # point the client at the proxy
        ...                                                 # the first 3 object GETs get a 503
        assert proxy.stats["slow_down"] == 3

Faults (build them with the `Fault.*` constructors):
- `Fault.error(status, code)` / `Fault.slow_down()` / `Fault.internal_error()`: answer with an
  S3-style XML error document instead of forwarding the request (`cut_after=N`: announce the
  whole document, send only its first N bytes and hang up, an error that dies mid-body);
- `Fault.cut(after_bytes)`: forward, send the real headers (full Content-Length) and only the
  first `after_bytes` bytes of the body, then close the connection;
- `Fault.reset()`: read the request and close the connection without any response;
- `Fault.delay(seconds)`: wait before forwarding (combines with the other faults).

Which requests a fault hits: `match(method, path)` (None: every request; `OBJECT_GETS`,
`LISTINGS` are ready-made) and `match_headers(headers)` (the request's headers, e.g. the session
token it was signed with), then `first=N` (only the first N matching requests; None: no limit)
and `fraction=p` (each matching request with probability p, from a seeded RNG so a test run is
reproducible). Faults are tried in order; the first error/cut/reset that fires decides the
response, delays add up. `set_faults()` swaps the list while the proxy runs.

`FaultProxy(..., tls=ssl_context)` serves HTTPS (`proxy.url` is then https://127.0.0.1:PORT),
for clients that must verify a certificate; the upstream stays plain HTTP. With
`virtual_host_suffix="s3.us-east-1.amazonaws.com"`, a virtual-hosted request (`Host:
<bucket>.<suffix>`, path `/<key>`) is forwarded path-style (`/<bucket>/<key>`), as moto and
s3rver need; `proxy.hosts` holds every Host header received. With `verify_sigv4=<secret key>`
every request's SigV4 signature is checked as S3 checks it (`support.sigv4`); a wrong one is
answered 403 SignatureDoesNotMatch and its reason kept in `proxy.signature_problems`.
`x-amz-checksum-mode: enabled` is forwarded as `ENABLED`: S3 takes either, moto only the latter,
so clients that send the lower case (the CRT) get the stored checksum back as from S3.

Bounded and tidy: binds 127.0.0.1 on an ephemeral port, serves at most `max_connections`
client connections at once (more wait in the listen backlog), never waits on the upstream more
than `upstream_timeout_s`, and `stop()` (or leaving the `with`) closes every open connection,
interrupts delays and joins the server thread. Request bodies are read whole (Content-Length or
chunked); responses are buffered whole, so it suits small objects, not multi-GB streams.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from support.sigv4 import sigv4_problem

Matcher = Callable[[str, str], bool]
HeaderMatcher = Callable[[Mapping[str, str]], bool]
FaultKind = Literal["error", "cut", "corrupt", "reset", "delay"]

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-length",
    "host",
}


def _split(path: str) -> tuple[list[str], str]:
    path_part, _, query = path.partition("?")
    return path_part.strip("/").split("/", 1), query


def OBJECT_GETS(method: str, path: str) -> bool:
    """GET of an object, path-style (`/bucket/key`, botocore may add `?x-id=GetObject`)."""
    if method != "GET":
        return False
    segments, query = _split(path)
    return len(segments) == 2 and bool(segments[1]) and "list-type" not in query


def LISTINGS(method: str, path: str) -> bool:
    """A bucket listing, path-style (`/bucket?list-type=2...`)."""
    if method != "GET":
        return False
    segments, _ = _split(path)
    return len(segments) == 1 and bool(segments[0])


@dataclass
class Fault:
    """One kind of failure and the requests it applies to. Use the classmethod constructors."""

    kind: FaultKind
    status: int = 503
    code: str = "SlowDown"
    after_bytes: int = 0
    delay_s: float = 0.0
    first: int | None = None
    fraction: float = 1.0
    match: Matcher | None = None
    name: str = ""
    #: Extra response headers of an error (e.g. x-amz-bucket-region on a 301, as S3 sends it).
    headers: tuple[tuple[str, str], ...] = ()
    match_headers: HeaderMatcher | None = None
    #: For an error: send only this many bytes of its document, then close (None: all of it).
    cut_after: int | None = None
    seen: int = field(default=0, init=False)  # matching requests so far
    fired: int = field(default=0, init=False)  # times applied

    @classmethod
    def error(
        cls,
        status: int = 503,
        code: str = "SlowDown",
        *,
        first: int | None = None,
        fraction: float = 1.0,
        match: Matcher | None = None,
        name: str = "",
        headers: dict[str, str] | None = None,
        match_headers: HeaderMatcher | None = None,
        cut_after: int | None = None,
    ) -> Fault:
        """Answer `status` with an S3 XML error whose <Code> is `code`."""
        return cls(
            "error",
            status=status,
            code=code,
            first=first,
            fraction=fraction,
            match=match,
            name=name or f"error_{status}",
            headers=tuple((headers or {}).items()),
            match_headers=match_headers,
            cut_after=cut_after,
        )

    @classmethod
    def slow_down(
        cls, *, first: int | None = None, fraction: float = 1.0, match: Matcher | None = None
    ) -> Fault:
        """S3 throttling: 503 SlowDown."""
        return cls.error(
            503, "SlowDown", first=first, fraction=fraction, match=match, name="slow_down"
        )

    @classmethod
    def internal_error(
        cls, *, first: int | None = None, fraction: float = 1.0, match: Matcher | None = None
    ) -> Fault:
        """500 InternalError."""
        return cls.error(
            500, "InternalError", first=first, fraction=fraction, match=match, name="internal_error"
        )

    @classmethod
    def cut(
        cls,
        after_bytes: int,
        *,
        first: int | None = None,
        fraction: float = 1.0,
        match: Matcher | None = None,
    ) -> Fault:
        """Send the real status and headers but only `after_bytes` of the body, then hang up."""
        return cls(
            "cut", after_bytes=after_bytes, first=first, fraction=fraction, match=match, name="cut"
        )

    @classmethod
    def corrupt(
        cls, *, first: int | None = None, fraction: float = 1.0, match: Matcher | None = None
    ) -> Fault:
        """Send the real status and headers and a body of the right length with its first byte
        flipped: what a checksum catches and a length check does not."""
        return cls("corrupt", first=first, fraction=fraction, match=match, name="corrupt")

    @classmethod
    def reset(
        cls, *, first: int | None = None, fraction: float = 1.0, match: Matcher | None = None
    ) -> Fault:
        """Close the connection without answering."""
        return cls("reset", first=first, fraction=fraction, match=match, name="reset")

    @classmethod
    def delay(
        cls,
        seconds: float,
        *,
        first: int | None = None,
        fraction: float = 1.0,
        match: Matcher | None = None,
    ) -> Fault:
        """Wait `seconds` before handling the request (interrupted by `stop()`)."""
        return cls(
            "delay", delay_s=seconds, first=first, fraction=fraction, match=match, name="delay"
        )


def s3_error_xml(code: str, message: str = "injected by FaultProxy") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        "<RequestId>FAULTPROXY</RequestId><HostId>FAULTPROXY</HostId></Error>"
    ).encode()


class FaultProxy:
    """A threaded reverse proxy on 127.0.0.1 in front of `upstream` (an http:// URL)."""

    def __init__(
        self,
        upstream: str,
        faults: Iterable[Fault] = (),
        *,
        seed: int = 0,
        max_connections: int = 64,
        upstream_timeout_s: float = 10.0,
        tls: ssl.SSLContext | None = None,
        virtual_host_suffix: str | None = None,
        verify_sigv4: str | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.upstream_timeout_s = upstream_timeout_s
        self._faults: list[Fault] = list(faults)
        self._tls = tls
        self.virtual_host_suffix = virtual_host_suffix
        self.hosts: list[str] = []
        self.verify_sigv4 = verify_sigv4
        self.signature_problems: list[str] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0
        self.connections = 0  # accepted, in total
        self.stats: Counter[str] = Counter()  # fault name -> times fired
        self.log: list[tuple[str, str, str]] = []  # (method, path, outcome), in arrival order

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FaultProxy is not running")
        host, port = self._server.server_address[:2]
        return f"{'https' if self._tls else 'http'}://{host}:{port}"

    def start(self) -> FaultProxy:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        if self._tls is not None:
            self._server.socket = self._tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fault-proxy",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults

    def set_faults(self, *faults: Fault) -> None:
        """Replace the fault list (counters of the new faults start at zero)."""
        with self._lock:
            self._faults = list(faults)

    def clear_faults(self) -> None:
        self.set_faults()

    def _decide(
        self, method: str, path: str, headers: Mapping[str, str]
    ) -> tuple[float, Fault | None]:
        """Total delay, and the error/cut/reset fault to apply (if any) to this request."""
        delay = 0.0
        chosen: Fault | None = None
        with self._lock:
            self.requests += 1
            self.hosts.append(headers.get("Host") or "")
            for fault in self._faults:
                if fault.match is not None and not fault.match(method, path):
                    continue
                if fault.match_headers is not None and not fault.match_headers(headers):
                    continue
                if fault.kind != "delay" and chosen is not None:
                    continue
                fault.seen += 1
                if fault.first is not None and fault.seen > fault.first:
                    continue
                if fault.fraction < 1.0 and self._rng.random() >= fault.fraction:
                    continue
                fault.fired += 1
                self.stats[fault.name or fault.kind] += 1
                if fault.kind == "delay":
                    delay += fault.delay_s
                else:
                    chosen = fault
            self.log.append((method, path, chosen.name if chosen else "forwarded"))
        return delay, chosen

    def _track(self, sock: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._open.add(sock)
                self.connections += 1
            else:
                self._open.discard(sock)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: Any, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Bounded: wait for a free slot (the listen backlog holds the rest).
        while not self.proxy._slots.acquire(timeout=0.1):
            if self.proxy._stopping.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.proxy._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.proxy._slots.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30  # an idle keep-alive connection is dropped after this

    def setup(self) -> None:
        super().setup()
        self.proxy = self.server.proxy
        self.proxy._track(self.connection, add=True)
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.proxy._track(self.connection, add=False)
        if self._upstream is not None:
            self._upstream.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        if self.proxy.verify_sigv4 is not None:
            problem = sigv4_problem(self.command, self.path, self.headers, self.proxy.verify_sigv4)
            with self.proxy._lock:
                self.proxy.stats["signature_checked"] += 1
                if problem is not None:
                    self.proxy.signature_problems.append(f"{self.command} {self.path}: {problem}")
            if problem is not None:
                self._send_error(403, "SignatureDoesNotMatch")
                return
        delay, fault = self.proxy._decide(self.command, self.path, self.headers)
        if delay and self.proxy._stopping.wait(delay):
            self.close_connection = True
            return
        if fault is not None and fault.kind == "reset":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.kind == "error":
            payload = s3_error_xml(fault.code)
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            if fault.status == 503 and "retry-after" not in {h.lower() for h, _ in fault.headers}:
                self.send_header("Retry-After", "0")
            for header, value in fault.headers:
                self.send_header(header, value)
            if fault.cut_after is not None:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return
            if fault.cut_after is not None:
                self.wfile.write(payload[: fault.cut_after])
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(payload)
            return
        try:
            status, reason, headers, data = self._forward(body)
        except (OSError, http.client.HTTPException) as exc:
            payload = s3_error_xml("BadGateway", f"upstream failed: {exc}")
            self.send_response(502)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        length = next((v for n, v in headers if n.lower() == "content-length"), None)
        if self.command == "HEAD":
            self.send_header("Content-Length", length or "0")
        else:
            self.send_header("Content-Length", str(len(data)))
        if fault is not None and fault.kind == "cut":
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault is not None and fault.kind == "cut":
            self.wfile.write(data[: fault.after_bytes])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.kind == "corrupt" and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self.wfile.write(data)

    def _send_error(self, status: int, code: str) -> None:
        payload = s3_error_xml(code)
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _upstream_path(self) -> str:
        """The request's path, path-style: a virtual-hosted bucket moves into the path."""
        suffix = self.proxy.virtual_host_suffix
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if suffix and host.endswith("." + suffix):
            return f"/{host.removesuffix('.' + suffix)}{self.path}"
        return self.path

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = f"{self.proxy.upstream_host}:{self.proxy.upstream_port}"
        for name, value in list(headers.items()):
            # S3 reads the value in any case; the CRT (like the AWS SDKs for C++ and Java) sends
            # "enabled", and moto returns the stored checksum only for "ENABLED".
            if name.lower() == "x-amz-checksum-mode" and value.upper() == "ENABLED":
                headers[name] = "ENABLED"
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        for attempt in (1, 2):  # a pooled upstream connection may have gone stale
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(
                    self.proxy.upstream_host,
                    self.proxy.upstream_port,
                    timeout=self.proxy.upstream_timeout_s,
                )
            try:
                self._upstream.request(
                    self.command, self._upstream_path(), body=body, headers=headers
                )
                response = self._upstream.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
                continue
            if response.will_close:
                self._upstream.close()
                self._upstream = None
            return response.status, response.reason, response.getheaders(), data
        raise AssertionError("unreachable")
