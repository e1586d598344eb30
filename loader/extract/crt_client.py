"""S3 through the AWS Common Runtime's S3 client (`awscrt.s3.S3Client`), the default: 0.23 ms of
client CPU per GET against boto3's 1.5 (bench/results/s3_client_cost.json).

botocore decides where requests go (`loader.extract.address`); the CRT does the HTTP, the
connection pool, SigV4 with its own credential chain (environment, profiles, container and
instance credentials, refreshed before they expire) and the check of each body against the
checksum S3 stored. Each GET is one CRT request, done when its `finished_future` is; `close()`
lets the client go, and the CRT shuts it down once no request holds it.

Retries are ours (S3RetryMode.NONE), judged by the classifier both clients share: the CRT's own
strategy mends throttling, 5xx, resets and cut bodies, but fails a checksum mismatch or an
expired token at once, waits on a stalled response for ever, and reports no retry count for the
run's report (bench/results/crt_library.json).

FETCH_CONCURRENCY x 4 GETs are in flight, over as many connections: a CRT request needs no
thread of ours, and a deep window rides out S3's latency.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
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

from loader.common import FetchedObject, ObjectRef, S3AccessError
from loader.config import Settings
from loader.extract.address import S3Address, resolve
from loader.extract.body import fetched, in_order, too_large
from loader.extract.errors import Attempts, Retry, Terminal, error_code, judge
from loader.extract.listing import PAGE_SIZE, S3Lister

#: At its default throughput target the CRT keeps 25 requests in flight whatever the connection
#: cap; at this one the cap (the window) binds: 128 (bench/results/crt_library.json).
_THROUGHPUT_TARGET_GBPS = 100.0
_CONNECT_TIMEOUT_MS = 5_000


class _TooLarge(Exception):
    """Raised inside a body callback to abort a GET whose body passes MAX_OBJECT_BYTES."""


def credentials_provider(timeout_s: float = 10.0) -> AwsCredentialsProvider:
    """The CRT's default credential chain, asked once now so that a function without
    credentials fails at its cold start with a clear message rather than on its first GET."""
    provider = AwsCredentialsProvider.new_default_chain()
    try:
        provider.get_credentials().result(timeout=timeout_s)
    except Exception as exc:  # AwsCrtError, or the future's TimeoutError
        raise S3AccessError(
            f"no AWS credentials found (environment, profile, container or instance role): {exc}"
        ) from None
    return provider


def tls_options(address: S3Address) -> TlsConnectionOptions | None:
    """TLS trusting the CA bundle botocore names (AWS_CA_BUNDLE) instead of the system's."""
    if not address.tls or address.ca_bundle is None:
        return None
    options = TlsContextOptions()
    options.override_default_trust_store_from_path(ca_filepath=address.ca_bundle)
    connection = ClientTlsContext(options).new_connection_options()
    connection.set_server_name(address.host.rsplit(":", 1)[0])
    return connection


def _wait(request: Any, deadline: float, until: float | None) -> BaseException | None:
    """The finished request's error, None for a response in full. A request still running at
    `deadline` is cancelled and ends in a TimeoutError; TimeoutError is raised if `until` comes
    first. `.exception()`, never `.result()`: raising the stored error would tie the frame to
    it, and through the CRT's native references keep the client alive."""
    end = deadline if until is None else min(deadline, until)
    try:
        return request.finished_future.exception(timeout=max(0.0, end - time.monotonic()))  # type: ignore[no-any-return]
    except TimeoutError:
        if end < deadline:
            raise
    _cancel(request)
    return TimeoutError("no complete response within the request timeout")


def _cancel(request: Any) -> None:
    """Cancel a request and let the CRT finish with it (bounded)."""
    request.cancel()
    with suppress(TimeoutError):
        request.finished_future.exception(timeout=5.0)


