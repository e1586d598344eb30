"""Where the CRT client sends its requests, as botocore decides it: no second reading of
botocore's settings to drift from it.

A botocore S3 client (unsigned) builds one GetObject, which a `before-send` handler answers
instead of the network, as boto3's own CRT transfer manager (`s3transfer.crt`) does: the URL
it would have sent carries everything botocore resolves (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL
and the config file's endpoints, the region, AWS_USE_FIPS_ENDPOINT, AWS_USE_DUALSTACK_ENDPOINT,
the profile's S3 addressing style, the us-east-1 global endpoint), and its headers whether
botocore asks for the stored checksum (`response_checksum_validation`). The CA bundle
(AWS_CA_BUNDLE, the profile's ca_bundle) is the session's too. Run once per client, never per
request: ~0.35 s at a cold start, nothing per GET.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import botocore.session
from botocore import UNSIGNED
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.config import Config

#: The key of the GetObject botocore builds; any name that needs no escaping would do.
_PROBE_KEY = "probe"


@dataclass(frozen=True, slots=True)
class S3Address:
    """Where a bucket's requests go, and what botocore says about them."""

    scheme: str
    host: str  # host[:port], exactly as sent in the Host header
    base_path: str  # "" (virtual-hosted) or "/bucket" (path-style), after any endpoint path
    region: str  # the region requests are signed for
    ca_bundle: str | None
    checksums: bool  # ask for the stored checksum and check every body against it

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def object_path(self, key: str) -> str:
        """The request path of an object: the key percent-encoded the way botocore does."""
        return f"{self.base_path}/{quote(key, safe='/~')}"

    def bucket_path(self) -> str:
        return self.base_path or "/"


def resolve(bucket: str, endpoint_url: str | None = None, region: str | None = None) -> S3Address:
    """`bucket`'s address as botocore resolves it from the environment and the config file
    (`endpoint_url`, `region`: as `create_client` takes them, for tests and benchmarks)."""
    session = botocore.session.Session()
    client: Any = session.create_client(
        "s3",
        region_name=region,
        endpoint_url=endpoint_url,
        config=Config(signature_version=UNSIGNED),
    )
    sent: list[Any] = []

    def answer(request: Any, **_: Any) -> AWSResponse:
        sent.append(request)
        return AWSResponse(request.url, 200, HTTPHeaders(), None)

    client.meta.events.register("before-send.s3.GetObject", answer)
    try:
        client.get_object(Bucket=bucket, Key=_PROBE_KEY)
    finally:
        client.close()
    url = urlsplit(sent[0].url)
    return S3Address(
        scheme=url.scheme,
        host=url.netloc,
        base_path=url.path.removesuffix(f"/{_PROBE_KEY}"),
        region=client.meta.region_name,
        ca_bundle=session.get_config_variable("ca_bundle"),
        checksums="x-amz-checksum-mode" in sent[0].headers,
    )
