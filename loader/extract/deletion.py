"""Deleting raw objects for erasure: every version of each key, with the erasure function's own
rights (s3:GetBucketVersioning, s3:ListBucketVersions, s3:DeleteObject, s3:DeleteObjectVersion),
which the loaders never hold.

A plain boto3 S3 client with botocore's standard retries (AWS_ENDPOINT_URL and the usual
profile, region and credential settings apply, as for every boto3 client): erasure deletes a
person's objects, a few hundred at most, not an hour's thousands, so the loaders' tuned GET
paths have nothing to offer here. On a bucket that has (or had) versioning, every version and
delete marker is listed with `ListObjectVersions` (per key, or per folder for many keys of one
hour) and deleted by version id, so nothing survives as a noncurrent version; on a bucket that
never had it, each key's one (`null`) version is found with a plain listing. Deletes go 1000
keys/versions per `DeleteObjects` request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from loader.common import S3AccessError, S3TransientError

#: DeleteObjects takes at most this many keys (or versions) per request.
DELETE_BATCH: Final = 1000
#: From this many keys in one folder (an hour), one listing of the folder (pages of 1000
#: versions) replaces one listing per key: an hour of 3,000 objects is 3 requests, not 29.
LIST_FOLDER_AT: Final = 8
_ACCESS_CODES: Final = frozenset({"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId"})


@dataclass
class Deleted:
    """What one pass of deletes did: keys with at least one version deleted, versions deleted
    (delete markers included), and keys S3 refused, with its error code."""

    objects: int = 0
    versions: int = 0
    failed: dict[str, str] = field(default_factory=dict)


class ObjectEraser:
    """Lists and deletes every version of named keys in one bucket."""

    def __init__(self, bucket: str, *, max_attempts: int = 5, client: Any = None) -> None:
        self.bucket = bucket
        self._client = client or _client(max_attempts)
        self._versioned: bool | None = None

    def close(self) -> None:
        """Close the client's connections (a server waiting on a kept-alive one can then stop)."""
        self._client.close()

    def versions(self, keys: Iterable[str]) -> dict[str, list[dict[str, str]]]:
        """Every version and delete marker of each key (`{"Key", "VersionId"}` each). Keys of
        one folder are listed with one listing of the folder once there are LIST_FOLDER_AT of
        them, else each with its own (the key as prefix, exact matches kept)."""
        found: dict[str, list[dict[str, str]]] = {key: [] for key in sorted(set(keys))}
        folders: dict[str, list[str]] = {}
        for key in found:
            folders.setdefault(key.rpartition("/")[0] + "/", []).append(key)
        for folder, members in folders.items():
            whole = len(members) >= LIST_FOLDER_AT
            for prefix in [folder] if whole else members:
                for item in self._listed(prefix):
                    if item["Key"] in found and (whole or item["Key"] == prefix):
                        found[item["Key"]].append(item)
        return found

    def _listed(self, prefix: str) -> Iterator[dict[str, str]]:
        if not self.versioned():
            # Never versioned: each key has one version, `null`; a plain listing says which.
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in _guarded(pages):
                for item in page.get("Contents", []):
                    yield {"Key": item["Key"], "VersionId": "null"}
            return
        pages = self._client.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in _guarded(pages):
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                yield {"Key": item["Key"], "VersionId": item.get("VersionId") or "null"}

    def versioned(self) -> bool:
        """Whether the bucket has ever had versioning on (Enabled or Suspended): then older
        versions may hold the objects too. Asked once; when the role may not ask
        (s3:GetBucketVersioning), taken as versioned, the listing that never misses one."""
        if self._versioned is None:
            try:
                status = _call(self._client.get_bucket_versioning, Bucket=self.bucket)
            except S3AccessError:
                self._versioned = True
            else:
                self._versioned = status.get("Status") in ("Enabled", "Suspended")
        return self._versioned

    def remaining(self, keys: Iterable[str]) -> dict[str, int]:
        """Versions (delete markers included) each key still has; keys with none left out."""
        return {key: len(found) for key, found in self.versions(keys).items() if found}

    def delete_every_version(self, keys: Iterable[str]) -> Deleted:
        """Delete every version of each key. A key S3 refuses to delete is reported in
        `failed`, never raised: the request stays open and says which."""
        result = Deleted()
        targets = [version for found in self.versions(keys).values() for version in found]
        touched: set[str] = set()
        for start in range(0, len(targets), DELETE_BATCH):
            chunk = targets[start : start + DELETE_BATCH]
            response = _call(
                self._client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": chunk, "Quiet": True},
            )
            errors = response.get("Errors", [])
            for error in errors:
                result.failed[error["Key"]] = str(error.get("Code", "unknown"))
            refused = {(e["Key"], e.get("VersionId") or "null") for e in errors}
            for version in chunk:
                if (version["Key"], version["VersionId"]) not in refused:
                    result.versions += 1
                    touched.add(version["Key"])
        result.objects = len(touched - set(result.failed))
        return result


def _client(max_attempts: int) -> Any:
    # Imported here: boto3 and botocore cost ~0.3 s of a cold start that the loaders' CRT path
    # never pays, and only the erasure function deletes.
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        config=Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


def _guarded(pages: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """Pages, with S3's refusals turned into the loader's two S3 errors."""
    from botocore.exceptions import BotoCoreError, ClientError

    iterator = iter(pages)
    while True:
        try:
            page = next(iterator)
        except StopIteration:
            return
        except (ClientError, BotoCoreError) as exc:
            raise _classified(exc) from exc
        yield page


def _call(operation: Any, **kwargs: Any) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response: dict[str, Any] = operation(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise _classified(exc) from exc
    return response


def _classified(exc: Exception) -> Exception:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore's ClientError: S3 answered
        code = str(response.get("Error", {}).get("Code", "unknown"))
        if code in _ACCESS_CODES:
            return S3AccessError(
                f"S3 refused the erasure ({code}): the erasure function's role needs "
                "s3:ListBucketVersions, s3:DeleteObject and s3:DeleteObjectVersion on the "
                "events prefix"
            )
        return S3TransientError(f"S3 failed during erasure ({code})")
    return S3TransientError(f"S3 unreachable during erasure ({type(exc).__name__})")