class CrtSource:
    """`ObjectSource` on the CRT's S3 client."""

    def __init__(
        self,
        settings: Settings,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        request_timeout_s: float = 30.0,
        backoff_base_s: float = 0.25,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.bucket = settings.raw_bucket
        self.settings = settings
        self.max_attempts = max(1, settings.s3_max_attempts)
        self.timeout_s, self.backoff_base_s = request_timeout_s, backoff_base_s
        self.address = resolve(self.bucket, endpoint_url, region)
        self._window = max(1, settings.fetch_concurrency * 4)
        self._checksum = (
            S3ChecksumConfig(validate_response=True) if self.address.checksums else None
        )
        signing = create_default_s3_signing_config(
            region=self.address.region, credential_provider=credentials_provider()
        )
        self._client: S3Client | None = S3Client(
            region=self.address.region,
            signing_config=signing,
            tls_mode=S3RequestTlsMode.ENABLED if self.address.tls else S3RequestTlsMode.DISABLED,
            tls_connection_options=tls_options(self.address),
            throughput_target_gbps=_THROUGHPUT_TARGET_GBPS,
            max_active_connections_override=self._window,
            retry_config=S3RetryConfig(retry_mode=S3RetryMode.NONE),
            connect_timeout_ms=_CONNECT_TIMEOUT_MS,
        )
        self._shutdown: threading.Event = self._client.shutdown_event
        bucket_path = self.address.bucket_path()
        self.lister = S3Lister(
            self._list_page, bucket_path, self.bucket, self.max_attempts, page_size, backoff_base_s
        )

    def list_objects(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectRef]:
        return self.lister.list_objects(prefix, start_after)

    def fetch_many(
        self, refs: Iterable[ObjectRef], stop: threading.Event | None = None
    ) -> Iterator[FetchedObject]:
        return in_order(refs, lambda ref: _Get(self, ref), self._window, stop)

    def fetch_one(self, ref: ObjectRef) -> FetchedObject:
        return _Get(self, ref).result()

    def send(self, operation: str, path: str, **callbacks: Callable[..., None]) -> Any:
        """Start one request: a GET of `path` (already percent-encoded) to the bucket's host."""
        client = self._client
        if client is None:
            raise RuntimeError("CrtSource is closed")
        return client.make_request(
            type=S3RequestType.DEFAULT,
            operation_name=operation,
            request=HttpRequest("GET", path, HttpHeaders([("Host", self.address.host)])),
            checksum_config=self._checksum if operation == "GetObject" else None,
            **callbacks,
        )

    def judged(self, error: BaseException, action: str, where: str) -> Terminal | Retry:
        """The shared classifier's verdict on a failed request."""
        if isinstance(error, S3ResponseError):
            status, code = int(error.status_code or 0), error_code(error.body)
            return judge(status, code, error.headers, action, where)
        if isinstance(error, AwsCrtError | TimeoutError):
            # no response: refused, reset, closed mid-body, TLS, DNS, a checksum mismatch, a stall
            return Retry(str(error))
        raise error  # a bug in a callback: not an S3 problem

    def _list_page(self, path_and_query: str) -> bytes:
        chunks: list[bytes] = []

        def on_body(chunk: Any, **_: Any) -> None:
            chunks.append(bytes(chunk))

        deadline = time.monotonic() + self.timeout_s
        request = self.send("ListObjectsV2", path_and_query, on_body=on_body)
        error = _wait(request, deadline, None)
        del request  # a traceback that outlives this frame must not hold the client
        if error is None:
            return b"".join(chunks)
        judged = self.judged(error, "list", f"s3://{self.bucket}/")
        assert isinstance(judged, Retry)  # a listing is never Terminal: judge raises instead
        raise judged

    def close(self) -> None:
        """Let the CRT client go and wait (bounded) until it has shut down: once no request holds
        it (an unfinished `fetch_many` generator cancels its own when it is closed or collected)."""
        self._client = None
        self._shutdown.wait(5.0)

    @property
    def closed_cleanly(self) -> bool:
        """True once the CRT client has finished shutting down."""
        return self._shutdown.is_set()

    def __enter__(self) -> CrtSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Get:
    """One object's GET: its current CRT request, its attempts, its body as it arrives."""

    def __init__(self, source: CrtSource, ref: ObjectRef) -> None:
        self.source, self.ref = source, ref
        self.attempts: Attempts | None = None  # made on the first failure
        self.cap = source.settings.max_object_bytes
        self.request: Any = None
        self.done: FetchedObject | None = None
        self.not_before = 0.0  # no new attempt before this (backoff)
        if ref.size > self.cap:
            self.done = too_large(ref, ref.size, self.cap)
        else:
            self._send()

    def _send(self) -> None:
        self.chunks: list[bytes] = []
        self.size, self.encoding = 0, ""
        self.deadline = time.monotonic() + self.source.timeout_s
        path = self.source.address.object_path(self.ref.key)
        self.request = self.source.send(
            "GetObject", path, on_headers=self._on_headers, on_body=self._on_body
        )

    def _on_headers(self, status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
        for name, value in headers:
            lname = name.lower()
            if lname == "content-length" and 200 <= status_code < 300 and int(value) > self.cap:
                raise _TooLarge
            elif lname == "content-encoding":
                self.encoding = value

    def _on_body(self, chunk: Any, **_: Any) -> None:
        self.size += len(chunk)
        if self.size > self.cap:
            raise _TooLarge
        self.chunks.append(bytes(chunk))

    def result(self, timeout: float | None = None) -> FetchedObject:
        """The result, attempting again as the classifier says; raises TimeoutError when it is
        not there within `timeout`, or the error once the attempts are spent."""
        until = None if timeout is None else time.monotonic() + timeout
        while self.done is None:
            if self.request is None:  # backing off
                if until is not None and self.not_before > until:
                    time.sleep(max(0.0, until - time.monotonic()))
                    raise TimeoutError
                time.sleep(max(0.0, self.not_before - time.monotonic()))
                self._send()
            error = _wait(self.request, self.deadline, until)
            self.request = None
            self._settle(error)
        return self.done

    def _settle(self, error: BaseException | None) -> None:
        retries = self.attempts.spent if self.attempts else 0
        decompressed = self.source.settings.max_decompressed_bytes
        if error is None:
            data = b"".join(self.chunks)
            self.done = fetched(self.ref, data, self.encoding, decompressed, retries)
        elif isinstance(error, _TooLarge):  # grown since it was listed
            self.done = too_large(self.ref, None, self.cap, retries)
        else:
            source, where = self.source, f"s3://{self.source.bucket}/{self.ref.key}"
            judged = source.judged(error, "read", where)
            if isinstance(judged, Terminal):
                self.done = FetchedObject(self.ref, None, *judged, retries)
                return
            if self.attempts is None:
                self.attempts = Attempts("read", where, source.max_attempts, source.backoff_base_s)
            self.not_before = time.monotonic() + self.attempts.failed(judged)

    def cancel(self) -> None:
        request, self.request = self.request, None
        if request is not None:
            _cancel(request)
