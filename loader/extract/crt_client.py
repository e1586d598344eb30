"""S3 through the AWS Common Runtime's native client (`awscrt.s3.S3Client`): ~5x less client CPU
per GET than boto3, behind the same `ObjectSource` interface.

The CRT does the HTTP, connection pooling and SigV4 signing in C on its own event-loop threads;
this module keeps a bounded window of GETs in flight, collects each body from the CRT's
callbacks, and settles every attempt on the caller's thread: retries (our own, so they are
counted, and classified by `loader.extract.errors` exactly as the boto3 client's are), size
caps and gzip. Each GET asks S3 for the object's stored checksum and the CRT checks the body
against it, as botocore does by default: a body corrupted on the way is retried, never loaded.

Configuration follows boto3 without importing it (the CRT path loads neither boto3 nor
botocore): credentials from the CRT's own default chain (environment incl. session token,
profiles, container credentials incl. AWS_CONTAINER_CREDENTIALS_FULL_URI, instance metadata;
cached and refreshed before they expire), the region and the `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL` override as `loader.extract.address` reads them (path-style for a custom
endpoint, TLS only for an https one, `AWS_CA_BUNDLE` trusted instead of the system's CAs).
Listing is the lean ListObjectsV2 of `loader.extract.listing`, sent through the same CRT client.
"""

from __future__ import annotations

import gc
import heapq
import queue
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from awscrt.auth import AwsCredentialsProvider
from awscrt.exceptions import AwsCrtError
from awscrt.http import HttpHeaders, HttpRequest
from awscrt.io import ClientTlsContext, TlsConnectionOptions, TlsContextOptions
from awscrt.s3 import (
    S3ChecksumConfig,
    S3Client,
    S3RequestTlsMode,
    S3RequestType,
    S3ResponseError,
    S3RetryConfig,
    S3RetryMode,
    create_default_s3_signing_config,
)

from loader.common import STOP_POLL_S, FetchedObject, ObjectRef, S3AccessError, S3TransientError
from loader.config import Settings
from loader.extract.address import (
    S3Address,
    ca_bundle_from_env,
    checksum_validation_from_env,
    endpoint_url_from_env,
    region_from_env,
    resolve_address,
)
from loader.extract.body import BodyError, decode_body
from loader.extract.errors import (
    TransportError,
    backoff_delay,
    error_code,
    expired_error,
    judge_get_refusal,
)
from loader.extract.listing import PageResponse, S3Lister

# Connections the CRT may open: it sizes its pool from the throughput target (~25 connections
# at its default of 10 Gbps). We cap the pool explicitly at the in-flight window instead and set
# the target high enough that the cap, not the target, is what binds.
_THROUGHPUT_TARGET_GBPS = 100.0
#: Every GET sends `x-amz-checksum-mode: enabled`, and the CRT checks the body against the
#: full-object checksum S3 returns: CRC64NVME, CRC32, CRC32C, SHA-1 or SHA-256, whichever the
#: object was stored with (AWS SDKs store a CRC32 with every PutObject by default since January
#: 2025: boto3 1.36, JavaScript v3.729). A mismatch fails the request with
#: AWS_ERROR_S3_RESPONSE_CHECKSUM_MISMATCH, which `_retry_reason` retries like any broken
#: response. An object stored without a checksum, or with only a multipart upload's composite
#: one ("<base64>-<parts>"), loads unchecked: botocore's `when_supported` rule, which the boto3
#: client follows too. Still one request per object: the default request type sends no
#: HeadObject to find a checksum. AWS_RESPONSE_CHECKSUM_VALIDATION=when_required (or the
#: profile's response_checksum_validation) turns it off, as it does botocore's.
_VALIDATE_CHECKSUM = S3ChecksumConfig(validate_response=True)


class _TooLarge(Exception):
    """Raised inside a body callback to abort a GET whose body passes MAX_OBJECT_BYTES."""


