"""moto's server for bench/freshness.py, with SQS hot spots replaced by equivalents.

    python bench/moto_fast_sqs.py -H 127.0.0.1 -p PORT          # the arguments of moto.server

moto 5.2's ReceiveMessage checks every message it returns against the queue's retention period
by computing all of the queue's attributes, ApproximateNumberOfMessages among them, and each of
those scans every message in the queue. A receive of 10 therefore costs 30 scans of the queue:
~110 ms per receive with 500 messages waiting, on this machine. At 100 events/s the queue
server, not the loader, set the pace, and once behind it fell further behind (each message
waiting makes every receive slower). This launcher reads the one attribute the check needs:
the same condition, the same answers. Two more, of the same kind:
- `Queue.messages` (the visible ones, rebuilt for every receive and every wake-up of a long
  poll) reads the clock once per call instead of twice per message;
- `Queue.delete_message` rebuilt the whole list and assigned it back, so a message sent by
  another request thread in the meantime was dropped (seen here: a few notifications a minute
  at 100/s, which the hourly sweep then loaded). It removes the one message in place.
- `SendMessage` reads the queue's `attributes` (for one static flag) and so computes
  ApproximateNumberOfMessagesNotVisible and ...Delayed, each a scan of every message with two
  clock readings per message: per message sent, three scans of the queue. With a thousand
  messages in flight that was most of the server's CPU at 100 sends/s (sampled: 60% of its
  busy time), and the notifications queued up in front of it. The counts now read the clock
  once per scan.
- Every request, whatever the service, finds its backend under one server-wide lock by listing
  moto's package directory (`os.listdir` and an `isdir` per entry): the request threads queued on
  that lock. The list is read once. And werkzeug's access log line per request, which the
  benchmark throws away, is not written.
Then it runs moto's own server. Like bench/s3rver_fastlist.js for s3rver's listing, it changes a
local server's speed (and one race), never what it answers.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from moto import backends
from moto.core.utils import unix_time, unix_time_millis
from moto.server import main
from moto.sqs.exceptions import ReceiptHandleIsInvalid
from moto.sqs.models import Queue, SQSBackend


def _within_retention(self: Any, queue_name: str, message: Any) -> bool:
    """moto's own check (retained while sent + MessageRetentionPeriod is still ahead)."""
    retention = int(self.get_queue(queue_name).message_retention_period)
    return bool(retention + message.sent_timestamp / 1000 > unix_time())


def _visible_messages(self: Any) -> list[Any]:
    """moto's `messages`: visible (now > visible_at) and not delayed (now >= delayed_until)."""
    now = unix_time_millis()
    return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]


def _delete_message(self: Any, receipt_handle: str) -> None:
    """moto's delete: a handle already deleted is fine, an unknown one is an error."""
    if receipt_handle in self.deleted_messages:
        return
    for message in list(self._messages):
        if message.had_receipt_handle(receipt_handle):
            self.pending_messages.discard(message)
            self.deleted_messages.update(message.all_receipt_handles)
            self._messages.remove(message)
            return
    raise ReceiptHandleIsInvalid()


def _not_visible(self: Any) -> int:
    """moto's count: messages whose visible_at is still ahead."""
    now = unix_time_millis()
    return sum(1 for m in self._messages if not now > m.visible_at)


def _delayed(self: Any) -> int:
    """moto's count: messages whose delayed_until is still ahead."""
    now = unix_time_millis()
    return sum(1 for m in self._messages if now < m.delayed_until)


_MOTO_MODULES = tuple(backends.list_of_moto_modules())


def _moto_modules() -> tuple[str, ...]:
    """moto's own list of its service packages, read once instead of once per request."""
    return _MOTO_MODULES


SQSBackend.is_message_valid_based_on_retention_period = _within_retention  # type: ignore[method-assign]
Queue.messages = property(_visible_messages)  # type: ignore[method-assign,assignment]
Queue.delete_message = _delete_message  # type: ignore[method-assign]
Queue.approximate_number_of_messages_not_visible = property(_not_visible)  # type: ignore[method-assign,assignment]
Queue.approximate_number_of_messages_delayed = property(_delayed)  # type: ignore[method-assign,assignment]

backends.list_of_moto_modules = _moto_modules  # type: ignore[assignment]

if __name__ == "__main__":
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    sys.exit(main())
