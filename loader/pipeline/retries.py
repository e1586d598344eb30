"""The warehouse retry policy as the pipeline runs it: within DB_RETRY_BUDGET_SECONDS, and never
past the Lambda's safety margin, whichever ends first."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tenacity import RetryCallState, Retrying

from loader.config import Settings
from loader.load.db import log_retry, retrying
from loader.observability import log
from loader.pipeline.job import RemainingMs
from loader.report import Report


class RetryPolicy:
    """Transient-error retries for one loader, cut to the Lambda's clock when there is one."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._remaining_ms: RemainingMs | None = None

    @contextmanager
    def lambda_clock(self, remaining_ms: RemainingMs | None) -> Iterator[None]:
        """Within the block, retries end before the Lambda's safety margin (see `retrying`);
        without a clock of its own, a block keeps the one around it."""
        outer = self._remaining_ms
        self._remaining_ms = remaining_ms if remaining_ms is not None else outer
        try:
            yield
        finally:
            self._remaining_ms = outer

    def retrying(self, what: str, report: Report | None = None) -> Retrying:
        """The transient-error retry policy, counting retries into `report`. Its budget is
        DB_RETRY_BUDGET_SECONDS, cut to the Lambda's time left before SAFETY_MARGIN_MS."""

        def on_retry(state: RetryCallState) -> None:
            if report is not None:
                report.retries += 1
            log_retry(log, what)(state)

        deadline_s = None
        if self._remaining_ms is not None:
            deadline_s = (self._remaining_ms() - self._settings.safety_margin_ms) / 1000
        return retrying(
            self._settings.db_retry_budget_s,
            self._settings.db_max_attempts,
            on_retry,
            deadline_s=deadline_s,
        )
