"""The CRT client's listing: one ListObjectsV2 request per page, parsed with ElementTree.

Kept by hand because boto3's paginator costs 90 ms of client CPU per 1,000 keys against this
one's 10 (bench/results/s3_client_cost.json), about 12% of the default path's CPU per event.
Pagination stays exact: `continuation-token` from `NextContinuationToken`, `start-after` on the
first request only, keys URL-decoded when S3 says it encoded them (`EncodingType=url`, as boto3
does), directory markers left out. The boto3 client uses boto3's paginator.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, unquote_plus

from loader.common import ObjectRef, S3TransientError
from loader.extract.errors import Attempts, Retry, retrying

PAGE_SIZE = 1000


def is_directory_marker(key: str, size: int) -> bool:
    """Zero-byte keys ending in '/' are folders made by consoles and tools, not events."""
    return size == 0 and key.endswith("/")


@dataclass(frozen=True, slots=True)
class ListPage:
    refs: list[ObjectRef]
    is_truncated: bool
    next_token: str | None
    key_count: int  # every key on the page, directory markers included


def parse_list_page(body: bytes) -> ListPage:
    """Parse one ListObjectsV2 result whatever its XML namespace (s3rver's differs from AWS's)."""
    root = ET.fromstring(body)  # noqa: S314 - the document comes from our own S3 endpoint
    tag = root.tag
    ns = tag[: tag.index("}") + 1] if tag.startswith("{") else ""
    if tag[len(ns) :] != "ListBucketResult":
        raise ValueError(f"not a ListBucketResult: <{tag[len(ns) :]}>")
    key_tag, size_tag, modified_tag = ns + "Key", ns + "Size", ns + "LastModified"
    url_encoded = (root.findtext(ns + "EncodingType") or "").lower() == "url"
    refs: list[ObjectRef] = []
    count = 0
    for item in root.iterfind(ns + "Contents"):
        count += 1
        key = item.findtext(key_tag)
        if key is None:
            raise ValueError("a <Contents> entry without <Key>")
        if url_encoded:
            key = unquote_plus(key)  # S3 encodes a space as '+' and a literal '+' as %2B
        size = int(item.findtext(size_tag) or 0)
        if is_directory_marker(key, size):
            continue
        # Python 3.11's fromisoformat takes S3's "2024-05-01T10:00:00.000Z" directly.
        refs.append(ObjectRef(key, size, datetime.fromisoformat(item.findtext(modified_tag) or "")))
    truncated = (root.findtext(ns + "IsTruncated") or "false").strip().lower() == "true"
    token = root.findtext(ns + "NextContinuationToken")
    return ListPage(refs, truncated, token or None, count)


def _query(params: list[tuple[str, str]]) -> str:
    # Sorted and encoded exactly as SigV4 canonicalises them, so the CRT signs the URL as is.
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params))


@dataclass
class S3Lister:
    """Every object under a prefix, in key order, one request per page. `fetch(path_and_query)`
    returns a page's body, or raises a `Retry` or what no retry mends (loader.extract.errors);
    a page that does not parse is retried too."""

    fetch: Callable[[str], bytes]
    bucket_path: str
    bucket: str
    max_attempts: int = 5
    page_size: int = PAGE_SIZE
    backoff_base_s: float = 0.25

    def list_objects(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectRef]:
        token: str | None = None
        while True:
            params = [("list-type", "2"), ("prefix", prefix), ("encoding-type", "url")]
            params.append(("max-keys", str(self.page_size)))
            if token is not None:
                params.append(("continuation-token", token))
            elif start_after:
                params.append(("start-after", start_after))
            page = self._page(f"{self.bucket_path}?{_query(params)}", prefix)
            yield from page.refs
            if not page.is_truncated:
                return
            if not page.next_token:
                raise S3TransientError(
                    f"listing s3://{self.bucket}/{prefix}: truncated page without a "
                    "NextContinuationToken"
                )
            token = page.next_token

    def _page(self, path_and_query: str, prefix: str) -> ListPage:
        where = f"s3://{self.bucket}/{prefix}"
        attempts = Attempts("list", where, self.max_attempts, self.backoff_base_s)
        return retrying(lambda: _parsed(self.fetch(path_and_query)), attempts)


def _parsed(body: bytes) -> ListPage:
    try:
        return parse_list_page(body)
    except (ET.ParseError, ValueError) as exc:
        raise Retry(f"unparseable page: {exc}") from None
