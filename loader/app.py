"""Wiring: settings → engine + S3 client → HourLoader. Shared by the Lambda handler and the CLI.

A warm Lambda container keeps the settings, the S3 client and the engine object, but never a
connection: `release()` closes the pool after every invocation, so no stale connection
outlives it and none lingers on the warehouse between hourly runs. Nor a schema check: each
invocation reads the warehouse's revision once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from loader.common import ObjectSource
from loader.config import ConfigError, Settings, load_settings
from loader.load.db import make_engine
from loader.observability import log
from loader.pipeline.hour import HourLoader
from loader.pipeline.notified import EventLoader


def make_source(settings: Settings) -> ObjectSource:
    """The S3 client S3_CLIENT names; `auto` (the default) is the CRT client when awscrt imports.

    Each client module is imported only when chosen: the CRT path never loads boto3 or botocore
    (~0.3 s of a cold start and most of the package), the boto3 path never loads awscrt.
    """
    if settings.s3_client in ("auto", "crt"):
        try:
            from loader.extract.crt_client import CrtSource
        except ImportError as exc:
            if settings.s3_client == "crt":
                raise ConfigError(f"S3_CLIENT=crt, but awscrt does not import: {exc}") from exc
            log.warning(
                "S3_CLIENT=auto: awscrt does not import, so S3 is read through boto3 "
                "(~5x more CPU per GET); install awscrt or set S3_CLIENT=boto3 to silence this",
                extra={"import_error": str(exc)},
            )
        else:
            return CrtSource(settings)
    from loader.extract.boto3_client import Boto3Source

    return Boto3Source(settings)


class LoaderFactory:
    """Lazily builds, then reuses, what an invocation needs."""

    def __init__(self) -> None:
        self._loader: HourLoader | None = None
        self._events: EventLoader | None = None

    def get(self, settings: Settings | None = None) -> HourLoader:
        if self._loader is None:
            settings = settings or load_settings()
            self._loader = HourLoader(settings, make_engine(settings.db), make_source(settings))
        return self._loader

    def events(self, settings: Settings | None = None) -> EventLoader:
        """The near-real-time path's loader, over the same engine and S3 client as `get`'s."""
        if self._events is None:
            self._events = EventLoader(self.get(settings))
        return self._events

    def release(self) -> None:
        """Close every pooled connection; keep clients and settings for the next invocation,
        which reads the warehouse's revision again (a DBA may migrate in between)."""
        if self._loader is not None:
            self._loader.engine.dispose()
            self._loader.expire_schema_check()
        if self._events is not None:
            self._events.loader.expire_schema_check()

    def close(self) -> None:
        if self._loader is not None:
            self._loader.engine.dispose()
            self._loader.source.close()
            self._loader = None
            self._events = None


@contextmanager
def open_loader(settings: Settings | None = None) -> Iterator[HourLoader]:
    """A loader for one command-line session; everything closed on exit."""
    factory = LoaderFactory()
    try:
        yield factory.get(settings)
    finally:
        factory.close()