def credentials_provider(timeout_s: float = 10.0) -> AwsCredentialsProvider:
    """The CRT's default credential chain, asked once now so that a function without
    credentials fails at its cold start with a clear message rather than on its first GET.

    The chain caches what it sourced and sources again before the expiry the credentials carry
    (container and instance credentials, assumed roles), so a long run signs with fresh ones.
    """
    provider = AwsCredentialsProvider.new_default_chain()
    try:
        provider.get_credentials().result(timeout=timeout_s)
    except Exception as exc:  # AwsCrtError, or the future's TimeoutError
        raise S3AccessError(
            f"no AWS credentials found (environment, profile, container or instance role): {exc}"
        ) from None
    return provider


def tls_options(address: S3Address, ca_bundle: str | None) -> TlsConnectionOptions | None:
    """TLS that trusts `ca_bundle` (AWS_CA_BUNDLE) instead of the system's CAs; None: the
    CRT's defaults."""
    if not address.tls or ca_bundle is None:
        return None
    options = TlsContextOptions()
    options.override_default_trust_store_from_path(ca_filepath=ca_bundle)
    connection = ClientTlsContext(options).new_connection_options()
    connection.set_server_name(address.host.rsplit(":", 1)[0])
    return connection


# --------------------------------------------------------------------------------------------
# One GET attempt; its callbacks run on CRT threads and only append/queue.


