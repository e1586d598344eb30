"""S3 through stock boto3: the fallback where awscrt is absent.

boto3's paginator lists and `get_object` fetches, as a boto3 user would write it: botocore
resolves the endpoint, region and credentials, retries throttling, 5xx and broken connections
itself (its standard mode, at most S3_MAX_ATTEMPTS attempts) and checks each body against the
checksum S3 stored (`response_checksum_validation`). What reaches us is judged by the one
classifier both clients share (`loader.extract.errors`); what botocore leaves to its caller is
retried here, on the same budget: a body cut short or failing its checksum (both found while
reading, after botocore's retries) and an expired session token.

GETs run on a pool of FETCH_CONCURRENCY threads, in a window of four times as many, and come
back in listing order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from loader.common import FetchedObject, ObjectRef
from loader.config import Settings
from loader.extract.body import fetched, in_order, too_large
from loader.extract.errors import Attempts, Retry, Terminal, judge, retrying
from loader.extract.listing import PAGE_SIZE, is_directory_marker


class Boto3Source:
    """`ObjectSource` for where the CRT is not."""

    def __init__(
        self,
        settings: Settings,
        *,
        page_size: int = PAGE_SIZE,
        request_timeout_s: float = 30.0,
    ) -> None:
        self.bucket = settings.raw_bucket
        self._settings = settings
        self._page_size = page_size
        self._max_attempts = max(1, settings.s3_max_attempts)
        config = Config(
            retries={"max_attempts": self._max_attempts},
            # a connection per GET thread, and one for the listing
            max_pool_connections=settings.fetch_concurrency + 1,
            connect_timeout=5,
            read_timeout=request_timeout_s,
        )
        self._client: Any = boto3.session.Session().client("s3", config=config)
        self._pool = ThreadPoolExecutor(settings.fetch_concurrency, thread_name_prefix="s3-fetch")

    # ---------------------------------------------------------------------------- listing

    def list_objects(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectRef]:
        """The paginator's keys; a listing tried again resumes after the last key it yielded."""
        attempts = Attempts("list", f"s3://{self.bucket}/{prefix}", self._max_attempts)
        resume = start_after
        while True:
            more = {"StartAfter": resume} if resume else {}
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=prefix,
                PaginationConfig={"PageSize": self._page_size},
                **more,
            )
            try:
                for page in pages:
                    for item in page.get("Contents", ()):
                        resume = item["Key"]
                        if not is_directory_marker(resume, item["Size"]):
                            yield ObjectRef(resume, item["Size"], item["LastModified"])
                return
            except (ClientError, BotoCoreError) as exc:
                retry = self._judge(exc, attempts)  # a listing is never terminal: judge raises
                assert isinstance(retry, Retry)
            time.sleep(attempts.failed(retry))

    # ---------------------------------------------------------------------------- fetching

    def fetch_many(
        self, refs: Iterable[ObjectRef], stop: threading.Event | None = None
    ) -> Iterator[FetchedObject]:
        # Queued GETs are dropped when the caller stops; one already running finishes in its
        # pool thread within the client's timeouts, and its result is dropped too.
        window = self._settings.fetch_concurrency * 4
        return in_order(refs, lambda ref: self._pool.submit(self.fetch_one, ref), window, stop)

    def fetch_one(self, ref: ObjectRef) -> FetchedObject:
        """The object, or why it can never be read; raises once S3_MAX_ATTEMPTS requests are
        spent (or at once on a refusal no retry mends)."""
        cap = self._settings.max_object_bytes
        if ref.size > cap:
            return too_large(ref, ref.size, cap)
        attempts = Attempts("read", f"s3://{self.bucket}/{ref.key}", self._max_attempts)
        return retrying(lambda: self._get(ref, attempts), attempts)

    def _get(self, ref: ObjectRef, attempts: Attempts) -> FetchedObject:
        """One `get_object` (botocore's retries inside): the result, or a `Retry` raised."""
        cap = self._settings.max_object_bytes
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=ref.key)
        except (ClientError, BotoCoreError) as exc:
            judged = self._judge(exc, attempts)
            if isinstance(judged, Retry):
                raise judged from None
            return FetchedObject(ref, None, *judged, attempts.spent + _retries(exc))
        sent = response["ResponseMetadata"].get("RetryAttempts", 0)
        retries, body = attempts.spent + sent, response["Body"]
        length = response.get("ContentLength")
        try:
            if length is not None and length > cap:  # grown since it was listed: left unread
                return too_large(ref, length, cap, retries)
            data = body.read(cap + 1)
            if len(data) > cap:
                return too_large(ref, None, cap, retries)
            body.read()  # the end: botocore checks the length and the checksum here
        except BotoCoreError as exc:  # cut short, stalled, or not the bytes S3 stored
            raise Retry(f"body read failed: {exc}", requests=sent + 1) from None
        finally:
            body.close()
        encoding = response.get("ContentEncoding")
        return fetched(ref, data, encoding, self._settings.max_decompressed_bytes, retries)

    def _judge(self, exc: Exception, attempts: Attempts) -> Terminal | Retry:
        """The shared classifier's verdict on what botocore raised."""
        if isinstance(exc, ClientError):
            meta, error = exc.response.get("ResponseMetadata", {}), exc.response.get("Error", {})
            status, code = meta.get("HTTPStatusCode", 0), error.get("Code", "")
            headers = meta.get("HTTPHeaders", {}).items()
            return judge(status, code, headers, attempts.action, attempts.where, _retries(exc) + 1)
        # No response after botocore's own retries (refused, reset, timed out, TLS): give up.
        return Retry(str(exc) or type(exc).__name__, requests=self._max_attempts)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()


def _retries(exc: Exception) -> int:
    """The retries botocore made before it raised `exc`."""
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
