"""What the near-real-time path receives: S3 event notifications in SQS messages, as AWS sends
them (a test's own bodies go through `sqs_event` too)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

#: S3's eventTime when a test does not say: informational only (the loader reports it).
CREATED = datetime(2026, 11, 24, 13, 7, tzinfo=UTC)


def s3_notification(bucket: str, key: str, at: datetime = CREATED) -> str:
    """An S3 event notification body, the key form-encoded as S3 sends it."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key, safe="/"), "size": 900},
        },
    }
    return json.dumps({"Records": [record]})


def sqs_event(bodies: list[str], prefix: str = "m") -> dict[str, Any]:
    """An SQS event source mapping's invocation: one message per body."""
    return {
        "Records": [
            {
                "messageId": f"{prefix}{i}",
                "receiptHandle": f"handle-{prefix}{i}",
                "body": body,
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:nrt",
                "awsRegion": "us-east-1",
            }
            for i, body in enumerate(bodies)
        ]
    }
