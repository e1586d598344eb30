"""S3 through boto3's credentials and botocore's signer: the fallback when awscrt is absent.

boto3 resolves what a boto3 user expects (endpoint, region, the credential chain with its
refreshes); the requests themselves are signed with botocore's SigV4 signer and sent over one
urllib3 pool (`loader.extract.listing.SignedUrllib3Fetcher`), shared by the listing and the GET
threads. Through botocore's `get_object` a GET cost 2.5 ms of CPU on the bench machine, this
one 1.0 ms (bench/boto3_path.py, interleaved): botocore's generic request pipeline, event hooks
and response parsing are the difference, and nothing here needs them.

A bounded window of GETs runs on a thread pool and results come back in listing order, so memory
stays flat whatever the hour's size. Each GET's retries are this module's, as the CRT client's
are its own: counted, classified by `loader.extract.errors`, with a body-length check and
botocore's response checksum validation.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import boto3
from botocore import httpchecksum
from botocore.compat import HAS_CRT

from loader.common import STOP_POLL_S, FetchedObject, ObjectRef, S3TransientError
from loader.config import Settings
from loader.extract.body import BodyError, decode_body
from loader.extract.errors import (
    TransportError,
    backoff_delay,
    error_code,
    expired_error,
    judge_get_refusal,
)
from loader.extract.listing import fetcher_for_boto3_client, lister_for_boto3_client

#: The response checksums botocore validates on a GET, in its order of preference; the CRC32C and
#: CRC64NVME ones only when botocore may use the CRT (as botocore itself).
_CHECKSUMS: dict[str, Callable[[], Any]] = {
    "crc32": httpchecksum.Crc32Checksum,
    "sha1": httpchecksum.Sha1Checksum,
    "sha256": httpchecksum.Sha256Checksum,
}
if HAS_CRT:
    _CHECKSUMS = {
        "crc64nvme": httpchecksum.CrtCrc64NvmeChecksum,
        "crc32c": httpchecksum.CrtCrc32cChecksum,
        **_CHECKSUMS,
    }
#: Asks S3 for the object's stored checksum, as botocore does by default
#: (response_checksum_validation = when_supported; not sent with when_required).
_GET_HEADERS = {"x-amz-checksum-mode": "ENABLED"}
#: An S3 error document is under 1 KB; more than this is not one.
_ERROR_DOC_MAX = 64 * 1024


@dataclass(frozen=True, slots=True)
class _Retry:
    """Why one GET attempt must be tried again."""

    reason: str
    expired: bool = False
    retry_after: float | None = None


def checksum_problem(data: bytes, headers: Any) -> str | None:
    """Why `data` does not match the full-object checksum S3 sent, or None (also when S3 sent
    none or only a composite one: "<base64>-<parts>", which no body read can check)."""
    for algorithm, make in _CHECKSUMS.items():
        expected = headers.get(f"x-amz-checksum-{algorithm}")
        if expected is None:
            continue
        if "-" in expected:
            return None
        checksum = make()
        checksum.update(data)
        actual = checksum.b64digest()
        if actual != expected:
            return f"{algorithm} checksum mismatch: S3 sent {expected}, the body has {actual}"
        return None
    return None


def _checks_responses(client: Any) -> bool:
    """botocore's own answer (AWS_RESPONSE_CHECKSUM_VALIDATION, the profile, a Config): its
    default `when_supported` asks for and checks the stored checksum; `when_required` does not
    ask, so S3 sends none to check."""
    mode = getattr(client.meta.config, "response_checksum_validation", None)
    return mode != "when_required"


class Boto3Source:
    """`ObjectSource` for where the CRT is not: boto3's configuration, lean signed requests."""

    def __init__(
        self,
        settings: Settings,
        client: Any | None = None,
        *,
        backoff_base_s: float = 0.25,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`client`: the boto3 S3 client whose endpoint, region and credentials to use (by
        default boto3's from the environment); no request goes through it."""
        self.bucket = settings.raw_bucket
        self._settings = settings
        self._concurrency = settings.fetch_concurrency
        self._max_attempts = max(1, settings.s3_max_attempts)
        self._backoff_base_s = backoff_base_s
        self._sleep = sleep
        self._client = client or boto3.session.Session().client("s3")
        self._get_headers = _GET_HEADERS if _checks_responses(self._client) else {}
        # One pool for everything: a connection per GET thread, and one for the listing.
        self._http = fetcher_for_boto3_client(
            self._client, self.bucket, pool_size=self._concurrency + 1
        )
        self._lister = lister_for_boto3_client(
            self._client, self.bucket, self._max_attempts, fetcher=self._http
        )
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
            # the request timeouts, and its result is dropped too.
            for future in pending:
                future.cancel()

    def fetch_one(self, ref: ObjectRef) -> FetchedObject:
        """The object, or why it can never be read; raises once its attempts are spent (or at
        once on a refusal no retry mends)."""
        cap = self._settings.max_object_bytes
        if ref.size > cap:
            detail = f"object is {ref.size} bytes, over MAX_OBJECT_BYTES={cap}"
            return FetchedObject(ref, None, "too_large", detail)
        retry: _Retry | None = None
        for attempt in range(1, self._max_attempts + 1):
            if retry is not None:
                wait = retry.retry_after
                self._sleep(backoff_delay(attempt - 1, self._backoff_base_s, retry_after=wait))
            outcome = self._attempt(ref, attempt - 1)
            if isinstance(outcome, FetchedObject):
                return outcome
            retry = outcome
        assert retry is not None
        where = f"s3://{self.bucket}/{ref.key}"
        if retry.expired:
            raise expired_error("read", where, self._max_attempts)
        raise S3TransientError(
            f"GET {where} failed after {self._max_attempts} attempts: {retry.reason}"
        )

    def _attempt(self, ref: ObjectRef, retries: int) -> FetchedObject | _Retry:
        """One signed GET: its result, or why to retry. Raises what no retry mends."""
        try:
            response = self._http.open(self._http.address.object_path(ref.key), self._get_headers)
        except TransportError as exc:
            return _Retry(str(exc) or type(exc).__name__)
        clean = False
        try:
            if response.status != 200:
                try:
                    document = response.read(_ERROR_DOC_MAX)
                except (self._http.http_error, OSError):
                    document = b""  # cut mid-document: the status alone decides
                else:
                    clean = len(document) < _ERROR_DOC_MAX  # read to its end
                return self._refusal(ref, response, document, retries)
            outcome = self._read_body(ref, response, retries)
            clean = not isinstance(outcome, _Retry) and outcome.error != "too_large"
            return outcome
        except (self._http.http_error, OSError) as exc:
            # The connection died or stalled mid-body: S3's 500 cut short, a reset, a timeout.
            return _Retry(f"body read failed: {exc}")
        finally:
            if not clean:  # unread bytes left: never hand this connection to another GET
                response.close()
            response.release_conn()

    def _read_body(self, ref: ObjectRef, response: Any, retries: int) -> FetchedObject | _Retry:
        cap = self._settings.max_object_bytes
        length_text = response.headers.get("content-length")
        length = int(length_text) if length_text is not None else None
        if length is not None and length > cap:
            # The object grew since it was listed: never read more than the cap.
            detail = f"object is {length} bytes, over MAX_OBJECT_BYTES={cap}"
            return FetchedObject(ref, None, "too_large", detail, retries)
        data = response.read(cap + 1)
        if len(data) > cap:  # no Content-Length (chunked), and more than the cap
            detail = f"object is over MAX_OBJECT_BYTES={cap}"
            return FetchedObject(ref, None, "too_large", detail, retries)
        if length is not None and len(data) != length:
            return _Retry(f"body cut short: {len(data)} of {length} bytes")
        problem = checksum_problem(data, response.headers)
        if problem is not None:
            return _Retry(problem)
        encoding = response.headers.get("content-encoding")
        try:
            body = decode_body(data, encoding, self._settings.max_decompressed_bytes)
        except BodyError as exc:
            return FetchedObject(ref, None, exc.reason, str(exc), retries)
        return FetchedObject(ref, body, None, None, retries)

    def _refusal(
        self, ref: ObjectRef, response: Any, document: bytes, retries: int
    ) -> FetchedObject | _Retry:
        """S3 answered with an error: judged as the CRT client's GETs are."""
        status, code = int(response.status), error_code(document)
        where = f"s3://{self.bucket}/{ref.key}"
        judged = judge_get_refusal(status, code, response.headers.items(), where)
        if judged.terminal_reason is not None:
            return FetchedObject(ref, None, judged.terminal_reason, code or str(status), retries)
        return _Retry(f"{status} {code}".strip(), judged.expired, judged.retry_after)

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
        self._http.close()


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
