"""S3: list an hour's keys and fetch their bodies, concurrently and in bounded memory.

The pipeline sees one interface (`ObjectSource`) whatever the client: boto3 here, the AWS Common
Runtime in `source_crt`. Failures come in two kinds and stay apart: a body that can never parse
(too large, corrupt gzip, deleted since listing) is returned as a `FetchedObject` with an
`error` and the run goes on; anything transient (throttling, 5xx, a connection cut mid-body)
is retried, and when the retry budget is spent it raises `S3TransientError` so the invocation
fails loudly and Lambda retries it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import boto3
import botocore.exceptions
from botocore.config import Config
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from loader.config import Settings
from loader.extract.body import BodyError, decode_body

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One listed object."""

    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True, slots=True)
class FetchedObject:
    """A fetched object: its decoded body, or why there is none (a terminal reason code)."""

    ref: ObjectRef
    body: bytes | None
    error: str | None = None
    detail: str | None = None
    retries: int = 0


class S3TransientError(RuntimeError):
    """S3 kept failing after every retry: fail the invocation so it is retried as a whole."""


class S3AccessError(RuntimeError):
    """S3 refused access: a configuration problem (bucket, IAM policy), not bad data."""


class ObjectSource(Protocol):
    bucket: str

    def list_objects(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectRef]:
        """Every object under `prefix` in key order, directory markers left out."""
        ...

    def fetch_many(
        self, refs: Iterable[ObjectRef], stop: threading.Event | None = None
    ) -> Iterator[FetchedObject]:
        """Fetch concurrently with bounded memory; yield results in the order of `refs`.

        When `stop` is set, return within about STOP_POLL_S, even while S3 has not answered:
        the caller's invocation is ending and its thread must not outlive it."""
        ...

    def close(self) -> None: ...


#: How often a source waiting on S3 looks at the caller's stop signal.
STOP_POLL_S = 0.1


def is_directory_marker(key: str, size: int) -> bool:
    """Zero-byte keys ending in '/' are folders made by consoles and tools, not events."""
    return size == 0 and key.endswith("/")


# Errors raised while reading a body after the response headers arrived: botocore's retry
# handler never sees them, so we retry the whole GET ourselves.
_BODY_READ_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.EndpointConnectionError,
    ConnectionError,
)
_TERMINAL_CODES = {"NoSuchKey": "not_found", "InvalidObjectState": "not_readable"}
_ACCESS_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "NoSuchBucket",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
}


class _BodyRetry(Exception):
    """Raised inside the retry loop for a GET whose body read failed."""


class _TooLarge(Exception):
    """The object's Content-Length is over the cap (it grew after listing)."""


def _count_retry(state: RetryCallState) -> None:
    counter = state.kwargs.get("retry_counter")
    if isinstance(counter, list):
        counter[0] += 1


class Boto3Source:
    """The boto3 client: the reference implementation, ~1 ms of client CPU per GET."""

    def __init__(self, settings: Settings, client: S3Client | None = None) -> None:
        self.bucket = settings.raw_bucket
        self._settings = settings
        self._concurrency = settings.fetch_concurrency
        self._client: S3Client = client or boto3.session.Session().client(
            "s3",
            config=Config(
                retries={"mode": "adaptive", "max_attempts": settings.s3_max_attempts},
                max_pool_connections=settings.fetch_concurrency,
                connect_timeout=5,
                read_timeout=30,
                tcp_keepalive=True,
            ),
        )
        from loader.extract.listing import lister_for_boto3_client  # s3_list imports this module

        self._lister = lister_for_boto3_client(self._client, self.bucket, settings.s3_max_attempts)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def list_objects(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectRef]:
        # A signed request and an ElementTree parse: ~10 ms of CPU per 1,000 keys against the
        # paginator's ~90 ms (bench/s3_client_cost.py), same keys, sizes and order.
        return self._lister.list_objects(prefix, start_after)

    def fetch_many(
        self, refs: Iterable[ObjectRef], stop: threading.Event | None = None
    ) -> Iterator[FetchedObject]:
        pool = self._executor()
        window = self._concurrency * 4
        pending: deque[Future[FetchedObject]] = deque()
        try:
            for ref in refs:
                pending.append(pool.submit(self.fetch_one, ref))
                if len(pending) >= window:
                    result = _result(pending.popleft(), stop)
                    if result is None:
                        return
                    yield result
            while pending:
                result = _result(pending.popleft(), stop)
                if result is None:
                    return
                yield result
        finally:
            # Queued GETs are dropped; one already running finishes in its pool thread within
            # botocore's timeouts, and its result is dropped too.
            for future in pending:
                future.cancel()

    def fetch_one(self, ref: ObjectRef) -> FetchedObject:
        cap = self._settings.max_object_bytes
        if ref.size > cap:
            detail = f"object is {ref.size} bytes, over MAX_OBJECT_BYTES={cap}"
            return FetchedObject(ref, None, "too_large", detail)
        counter = [0]
        try:
            data, encoding, botocore_retries = self._get(ref.key, retry_counter=counter)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _TERMINAL_CODES:
                return FetchedObject(ref, None, _TERMINAL_CODES[code], code, counter[0])
            if code in _ACCESS_CODES:
                raise S3AccessError(f"cannot read s3://{self.bucket}/{ref.key}: {code}") from None
            raise S3TransientError(f"GET s3://{self.bucket}/{ref.key} failed: {code}") from None
        except _BodyRetry as exc:
            raise S3TransientError(
                f"GET s3://{self.bucket}/{ref.key} body kept failing: {exc.__cause__}"
            ) from None
        except _TooLarge as exc:
            return FetchedObject(ref, None, "too_large", str(exc), counter[0])
        retries = counter[0] + botocore_retries
        try:
            body = decode_body(data, encoding, self._settings.max_decompressed_bytes)
        except BodyError as exc:
            return FetchedObject(ref, None, exc.reason, str(exc), retries)
        return FetchedObject(ref, body, None, None, retries)

    @retry(
        retry=retry_if_exception_type(_BodyRetry),
        stop=stop_after_attempt(4),
        wait=wait_random_exponential(multiplier=0.2, max=3),
        before_sleep=_count_retry,
        reraise=True,
    )
    def _get(self, key: str, *, retry_counter: list[int]) -> tuple[bytes, str | None, int]:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            length = response.get("ContentLength")
            cap = self._settings.max_object_bytes
            if length is not None and length > cap:
                # The object grew since it was listed: never read more than the cap.
                response["Body"].close()
                raise _TooLarge(f"object is {length} bytes, over MAX_OBJECT_BYTES={cap}")
            data = response["Body"].read()
        except _BODY_READ_ERRORS as exc:
            raise _BodyRetry(str(exc)) from exc
        if length is not None and len(data) != length:
            raise _BodyRetry(f"body cut short: {len(data)} of {length} bytes")
        retries = int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
        return data, response.get("ContentEncoding"), retries

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self._concurrency, thread_name_prefix="s3-fetch"
                )
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None


def _result(future: Future[FetchedObject], stop: threading.Event | None) -> FetchedObject | None:
    """The fetch's result, or None as soon as `stop` is set."""
    if stop is None:
        return future.result()
    while True:
        try:
            return future.result(timeout=STOP_POLL_S)
        except FutureTimeout:
            if stop.is_set():
                future.cancel()
                return None


def make_source(settings: Settings) -> ObjectSource:
    """The S3 client chosen by S3_CLIENT (boto3 by default)."""
    if settings.s3_client == "crt":
        from loader.extract.crt_client import CrtSource

        return CrtSource(settings)
    return Boto3Source(settings)
