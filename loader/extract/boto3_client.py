"""S3 through boto3: the reference client, ~1 ms of client CPU per GET.

A bounded window of GETs runs on a thread pool and results come back in listing order, so memory
stays flat whatever the hour's size. botocore retries throttling and 5xx itself; a connection
cut mid-body (which botocore's retry handler never sees) is retried here. Whatever S3 answered
in the end is classified by `loader.extract.errors`, the same decision the CRT client takes.
Listing goes through the lean ListObjectsV2 of `loader.extract.listing`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

import boto3
import botocore.exceptions
import botocore.session
from botocore.config import Config
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from loader.common import STOP_POLL_S, FetchedObject, ObjectRef, S3TransientError
from loader.config import Settings
from loader.extract.body import BodyError, decode_body
from loader.extract.errors import (
    EXPIRED_CODES,
    access_error,
    classify,
    expired_error,
    terminal_reason,
    transient_error,
)
from loader.extract.listing import lister_for_boto3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


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


class _BodyRetry(Exception):
    """Raised inside the retry loop for a GET whose body read failed."""


class _Expired(Exception):
    """Raised inside the retry loop for a GET refused with ExpiredToken: botocore does not retry
    it, and its credential provider has fresh credentials by the next attempt."""


#: Attempts at a GET whose body read failed or whose token expired (botocore retries the rest).
_GET_ATTEMPTS = 4


class _TooLarge(Exception):
    """The object's Content-Length is over the cap (it grew after listing)."""


def _timestamp_text(value: str) -> str:
    """Keep a response timestamp as S3 sent it: see `_make_client`."""
    return value


def _make_client(settings: Settings) -> S3Client:
    """The S3 client the GETs go through, configured for the least CPU per GET.

    Two choices cost client CPU on every GET (sequential GETs of 800-byte objects from s3rver,
    thread CPU per GET, median of 16 interleaved rounds of 60, on the loaded 2-core bench
    machine where a GET costs ~3.4 ms of CPU; ~1.4 ms on a quiet one):

    - The timestamp parser. botocore parses every GET's `Last-Modified` header (and any other
      timestamp member) with dateutil: ~8% of a GET's interpreter time in py-spy. Nothing here
      reads them (an object's LastModified comes from the listing), so the text is kept.
    - Parameter validation of a bucket and a key we built ourselves: ~2%.

    Both off: 3.45 -> 3.02 ms per GET; end to end (`bench/run.py --quick`, side by side with
    the previous code) 3.60 -> 3.23 ms CPU per event. Against boto3's defaults the rest measured
    no difference beyond noise: retries "standard" vs "legacy", tcp_keepalive,
    max_pool_connections, the tenacity wrapper (~0.04 ms a call) and response checksum
    validation (s3rver sends no checksum headers, so botocore computes none; against real S3
    it checks the object's CRC, and that stays on).
    """
    session = botocore.session.get_session()
    session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=_timestamp_text
    )
    return boto3.session.Session(botocore_session=session).client(
        "s3",
        config=Config(
            # "standard", not "adaptive": adaptive's client-side rate limiter costs CPU on
            # every request and, after a SlowDown, throttles the whole window for tens of
            # seconds (bench/results/boto3_path.json).
            retries={"mode": "standard", "max_attempts": settings.s3_max_attempts},
            max_pool_connections=settings.fetch_concurrency,
            connect_timeout=5,
            read_timeout=30,
            tcp_keepalive=True,
            parameter_validation=False,
        ),
    )


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
        self._client: S3Client = client or _make_client(settings)
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
            # botocore has already retried what it retries: a verdict of "retry" is spent too.
            code = exc.response.get("Error", {}).get("Code", "")
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            verdict = classify(status, code)
            if verdict == "terminal":
                reason = terminal_reason(code)
                return FetchedObject(ref, None, reason, code or str(status), counter[0])
            where = f"s3://{self.bucket}/{ref.key}"
            if verdict == "access":
                headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                region = headers.get("x-amz-bucket-region")
                raise access_error("read", where, status, code, region) from None
            raise transient_error("GET", where, status, code) from None
        except _Expired:
            where = f"s3://{self.bucket}/{ref.key}"
            raise expired_error("read", where, _GET_ATTEMPTS) from None
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
        retry=retry_if_exception_type((_BodyRetry, _Expired)),
        stop=stop_after_attempt(_GET_ATTEMPTS),
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
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code", "") in EXPIRED_CODES:
                raise _Expired(str(exc)) from exc
            raise
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
