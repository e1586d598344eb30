"""The S3 client users get by default: `S3_CLIENT=auto` is the CRT client when awscrt imports,
and then importing the handler loads neither boto3 nor botocore, and a whole load never boto3
(botocore, yes: it addresses the CRT's requests); without awscrt it is boto3, announced by
exactly one log line.

Each check runs in a fresh interpreter: this test process has boto3 loaded (moto, fixtures).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tools.demo.traffic import generate_hour, upload

ROOT = Path(__file__).resolve().parents[2]
HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)

#: What the probe prints: the client chosen and the boto3/botocore modules loaded.
_REPORT = textwrap.dedent(
    """
    import json, sys
    def _loaded():
        return sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore"))
    """
)


def _python(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run_env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    run_env.pop("S3_CLIENT", None)
    if env and "S3_CLIENT" in env:
        run_env["S3_CLIENT"] = env["S3_CLIENT"]
    return subprocess.run(
        [sys.executable, "-c", _REPORT + textwrap.dedent(script)],
        cwd=ROOT,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _without_powertools_probe(modules: list[str]) -> list[str]:
    # aws_lambda_powertools runs `import botocore` (the bare package: one module, no session,
    # no client, no credentials) to decide whether to register its user-agent hook; it is the
    # only botocore module the CRT path may have loaded.
    return [m for m in modules if m != "botocore"]


def test_importing_the_handler_loads_neither_boto3_nor_botocore(loader_env: dict[str, str]) -> None:
    result = _python(
        """
        import lambda_function
        print(json.dumps(_loaded()))
        """
    )

    assert result.returncode == 0, result.stderr
    assert _without_powertools_probe(json.loads(result.stdout.splitlines()[-1])) == []


def test_a_default_load_uses_the_crt_client_and_never_imports_boto3(
    loader_env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN an hour of real-shaped objects and a deployment with default settings
    planted = upload(s3, bucket, generate_hour(HOUR, 40, seed=14))
    # WHEN a fresh Lambda process loads it
    result = _python(
        """
        import lambda_function
        summary = lambda_function.lambda_handler({"hour": "2026-11-24T13"}, None)
        client = type(lambda_function._factory.get().source).__name__
        print(json.dumps({"summary": summary, "client": client, "loaded": _loaded()}))
        """,
        loader_env,
    )
    # THEN the CRT client read the whole hour, and boto3 was never imported. botocore was: since
    # the CRT client asks botocore where its requests go (loader/extract/address.py), instead of
    # reading botocore's settings a second time, it is loaded once per process, not per request.
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["client"] == "CrtSource"
    assert out["summary"]["state"] == "complete"
    assert out["summary"]["objects_listed"] == len(planted)
    assert out["summary"]["inserted"] == len(planted) > 0
    assert [m for m in out["loaded"] if m.split(".")[0] == "boto3"] == []
    with dw_engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one()
    assert rows == len(planted)


_WITHOUT_AWSCRT = """
    import sys
    sys.modules["awscrt"] = None  # as on a deployment built without the awscrt wheel
    from loader.app import make_source
    from loader.config import DatabaseSettings, Settings
"""


def test_auto_without_awscrt_falls_back_to_boto3_with_one_log_line(
    loader_env: dict[str, str],
) -> None:
    result = _python(
        _WITHOUT_AWSCRT
        + """
    source = make_source(Settings(raw_bucket="b", db=DatabaseSettings()))
    print(json.dumps({"client": type(source).__name__}))
    """
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"client": "Boto3Source"}
    said = [line for line in result.stdout.splitlines() if "S3_CLIENT=auto" in line]
    assert len(said) == 1
    assert json.loads(said[0])["level"] == "WARNING"
    assert "awscrt does not import" in said[0]


def test_explicit_crt_without_awscrt_is_a_configuration_error(loader_env: dict[str, str]) -> None:
    result = _python(
        _WITHOUT_AWSCRT
        + """
    from loader.config import ConfigError
    try:
        make_source(Settings(raw_bucket="b", db=DatabaseSettings(), s3_client="crt"))
    except ConfigError as exc:
        print(json.dumps({"error": str(exc)}))
    """
    )

    assert result.returncode == 0, result.stderr
    error = json.loads(result.stdout.splitlines()[-1])["error"]
    assert error.startswith("S3_CLIENT=crt, but awscrt does not import")


def test_explicit_boto3_is_still_boto3(loader_env: dict[str, str]) -> None:
    result = _python(
        """
        from loader.app import make_source
        from loader.config import load_settings
        print(json.dumps({"client": type(make_source(load_settings())).__name__}))
        """,
        {**loader_env, "S3_CLIENT": "boto3"},
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"client": "Boto3Source"}
