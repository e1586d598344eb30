"""A fault-injecting TCP proxy for tests: put it between a client (the loader) and PostgreSQL and
make the network fail at chosen moments.

    from support.tcp_fault_proxy import TcpFaultProxy, pg_socket

    with TcpFaultProxy(pg_socket(socket_dir, 5432)) as proxy:      # or ("127.0.0.1", 5432)
        env = {"DW_PG_HOST": "127.0.0.1", "DW_PG_PORT": str(proxy.port), "DW_PG_SSL": "disable"}
        proxy.cut_on_message(b"COMMIT", when="after", armed_by=b"clickstream_ingest_meta")
        ...                                                       # run the loader
        assert proxy.stats["cut_after"] == 1

Controls (each takes effect at once, from any thread):
- `pass_through()`: forget every fault: forward everything, accept new connections;
- `drop_all()`: close every open connection now (the client sees a reset, the server an EOF);
- `stall(seconds)`: stop forwarding in both directions for `seconds` (connections stay open,
  bytes wait in the kernel buffers), then carry on;
- `refuse(True)`: new connections are accepted and reset at once, until `refuse(False)`;
- `cut_after_bytes(n)`: the next connection that sends more than `n` bytes client→server is cut
  after exactly `n` bytes (mid-message);
- `cut_on_message(pattern, when=...)`: the next PostgreSQL frontend message (simple query `Q` or
  extended-protocol `Parse`, by default) whose text contains `pattern` cuts its connection:
  `when="before"`: the message is never forwarded (the server sees the client vanish mid-
  transaction and rolls back); `when="after"`: it is forwarded, the proxy waits for the
  server's reply (ReadyForQuery), swallows it and cuts the client (the server acted on the
  message, the client never learns the outcome: the ambiguous COMMIT); `when="hold"`: the
  message is held back until the client goes away (a process killed while it waits on that
  statement), then the connection is closed and the server rolls back. `armed_by` restricts
  the match to connections that sent a message containing `armed_by` since their last
  COMMIT/ROLLBACK (e.g. only the COMMIT of a transaction that wrote the events tables), and
  `unless` excludes connections that sent one containing `unless` (e.g. only a transaction
  that did not also record an object's completion); `skip` lets the first matches through;
  `times` is how many connections it cuts.

The client→server stream is parsed into protocol messages (startup, SSL/GSS requests, then
type+length framed messages) and forwarded a whole message at a time; server→client bytes are
forwarded as they come. Bounded and tidy: listens on 127.0.0.1 with an ephemeral port, at most
`max_connections` proxied connections at once (more are reset), every wait is a short poll, and
`stop()` closes everything and joins every thread.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

Upstream = str | tuple[str, int]
When = Literal["before", "after", "hold"]

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_READY_FOR_QUERY = b"Z\x00\x00\x00\x05"
_POLL_S = 0.05
_CHUNK = 65536


def pg_socket(socket_dir: str, port: int) -> str:
    """The unix socket file of a PostgreSQL server listening in `socket_dir`."""
    return os.path.join(socket_dir, f".s.PGSQL.{port}")


@dataclass
class _MessageCut:
    pattern: bytes
    when: When
    msg_types: bytes
    armed_by: bytes | None
    unless: bytes | None
    skip: int
    times: int
    seen: int = 0
    fired: int = 0


@dataclass
class _BytesCut:
    after_bytes: int
    times: int
    fired: int = 0


@dataclass(eq=False)
class _Conn:
    client: socket.socket
    upstream: socket.socket | None = None
    thread: threading.Thread | None = None
    sent_c2s: int = 0
    armed: set[bytes] = field(default_factory=set)
    closed: bool = False


class TcpFaultProxy:
    """A threaded TCP proxy on 127.0.0.1 in front of a unix socket path or a (host, port)."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        max_connections: int = 32,
        connect_timeout_s: float = 5.0,
        reply_timeout_s: float = 10.0,
        io_timeout_s: float = 60.0,
    ) -> None:
        self.upstream = upstream
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self.io_timeout_s = io_timeout_s
        self.stats: Counter[str] = Counter()
        self.messages: Counter[bytes] = Counter()  # frontend message types forwarded
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[_Conn] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._refusing = False
        self._stalled_until = 0.0
        self._message_cuts: list[_MessageCut] = []
        self._bytes_cuts: list[_BytesCut] = []

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("TcpFaultProxy is not running")
        return int(self._listener.getsockname()[1])

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def start(self) -> TcpFaultProxy:
        if self._listener is not None:
            return self
        self._stopping.clear()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(_POLL_S)
        self._listener = listener
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="tcp-fault-proxy", daemon=True
        )
        self._acceptor.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout_s)
            self._acceptor = None
        listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            self._close(conn)
        deadline = time.monotonic() + timeout_s
        for conn in conns:
            if conn.thread is not None:
                conn.thread.join(max(deadline - time.monotonic(), 0.1))

    def __enter__(self) -> TcpFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ controls

    def pass_through(self) -> None:
        with self._lock:
            self._refusing = False
            self._stalled_until = 0.0
            self._message_cuts.clear()
            self._bytes_cuts.clear()

    def drop_all(self) -> int:
        """Close every open connection now; returns how many were dropped."""
        with self._lock:
            conns = [c for c in self._conns if not c.closed]
        for conn in conns:
            self._close(conn)
        with self._lock:
            self.stats["dropped"] += len(conns)
        return len(conns)

    def stall(self, seconds: float) -> None:
        with self._lock:
            self._stalled_until = time.monotonic() + seconds
            self.stats["stalls"] += 1

    def refuse(self, on: bool = True) -> None:
        with self._lock:
            self._refusing = on

    def cut_after_bytes(self, after_bytes: int, *, times: int = 1) -> None:
        with self._lock:
            self._bytes_cuts.append(_BytesCut(after_bytes, times))

    def cut_on_message(
        self,
        pattern: bytes,
        *,
        when: When = "before",
        msg_types: bytes = b"QP",
        armed_by: bytes | None = None,
        unless: bytes | None = None,
        skip: int = 0,
        times: int = 1,
    ) -> None:
        with self._lock:
            self._message_cuts.append(
                _MessageCut(pattern, when, msg_types, armed_by, unless, skip, times)
            )

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self._conns if not c.closed)

    def wait_for(self, stat: str, count: int = 1, timeout_s: float = 30.0) -> bool:
        """Wait (bounded) until `stats[stat]` reaches `count`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.stats[stat] >= count:
                    return True
            time.sleep(_POLL_S)
        return False

    # ------------------------------------------------------------------ machinery

    def _accept_loop(self) -> None:
        assert self._listener is not None
        listener = self._listener
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.stats["accepted"] += 1
                refusing = self._refusing
                full = sum(1 for c in self._conns if not c.closed) >= self.max_connections
            if refusing or full:
                self.stats["refused" if refusing else "over_limit"] += 1
                _reset(client)
                continue
            conn = _Conn(client)
            conn.thread = threading.Thread(
                target=self._serve, args=(conn,), name="tcp-fault-proxy-conn", daemon=True
            )
            with self._lock:
                self._conns.add(conn)
            conn.thread.start()

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.upstream, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.connect_timeout_s)
            sock.connect(self.upstream)
        else:
            sock = socket.create_connection(self.upstream, timeout=self.connect_timeout_s)
        return sock

    def _close(self, conn: _Conn) -> None:
        """Cut a connection: shut both sockets down (which wakes its thread's select); the
        connection's own thread closes them, the client side with a reset."""
        with self._lock:
            if conn.closed:
                return
            conn.closed = True
        for sock in (conn.client, conn.upstream):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)

    def _stalled(self) -> bool:
        with self._lock:
            return time.monotonic() < self._stalled_until

    def _serve(self, conn: _Conn) -> None:
        try:
            try:
                conn.upstream = self._connect_upstream()
            except OSError:
                with self._lock:
                    self.stats["upstream_failed"] += 1
                return
            # Bounded: a peer that stops reading fails the send after this long.
            conn.client.settimeout(self.io_timeout_s)
            conn.upstream.settimeout(self.io_timeout_s)
            self._pump(conn)
        except OSError:
            pass
        finally:
            self._close(conn)
            _reset(conn.client)
            if conn.upstream is not None:
                with contextlib.suppress(OSError):
                    conn.upstream.close()
            with self._lock:
                self._conns.discard(conn)

    def _pump(self, conn: _Conn) -> None:
        assert conn.upstream is not None
        client, upstream = conn.client, conn.upstream
        pending = bytearray()  # client→server bytes not yet forwarded
        started = False  # past the startup packet (typed messages from here on)
        while not self._stopping.is_set() and not conn.closed:
            if self._stalled():
                time.sleep(_POLL_S)
                continue
            readable, _, _ = select.select([client, upstream], [], [], _POLL_S)
            if upstream in readable:
                data = upstream.recv(_CHUNK)
                if not data:
                    return
                client.sendall(data)
            if client in readable:
                data = client.recv(_CHUNK)
                if not data:
                    return
                pending += data
                while True:
                    frame = _next_frame(pending, started)
                    if frame is None:
                        break
                    size, kind, startup_code = frame
                    message = bytes(pending[:size])
                    del pending[:size]
                    if kind is None and startup_code not in (_SSL_REQUEST, _GSSENC_REQUEST):
                        started = True  # the startup message (or a cancel request)
                    if not self._forward(conn, message, kind):
                        return

    def _forward(self, conn: _Conn, message: bytes, kind: bytes | None) -> bool:
        """Forward one client message, applying the faults; False once the connection is cut."""
        assert conn.upstream is not None
        text = message[5:] if kind is not None else b""
        cut: _MessageCut | None = None
        bytes_cut: _BytesCut | None = None
        with self._lock:
            if kind is not None:
                for rule in self._message_cuts:
                    if rule.fired >= rule.times or kind not in rule.msg_types:
                        continue
                    if rule.pattern not in text:
                        continue
                    if rule.armed_by is not None and rule.armed_by not in conn.armed:
                        continue
                    if rule.unless is not None and rule.unless in conn.armed:
                        continue
                    rule.seen += 1
                    if rule.seen <= rule.skip:
                        continue
                    rule.fired += 1
                    cut = rule
                    break
            if cut is None:
                for bcut in self._bytes_cuts:
                    if bcut.fired < bcut.times and conn.sent_c2s + len(message) > bcut.after_bytes:
                        bcut.fired += 1
                        bytes_cut = bcut
                        break
            if kind is not None:
                self.messages[kind] += 1
                for rule in self._message_cuts:
                    for marker in (rule.armed_by, rule.unless):
                        if marker is not None and marker in text:
                            conn.armed.add(marker)
                if kind == b"Q" and (text.lstrip().upper().startswith((b"COMMIT", b"ROLLBACK"))):
                    conn.armed.clear()
        if bytes_cut is not None:
            keep = max(bytes_cut.after_bytes - conn.sent_c2s, 0)
            conn.upstream.sendall(message[:keep])
            conn.sent_c2s += keep
            with self._lock:
                self.stats["cut_bytes"] += 1
            self._close(conn)
            return False
        if cut is not None and cut.when == "before":
            with self._lock:
                self.stats["cut_before"] += 1
            self._close(conn)
            return False
        if cut is not None and cut.when == "hold":
            with self._lock:
                self.stats["held"] += 1
            self._hold_until_client_leaves(conn)
            self._close(conn)
            return False
        conn.upstream.sendall(message)
        conn.sent_c2s += len(message)
        if cut is not None:  # when == "after": let the server act, swallow its reply
            reply = bytearray()
            deadline = time.monotonic() + self.reply_timeout_s
            while _READY_FOR_QUERY not in reply and time.monotonic() < deadline:
                readable, _, _ = select.select([conn.upstream], [], [], _POLL_S)
                if readable:
                    data = conn.upstream.recv(_CHUNK)
                    if not data:
                        break
                    reply += data
            with self._lock:
                self.stats["cut_after"] += 1
                self.stats["cut_after_replied"] += _READY_FOR_QUERY in reply
            self._close(conn)
            return False
        return True

    def _hold_until_client_leaves(self, conn: _Conn) -> None:
        """Forward nothing more from this client; return once it disconnects (bounded)."""
        deadline = time.monotonic() + self.io_timeout_s
        while not self._stopping.is_set() and not conn.closed and time.monotonic() < deadline:
            readable, _, _ = select.select([conn.client], [], [], _POLL_S)
            if readable:
                try:
                    if not conn.client.recv(_CHUNK):
                        return
                except OSError:
                    return


def _next_frame(buffer: bytearray, started: bool) -> tuple[int, bytes | None, int | None] | None:
    """(size, message type or None for untyped startup packets, startup code) of the first
    complete message in `buffer`, or None if it is not complete yet."""
    if not started:
        if len(buffer) < 8:
            return None
        length, code = struct.unpack("!II", bytes(buffer[:8]))
        return (length, None, code) if len(buffer) >= length else None
    if len(buffer) < 5:
        return None
    length = struct.unpack("!I", bytes(buffer[1:5]))[0]
    size = 1 + length
    return (size, bytes(buffer[:1]), None) if len(buffer) >= size else None


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) so the peer sees a reset, not a polite FIN."""
    with contextlib.suppress(OSError):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
