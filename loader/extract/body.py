"""What both S3 clients do alike with what they fetch: the bounded in-order window of GETs, the
size cap, and gzip handling with a hard cap on what a body may expand to.
"""

from __future__ import annotations

import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from loader.common import STOP_POLL_S, FetchedObject, ObjectRef
from loader.errors import TerminalError

GZIP_MAGIC = b"\x1f\x8b"


class BodyError(TerminalError):
    """A body that can never parse (terminal): reported as malformed, never retried."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_body(data: bytes, content_encoding: str | None, max_decompressed: int) -> bytes:
    """Gunzip when the object says gzip or starts with gzip's magic bytes.

    Decompression is bounded: a small object that expands past `max_decompressed` bytes (a gzip
    bomb, or a tracker bug) is refused instead of exhausting the Lambda's memory.
    """
    encoding = (content_encoding or "").lower()
    if "gzip" not in encoding and not data.startswith(GZIP_MAGIC):
        return data
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, max_decompressed + 1)
    except zlib.error as exc:
        raise BodyError("bad_gzip", f"gzip body does not decompress: {exc}") from None
    if len(out) > max_decompressed or inflater.unconsumed_tail:
        raise BodyError(
            "too_large", f"body expands past the {max_decompressed}-byte decompression cap"
        )
    if not inflater.eof:
        raise BodyError("bad_gzip", "gzip body is truncated")
    return out


def fetched(
    ref: ObjectRef, data: bytes, encoding: str | None, max_decompressed: int, retries: int
) -> FetchedObject:
    """A whole body as stored → the object's result: its decoded bytes, or why it never parses."""
    try:
        return FetchedObject(ref, decode_body(data, encoding, max_decompressed), retries=retries)
    except BodyError as exc:
        return FetchedObject(ref, None, exc.reason, str(exc), retries)


def too_large(ref: ObjectRef, size: int | None, cap: int, retries: int = 0) -> FetchedObject:
    """The result of an object over MAX_OBJECT_BYTES (`size` None: no length was announced)."""
    what = f"object is {size} bytes, over" if size is not None else "object is over"
    return FetchedObject(ref, None, "too_large", f"{what} MAX_OBJECT_BYTES={cap}", retries)


class Pending(Protocol):
    """One GET under way: a `concurrent.futures.Future` (boto3) or the CRT client's own."""

    def result(self, timeout: float | None = None) -> FetchedObject:
        """The result; raises TimeoutError when it is not there within `timeout`."""
        ...

    def cancel(self) -> bool | None: ...


def in_order(
    refs: Iterable[ObjectRef],
    start: Callable[[ObjectRef], Pending],
    window: int,
    stop: threading.Event | None,
) -> Iterator[FetchedObject]:
    """Start up to `window` GETs ahead and yield their results in the order of `refs`: memory
    stays flat whatever the hour's size. Returns within STOP_POLL_S of `stop` being set; what
    is still under way is cancelled."""
    todo = iter(refs)
    pending: deque[Pending] = deque()
    try:
        while True:
            while len(pending) < window and (ref := next(todo, None)) is not None:
                pending.append(start(ref))
            if not pending:
                return
            while True:
                try:
                    result = pending[0].result(None if stop is None else STOP_POLL_S)
                    break
                except TimeoutError:
                    if stop is not None and stop.is_set():
                        return
            pending.popleft()
            yield result
    finally:
        for left in pending:
            left.cancel()
