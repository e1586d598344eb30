"""Object bodies as stored → bytes to parse: gzip handling with a hard cap on what it may expand to.

Shared by both S3 clients, so the boto3 and CRT paths treat every body identically.
"""

from __future__ import annotations

import zlib

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
