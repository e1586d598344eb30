"""What Lambda's SQS event source mapping does, against a real queue (moto's SQS over HTTP).

    mapping = EventSourceMapping(sqs, queue_url, lambda_function.lambda_handler,
                                 batch_size=100, window_s=1.0)
    mapping.drain(lambda: loaded() == expected, timeout_s=60)

One `poll()` is one invocation, as the mapping makes it:
- long-poll `ReceiveMessage` (up to 10 messages a call, `WaitTimeSeconds`) until `batch_size`
  messages are in hand or the batching window has passed since the first one arrived (within
  the window, a call that drained the queue is followed by a short pause, `gather_pause_s`,
  rather than by another call at once);
- call the handler with the SQS-shaped event Lambda builds (`Records[]` with `messageId`,
  `receiptHandle`, `body`, `attributes`, `eventSource: aws:sqs`, ...);
- with ReportBatchItemFailures: delete every message not listed in the response's
  `batchItemFailures`; a handler that raises deletes nothing. What is not deleted comes back
  when its visibility timeout ends (and after maxReceiveCount receives, goes to the DLQ if the
  queue has a redrive policy: moto honours that too).

Used by the near-real-time tests and by bench/freshness.py; nothing here knows the loader.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class Invocation:
    """One handler call: what it got, what it answered (or raised), what was deleted."""

    message_ids: list[str]
    response: Any = None
    error: BaseException | None = None
    deleted: list[str] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    #: CPU seconds of this process (every thread) during the handler call.
    cpu_s: float = 0.0
    #: Seconds its messages had been in the queue (since SentTimestamp) when the call began.
    queued_s: list[float] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        if self.error is not None:
            return list(self.message_ids)
        failures = (self.response or {}).get("batchItemFailures") or []
        return [f["itemIdentifier"] for f in failures]


class EventSourceMapping:
    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        handler: Handler,
        *,
        batch_size: int = 10,
        window_s: float = 0.0,
        wait_s: int = 1,
        gather_pause_s: float = 0.25,
        context: Any = None,
        region: str = "us-east-1",
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.handler = handler
        self.batch_size = batch_size
        self.window_s = window_s
        self.wait_s = wait_s
        self.gather_pause_s = gather_pause_s
        self.context = context
        self.region = region
        self.queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.invocations: list[Invocation] = []

    def receive_batch(self) -> list[dict[str, Any]]:
        """Messages for one invocation: up to batch_size, within the window after the first."""
        messages: list[dict[str, Any]] = []
        deadline: float | None = None
        while len(messages) < self.batch_size:
            if deadline is not None and time.monotonic() >= deadline:
                break
            left = self.wait_s if deadline is None else deadline - time.monotonic()
            wait = max(0.0, min(self.wait_s, left))
            got = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, self.batch_size - len(messages)),
                WaitTimeSeconds=int(wait),
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not got:
                if deadline is None:
                    return messages  # nothing arrived within the long poll
                if self.window_s == 0:
                    break
                if int(wait) == 0:  # under a second left: a short pause, not a busy loop
                    time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                continue
            messages.extend(got)
            if deadline is None:
                deadline = time.monotonic() + self.window_s
            if self.window_s == 0:
                break
            if len(got) < 10:
                # The queue had no more for now. Asking again at once would answer one or two
                # messages a call, dozens of calls a second per poller, all of it the queue
                # server's CPU on this machine's shared cores; the pause changes neither when
                # the invocation starts (the window's end) nor what it may hold (batch_size).
                time.sleep(min(self.gather_pause_s, max(0.0, deadline - time.monotonic())))
        return messages

    def event(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The event Lambda hands the function for these messages."""
        return {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": m.get("Attributes", {}),
                    "messageAttributes": m.get("MessageAttributes", {}),
                    "md5OfBody": m.get("MD5OfBody", ""),
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self.queue_arn,
                    "awsRegion": self.region,
                }
                for m in messages
            ]
        }

    def invoke(self, messages: list[dict[str, Any]]) -> Invocation:
        """Call the handler with `messages` and delete the ones it did not report failed."""
        call = Invocation([m["MessageId"] for m in messages], started=time.monotonic())
        now_ms = time.time() * 1000
        call.queued_s = [
            (now_ms - int(m["Attributes"]["SentTimestamp"])) / 1000
            for m in messages
            if "SentTimestamp" in m.get("Attributes", {})
        ]
        cpu = time.process_time()
        try:
            call.response = self.handler(self.event(messages), self.context)
        except Exception as exc:  # Lambda: the whole batch failed, nothing is deleted
            call.error = exc
        call.finished = time.monotonic()
        call.cpu_s = time.process_time() - cpu
        failed = set(call.failed)
        done = [m for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            chunk = done[start : start + 10]
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)
                ],
            )
        call.deleted = [m["MessageId"] for m in done]
        self.invocations.append(call)
        return call

    def poll(self) -> Invocation | None:
        """One invocation, if any message arrived within the long poll."""
        messages = self.receive_batch()
        return self.invoke(messages) if messages else None

    def drain(self, done: Callable[[], bool], timeout_s: float = 60.0) -> list[Invocation]:
        """Poll until `done()` holds (checked after every poll), within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        calls: list[Invocation] = []
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not done after {timeout_s} s and {len(calls)} invocations: "
                    f"{[(c.message_ids, c.failed, c.error) for c in calls][-5:]}"
                )
            call = self.poll()
            if call is not None:
                calls.append(call)
        return calls