class _Attempt:
    __slots__ = (
        "cap",
        "chunks",
        "content_encoding",
        "content_length",
        "deadline",
        "done_q",
        "error",
        "error_body",
        "fetch",
        "request",
        "size",
        "status",
        "timed_out",
    )

    def __init__(self, fetch: _Fetch, cap: int, deadline: float, done_q: queue.SimpleQueue[Any]):
        self.fetch = fetch
        self.cap = cap
        self.deadline = deadline
        self.done_q = done_q
        self.chunks: list[bytes] = []
        self.size = 0
        self.status: int | None = None
        self.content_length: int | None = None
        self.content_encoding: str | None = None
        self.error: BaseException | None = None
        self.error_body: bytes | None = None
        self.timed_out = False
        self.request: Any = None

    def on_headers(self, status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
        self.status = status_code
        for name, value in headers:
            lname = name.lower()
            if lname == "content-length":
                self.content_length = int(value)
                if 200 <= status_code < 300 and self.content_length > self.cap:
                    raise _TooLarge(f"Content-Length {value}")
            elif lname == "content-encoding":
                self.content_encoding = value

    def on_body(self, chunk: Any, offset: int, **_: Any) -> None:
        self.size += len(chunk)
        if self.size > self.cap:
            raise _TooLarge(f"body passed {self.cap} bytes")
        self.chunks.append(bytes(chunk))

    def on_done(
        self,
        error: BaseException | None,
        error_body: bytes | None = None,
        status_code: int | None = None,
        **_: Any,
    ) -> None:
        self.error = error
        self.error_body = error_body
        if status_code is not None:
            self.status = status_code
        self.done_q.put(self)


@dataclass(eq=False)
class _Fetch:
    """One object's journey through the window: attempts until a result (or a raise)."""

    ref: ObjectRef
    attempts: int = 0
    retries: int = 0
    result: FetchedObject | None = None
    current: _Attempt | None = None
    #: What S3 said last, for the retry: seconds its Retry-After asked for, an expired token.
    retry_after: float | None = None
    expired: bool = False


class _Window:
    """The GETs of one `fetch_many` call: in input order, and what the loop waits on."""

    def __init__(self, refs: Iterator[ObjectRef]) -> None:
        self.refs = refs
        self.exhausted = False
        #: Input order; at most the window's size long. The head is the next result to yield.
        self.pending: deque[_Fetch] = deque()
        #: Attempts in start order, for their deadlines.
        self.started: deque[_Attempt] = deque()
        #: (when, sequence, fetch): retries waiting for their backoff to pass.
        self.retries: list[tuple[float, int, _Fetch]] = []
        self.done_q: queue.SimpleQueue[_Attempt] = queue.SimpleQueue()
        self._seq = 0

    def next_finished(self) -> _Attempt | None:
        try:
            return self.done_q.get_nowait()
        except queue.Empty:
            return None

    def next_deadline(self) -> float | None:
        """The deadline of the oldest attempt still in flight."""
        started = self.started
        while started and (started[0].timed_out or started[0].fetch.current is not started[0]):
            started.popleft()  # settled, superseded, or cancelled and on its way
        return started[0].deadline if started else None

    def retry_at(self, when: float, fetch: _Fetch) -> None:
        self._seq += 1
        heapq.heappush(self.retries, (when, self._seq, fetch))

    def due_retries(self, now: float) -> Iterator[_Fetch]:
        while self.retries and self.retries[0][0] <= now:
            yield heapq.heappop(self.retries)[2]

    def expired(self, now: float) -> Iterator[_Attempt]:
        """The attempts in flight past their deadline, not yet cancelled."""
        for attempt in self.started:
            if attempt.deadline > now:
                break
            if attempt.fetch.current is attempt and not attempt.timed_out:
                yield attempt


class CrtSource:
    """`ObjectSource` on the CRT's S3 client: ~0.2 ms of client CPU per GET."""

    def __init__(
        self,
        settings: Settings,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        request_timeout_s: float = 30.0,
        connect_timeout_ms: int = 5_000,
        backoff_base_s: float = 0.25,
        backoff_cap_s: float = 10.0,
    ) -> None:
        self.bucket = settings.raw_bucket
        self._settings = settings
        self._window = max(1, settings.fetch_concurrency * 4)
        self._max_attempts = max(1, settings.s3_max_attempts)
        self._timeout_s = request_timeout_s
        self._close_timeout_s = 5.0
        self._backoff = (backoff_base_s, backoff_cap_s)
        self.region: str = region or region_from_env()
        endpoint = endpoint_url if endpoint_url is not None else endpoint_url_from_env()
        self.address: S3Address = resolve_address(self.bucket, self.region, endpoint)
        self._host_header = [("Host", self.address.host)]
        self._checksum = _VALIDATE_CHECKSUM if checksum_validation_from_env() else None
        signing = create_default_s3_signing_config(
            region=self.region, credential_provider=credentials_provider()
        )
        self._client: Any = S3Client(
            region=self.region,
            signing_config=signing,
            tls_mode=S3RequestTlsMode.ENABLED if self.address.tls else S3RequestTlsMode.DISABLED,
            tls_connection_options=tls_options(self.address, ca_bundle_from_env()),
            throughput_target_gbps=_THROUGHPUT_TARGET_GBPS,
            max_active_connections_override=self._window,
            # Retries are ours: counted, classified like boto3's, with a body-length check.
            retry_config=S3RetryConfig(retry_mode=S3RetryMode.NONE),
            connect_timeout_ms=connect_timeout_ms,
        )
        self._shutdown_event: threading.Event = self._client.shutdown_event
        self._lister = S3Lister(
            self._list_page,
            self.address,
            self.bucket,
            max_attempts=self._max_attempts,
            backoff_base_s=backoff_base_s,
        )

    # ---------------------------------------------------------------------------- listing

    def list_objects(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectRef]:
        return self._lister.list_objects(prefix, start_after)

    def _list_page(self, path_and_query: str) -> PageResponse:
        client = self._require_client()
        chunks: list[bytes] = []

        def on_body(chunk: Any, offset: int, **_: Any) -> None:
            chunks.append(bytes(chunk))

        request = client.make_request(
            type=S3RequestType.DEFAULT,
            operation_name="ListObjectsV2",
            request=HttpRequest("GET", path_and_query, HttpHeaders(self._host_header)),
            on_body=on_body,
        )
        # `.exception()`, not `.result()`: raising the stored error here would tie this frame
        # to it in a cycle the CRT's native references keep alive, and with it the client.
        try:
            error = request.finished_future.exception(timeout=self._timeout_s)
        except TimeoutError:
            request.cancel()
            error = TimeoutError(f"no response in {self._timeout_s} s")
        del request
        if error is None:
            return 200, b"".join(chunks), []
        if isinstance(error, S3ResponseError):
            return int(error.status_code or 0), error.body or b"", list(error.headers or [])
        if isinstance(error, AwsCrtError | TimeoutError):
            raise TransportError(str(error))
        raise error

    # ---------------------------------------------------------------------------- fetching

    def fetch_one(self, ref: ObjectRef) -> FetchedObject:
        results = self.fetch_many([ref])
        try:
            return next(results)
        finally:
            results.close()

    def fetch_many(
        self, refs: Iterable[ObjectRef], stop: threading.Event | None = None
    ) -> Generator[FetchedObject, None, None]:
        """GET up to fetch_concurrency*4 objects at once; yield results in the order of `refs`.
        Returns within STOP_POLL_S of `stop` being set; in-flight GETs are cancelled."""
        # No local reference to the client here or in `_start`: a traceback that outlives this
        # generator (pytest keeps them) would keep the client, and `close()` waiting for it.
        self._require_client()
        window = _Window(iter(refs))
        try:
            while True:
                self._fill(window)
                if not window.pending:
                    return
                head = window.pending[0]
                while head.result is None:
                    if stop is not None and stop.is_set():
                        return
                    self._advance(window, stop)
                window.pending.popleft()
                yield head.result
        finally:
            self._abandon(window.pending, window.done_q)

    def _fill(self, window: _Window) -> None:
        """Start a GET for each next ref until the window is full or the refs run out; an object
        listed over MAX_OBJECT_BYTES gets its result without one."""
        cap = self._settings.max_object_bytes
        while not window.exhausted and len(window.pending) < self._window:
            ref = next(window.refs, None)
            if ref is None:
                window.exhausted = True
                return
            fetch = _Fetch(ref)
            if ref.size > cap:
                detail = f"object is {ref.size} bytes, over MAX_OBJECT_BYTES={cap}"
                fetch.result = FetchedObject(ref, None, "too_large", detail)
            else:
                self._start(fetch, window)
            window.pending.append(fetch)

    def _advance(self, window: _Window, stop: threading.Event | None) -> None:
        """One turn of the loop: wait for something to happen, then settle the GETs that
        finished, start the retries that are due, and cancel the GETs past their deadline."""
        finished = self._wait(window, stop)
        while finished is not None:
            if self._settle(finished):
                fetch = finished.fetch
                delay = backoff_delay(fetch.retries, *self._backoff, retry_after=fetch.retry_after)
                window.retry_at(time.monotonic() + delay, fetch)
            finished = window.next_finished()
        now = time.monotonic()
        for fetch in window.due_retries(now):
            self._start(fetch, window)
        for attempt in window.expired(now):
            attempt.timed_out = True
            attempt.request.cancel()

    def _wait(self, window: _Window, stop: threading.Event | None) -> _Attempt | None:
        """Sleep until a GET finishes (returned), a retry is due or an in-flight GET times out;
        with a stop signal to watch, at most STOP_POLL_S."""
        now = time.monotonic()
        deadline = window.next_deadline()
        wake = deadline if deadline is not None else now + self._timeout_s
        if window.retries:
            wake = min(wake, window.retries[0][0])
        if stop is not None:
            wake = min(wake, now + STOP_POLL_S)
        try:
            return window.done_q.get(timeout=max(0.0, wake - now))
        except queue.Empty:
            return None

    def _start(self, fetch: _Fetch, window: _Window) -> None:
        key = fetch.ref.key
        attempt = _Attempt(
            fetch,
            self._settings.max_object_bytes,
            time.monotonic() + self._timeout_s,
            window.done_q,
        )
        fetch.attempts += 1
        fetch.current = attempt
        window.started.append(attempt)
        attempt.request = self._require_client().make_request(
            type=S3RequestType.DEFAULT,
            operation_name="GetObject",
            request=HttpRequest(
                "GET", self.address.object_path(key), HttpHeaders(self._host_header)
            ),
            on_headers=attempt.on_headers,
            on_body=attempt.on_body,
            on_done=attempt.on_done,
            checksum_config=self._checksum,
        )

    def _settle(self, attempt: _Attempt) -> bool:
        """Turn a finished attempt into the fetch's result; True when it must be retried."""
        fetch = attempt.fetch
        if fetch.current is not attempt:  # an attempt we already gave up on
            return False
        attempt.request = None
        reason = self._retry_reason(attempt)
        if reason is None:
            fetch.current = None
            return False
        if fetch.attempts >= self._max_attempts:
            where = f"s3://{self.bucket}/{fetch.ref.key}"
            if fetch.expired:
                raise expired_error("read", where, fetch.attempts)
            raise S3TransientError(f"GET {where} failed after {fetch.attempts} attempts: {reason}")
        fetch.retries += 1
        fetch.current = None
        return True

    def _retry_reason(self, attempt: _Attempt) -> str | None:
        """Why the attempt must be tried again; None once the fetch has its result (a body, or
        a terminal reason). Raises what must not be retried."""
        fetch, error = attempt.fetch, attempt.error
        fetch.retry_after, fetch.expired = None, False
        if error is None:
            return self._take_body(attempt)
        if isinstance(error, _TooLarge):
            detail = f"{error}: over MAX_OBJECT_BYTES={self._settings.max_object_bytes}"
            fetch.result = FetchedObject(fetch.ref, None, "too_large", detail, fetch.retries)
            return None
        if attempt.timed_out:
            return f"no complete response in {self._timeout_s} s"
        if isinstance(error, S3ResponseError):
            return self._refusal(attempt, error)
        if isinstance(error, AwsCrtError):
            return str(error)  # no response: refused, reset, closed mid-body, TLS, DNS
        raise error  # a bug in a callback: do not mask it as an S3 problem

    def _take_body(self, attempt: _Attempt) -> str | None:
        """A complete response: the decoded body (or why it never parses) becomes the result."""
        fetch = attempt.fetch
        data = b"".join(attempt.chunks)
        attempt.chunks = []
        length = attempt.content_length
        if length is not None and len(data) != length:
            return f"body cut short: {len(data)} of {length} bytes"
        try:
            body = decode_body(
                data, attempt.content_encoding, self._settings.max_decompressed_bytes
            )
        except BodyError as exc:
            fetch.result = FetchedObject(fetch.ref, None, exc.reason, str(exc), fetch.retries)
        else:
            fetch.result = FetchedObject(fetch.ref, body, None, None, fetch.retries)
        return None

    def _refusal(self, attempt: _Attempt, error: S3ResponseError) -> str | None:
        """S3 answered with an error: judged as the boto3 client's GETs are."""
        fetch = attempt.fetch
        status = int(error.status_code or 0)
        code = error_code(attempt.error_body or error.body)
        where = f"s3://{self.bucket}/{fetch.ref.key}"
        judged = judge_get_refusal(status, code, error.headers, where)
        if judged.terminal_reason is not None:
            fetch.result = FetchedObject(
                fetch.ref, None, judged.terminal_reason, code or str(status), fetch.retries
            )
            return None
        fetch.expired, fetch.retry_after = judged.expired, judged.retry_after
        return f"{status} {code}".strip()

    def _abandon(self, pending: Iterable[_Fetch], done_q: queue.SimpleQueue[_Attempt]) -> None:
        """Cancel what is still in flight and wait (bounded) for the CRT to let go of it."""
        live = [f.current for f in pending if f.current is not None and f.current.request]
        for attempt in live:
            attempt.request.cancel()
        deadline = time.monotonic() + 10.0
        remaining = {id(a) for a in live}
        while remaining and time.monotonic() < deadline:
            try:
                remaining.discard(id(done_q.get(timeout=0.1)))
            except queue.Empty:
                continue
        for attempt in live:
            attempt.request = None

    # ---------------------------------------------------------------------------- lifecycle

    def _require_client(self) -> Any:
        client = self._client
        if client is None:
            raise RuntimeError("CrtSource is closed")
        return client

    def close(self) -> None:
        """Release the CRT client and wait (bounded) for its threads to finish with it.

        The client shuts down once the last reference to it is gone; a request still referenced
        elsewhere (an unclosed `fetch_many` generator) can delay that, but never past
        interpreter exit, so the wait is bounded (`closed_cleanly` tells which it was).
        """
        if self._client is not None:
            self._client = None
            if not self._shutdown_event.is_set():
                gc.collect()  # generators abandoned inside reference cycles
        self._shutdown_event.wait(self._close_timeout_s)

    @property
    def closed_cleanly(self) -> bool:
        """True once the CRT client has finished shutting down."""
        return self._shutdown_event.is_set()

    def __enter__(self) -> CrtSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
