# saqlite: SAQ's job queue on one SQLite file.
# Copyright (c) 2026 the saqlite authors. MIT licence (see the end of this file).
"""saqlite: a durable async job queue in one Python file on one SQLite file.

It reproduces the API of SAQ (Simple Async Queue): ``Job``, ``CronJob``, ``Queue``,
``Worker`` and ``Status`` behave as in SAQ, on a SQLite database in WAL mode instead of
Redis or Postgres, so a program moves between the two by changing an import and a URL.

This module is a single file with two dependencies (aiosqlite and croniter). You may
copy it into your project (keep this notice); nothing in it depends on its own name.

Sections, in reading order (search for the banners):
    Constants and SQL / Errors / Types / Status, Job, CronJob / Queue /
    Storage internals / Worker / Command line
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import functools
import importlib
import inspect
import json
import logging
import math
import multiprocessing
import os
import random
import signal
import socket
import sqlite3
import sys
import threading
import time
import traceback
import typing as t
import uuid
import weakref
from datetime import datetime, timezone, tzinfo

import aiosqlite
from croniter import croniter

__version__ = "0.1.0"

__all__ = [
    "BeforeEnqueueType",
    "Context",
    "CountKind",
    "CronJob",
    "DumpType",
    "Function",
    "Job",
    "JobError",
    "ListenCallback",
    "LoadType",
    "Queue",
    "QueueInfo",
    "SettingsDict",
    "Status",
    "StorageError",
    "SyncQueue",
    "TimersDict",
    "Worker",
    "WorkerInfo",
    "WorkerStats",
    "main",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


# =============================================================================
# Constants and SQL
# =============================================================================

DEFAULT_PATH = "saqlite.db"
MIN_SQLITE_VERSION = (3, 35, 0)  # UPDATE ... RETURNING
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
swept_error_message = "swept"

#: How long an idle waiter sleeps between checks of the file when no wake-up
#: datagram arrives (a datagram is a hint and can be lost).
_FALLBACK_POLL_S = 0.1
#: An idle waiter tries a claim at least this often, whatever it was told.
_FORCED_CLAIM_S = 1.0
#: Longest pause between two tries of a write that found the file locked. Short
#: pauses keep lock waits fair between processes (SQLite's own busy handler sleeps
#: up to 100 ms and lets one process win every race).
_MAX_BUSY_PAUSE_S = 0.004
#: Rows per multi-row statement; keeps under SQLite's bound-parameter limit.
_ROWS_PER_STATEMENT = 500

# The columns of saqlite_jobs that a full write of a job sets, in order. The job
# itself is stored serialised in `data`; the columns beside it are what SQL filters
# on, and those the claim and abort statements change in place (status, attempts,
# worker_id, started, touched, completed, error) win over `data` on load.
_JOB_COLUMNS = (
    "queue", "key", "status", "priority", "run_at", "group_key", "worker_id",
    "attempts", "queued", "started", "touched", "completed", "error", "ttl",
    "expire_at", "data",
)  # fmt: skip
_LOAD_COLUMNS = "data, status, attempts, worker_id, started, touched, completed, error"

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # version 1
        """
        CREATE TABLE saqlite_jobs (
            queue     TEXT    NOT NULL,
            key       TEXT    NOT NULL,
            status    TEXT    NOT NULL,
            priority  INTEGER NOT NULL DEFAULT 0,
            run_at    REAL    NOT NULL,  -- epoch s: Job.scheduled, or enqueue time
            group_key TEXT,
            worker_id TEXT,
            attempts  INTEGER NOT NULL DEFAULT 0,
            queued    INTEGER NOT NULL DEFAULT 0,  -- epoch ms, like the Job fields
            started   INTEGER NOT NULL DEFAULT 0,
            touched   INTEGER NOT NULL DEFAULT 0,
            completed INTEGER NOT NULL DEFAULT 0,
            error     TEXT,
            ttl       INTEGER NOT NULL DEFAULT 600,
            expire_at REAL,  -- epoch s after which a finished job is deleted
            data      BLOB    NOT NULL,
            UNIQUE (queue, key)
        )
        """,
        "CREATE INDEX saqlite_jobs_ready ON saqlite_jobs (queue, status, priority, run_at)",
        "CREATE INDEX saqlite_jobs_expiry ON saqlite_jobs (expire_at) WHERE expire_at IS NOT NULL",
        """
        CREATE INDEX saqlite_jobs_group ON saqlite_jobs (queue, group_key, status)
        WHERE group_key IS NOT NULL
        """,
        """
        CREATE TABLE saqlite_workers (
            id        TEXT PRIMARY KEY,
            queue     TEXT NOT NULL,
            host      TEXT NOT NULL,
            pid       INTEGER NOT NULL,
            beat      REAL NOT NULL,  -- epoch s of the last sign of life
            expire_at REAL NOT NULL,
            info      TEXT NOT NULL   -- WorkerInfo as JSON
        )
        """,
        """
        CREATE TABLE saqlite_wakeup (
            queue TEXT    NOT NULL,
            kind  TEXT    NOT NULL,  -- 'jobs': wants new work; 'changes': waits on jobs
            port  INTEGER NOT NULL,  -- UDP port on 127.0.0.1
            host  TEXT    NOT NULL,
            pid   INTEGER NOT NULL,
            PRIMARY KEY (queue, kind, port)
        )
        """,
        """
        CREATE TABLE saqlite_locks (
            name      TEXT PRIMARY KEY,
            owner     TEXT NOT NULL,
            expire_at REAL NOT NULL
        )
        """,
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_SQL_CREATE_META = "CREATE TABLE IF NOT EXISTS saqlite_meta (name TEXT PRIMARY KEY, value)"
_SQL_SCHEMA_VERSION = "SELECT value FROM saqlite_meta WHERE name = 'schema_version'"
_SQL_SET_SCHEMA_VERSION = (
    "INSERT OR REPLACE INTO saqlite_meta (name, value) VALUES ('schema_version', ?)"
)

_TERMINAL_SQL = "('complete', 'failed', 'aborted')"

# Enqueue: a key that is waiting or running is left alone (no row comes back);
# a finished one is replaced by the new job.
_SQL_INSERT_JOBS = (
    f"INSERT INTO saqlite_jobs ({', '.join(_JOB_COLUMNS)}) VALUES {{rows}} "
    "ON CONFLICT (queue, key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _JOB_COLUMNS[2:])
    + f" WHERE saqlite_jobs.status IN {_TERMINAL_SQL} RETURNING key"
)

# Claim up to N due jobs of a queue in one statement: by priority, then run_at,
# then enqueue order. A job with a group_key is taken only when no job of its group
# is running, and only the first of its group in one claim.
_SQL_CLAIM = f"""
WITH ungrouped AS (
    SELECT rowid AS id, priority, run_at FROM saqlite_jobs
    WHERE queue = :queue AND status = 'queued' AND run_at <= :now AND group_key IS NULL
    ORDER BY priority, run_at, rowid LIMIT :limit
), grouped AS (
    SELECT id, priority, run_at FROM (
        SELECT rowid AS id, priority, run_at, ROW_NUMBER() OVER (
            PARTITION BY group_key ORDER BY priority, run_at, rowid) AS n
        FROM saqlite_jobs
        WHERE queue = :queue AND status = 'queued' AND run_at <= :now
          AND group_key IS NOT NULL
          AND group_key NOT IN (
              SELECT group_key FROM saqlite_jobs
              WHERE queue = :queue AND group_key IS NOT NULL
                AND status IN ('active', 'aborting'))
    ) WHERE n = 1
)
UPDATE saqlite_jobs
SET status = 'active', worker_id = :worker_id, attempts = attempts + 1,
    started = :now_ms, touched = :now_ms
WHERE rowid IN (
    SELECT id FROM (SELECT * FROM ungrouped UNION ALL SELECT * FROM grouped)
    ORDER BY priority, run_at, id LIMIT :limit)
RETURNING {_LOAD_COLUMNS}
"""

# A guarded write of whole jobs: each row applies only where the job is still in
# the state its writer last saw (status, worker and attempt), so a late writer never
# overwrites an abort or a sweep that came in between.
_GUARD_COLUMNS = ("expected_status", "expected_worker", "expected_attempts")
_SQL_WRITE_JOBS = (
    "UPDATE saqlite_jobs SET "
    + ", ".join(
        f"{c} = v.column{i}"
        for i, c in enumerate(_JOB_COLUMNS, 1 + len(_GUARD_COLUMNS))
        if c not in ("queue", "key")
    )
    + " FROM (VALUES {rows}) AS v"
    " WHERE saqlite_jobs.queue = v.column4 AND saqlite_jobs.key = v.column5"
    " AND saqlite_jobs.status = v.column1 AND saqlite_jobs.worker_id IS v.column2"
    " AND saqlite_jobs.attempts = v.column3"
    " RETURNING saqlite_jobs.key"
)
_SQL_DELETE_JOBS = (
    "DELETE FROM saqlite_jobs WHERE rowid IN ("
    " SELECT j.rowid FROM saqlite_jobs AS j JOIN (VALUES {rows}) AS v"
    " ON j.queue = v.column1 AND j.key = v.column2 AND j.status = v.column3"
    " AND j.worker_id IS v.column4 AND j.attempts = v.column5"
    ") RETURNING key"
)

_SQL_REQUEST_ABORT = """
UPDATE saqlite_jobs SET status = 'aborting', error = :error
WHERE queue = :queue AND key = :key AND status = 'active' AND attempts = :attempts
RETURNING key
"""
_SQL_ABORTING_KEYS = """
SELECT key FROM saqlite_jobs WHERE queue = ? AND worker_id = ? AND status = 'aborting'
"""
_SQL_GET_JOBS = (
    f"SELECT key, {_LOAD_COLUMNS} FROM saqlite_jobs WHERE queue = ? AND key IN ({{keys}})"
)
_SQL_GET_STATUSES = "SELECT key, status FROM saqlite_jobs WHERE queue = ? AND key IN ({keys})"
_SQL_ITER_JOBS = f"""
SELECT rowid, {_LOAD_COLUMNS} FROM saqlite_jobs
WHERE queue = ? AND rowid > ? AND status IN ({{statuses}})
ORDER BY rowid LIMIT ?
"""
_SQL_LIST_JOBS = f"""
SELECT {_LOAD_COLUMNS} FROM saqlite_jobs WHERE queue = ?
ORDER BY rowid DESC LIMIT ? OFFSET ?
"""
_SQL_NEXT_RUN_AT = "SELECT MIN(run_at) FROM saqlite_jobs WHERE queue = ? AND status = 'queued'"
_SQL_COUNTS = """
SELECT
    COALESCE(SUM(status = 'queued' AND run_at <= :now), 0),
    COALESCE(SUM(status = 'queued' AND run_at > :now), 0),
    COALESCE(SUM(status IN ('active', 'aborting')), 0)
FROM saqlite_jobs WHERE queue = :queue AND status IN ('queued', 'active', 'aborting')
"""
_SQL_RUNNING_JOBS = (
    f"SELECT {_LOAD_COLUMNS} FROM saqlite_jobs WHERE queue = ? AND status IN ('active', 'aborting')"
)
_SQL_DELETE_EXPIRED_JOBS = "DELETE FROM saqlite_jobs WHERE expire_at <= ? RETURNING key"
_SQL_DATA_VERSION = "PRAGMA data_version"
_SQL_CHECKPOINT = "PRAGMA wal_checkpoint(TRUNCATE)"

_SQL_UPSERT_WORKER = """
INSERT INTO saqlite_workers (id, queue, host, pid, beat, expire_at, info)
VALUES (:id, :queue, :host, :pid, :beat, :expire_at, :info)
ON CONFLICT (id) DO UPDATE SET
    beat = excluded.beat, expire_at = excluded.expire_at, info = excluded.info
"""
_SQL_DELETE_WORKER = "DELETE FROM saqlite_workers WHERE id = ?"
_SQL_WORKERS = "SELECT id, host, pid, expire_at, info FROM saqlite_workers WHERE queue = ?"
_SQL_DELETE_WORKERS = "DELETE FROM saqlite_workers WHERE id IN ({ids})"

_SQL_REGISTER_WAKEUP = """
INSERT OR REPLACE INTO saqlite_wakeup (queue, kind, port, host, pid) VALUES (?, ?, ?, ?, ?)
"""
_SQL_UNREGISTER_WAKEUP = "DELETE FROM saqlite_wakeup WHERE queue = ? AND port = ?"
_SQL_WAKEUP_PORTS = "SELECT kind, port, host, pid FROM saqlite_wakeup WHERE queue = ?"
_SQL_DELETE_WAKEUP = "DELETE FROM saqlite_wakeup WHERE host = ? AND pid = ?"

# A lease: taken when free, expired, or already ours.
_SQL_TAKE_LOCK = """
INSERT INTO saqlite_locks (name, owner, expire_at) VALUES (:name, :owner, :expire_at)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expire_at = excluded.expire_at
WHERE saqlite_locks.expire_at <= :now OR saqlite_locks.owner = excluded.owner
RETURNING owner
"""


# =============================================================================
# Errors
# =============================================================================


class JobError(Exception):
    """Raised by ``Queue.apply`` and ``Queue.map`` when a job failed or was aborted.

    Attributes:
        job: the job as it was stored when it finished.
    """

    def __init__(self, job: Job) -> None:
        super().__init__(
            f"Job {job.id} {job.status}\n\nThe above job failed with the following error:\n\n"
            f"{job.error}"
        )
        self.job = job


class StorageError(RuntimeError):
    """The SQLite file cannot be used: the path, its version, the disk or a lock.

    Attributes:
        path: the database path.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


# =============================================================================
# Types
# =============================================================================

if t.TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

    from typing_extensions import TypeAlias

    DumpType: TypeAlias = Callable[[dict[str, t.Any]], t.Union[str, bytes]]
    LoadType: TypeAlias = Callable[[t.Union[str, bytes]], t.Any]
    Function: TypeAlias = Callable[..., t.Any]
    BeforeEnqueueType: TypeAlias = Callable[["Job"], Awaitable[t.Any]]
    ListenCallback: TypeAlias = Callable[[str, "Status"], t.Any]
    Hook: TypeAlias = Callable[["Context"], t.Any]
    Hooks: TypeAlias = t.Union[Hook, "Sequence[Hook]", None]
else:
    DumpType = LoadType = Function = BeforeEnqueueType = ListenCallback = t.Callable

CountKind = t.Literal["queued", "active", "incomplete"]
_T = t.TypeVar("_T")
_R = t.TypeVar("_R")


class Context(t.TypedDict, total=False):
    """What a job function and the hooks receive as ``ctx``."""

    worker: Worker
    job: Job
    queue: Queue
    exception: BaseException


class WorkerStats(t.TypedDict):
    """Counters of one worker: jobs completed, failed, retried, aborted; uptime in ms."""

    complete: int
    failed: int
    retried: int
    aborted: int
    uptime: int


class WorkerInfo(t.TypedDict):
    """What ``Queue.info()`` shows of one live worker."""

    queue_key: str
    stats: WorkerStats
    metadata: t.Optional[dict[str, t.Any]]


class QueueInfo(t.TypedDict):
    """What ``Queue.info()`` returns."""

    workers: dict[str, WorkerInfo]
    name: str
    queued: int
    active: int
    scheduled: int
    jobs: list[dict[str, t.Any]]


class TimersDict(t.TypedDict, total=False):
    """Periods of the worker's upkeep tasks, in seconds."""

    schedule: float
    worker_info: float
    sweep: float
    abort: float


class SettingsDict(t.TypedDict, total=False):
    """The settings a ``saqlite module.settings`` command line names."""

    queue: Queue
    functions: t.Any
    concurrency: int
    cron_jobs: t.Any
    cron_tz: tzinfo
    startup: t.Any
    shutdown: t.Any
    before_process: t.Any
    after_process: t.Any
    timers: TimersDict
    dequeue_timeout: float
    burst: bool
    max_burst_jobs: t.Optional[int]
    shutdown_grace_period_s: t.Optional[float]
    cancellation_hard_deadline_s: float
    metadata: t.Optional[dict[str, t.Any]]
    poll_interval: float


# =============================================================================
# Status, Job, CronJob
# =============================================================================


class Status(str, enum.Enum):
    """The state of a job."""

    NEW = "new"
    QUEUED = "queued"
    ACTIVE = "active"
    ABORTING = "aborting"
    ABORTED = "aborted"
    FAILED = "failed"
    COMPLETE = "complete"

    def __str__(self) -> str:
        return self.value


ACTIVE_STATUSES = frozenset({Status.NEW, Status.QUEUED, Status.ACTIVE})
TERMINAL_STATUSES = frozenset({Status.COMPLETE, Status.FAILED, Status.ABORTED})
UNSUCCESSFUL_TERMINAL_STATUSES = frozenset({Status.FAILED, Status.ABORTED})


def now() -> int:
    """The current time in epoch milliseconds, the unit of Job's time fields."""
    return int(time.time() * 1000)


def _seconds(ms: float) -> float:
    return ms / 1000


@functools.cache
def _node() -> int:
    return uuid.getnode()


def _new_key() -> str:
    """A job key: a uuid1 as in SAQ, made in Python with the node given, which is
    several times faster than the C call behind a bare uuid1() (a lock on a clock file)."""
    return str(uuid.uuid1(_node()))


@dataclasses.dataclass(eq=False)
class Job:
    """A call of a registered function, and its state in a queue.

    Times ``queued``, ``started``, ``touched`` and ``completed`` are epoch milliseconds;
    ``scheduled`` is epoch seconds (0 = now); ``timeout``, ``heartbeat`` and ``ttl`` are
    seconds. Jobs compare equal when their keys are equal.
    """

    function: str
    kwargs: t.Optional[dict[str, t.Any]] = None
    queue: t.Optional[Queue] = None
    key: str = dataclasses.field(default_factory=_new_key)
    timeout: int = 10
    heartbeat: int = 0
    retries: int = 1
    ttl: int = 600
    retry_delay: float = 0.0
    retry_backoff: t.Union[bool, float] = False
    scheduled: int = 0
    progress: float = 0.0
    meta: dict[t.Any, t.Any] = dataclasses.field(default_factory=dict)
    attempts: int = 0
    completed: int = 0
    queued: int = 0
    started: int = 0
    touched: int = 0
    result: t.Any = None
    error: t.Optional[str] = None
    status: Status = Status.NEW
    priority: int = 0
    group_key: t.Optional[str] = None
    worker_id: t.Optional[str] = None

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return self.info(True)

    @property
    def id(self) -> str:
        """The key as the queue names it: ``saqlite:job:<queue>:<key>``."""
        return self.get_queue().job_id(self.key)

    def info(self, full: bool = False) -> str:
        """A one-line description: the fields that differ from their defaults, and
        how long the job waited and ran.

        Args:
            full: also show kwargs, result, error, status, progress and meta.
        """
        shown = {
            name: value
            for name, value in self.to_dict().items()
            if full or name not in _INFO_FULL_ONLY
        }
        for kind in ("process", "start", "total"):
            shown[f"{kind}_ms"] = self.duration(kind)
        fields = ", ".join(f"{name}: {value}" for name, value in shown.items() if value is not None)
        return f"Job<{fields}>"

    def to_dict(self) -> dict[str, t.Any]:
        """The fields that differ from their defaults (``queue`` as its name)."""
        values = self.__dict__  # a hot path: the worker stores every job it finishes
        result = {name: values[name] for name, default in _JOB_DEFAULTS if values[name] != default}
        if "queue" in result:
            result["queue"] = result["queue"].name
        if not self.meta:
            result.pop("meta", None)
        return result

    def duration(self, kind: str) -> t.Optional[int]:
        """A duration in milliseconds, or None when its ends are not both known.

        Args:
            kind: ``"process"`` (completed - started), ``"start"`` (started - queued),
                ``"total"`` (completed - queued) or ``"running"`` (now - started).

        Raises:
            ValueError: for another kind.
        """
        ends = {
            "process": (self.started, self.completed),
            "start": (self.queued, self.started),
            "total": (self.queued, self.completed),
            "running": (self.started, now()),
        }
        if kind not in ends:
            raise ValueError(
                f"Unknown duration kind {kind!r}: use 'process', 'start', 'total' or 'running'"
            )
        start, end = ends[kind]
        return end - start if start and end else None

    @property
    def stuck(self) -> bool:
        """Running, and past its timeout since start or its heartbeat since last touch."""
        if self.status not in (Status.ACTIVE, Status.ABORTING):
            return False
        current = now()
        return bool(
            (self.timeout and _seconds(current - self.started) > self.timeout)
            or (self.heartbeat and _seconds(current - self.touched) > self.heartbeat)
        )

    @property
    def retryable(self) -> bool:
        """Whether a failure now would be retried: ``retries > attempts``."""
        return self.retries > self.attempts

    def next_retry_delay(self) -> float:
        """Seconds to wait before the next attempt, with backoff and jitter if asked."""
        if self.retry_backoff is False:
            return self.retry_delay
        delay = float(self.retry_delay) * 2.0 ** max(self.attempts - 1, 0)
        if self.retry_backoff is not True:
            delay = min(delay, float(self.retry_backoff))
        return delay * random.random()

    def get_queue(self) -> Queue:
        """The job's queue.

        Raises:
            RuntimeError: when the job has not been given to a queue.
        """
        if self.queue is None:
            raise RuntimeError(f"{self.info()} has no queue: enqueue it or set job.queue")
        return self.queue

    async def enqueue(self, queue: t.Optional[Queue] = None) -> None:
        """Enqueue the job; if its key is already waiting or running, load that one.

        Args:
            queue: the queue to use when the job has none yet.
        """
        queue = queue or self.get_queue()
        if not await queue.enqueue(self):
            await self.refresh()

    async def abort(self, error: str, ttl: float = 5) -> None:
        """Abort the job: see ``Queue.abort``."""
        await self.get_queue().abort(self, error, ttl=ttl)

    async def finish(
        self, status: Status, *, result: t.Any = None, error: t.Optional[str] = None
    ) -> None:
        """Finish the job with a terminal status: see ``Queue.finish``."""
        await self.get_queue().finish(self, status, result=result, error=error)

    async def retry(self, error: t.Optional[str]) -> None:
        """Put the job back in the queue after a failure: see ``Queue.retry``."""
        await self.get_queue().retry(self, error)

    async def update(self, **kwargs: t.Any) -> None:
        """Set fields (e.g. ``progress``, ``meta``) and store them; counts as a heartbeat."""
        await self.get_queue().update(self, **kwargs)

    async def refresh(self, until_complete: t.Optional[float] = None) -> None:
        """Reload the job from the queue.

        Args:
            until_complete: wait up to this many seconds for a terminal status
                (0 = wait forever).

        Raises:
            RuntimeError: if the job no longer exists.
            asyncio.TimeoutError: if the wait runs out.
        """
        queue = self.get_queue()
        if until_complete is not None and self.status not in TERMINAL_STATUSES:

            def done(statuses: dict[str, Status]) -> bool:
                return statuses.get(self.key, Status.COMPLETE) in TERMINAL_STATUSES

            await queue._wait_until([self.key], done, until_complete)
        job = await queue.job(self.key)
        if job is None:
            raise RuntimeError(f"{self.info()} doesn't exist in queue {queue.name!r}")
        self.replace(job)

    def replace(self, job: Job) -> None:
        """Copy every field of another job into this one."""
        for field in dataclasses.fields(job):
            setattr(self, field.name, getattr(job, field.name))


@dataclasses.dataclass
class CronJob:
    """A function the worker enqueues on a cron schedule.

    ``cron`` is croniter syntax; a sixth field counts seconds (``"* * * * * */5"`` =
    every 5 s). With ``unique`` (the default) one run at most is pending per queue.
    ``timeout``, ``heartbeat``, ``retries``, ``ttl`` and ``kwargs`` default to the Job's.
    """

    function: Function
    cron: str
    unique: bool = True
    timeout: t.Optional[int] = None
    heartbeat: t.Optional[int] = None
    retries: t.Optional[int] = None
    ttl: t.Optional[int] = None
    kwargs: t.Optional[dict[str, t.Any]] = None

    def __post_init__(self) -> None:
        if not croniter.is_valid(self.cron):
            raise ValueError(
                f"Invalid cron expression {self.cron!r} for {_function_name(self.function)}: "
                "use 5 fields (minute hour day month weekday) and an optional 6th for seconds"
            )


def _function_name(function: Function) -> str:
    return str(getattr(function, "__qualname__", None) or getattr(function, "__name__", function))


def _check_job_options(job: Job) -> None:
    for name in ("timeout", "heartbeat", "retries"):
        value = getattr(job, name)
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"Job {name} must be a number >= 0, got {value!r}")
    if not isinstance(job.ttl, int) or job.ttl < -1:
        raise ValueError(
            f"Job ttl must be -1 (delete at once), 0 (keep) or seconds, got {job.ttl!r}"
        )


# =============================================================================
# Queue
# =============================================================================


class Queue:
    """A named queue of jobs in a SQLite file; any number of queues share one file.

    Args:
        path: the database file (created if missing). Default ``saqlite.db`` here.
        name: the queue's name.
        dump: serialises a job dict (default ``json.dumps``).
        load: deserialises it (default ``json.loads``).
        synchronous: ``"NORMAL"`` (default: survives a crash of any process, may lose
            the last commits on power loss) or ``"FULL"`` (each commit reaches the disk).
        lock_timeout: seconds a write keeps trying while other processes hold the file
            before it raises StorageError.
    """

    def __init__(
        self,
        path: t.Union[str, os.PathLike[str]] = DEFAULT_PATH,
        name: str = "default",
        dump: t.Optional[DumpType] = None,
        load: t.Optional[LoadType] = None,
        *,
        synchronous: str = "NORMAL",
        lock_timeout: float = 30.0,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Queue name must be a non-empty string, got {name!r}")
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(
                f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, got {synchronous!r}"
            )
        self.path = os.fspath(path)
        self.name = name
        self._place = (os.path.abspath(self.path), name)  # which queue, for wake-ups
        self.synchronous = synchronous.upper()
        self.lock_timeout = lock_timeout
        self._dump: DumpType = dump or json.dumps
        self._load: LoadType = load or json.loads
        self._conn: t.Optional[aiosqlite.Connection] = None
        self._connect_lock: t.Optional[asyncio.Lock] = None
        self._before_enqueues: dict[int, BeforeEnqueueType] = {}
        self._inserts = _Batcher(self._insert_rows)
        self._writes = _Batcher(self._write_rows)
        self._wakeup = _Wakeup(self)
        self.worst_lock_wait = 0.0  # seconds: the longest a statement waited for the file
        self.started = now()
        self.complete = 0
        self.failed = 0
        self.retried = 0
        self.aborted = 0

    def __repr__(self) -> str:
        return f"Queue<path={self.path!r}, name={self.name!r}>"

    @classmethod
    def from_url(cls, url: str, **kwargs: t.Any) -> Queue:
        """A queue from ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.

        Keyword arguments go to ``Queue()`` (``name``, ``dump``, ``synchronous`` ...).
        """
        prefix = "sqlite:///"
        if not url.startswith(prefix) or len(url) == len(prefix):
            raise ValueError(
                f"Unsupported queue URL {url!r}: use sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        return cls(url[len(prefix) :], **kwargs)

    def job_id(self, job_key: str) -> str:
        """The id of the job with this key in this queue."""
        return f"saqlite:job:{self.name}:{job_key}"

    # -- connection ----------------------------------------------------------

    async def connect(self) -> None:
        """Open the file, creating or migrating its schema. Safe to call twice.

        Raises:
            StorageError: when the path is not a usable saqlite database.
        """
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._conn is not None:
                return
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, _prepare_database, self)
            conn = aiosqlite.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                await conn
                for pragma in _connection_pragmas(self.synchronous):
                    await conn.execute(pragma)
            except sqlite3.Error as exc:
                await conn.close()
                raise _storage_error(self.path, exc) from exc
            self._conn = conn

    async def disconnect(self) -> None:
        """Close the file (after pending writes). Safe to call twice."""
        conn = self._conn
        if conn is None:
            return
        await self._inserts.drain()
        await self._writes.drain()
        await self._wakeup.close()
        self._conn = None
        await conn.close()

    # -- enqueue -------------------------------------------------------------

    def register_before_enqueue(self, callback: BeforeEnqueueType) -> None:
        """Await ``callback(job)`` before each job is stored."""
        self._before_enqueues[id(callback)] = callback

    def unregister_before_enqueue(self, callback: BeforeEnqueueType) -> None:
        """Stop calling a callback given to ``register_before_enqueue``."""
        self._before_enqueues.pop(id(callback), None)

    async def enqueue(
        self, job_or_func: t.Union[str, Job, Function], **kwargs: t.Any
    ) -> t.Optional[Job]:
        """Store a job to run.

        Args:
            job_or_func: a Job, or the name of a registered function (or the function).
            **kwargs: those that name Job fields (``timeout``, ``key``, ``scheduled`` ...)
                set them; the rest are the function's kwargs.

        Returns:
            The job, or None when a job with the same key is already waiting or running.

        Raises:
            ValueError: the job belongs to another queue, or an option is invalid.
            TypeError: the job cannot be serialised (e.g. a kwarg JSON cannot encode).
        """
        job = self._prepare(job_or_func, kwargs)
        await self._before_enqueue(job)
        inserted = await self._inserts.submit(self._job_row(job))
        if not inserted:
            return None
        if logger.isEnabledFor(logging.INFO):
            logger.info("Enqueuing %s", job.info(logger.isEnabledFor(logging.DEBUG)))
        return job

    async def enqueue_many(
        self, jobs: Iterable[t.Union[Job, str]], **kwargs: t.Any
    ) -> list[t.Optional[Job]]:
        """Store many jobs in one transaction per few hundred; much faster than a loop.

        Args:
            jobs: Jobs, or function names (then ``kwargs`` apply to each, as in enqueue).

        Returns:
            Each job, or None where its key was already waiting or running, in order.
        """
        prepared = [self._prepare(job, dict(kwargs)) for job in jobs]
        for job in prepared:
            await self._before_enqueue(job)
        inserted = await self._insert_rows([self._job_row(job) for job in prepared])
        return [job if ok else None for job, ok in zip(prepared, inserted)]

    async def _before_enqueue(self, job: Job) -> None:
        for callback in list(self._before_enqueues.values()):
            await callback(job)

    def _prepare(self, job_or_func: t.Union[str, Job, Function], kwargs: dict[str, t.Any]) -> Job:
        job_fields = {}
        function_kwargs = {}
        for name, value in kwargs.items():
            if name in _JOB_FIELD_NAMES:
                job_fields[name] = value
            else:
                function_kwargs[name] = value
        if isinstance(job_or_func, Job):
            job = job_or_func
            for name, value in job_fields.items():
                setattr(job, name, value)
            if function_kwargs:
                job.kwargs = {**(job.kwargs or {}), **function_kwargs}
        else:
            name = job_or_func if isinstance(job_or_func, str) else _function_name(job_or_func)
            job = Job(name, **job_fields)
            if function_kwargs:
                job.kwargs = {**(job.kwargs or {}), **function_kwargs}
        if job.queue is not None and job.queue.name != self.name:
            raise ValueError(f"{job.info()} belongs to queue {job.queue.name!r}, not {self.name!r}")
        _check_job_options(job)
        job.queue = self
        job.queued = now()
        job.status = Status.QUEUED
        job.attempts = 0
        job.started = job.completed = job.touched = 0
        job.worker_id = None
        return job

    # -- reading -------------------------------------------------------------

    async def job(self, job_key: str) -> t.Optional[Job]:
        """The job with this key, or None."""
        return (await self.jobs([job_key]))[0]

    async def jobs(self, job_keys: Iterable[str]) -> list[t.Optional[Job]]:
        """The jobs with these keys, in the order asked (None where missing)."""
        return await self._drive(_jobs_steps(self, list(job_keys)))

    async def iter_jobs(
        self, statuses: Iterable[Status] = tuple(Status), batch_size: int = 100
    ) -> AsyncIterator[Job]:
        """Every job with one of these statuses, oldest first, read a batch at a time.

        No read transaction stays open between batches, so iterating slowly does not
        stop the file from being checkpointed.
        """
        names = [Status(s).value for s in statuses]
        sql = _SQL_ITER_JOBS.format(statuses=_placeholders(len(names)))
        last = 0
        while True:
            rows = await self._fetch(sql, (self.name, last, *names, batch_size))
            for row in rows:
                yield self._row_to_job(row[1:])
            if len(rows) < batch_size:
                return
            last = rows[-1][0]

    async def count(self, kind: CountKind) -> int:
        """How many jobs: ``"queued"`` (due now), ``"active"`` or ``"incomplete"``.

        Raises:
            ValueError: for another kind.
        """
        return await self._drive(_count_steps(self, kind))

    async def info(self, jobs: bool = False, offset: int = 0, limit: int = 10) -> QueueInfo:
        """Live workers, counts, and (with ``jobs``) the newest jobs.

        Args:
            jobs: include job dicts, newest first.
            offset: skip this many jobs.
            limit: at most this many jobs.
        """
        return await self._drive(_info_steps(self, jobs, offset, limit))

    # -- waiting for results -------------------------------------------------

    async def apply(
        self,
        job_or_func: t.Union[str, Job, Function],
        timeout: t.Optional[float] = None,
        poll_interval: float = 0.5,
        **kwargs: t.Any,
    ) -> t.Any:
        """Enqueue a job, wait for it, and return its result.

        Args:
            timeout: seconds to wait (None = forever); as in SAQ, also the job's timeout.
            poll_interval: kept for SAQ compatibility; completion is noticed at once.

        Raises:
            JobError: the job failed or was aborted.
            asyncio.TimeoutError: the wait ran out.
        """
        results = await self.map(
            job_or_func, [kwargs], timeout=timeout, poll_interval=poll_interval
        )
        return results[0] if results else None

    async def map(
        self,
        job_or_func: t.Union[str, Job, Function],
        iter_kwargs: Iterable[dict[str, t.Any]],
        timeout: t.Optional[float] = None,
        return_exceptions: bool = False,
        poll_interval: float = 0.5,
        **kwargs: t.Any,
    ) -> list[t.Any]:
        """Run one job per kwargs dict and return their results in order.

        Args:
            iter_kwargs: a kwargs dict per job (merged over ``kwargs``).
            timeout: seconds to wait for all (None = forever); as in SAQ, also each
                job's timeout.
            return_exceptions: put a JobError in the list instead of raising it.

        Returns:
            The results in order; a job deleted on finishing (``ttl=-1``) has none.

        Raises:
            JobError: the first job that failed, unless ``return_exceptions``.
            asyncio.TimeoutError: the wait ran out.
        """
        mapping = _Mapping(
            self,
            job_or_func,
            iter_kwargs,
            timeout=timeout,
            return_exceptions=return_exceptions,
            kwargs=kwargs,
        )
        for job in mapping.jobs:
            await self._before_enqueue(job)
        await self._insert_rows([self._job_row(job) for job in mapping.jobs])
        await self._wait_until(mapping.keys, mapping.settled, timeout)
        return mapping.results(await self.jobs(mapping.keys))

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Abort every job enqueued inside the block if the block raises."""
        jobs: list[Job] = []

        async def track(job: Job) -> None:
            jobs.append(job)

        self.register_before_enqueue(track)
        try:
            yield
        except BaseException:
            for job in jobs:
                await self.abort(job, "cancelled")
            raise
        finally:
            self.unregister_before_enqueue(track)

    async def listen(
        self,
        job_keys: Iterable[str],
        callback: ListenCallback,
        timeout: t.Optional[float] = 10,
        poll_interval: float = 0.5,
    ) -> None:
        """Call ``callback(key, status)`` (sync or async) for each change of these jobs.

        Stops when the callback returns something truthy.

        Args:
            timeout: seconds to listen (None or 0 = forever).
            poll_interval: kept for SAQ compatibility; changes are noticed at once.

        Raises:
            asyncio.TimeoutError: the timeout ran out first.
        """
        seen: dict[str, Status] = {}

        async def changed(statuses: dict[str, Status]) -> bool:
            for key, status in statuses.items():
                if seen.get(key) == status:
                    continue
                seen[key] = status
                stop = callback(key, status)
                if inspect.isawaitable(stop):
                    stop = await stop
                if stop:
                    return True
            return False

        await self._wait_until(list(job_keys), changed, timeout)

    async def _wait_until(
        self,
        keys: list[str],
        done: Callable[[dict[str, Status]], t.Union[bool, Awaitable[bool]]],
        timeout: t.Optional[float],
    ) -> None:
        """Read the statuses of these jobs at every change until ``done(statuses)``
        (missing jobs are left out of ``statuses``).

        Raises:
            asyncio.TimeoutError: ``timeout`` seconds (None or 0 = forever) ran out.
        """
        deadline = time.monotonic() + timeout if timeout else math.inf
        await self._wakeup.want("changes")
        while True:
            generation = self._wakeup.generation("changes")
            verdict = done(await self._drive(_statuses_steps(self, keys)))
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if verdict:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"Waiting for {len(keys)} job(s) timed out")
            await self._wakeup.wait("changes", generation, min(remaining, _FALLBACK_POLL_S))

    # -- state changes -------------------------------------------------------

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> t.Optional[Job]:
        """Claim the next due job and mark it ACTIVE.

        Args:
            timeout: seconds to wait for one (0 = forever).
            poll_interval: kept for SAQ compatibility.

        Returns:
            The job, or None when the timeout passed.
        """
        jobs = await self._claim_waiting(1, None, timeout)
        return jobs[0] if jobs else None

    async def abort(self, job: Job, error: str, ttl: float = 5) -> None:
        """Abort a job: a waiting one becomes ABORTED at once; a running one ABORTING,
        and its worker cancels it and finishes it as ABORTED.

        Args:
            error: the reason, stored as the job's error.
            ttl: kept for SAQ compatibility (the request lives in the job's row).
        """
        current, changed = await self._drive(_abort_steps(self, job.key, error))
        if changed:
            await self._wakeup.notify("changes")
        if current is not None:
            job.replace(current)

    async def finish(
        self, job: Job, status: Status, *, result: t.Any = None, error: t.Optional[str] = None
    ) -> None:
        """Finish a job with a terminal status, keeping it ``ttl`` seconds.

        The write applies only if the job is still as this process last saw it; see
        the returned job's status (``job.refresh()``) when that matters.
        """
        await self._finish(job, status, result, error)

    async def _finish(
        self, job: Job, status: Status, result: t.Any = None, error: t.Optional[str] = None
    ) -> bool:
        expected = _Expected.of(job)
        self._set_finished(job, status, result, error)
        stored = await self._write(job, expected)
        if stored:
            self._count(job.status)
        return stored

    def _set_finished(
        self, job: Job, status: Status, result: t.Any, error: t.Optional[str]
    ) -> None:
        job.status = Status(status)
        job.result = result
        job.error = error
        job.completed = now()
        if job.status == Status.COMPLETE:
            job.progress = 1.0

    def _count(self, status: Status) -> None:
        if status == Status.COMPLETE:
            self.complete += 1
        elif status == Status.FAILED:
            self.failed += 1
        elif status == Status.ABORTED:
            self.aborted += 1

    async def retry(self, job: Job, error: t.Optional[str]) -> None:
        """Put a job back in the queue after a failure, after its retry delay."""
        await self._retry(job, error)

    async def _retry(self, job: Job, error: t.Optional[str]) -> bool:
        expected = _Expected.of(job)
        self._set_retried(job, error)
        stored = await self._write(job, expected)
        if stored:
            self.retried += 1
            await self._wakeup.notify("jobs")
        return stored

    @staticmethod
    def _set_retried(job: Job, error: t.Optional[str]) -> None:
        job.status = Status.QUEUED
        job.error = error
        job.completed = 0
        job.started = 0
        job.progress = 0
        job.touched = now()
        delay = job.next_retry_delay()
        if delay:
            job.scheduled = int(time.time() + delay)

    async def update(self, job: Job, **kwargs: t.Any) -> None:
        """Set fields of a job and store it; this touches it (a heartbeat).

        The status stays as it is unless ``status=`` is given.
        """
        expected = _Expected.of(job)
        for name, value in kwargs.items():
            if name not in _JOB_FIELD_NAMES:
                raise ValueError(f"Job has no field {name!r}")
            setattr(job, name, value)
        job.status = Status(job.status)
        job.touched = now()
        await self._write(job, expected)

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        """Delete expired jobs and workers, and recover stuck jobs.

        A job is stuck when it is past its timeout or heartbeat, or when the worker
        running it has died (its process is gone or it stopped beating). A stuck job
        of a live worker is first aborted and given ``abort`` seconds to stop. Each
        stuck job is then retried if it may be, else finished ABORTED with error
        ``"swept"``. One sweeper runs at a time across all processes.

        Args:
            lock: seconds this sweeper holds the sweep lease.
            abort: seconds to wait for a live worker to abort a stuck job.

        Returns:
            The ids of the jobs swept.
        """
        await self.connect()
        if not await self._take_lock(f"sweep:{self.name}", lock):
            return []
        current = time.time()
        expired = await self._fetch(_SQL_DELETE_EXPIRED_JOBS, (current,))
        if expired:
            logger.info("Deleted %d expired job(s)", len(expired))
        # Running jobs first, then workers: a worker registers before it claims, so
        # every worker of these jobs is in the list read after them.
        running = [
            self._row_to_job(row) for row in await self._fetch(_SQL_RUNNING_JOBS, (self.name,))
        ]
        workers = await self._workers()
        live = {worker_id for worker_id, _info, alive in workers if alive}
        dead = [worker_id for worker_id, _info, alive in workers if not alive]
        if dead:
            await self._fetch(_SQL_DELETE_WORKERS.format(ids=_placeholders(len(dead))), dead)
        await self._wakeup.forget_dead()
        # Keep the -wal file from growing: copy it into the database and empty it (a
        # no-op while a reader still needs it; the next sweep tries again).
        await self._fetch(_SQL_CHECKPOINT)
        orphans = [
            job for job in running if job.worker_id is not None and job.worker_id not in live
        ]
        stuck = [job for job in running if job.stuck and job not in orphans]
        for job in stuck:
            await self.abort(job, swept_error_message)
        if stuck:
            await self._wait_until_not_running([job.key for job in stuck], abort)
        swept = []
        for job in orphans + stuck:
            if await self._recover(job):
                swept.append(job.id)
        return swept

    async def _wait_until_not_running(self, keys: list[str], timeout: float) -> None:
        pending = set(keys)

        def stopped(key: str, status: Status) -> bool:
            if status not in (Status.ACTIVE, Status.ABORTING):
                pending.discard(key)
            return not pending

        with contextlib.suppress(asyncio.TimeoutError):
            await self.listen(keys, stopped, timeout=timeout)

    async def _recover(self, job: Job) -> bool:
        """Retry or finish a swept job, unless it moved on since it was seen."""
        current = await self.job(job.key)
        if current is None or current.attempts != job.attempts:
            return False
        if current.status not in (Status.ACTIVE, Status.ABORTING, Status.ABORTED):
            return False
        logger.info("Sweeping job %s", current.info(True))
        if current.status == Status.ABORTED and not current.retryable:
            return True  # its worker already finished it as the sweep would
        if current.retryable:
            return await self._retry(current, swept_error_message)
        return await self._finish(current, Status.ABORTED, error=swept_error_message)

    # -- workers -------------------------------------------------------------

    async def worker_info(
        self,
        worker_id: str,
        queue_key: str,
        metadata: t.Optional[dict[str, t.Any]] = None,
        ttl: int = 60,
    ) -> WorkerInfo:
        """Store this process's counters as a worker's info, alive for ``ttl`` seconds."""
        info: WorkerInfo = {
            "queue_key": queue_key,
            "stats": {
                "complete": self.complete,
                "failed": self.failed,
                "retried": self.retried,
                "aborted": self.aborted,
                "uptime": now() - self.started,
            },
            "metadata": metadata,
        }
        current = time.time()
        await self._fetch(_SQL_UPSERT_WORKER, {
            "id": worker_id, "queue": self.name, "host": _HOST, "pid": os.getpid(),
            "beat": current, "expire_at": current + ttl, "info": json.dumps(info, default=str),
        })  # fmt: skip
        return info

    async def _forget_worker(self, worker_id: str) -> None:
        await self._fetch(_SQL_DELETE_WORKER, (worker_id,))

    async def _workers(self) -> list[tuple[str, WorkerInfo, bool]]:
        """Every registered worker of this queue: id, info, and whether it is alive."""
        return await self._drive(_workers_steps(self))

    # -- serialisation -------------------------------------------------------

    def serialize(self, job: Job) -> t.Union[str, bytes]:
        """The job as stored, through ``dump``.

        Raises:
            TypeError: when ``dump`` cannot encode it, naming the job.
        """
        try:
            return self._dump(job.to_dict())
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(
                f"Cannot serialise {job.info()} for queue {self.name!r}: {exc}. Job kwargs, "
                "meta and results must be JSON-encodable, or give the Queue dump= and load="
            ) from exc

    def deserialize(self, payload: t.Union[str, bytes, None]) -> t.Optional[Job]:
        """A Job from what ``serialize`` made (None for None).

        Raises:
            ValueError: the payload belongs to another queue.
        """
        if payload is None:
            return None
        job_dict = self._load(payload)
        queue_name = job_dict.pop("queue", self.name)
        if queue_name != self.name:
            raise ValueError(f"Job {job_dict} belongs to queue {queue_name!r}, not {self.name!r}")
        return Job(**job_dict, queue=self)

    def copy(self, job: Job) -> Job:
        """A separate copy of a job (through serialisation)."""
        copied = self.deserialize(self.serialize(job))
        assert copied is not None
        return copied

    # =========================================================================
    # Storage internals
    # =========================================================================

    async def _fetch(self, sql: str, params: t.Any = ()) -> list[t.Any]:
        """Run one statement (its own transaction) and return its rows.

        A busy file is tried again after short random pauses, so that processes take
        turns, until ``lock_timeout``.
        """
        conn = self._conn
        if conn is None:
            await self.connect()
            conn = self._conn
            assert conn is not None
        wait = _LockWait(self)
        while True:
            try:
                rows = list(await conn.execute_fetchall(sql, params))
            except sqlite3.Error as exc:
                await asyncio.sleep(wait.pause(exc))
                continue
            wait.done()
            return rows

    async def _drive(self, steps: _Steps[_R]) -> _R:
        """Run a sequence of statements (see _Steps) on this queue's connection."""
        try:
            statement = next(steps)
            while True:
                statement = steps.send(await self._fetch(*statement))
        except StopIteration as finished:
            return t.cast("_R", finished.value)

    def _job_row(self, job: Job) -> tuple[t.Any, ...]:
        """The values of _JOB_COLUMNS for a job."""
        if job.status in TERMINAL_STATUSES:
            expire_at = time.time() + job.ttl if job.ttl > 0 else None
        else:
            expire_at = None
        run_at = job.scheduled or _seconds(job.queued or now())
        return (
            self.name, job.key, job.status.value, job.priority, run_at, job.group_key,
            job.worker_id, job.attempts, job.queued, job.started, job.touched,
            job.completed, job.error, job.ttl, expire_at, self.serialize(job),
        )  # fmt: skip

    def _row_to_job(self, row: t.Sequence[t.Any]) -> Job:
        """A Job from the _LOAD_COLUMNS of a row."""
        data, status, attempts, worker_id, started, touched, completed, error = row
        job = self.deserialize(data)
        assert job is not None
        job.status = Status(status)
        job.attempts = attempts
        job.worker_id = worker_id
        job.started = started
        job.touched = touched
        job.completed = completed
        job.error = error
        return job

    async def _insert_rows(self, rows: list[tuple[t.Any, ...]]) -> list[bool]:
        """Insert job rows; for each, whether it went in (False: a duplicate key)."""
        results = await self._drive(_insert_steps(rows))
        if any(results):
            await self._wakeup.notify("jobs")
        return results

    async def _write(self, job: Job, expected: _Expected) -> bool:
        """Store a job's new state if it is still as expected; whether it was."""
        return await self._writes.submit(_write_item(self, job, expected))

    async def _write_rows(self, items: list[tuple[str, tuple[t.Any, ...]]]) -> list[bool]:
        """Apply guarded writes gathered while the previous batch was in flight.

        A job written twice in one batch (e.g. a progress update, then its finish) is
        written in order, by splitting the batch where a key repeats.
        """
        results = await self._drive(_write_steps(items))
        await self._wakeup.notify("changes")
        return results

    async def _claim(self, limit: int, worker_id: t.Optional[str]) -> list[Job]:
        """Mark up to ``limit`` due jobs ACTIVE for a worker, in one statement."""
        current = time.time()
        params = {"queue": self.name, "now": current, "now_ms": int(current * 1000),
                  "worker_id": worker_id, "limit": limit}  # fmt: skip
        rows = await self._fetch(_SQL_CLAIM, params)
        if not rows:
            return []
        jobs = [self._row_to_job(row) for row in rows]
        # RETURNING gives no order: run them in the order they were chosen.
        jobs.sort(key=lambda job: (job.priority, job.scheduled or _seconds(job.queued)))
        await self._wakeup.notify("changes")
        return jobs

    async def _claim_waiting(
        self, limit: int, worker_id: t.Optional[str], timeout: float
    ) -> list[Job]:
        """Claim jobs, waiting up to ``timeout`` seconds (0 = forever) for some."""
        await self._wakeup.want("jobs")
        deadline = time.monotonic() + timeout if timeout else math.inf
        while True:
            generation = self._wakeup.generation("jobs")
            jobs = await self._claim(limit, worker_id)
            if jobs:
                return jobs
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await self._wait_for_work(generation, remaining)

    async def _wait_for_work(self, generation: int, limit: float) -> None:
        """Sleep until work may be ready: a wake-up, a scheduled job falling due, or a
        commit by another process (checked every _FALLBACK_POLL_S), at most ``limit``
        seconds and at most _FORCED_CLAIM_S (a commit can slip between the claim and
        the first look at data_version).
        """
        version = await self._data_version()
        deadline = time.monotonic() + min(limit, _FORCED_CLAIM_S)
        rows = await self._fetch(_SQL_NEXT_RUN_AT, (self.name,))
        if rows and rows[0][0] is not None:
            deadline = min(deadline, time.monotonic() + max(rows[0][0] - time.time(), 0))
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if await self._wakeup.wait("jobs", generation, min(remaining, _FALLBACK_POLL_S)):
                return
            if await self._data_version() != version:
                return

    async def _data_version(self) -> int:
        rows = await self._fetch(_SQL_DATA_VERSION)
        return int(rows[0][0])

    async def _aborting_keys(self, worker_id: str) -> list[str]:
        return [key for (key,) in await self._fetch(_SQL_ABORTING_KEYS, (self.name, worker_id))]

    async def _take_lock(self, name: str, seconds: float) -> bool:
        current = time.time()
        params = {"name": name, "owner": f"{_HOST}:{os.getpid()}:{id(self)}",
                  "expire_at": current + seconds, "now": current}  # fmt: skip
        return bool(await self._fetch(_SQL_TAKE_LOCK, params))


_JOB_DEFAULTS = tuple((field.name, field.default) for field in dataclasses.fields(Job))
_JOB_FIELD_NAMES = frozenset(name for name, _ in _JOB_DEFAULTS)
_INFO_FULL_ONLY = frozenset({"kwargs", "result", "error", "status", "progress", "meta"})


# =============================================================================
# Storage steps: the statements of each operation, shared by Queue and SyncQueue
# =============================================================================
#
# Each is a generator that yields (sql, params), receives the statement's rows and
# finally returns the operation's result; Queue._drive runs them on aiosqlite and
# SyncQueue._drive on sqlite3, so the async and the sync client share every query.

_Statement = tuple[str, t.Any]
if t.TYPE_CHECKING:
    from collections.abc import Generator

    _Steps: TypeAlias = Generator[_Statement, list[t.Any], _R]


def _insert_steps(rows: list[tuple[t.Any, ...]]) -> _Steps[list[bool]]:
    """Insert job rows; for each, whether it went in (False: its key was taken)."""
    inserted: set[str] = set()
    for chunk in _chunks(rows, _ROWS_PER_STATEMENT):
        sql = _SQL_INSERT_JOBS.format(rows=_row_placeholders(len(chunk), len(_JOB_COLUMNS)))
        found = yield sql, [value for row in chunk for value in row]
        inserted.update(key for (key,) in found)
    results = []
    for row in rows:
        results.append(row[1] in inserted)
        inserted.discard(row[1])  # a key repeated in one call goes in once
    return results


def _write_item(queue: Queue, job: Job, expected: _Expected) -> tuple[str, tuple[t.Any, ...]]:
    """A guarded write of a job's state, for _write_steps."""
    guard = expected.values(queue.name, job.key)
    if job.ttl == -1 and job.status in TERMINAL_STATUSES:
        return "delete", guard
    return "update", (*guard[2:], *queue._job_row(job))


def _write_steps(items: list[tuple[str, tuple[t.Any, ...]]]) -> _Steps[list[bool]]:
    """Apply guarded writes; for each, whether the job was still as expected.

    A job written twice in one batch (e.g. a progress update, then its finish) is
    written in order, by splitting the batch where a key repeats.
    """
    done: list[bool] = []
    start = 0
    while start < len(items):
        keys: set[str] = set()
        end = start
        while end < len(items) and end - start < _ROWS_PER_STATEMENT:
            key = _written_key(items[end])
            if key in keys:
                break
            keys.add(key)
            end += 1
        written: set[str] = set()
        for kind, sql, width in (
            ("update", _SQL_WRITE_JOBS, len(_GUARD_COLUMNS) + len(_JOB_COLUMNS)),
            ("delete", _SQL_DELETE_JOBS, 2 + len(_GUARD_COLUMNS)),
        ):
            rows = [values for item_kind, values in items[start:end] if item_kind == kind]
            if rows:
                statement = sql.format(rows=_row_placeholders(len(rows), width))
                found = yield statement, [value for row in rows for value in row]
                written.update(key for (key,) in found)
        done.extend(_written_key(item) in written for item in items[start:end])
        start = end
    return done


def _jobs_steps(queue: Queue, keys: list[str]) -> _Steps[list[t.Optional[Job]]]:
    found: dict[str, Job] = {}
    for chunk in _chunks(keys, _ROWS_PER_STATEMENT):
        rows = yield _SQL_GET_JOBS.format(keys=_placeholders(len(chunk))), (queue.name, *chunk)
        for row in rows:
            found[row[0]] = queue._row_to_job(row[1:])
    return [found.get(key) for key in keys]


def _statuses_steps(queue: Queue, keys: list[str]) -> _Steps[dict[str, Status]]:
    """The statuses of these jobs (missing ones left out)."""
    found: dict[str, Status] = {}
    for chunk in _chunks(keys, _ROWS_PER_STATEMENT):
        sql = _SQL_GET_STATUSES.format(keys=_placeholders(len(chunk)))
        rows = yield sql, (queue.name, *chunk)
        found.update((key, Status(status)) for key, status in rows)
    return found


def _counts_steps(queue: Queue) -> _Steps[tuple[int, int, int]]:
    """How many jobs are queued and due, scheduled for later, and running."""
    rows = yield _SQL_COUNTS, {"queue": queue.name, "now": time.time()}
    queued, scheduled, active = rows[0]
    return int(queued), int(scheduled), int(active)


def _count_steps(queue: Queue, kind: str) -> _Steps[int]:
    if kind not in ("queued", "active", "incomplete"):
        raise ValueError(
            f"Can't count unknown type {kind!r}: use 'queued', 'active' or 'incomplete'"
        )
    queued, scheduled, active = yield from _counts_steps(queue)
    return {"queued": queued, "active": active, "incomplete": queued + scheduled + active}[kind]


def _workers_steps(queue: Queue) -> _Steps[list[tuple[str, WorkerInfo, bool]]]:
    """Every registered worker of a queue: id, info, and whether it is alive."""
    rows = yield _SQL_WORKERS, (queue.name,)
    current = time.time()
    return [
        (worker_id, json.loads(info), _alive(host, pid, expire_at, current))
        for worker_id, host, pid, expire_at, info in rows
    ]


def _info_steps(queue: Queue, jobs: bool, offset: int, limit: int) -> _Steps[QueueInfo]:
    queued, scheduled, active = yield from _counts_steps(queue)
    workers = yield from _workers_steps(queue)
    job_dicts: list[dict[str, t.Any]] = []
    if jobs:
        rows = yield _SQL_LIST_JOBS, (queue.name, limit, offset)
        job_dicts = [queue._row_to_job(row).to_dict() for row in rows]
    return {
        "workers": {worker_id: info for worker_id, info, alive in workers if alive},
        "name": queue.name,
        "queued": queued,
        "active": active,
        "scheduled": scheduled,
        "jobs": job_dicts,
    }


def _abort_steps(queue: Queue, key: str, error: str) -> _Steps[tuple[t.Optional[Job], bool]]:
    """Abort a job: finish it ABORTED if it waits, else ask its worker to stop it.

    Returns the job as it now is, and whether this call changed it.
    """
    while True:
        (current,) = yield from _jobs_steps(queue, [key])
        if current is None or current.status in TERMINAL_STATUSES | {Status.ABORTING}:
            return current, False
        if current.status == Status.ACTIVE:
            params = {"error": error, "queue": queue.name, "key": key,
                      "attempts": current.attempts}  # fmt: skip
            if (yield _SQL_REQUEST_ABORT, params):
                current.status, current.error = Status.ABORTING, error
                return current, True
        else:
            expected = _Expected.of(current)
            queue._set_finished(current, Status.ABORTED, None, error)
            (stored,) = yield from _write_steps([_write_item(queue, current, expected)])
            if stored:
                queue.aborted += 1
                return current, True
        # It moved on (claimed, or finished) between the read and the write: look again.


class _Mapping:
    """What Queue.map and SyncQueue.map share: the jobs, when they are settled, and
    their results."""

    def __init__(
        self,
        queue: Queue,
        job_or_func: t.Union[str, Job, Function],
        iter_kwargs: Iterable[dict[str, t.Any]],
        *,
        timeout: t.Optional[float],
        return_exceptions: bool,
        kwargs: dict[str, t.Any],
    ) -> None:
        defaults = dict(kwargs)
        if timeout is not None:  # as in SAQ, the wait's timeout is each job's too
            defaults.setdefault("timeout", timeout)
        self.jobs = []
        for job_kwargs in iter_kwargs:
            template = queue.copy(job_or_func) if isinstance(job_or_func, Job) else job_or_func
            if isinstance(template, Job):
                template.key = _new_key()
            self.jobs.append(queue._prepare(template, {**defaults, **job_kwargs}))
        self.keys = [job.key for job in self.jobs]
        self.return_exceptions = return_exceptions

    def settled(self, statuses: dict[str, Status]) -> bool:
        """All finished (or deleted), or one failed when that is to be raised."""
        finished = [statuses.get(key) for key in self.keys]
        if not self.return_exceptions and UNSUCCESSFUL_TERMINAL_STATUSES.intersection(finished):
            return True
        return all(status is None or status in TERMINAL_STATUSES for status in finished)

    def results(self, stored: list[t.Optional[Job]]) -> list[t.Any]:
        results: list[t.Any] = []
        for job in stored:
            if job is None:
                continue
            if job.status in UNSUCCESSFUL_TERMINAL_STATUSES:
                error = JobError(job)
                if not self.return_exceptions:
                    raise error
                results.append(error)
            else:
                results.append(job.result)
        return results


@dataclasses.dataclass(frozen=True)
class _Expected:
    """The state a writer last saw a job in; its write applies only in that state."""

    status: str
    worker_id: t.Optional[str]
    attempts: int

    @classmethod
    def of(cls, job: Job) -> _Expected:
        return cls(str(job.status), job.worker_id, job.attempts)

    def values(self, queue: str, key: str) -> tuple[t.Any, ...]:
        return (queue, key, self.status, self.worker_id, self.attempts)


def _written_key(item: tuple[str, tuple[t.Any, ...]]) -> str:
    kind, values = item
    return str(values[1] if kind == "delete" else values[4])


# =============================================================================
# Storage internals: the file, batching and wake-ups
# =============================================================================

_HOST = socket.gethostname()
#: The waiters (_Wakeup, _SyncWakeup) of this process, told of news directly.
_local_wakeups: weakref.WeakSet[t.Any] = weakref.WeakSet()


def _check_sqlite_version() -> None:
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        raise StorageError(
            "",
            f"saqlite needs SQLite {'.'.join(map(str, MIN_SQLITE_VERSION))} or newer "
            f"(for UPDATE ... RETURNING); this Python has {sqlite3.sqlite_version}. "
            "Use a newer Python build, or install pysqlite3-binary",
        )


def _connection_pragmas(synchronous: str) -> list[str]:
    # busy_timeout 0: saqlite waits for locks itself, in short fair pauses.
    return [f"PRAGMA synchronous = {synchronous}", "PRAGMA busy_timeout = 0"]


def _prepare_database(queue: Queue) -> None:
    """Check the path, switch the file to WAL and create or migrate its schema."""
    path = queue.path
    _check_sqlite_version()
    if os.path.isdir(path):
        raise StorageError(path, f"{path} is a folder, not a database file: name a file in it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise StorageError(path, f"Cannot create {path}: the folder {folder} does not exist")
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    except sqlite3.Error as exc:
        raise _storage_error(path, exc) from exc
    wait = _LockWait(queue)  # another process may be setting up the same new file
    try:
        while True:
            try:
                _migrate(conn, path)
            except sqlite3.Error as exc:
                time.sleep(wait.pause(exc))
                continue
            wait.done()
            return
    finally:
        conn.close()


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StorageError(path, f"{path} cannot use WAL journal mode (got {mode!r})")
    with _transaction(conn):
        conn.execute(_SQL_CREATE_META)
        row = conn.execute(_SQL_SCHEMA_VERSION).fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StorageError(
                path,
                f"{path} has saqlite schema version {version}, newer than this saqlite "
                f"{__version__} understands ({SCHEMA_VERSION}): upgrade saqlite",
            )
        for statements in _MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(_SQL_SET_SCHEMA_VERSION, (SCHEMA_VERSION,))


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> t.Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (KeyboardInterrupt too)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class _LockWait:
    """Waiting for another connection's write lock: short random pauses, growing to
    _MAX_BUSY_PAUSE_S, so that processes take turns; StorageError after lock_timeout."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        self._first = 0.0
        self._pause = 0.0002

    def pause(self, exc: sqlite3.Error) -> float:
        """Seconds to sleep before trying again after ``exc``; raises if not to retry."""
        queue = self._queue
        if not _is_busy(exc):
            raise _storage_error(queue.path, exc) from exc
        if not self._first:
            self._first = time.monotonic()
        elif time.monotonic() - self._first > queue.lock_timeout:
            raise StorageError(
                queue.path,
                f"{queue.path} stayed locked by another connection for "
                f"{queue.lock_timeout:g} s; raise Queue(lock_timeout=...) or find the "
                "process that holds a long transaction",
            ) from exc
        pause = random.uniform(0, self._pause)
        self._pause = min(self._pause * 2, _MAX_BUSY_PAUSE_S)
        return pause

    def done(self) -> None:
        if self._first:
            waited = time.monotonic() - self._first
            self._queue.worst_lock_wait = max(self._queue.worst_lock_wait, waited)


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
    return "locked" in str(exc) or "busy" in str(exc)


def _storage_error(path: str, exc: sqlite3.Error) -> StorageError:
    text = str(exc)
    if "not a database" in text:
        hint = "it is not a SQLite database: give saqlite a new file or an existing saqlite one"
    elif "readonly" in text or "unable to open" in text:
        hint = "check that the file and its folder exist and are writable by this user"
    elif "disk is full" in text or "disk I/O" in text:
        hint = "free disk space; nothing was changed by the statement that failed"
    else:
        hint = "see the SQLite error above"
    return StorageError(path, f"SQLite error on {path}: {text} ({hint})")


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


@functools.lru_cache(maxsize=64)
def _row_placeholders(rows: int, columns: int) -> str:
    row = f"({_placeholders(columns)})"
    return ", ".join([row] * rows)


def _chunks(items: t.Sequence[_T], size: int) -> t.Iterator[t.Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _alive(host: str, pid: int, expire_at: float, current: float) -> bool:
    """Whether a worker lives: by its process where we can see it, else by its beat."""
    if host == _HOST:
        running = _pid_running(pid)
        if running is not None:
            return running
    return expire_at > current


def _pid_running(pid: int) -> t.Optional[bool]:
    """Whether a local process runs (None where the OS can't tell us cheaply)."""
    if sys.platform == "win32":
        return None  # os.kill(pid, 0) would send CTRL_C_EVENT there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child nobody has reaped yet is a zombie: dead for us
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class _Batcher(t.Generic[_T, _R]):
    """Group commit: items submitted while one flush runs go together in the next.

    The first item after a quiet spell is flushed on the next loop iteration, so a
    lone write waits for nothing.
    """

    def __init__(self, flush: Callable[[list[_T]], Awaitable[list[_R]]]) -> None:
        self._flush = flush
        self._pending: list[tuple[_T, asyncio.Future[_R]]] = []
        self._task: t.Optional[asyncio.Task[None]] = None

    async def submit(self, item: _T) -> _R:
        future: asyncio.Future[_R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return await future

    async def drain(self) -> None:
        """Wait for every submitted item to be flushed."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._flush([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._task = None


class _Wakeup:
    """How waiters of a queue learn that something changed, without polling hard.

    Two kinds of news: ``"jobs"`` (work was enqueued or retried) for workers, and
    ``"changes"`` (a job changed state) for ``listen`` and ``apply``. Waiters in this
    process are told at once through asyncio events. Other processes are told by a
    UDP datagram to the port each registered in the file (``saqlite_wakeup``); a
    datagram can be lost, so waiters also check the file's data_version now and then.
    """

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        self.place = queue._place
        self._generations = {"jobs": 0, "changes": 0}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {"jobs": [], "changes": []}
        self._loop: t.Optional[asyncio.AbstractEventLoop] = None
        self._transport: t.Optional[asyncio.DatagramTransport] = None
        self._port = 0
        self._wanted: set[str] = set()
        self._announcer = _Announcer()
        self._ports_lock: t.Optional[asyncio.Lock] = None

    def generation(self, kind: str) -> int:
        return self._generations[kind]

    async def wait(self, kind: str, generation: int, timeout: float) -> bool:
        """Wait until news of ``kind`` newer than ``generation``; whether it came."""
        if self._generations[kind] != generation:
            return True
        # A bare future and a timer: a wake-up costs one loop iteration (wait_for and
        # Event.wait would add a task and two more), which shows in pickup latency.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters[kind].append(waiter)
        timer = loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters[kind].remove(waiter)
        return self._generations[kind] != generation

    def news(self, kind: str) -> None:
        """Wake this queue's waiters for ``kind`` (on its own loop's thread)."""
        self._generations[kind] += 1
        waiters, self._waiters[kind] = self._waiters[kind], []
        for waiter in waiters:
            _resolve(waiter)

    def wake_threadsafe(self, kind: str) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is running:
            self.news(kind)
        else:
            with contextlib.suppress(RuntimeError):  # its loop has closed
                loop.call_soon_threadsafe(self.news, kind)

    async def notify(self, kind: str) -> None:
        """Tell waiters in this process and in other processes about news."""
        _notify_local(self._queue, kind)
        self._announcer.send(kind, self._queue.name)  # first the ports it knows
        if self._announcer.stale():  # then news of new waiters, who are told too
            rows = await self._queue._fetch(*_Announcer.query(self._queue))
            self._announcer.send(kind, self._queue.name, self._announcer.update(rows))

    async def want(self, kind: str) -> None:
        """Ask other processes to send news of ``kind`` to this queue from now on."""
        self._loop = asyncio.get_running_loop()
        if kind in self._wanted:
            return
        if self._ports_lock is None:
            self._ports_lock = asyncio.Lock()
        async with self._ports_lock:
            if self._transport is None:
                try:
                    transport, _ = await self._loop.create_datagram_endpoint(
                        lambda: _WakeupProtocol(self), local_addr=("127.0.0.1", 0)
                    )
                except OSError as exc:  # no loopback UDP here: the fallback poll still works
                    logger.warning("No UDP wake-ups for %r (%s); polling instead", self._queue, exc)
                    _local_wakeups.add(self)
                    self._wanted.add(kind)
                    return
                self._transport = transport
                self._port = self._transport.get_extra_info("sockname")[1]
                _local_wakeups.add(self)
            if kind not in self._wanted:
                await self._queue._fetch(*_register_wakeup(self._queue, kind, self._port))
                self._wanted.add(kind)

    async def forget_dead(self) -> None:
        """Delete the wake-up ports of processes that are gone."""
        rows = await self._queue._fetch(_SQL_WAKEUP_PORTS, (self._queue.name,))
        for _kind, _port, host, pid in rows:
            if host == _HOST and _pid_running(pid) is False:
                await self._queue._fetch(_SQL_DELETE_WAKEUP, (host, pid))

    async def close(self) -> None:
        _local_wakeups.discard(self)
        if self._transport is not None:
            with contextlib.suppress(StorageError):
                await self._queue._fetch(_SQL_UNREGISTER_WAKEUP, (self._queue.name, self._port))
            self._transport.close()
            self._transport = None
        self._announcer.close()
        self._wanted.clear()


def _notify_local(queue: Queue, kind: str) -> None:
    """Wake the waiters on this queue in this process, whatever their thread."""
    for wakeup in list(_local_wakeups):
        if wakeup.place == queue._place:
            wakeup.wake_threadsafe(kind)


def _register_wakeup(queue: Queue, kind: str, port: int) -> _Statement:
    return _SQL_REGISTER_WAKEUP, (queue.name, kind, port, _HOST, os.getpid())


class _Announcer:
    """Sends wake-up datagrams to other processes' waiters, whose ports it reads from
    the file at most every _CACHE_S seconds (a new waiter may miss a datagram for that
    long, and then relies on its fallback poll)."""

    _CACHE_S = 1.0

    def __init__(self) -> None:
        self._ports: dict[str, list[int]] = {}
        self._read_at = -math.inf
        self._socket: t.Optional[socket.socket] = None

    def stale(self) -> bool:
        return time.monotonic() - self._read_at > self._CACHE_S

    @staticmethod
    def query(queue: Queue) -> _Statement:
        return _SQL_WAKEUP_PORTS, (queue.name,)

    def update(self, rows: Iterable[tuple[str, int, str, int]]) -> dict[str, list[int]]:
        """Cache the ports from query()'s rows, leaving out this process's own.

        Returns:
            The ports that were not known before, by kind.
        """
        known = self._ports
        self._read_at = time.monotonic()
        self._ports = {}
        for kind, port, host, pid in rows:
            if host != _HOST or pid != os.getpid():  # this process is told directly
                self._ports.setdefault(kind, []).append(port)
        return {
            kind: [port for port in ports if port not in known.get(kind, ())]
            for kind, ports in self._ports.items()
        }

    def send(self, kind: str, name: str, to: t.Optional[dict[str, list[int]]] = None) -> None:
        """Send news of ``kind`` to the known ports, or to those in ``to``."""
        ports = (self._ports if to is None else to).get(kind)
        if not ports:
            return
        if self._socket is None:
            self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        message = f"{kind}\0{name}".encode()
        for port in ports:
            with contextlib.suppress(OSError):  # a full buffer or a closed port: a hint lost
                self._socket.sendto(message, ("127.0.0.1", port))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._ports = {}
        self._read_at = -math.inf


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _WakeupProtocol(asyncio.DatagramProtocol):
    def __init__(self, wakeup: _Wakeup) -> None:
        self._wakeup = wakeup

    def datagram_received(self, data: bytes, addr: t.Any) -> None:
        kind, _, _queue = data.decode(errors="replace").partition("\0")
        if kind in ("jobs", "changes"):
            self._wakeup.news(kind)


# =============================================================================
# Sync client
# =============================================================================


class SyncQueue:
    """The same queue for code without an event loop: Tk or Qt handlers, Flask or
    Django views, scripts. Plain methods on the standard library's sqlite3, with no
    thread of its own; safe to share between threads.

    Jobs it returns belong to ``self.queue``, the async ``Queue`` twin, so they have
    the usual fields and ids. Args are as for ``Queue``.
    """

    def __init__(
        self,
        path: t.Union[str, os.PathLike[str]] = DEFAULT_PATH,
        name: str = "default",
        dump: t.Optional[DumpType] = None,
        load: t.Optional[LoadType] = None,
        *,
        synchronous: str = "NORMAL",
        lock_timeout: float = 30.0,
    ) -> None:
        self.queue = Queue(
            path, name, dump, load, synchronous=synchronous, lock_timeout=lock_timeout
        )
        self._conn: t.Optional[sqlite3.Connection] = None
        self._lock = threading.RLock()  # one statement at a time on the connection
        self._wakeup = _SyncWakeup(self)

    def __repr__(self) -> str:
        return f"SyncQueue<path={self.path!r}, name={self.name!r}>"

    @classmethod
    def from_url(cls, url: str, **kwargs: t.Any) -> SyncQueue:
        """A client from ``sqlite:///relative.db`` or ``sqlite:////absolute.db``."""
        queue = Queue.from_url(url)
        return cls(queue.path, **kwargs)

    @property
    def path(self) -> str:
        return self.queue.path

    @property
    def name(self) -> str:
        return self.queue.name

    def __enter__(self) -> SyncQueue:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connect(self) -> None:
        """Open the file, creating or migrating its schema (done on first use anyway).

        Raises:
            StorageError: when the path is not a usable saqlite database.
        """
        with self._lock:
            if self._conn is not None:
                return
            _prepare_database(self.queue)
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                for pragma in _connection_pragmas(self.queue.synchronous):
                    conn.execute(pragma)
            except sqlite3.Error as exc:
                raise _storage_error(self.path, exc) from exc
            self._conn = conn

    def close(self) -> None:
        """Close the file. Safe to call twice."""
        with self._lock:
            self._wakeup.close()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def enqueue(self, job_or_func: t.Union[str, Job, Function], **kwargs: t.Any) -> t.Optional[Job]:
        """Store a job to run: as ``Queue.enqueue``.

        Returns:
            The job, or None when a job with the same key is already waiting or running.
        """
        return self.enqueue_many([job_or_func], **kwargs)[0]

    def enqueue_many(
        self, jobs: Iterable[t.Union[Job, str, Function]], **kwargs: t.Any
    ) -> list[t.Optional[Job]]:
        """Store many jobs at once: as ``Queue.enqueue_many``."""
        prepared = [self.queue._prepare(job, dict(kwargs)) for job in jobs]
        inserted = self._drive(_insert_steps([self.queue._job_row(job) for job in prepared]))
        if any(inserted):
            self._wakeup.notify("jobs")
        return [job if ok else None for job, ok in zip(prepared, inserted)]

    def job(self, job_key: str) -> t.Optional[Job]:
        """The job with this key, or None."""
        return self.jobs([job_key])[0]

    def jobs(self, job_keys: Iterable[str]) -> list[t.Optional[Job]]:
        """The jobs with these keys, in the order asked (None where missing)."""
        return self._drive(_jobs_steps(self.queue, list(job_keys)))

    def count(self, kind: CountKind) -> int:
        """How many jobs: ``"queued"`` (due now), ``"active"`` or ``"incomplete"``."""
        return self._drive(_count_steps(self.queue, kind))

    def info(self, jobs: bool = False, offset: int = 0, limit: int = 10) -> QueueInfo:
        """Live workers, counts, and (with ``jobs``) the newest jobs: as ``Queue.info``."""
        return self._drive(_info_steps(self.queue, jobs, offset, limit))

    def refresh(self, job: Job, until_complete: t.Optional[float] = None) -> Job:
        """Reload a job in place, and return it.

        Args:
            until_complete: wait up to this many seconds for a terminal status
                (0 = wait forever).

        Raises:
            RuntimeError: the job no longer exists.
            TimeoutError: the wait ran out.
        """
        if until_complete is not None and job.status not in TERMINAL_STATUSES:

            def done(statuses: dict[str, Status]) -> bool:
                return statuses.get(job.key, Status.COMPLETE) in TERMINAL_STATUSES

            self._wait_until([job.key], done, until_complete)
        stored = self.job(job.key)
        if stored is None:
            raise RuntimeError(f"{job.info()} doesn't exist in queue {self.name!r}")
        job.replace(stored)
        return job

    def apply(
        self,
        job_or_func: t.Union[str, Job, Function],
        timeout: t.Optional[float] = None,
        **kwargs: t.Any,
    ) -> t.Any:
        """Enqueue a job, wait for it, and return its result: as ``Queue.apply``.

        Raises:
            JobError: the job failed or was aborted.
            TimeoutError: the wait ran out.
        """
        results = self.map(job_or_func, [kwargs], timeout=timeout)
        return results[0] if results else None

    def map(
        self,
        job_or_func: t.Union[str, Job, Function],
        iter_kwargs: Iterable[dict[str, t.Any]],
        timeout: t.Optional[float] = None,
        return_exceptions: bool = False,
        **kwargs: t.Any,
    ) -> list[t.Any]:
        """Run one job per kwargs dict and return their results: as ``Queue.map``."""
        mapping = _Mapping(
            self.queue,
            job_or_func,
            iter_kwargs,
            timeout=timeout,
            return_exceptions=return_exceptions,
            kwargs=kwargs,
        )
        self._drive(_insert_steps([self.queue._job_row(job) for job in mapping.jobs]))
        self._wakeup.notify("jobs")
        self._wait_until(mapping.keys, mapping.settled, timeout)
        return mapping.results(self.jobs(mapping.keys))

    def abort(self, job: Job, error: str) -> None:
        """Abort a job: as ``Queue.abort``; ``job`` is updated in place."""
        current, changed = self._drive(_abort_steps(self.queue, job.key, error))
        if changed:
            self._wakeup.notify("changes")
        if current is not None:
            job.replace(current)

    def _wait_until(
        self, keys: list[str], done: Callable[[dict[str, Status]], bool], timeout: t.Optional[float]
    ) -> None:
        """Read the statuses of these jobs at every change until ``done(statuses)``."""
        deadline = time.monotonic() + timeout if timeout else math.inf
        self._wakeup.want("changes")
        while True:
            generation = self._wakeup.generation("changes")
            if done(self._drive(_statuses_steps(self.queue, keys))):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"Waiting for {len(keys)} job(s) timed out")
            self._wakeup.wait("changes", generation, min(remaining, _FALLBACK_POLL_S))

    def _drive(self, steps: _Steps[_R]) -> _R:
        """Run a sequence of statements (see _Steps) on this client's connection."""
        try:
            statement = next(steps)
            while True:
                statement = steps.send(self._fetch(*statement))
        except StopIteration as finished:
            return t.cast("_R", finished.value)

    def _fetch(self, sql: str, params: t.Any = ()) -> list[t.Any]:
        """Run one statement (its own transaction) and return its rows."""
        if self._conn is None:
            self.connect()
        wait = _LockWait(self.queue)
        while True:
            try:
                with self._lock:
                    assert self._conn is not None
                    rows = self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                time.sleep(wait.pause(exc))
                continue
            wait.done()
            return rows


class _SyncWakeup:
    """_Wakeup for SyncQueue: threads wait on a Condition; one of them at a time reads
    the UDP socket that other processes send news to."""

    def __init__(self, client: SyncQueue) -> None:
        self._client = client
        self.place = client.queue._place
        self._condition = threading.Condition()
        self._generations = {"jobs": 0, "changes": 0}
        self._socket: t.Optional[socket.socket] = None
        self._reading = False
        self._wanted: set[str] = set()
        self._announcer = _Announcer()

    def generation(self, kind: str) -> int:
        return self._generations[kind]

    def wake_threadsafe(self, kind: str) -> None:
        with self._condition:
            self._generations[kind] += 1
            self._condition.notify_all()

    def want(self, kind: str) -> None:
        """Ask other processes to send news of ``kind`` here from now on."""
        with self._condition:
            if kind in self._wanted:
                return
            if self._socket is None:
                self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._socket.bind(("127.0.0.1", 0))
                _local_wakeups.add(self)
            self._client._fetch(*_register_wakeup(self._client.queue, kind, self._port))
            self._wanted.add(kind)

    @property
    def _port(self) -> int:
        assert self._socket is not None
        return int(self._socket.getsockname()[1])

    def wait(self, kind: str, generation: int, timeout: float) -> bool:
        """Wait until news of ``kind`` newer than ``generation``; whether it came."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._generations[kind] == generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if self._socket is None or self._reading:
                    self._condition.wait(remaining)
                    continue
                self._reading = True
                self._condition.release()
                try:
                    received = self._receive(self._socket, remaining)
                finally:
                    self._condition.acquire()
                    self._reading = False
                if received:
                    self._generations[received] += 1
                self._condition.notify_all()  # news, or another thread may read now
            return True

    @staticmethod
    def _receive(sock: socket.socket, timeout: float) -> t.Optional[str]:
        sock.settimeout(timeout)
        try:
            data = sock.recv(256)
        except OSError:  # timed out, or closed meanwhile
            return None
        kind = data.decode(errors="replace").partition("\0")[0]
        return kind if kind in ("jobs", "changes") else None

    def notify(self, kind: str) -> None:
        """Tell waiters in this process and in other processes about news."""
        _notify_local(self._client.queue, kind)
        with self._condition:
            self._announcer.send(kind, self._client.name)
            if self._announcer.stale():
                rows = self._client._fetch(*_Announcer.query(self._client.queue))
                self._announcer.send(kind, self._client.name, self._announcer.update(rows))

    def close(self) -> None:
        with self._condition:
            _local_wakeups.discard(self)
            if self._socket is not None:
                with contextlib.suppress(StorageError):
                    self._client._fetch(_SQL_UNREGISTER_WAKEUP, (self._client.name, self._port))
                self._socket.close()
                self._socket = None
            self._announcer.close()
            self._wanted.clear()


# =============================================================================
# Worker
# =============================================================================


@dataclasses.dataclass
class _Running:
    """A job this worker runs: the task running its function while it may be
    cancelled, and why it was cancelled ("abort", "timeout" or "stop")."""

    job: Job
    task: t.Optional[asyncio.Task[t.Any]] = None
    cancelled_for: t.Optional[str] = None
    abort_error: t.Optional[str] = None

    def cancel(self, reason: str) -> None:
        if self.task is not None and self.cancelled_for is None:
            self.cancelled_for = reason
            self.task.cancel()


class Worker:
    """Runs the jobs of one queue, ``concurrency`` at a time, plus cron and upkeep.

    Args:
        queue: the queue to work on.
        functions: callables (registered by ``__qualname__``) or ``(name, callable)``
            pairs; each is called as ``function(ctx, **job.kwargs)``, sync ones in a
            thread with the caller's contextvars.
        id: the worker's id (default: a new uuid).
        concurrency: jobs run at once.
        cron_jobs: CronJobs to enqueue on schedule (their functions are registered).
        cron_tz: the timezone cron expressions are read in.
        startup, shutdown, before_process, after_process: hooks taking ``ctx``; each
            one callable or a list, sync or async.
        timers: periods in seconds of ``schedule`` (1), ``worker_info`` (10),
            ``sweep`` (60) and ``abort`` (1).
        dequeue_timeout: seconds ``burst`` mode waits for a new job before stopping.
        burst: stop when the queue is empty (or after ``max_burst_jobs``).
        shutdown_grace_period_s: on stop, seconds running jobs may finish before they
            are cancelled and put back in the queue (default: cancel at once).
        cancellation_hard_deadline_s: seconds to wait for cancelled jobs to stop.
        metadata: shown in ``Queue.info()``.
        poll_interval: kept for SAQ compatibility (new jobs are noticed at once).

    Raises:
        ValueError: an invalid option, such as a cron expression or ``burst``
            without ``dequeue_timeout``.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(
        self,
        queue: Queue,
        functions: Iterable[t.Union[Function, tuple[str, Function]]],
        *,
        id: t.Optional[str] = None,
        concurrency: int = 10,
        cron_jobs: t.Optional[Iterable[CronJob]] = None,
        cron_tz: tzinfo = timezone.utc,
        startup: Hooks = None,
        shutdown: Hooks = None,
        before_process: Hooks = None,
        after_process: Hooks = None,
        timers: t.Optional[TimersDict] = None,
        dequeue_timeout: float = 0.0,
        burst: bool = False,
        max_burst_jobs: t.Optional[int] = None,
        shutdown_grace_period_s: t.Optional[float] = None,
        cancellation_hard_deadline_s: float = 1.0,
        metadata: t.Optional[dict[str, t.Any]] = None,
        poll_interval: float = 0.0,
    ) -> None:
        if not isinstance(queue, Queue):
            raise TypeError(f"Worker needs a saqlite Queue, got {queue!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if burst and not dequeue_timeout:
            raise ValueError("burst mode needs dequeue_timeout > 0: how long to wait for new jobs")
        self.queue = queue
        self.id = id or _new_key()
        self.concurrency = concurrency
        self.functions: dict[str, Function] = {}
        for item in functions:
            if isinstance(item, tuple):
                name, function = item
            else:
                name, function = _function_name(item), item
            self.functions[name] = function
        self.cron_jobs = list(cron_jobs or [])
        for cron_job in self.cron_jobs:
            if not isinstance(cron_job, CronJob):
                raise TypeError(f"cron_jobs must hold CronJob objects, got {cron_job!r}")
            for name in ("timeout", "heartbeat", "retries"):
                value = getattr(cron_job, name)
                if value is not None and value < 0:
                    raise ValueError(f"CronJob {name} must be >= 0, got {value!r}")
            self.functions.setdefault(_function_name(cron_job.function), cron_job.function)
        self.cron_tz = cron_tz
        self.startup = _hooks(startup)
        self.shutdown = _hooks(shutdown)
        self.before_process = _hooks(before_process)
        self.after_process = _hooks(after_process)
        self.timers: TimersDict = {"schedule": 1, "worker_info": 10, "sweep": 60, "abort": 1}
        self.timers.update(timers or {})
        for timer, period in self.timers.items():
            if not isinstance(period, (int, float)) or period <= 0:
                raise ValueError(f"timers[{timer!r}] must be seconds > 0, got {period!r}")
        self.dequeue_timeout = dequeue_timeout
        self.burst = burst
        self.max_burst_jobs = max_burst_jobs
        self.shutdown_grace_period_s = shutdown_grace_period_s
        self.cancellation_hard_deadline_s = cancellation_hard_deadline_s
        self.metadata = metadata
        self.poll_interval = poll_interval
        self.context: Context = {"worker": self, "queue": queue}
        self._running: dict[str, _Running] = {}
        self._slot_freed: t.Optional[asyncio.Event] = None
        self._stop_event: t.Optional[asyncio.Event] = None
        self._tasks: list[asyncio.Task[t.Any]] = []
        self._job_tasks: set[asyncio.Task[t.Any]] = set()
        self._claimed = 0
        self._cron_next: dict[str, float] = {}
        self._stopping: t.Optional[asyncio.Future[None]] = None

    def __repr__(self) -> str:
        return f"Worker<id={self.id!r}, queue={self.queue.name!r}>"

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        """Run until ``stop()``, SIGINT or SIGTERM (or, in burst mode, an empty queue)."""
        self._stop_event = asyncio.Event()
        self._stopping = None
        self._slot_freed = asyncio.Event()
        self._install_signal_handlers()
        try:
            await self.queue.connect()
            await _call_hooks(self.startup, self.context)
            await self.queue.worker_info(self.id, self.queue.name, self.metadata, self._info_ttl)
            self._tasks = [
                asyncio.create_task(self._every("worker_info", self._beat)),
                asyncio.create_task(self._every("sweep", self._sweep)),
                asyncio.create_task(self._every("abort", self.abort)),
            ]
            if self.cron_jobs:
                self._tasks.append(asyncio.create_task(self._every("schedule", self.schedule)))
            dispatcher = asyncio.create_task(self._dispatch())
            self._tasks.append(dispatcher)
            stop = asyncio.create_task(self._stop_event.wait())
            await asyncio.wait([dispatcher, stop], return_when=asyncio.FIRST_COMPLETED)
            if dispatcher.done() and not dispatcher.cancelled() and dispatcher.exception():
                raise t.cast(BaseException, dispatcher.exception())
            stop.cancel()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop: let running jobs finish for the grace period, then cancel them and put
        them back in the queue; run the shutdown hooks. Safe to call twice: every
        caller waits for the one stop to end."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()
        self._remove_signal_handlers()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._job_tasks and self.shutdown_grace_period_s:
            await asyncio.wait(set(self._job_tasks), timeout=self.shutdown_grace_period_s)
        for running in list(self._running.values()):
            running.cancel("stop")
        if self._job_tasks:
            await asyncio.wait(set(self._job_tasks), timeout=self.cancellation_hard_deadline_s + 5)
        try:
            await _call_hooks(self.shutdown, self.context)
        finally:
            with contextlib.suppress(StorageError, ValueError):
                await self.queue._forget_worker(self.id)
            await self.queue.disconnect()
            logger.info(
                "Worker %s stopped; the longest wait for the file's write lock was %.1f ms",
                self.id,
                self.queue.worst_lock_wait * 1000,
            )

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        event = self._stop_event
        assert event is not None
        for signum in self.SIGNALS:
            try:
                loop.add_signal_handler(signum, event.set)
            except (NotImplementedError, RuntimeError, ValueError):
                # Windows, or not the main thread: signal.signal where allowed.
                with contextlib.suppress(ValueError):
                    signal.signal(signum, lambda *_: loop.call_soon_threadsafe(event.set))

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self.SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)

    @property
    def _info_ttl(self) -> int:
        return int(max(self.timers["worker_info"] * 3, 30))

    async def _every(self, timer: str, action: Callable[[], Awaitable[t.Any]]) -> None:
        period = float(self.timers[timer])  # type: ignore[literal-required]
        while True:
            try:
                await action()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Worker %s: %s failed", self.id, timer)
            await asyncio.sleep(period)

    async def _beat(self) -> None:
        await self.queue.worker_info(self.id, self.queue.name, self.metadata, self._info_ttl)

    async def _sweep(self) -> None:
        swept = await self.queue.sweep(lock=math.ceil(self.timers["sweep"]))
        if swept:
            logger.info("Swept %d job(s)", len(swept))

    # -- running jobs --------------------------------------------------------

    async def _dispatch(self) -> None:
        """Claim as many due jobs as there are free slots, and start them."""
        assert self._slot_freed is not None
        while True:
            # Cleared before looking, so a job that ends during the claim below is seen.
            self._slot_freed.clear()
            free = self.concurrency - len(self._running)
            if self.max_burst_jobs is not None:
                free = min(free, self.max_burst_jobs - self._claimed)
                if free <= 0 and not self._running:
                    return
            if free <= 0:
                await self._wait_for_slot()
                continue
            timeout = self.dequeue_timeout if self.burst and not self._running else 0.0
            if self.burst and self._running:
                jobs = await self.queue._claim(free, self.id)
                if not jobs:
                    await self._wait_for_slot()
                    continue
            else:
                jobs = await self.queue._claim_waiting(free, self.id, timeout)
                if not jobs:
                    return  # burst: nothing came within dequeue_timeout
            self._claimed += len(jobs)
            for job in jobs:
                self._start_job(job)

    async def _wait_for_slot(self) -> None:
        assert self._slot_freed is not None
        await self._slot_freed.wait()
        await asyncio.sleep(0)  # let jobs that end together free their slots

    def _start_job(self, job: Job) -> None:
        running = _Running(job)
        self._running[job.key] = running
        task = asyncio.create_task(self._run(running))
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)

    async def process(self) -> bool:
        """Claim one job (waiting up to ``dequeue_timeout``, 0 = forever) and run it.

        Returns:
            Whether a job was run.
        """
        if not self._tasks:  # not started: register, so sweepers know this worker lives
            await self._beat()
        jobs = await self.queue._claim_waiting(1, self.id, self.dequeue_timeout)
        if not jobs:
            return False
        running = _Running(jobs[0])
        self._running[jobs[0].key] = running
        await self._run(running)
        return True

    async def _run(self, running: _Running) -> None:
        """Run one claimed job and store its outcome. Its slot is freed as soon as the
        function returns, so the next claim overlaps with this job's write."""
        job = running.job
        context: Context = {**self.context, "job": job}
        cancelled = False
        try:
            outcome, value = await self._execute(running, context)
        except asyncio.CancelledError:  # this task itself, not the job's, was cancelled
            outcome, value, cancelled = "cancelled", None, True
        self._running.pop(job.key, None)
        if self._slot_freed is not None:
            self._slot_freed.set()
        await self._store(job, outcome, value)
        if self.after_process:
            try:
                await _call_hooks(self.after_process, context)
            except Exception:
                logger.exception("after_process failed for %s", job.info())
        if cancelled:
            raise asyncio.CancelledError

    async def _execute(self, running: _Running, context: Context) -> tuple[str, t.Any]:
        """Call the job's function; its outcome as (kind, result or error)."""
        job = running.job
        if logger.isEnabledFor(logging.INFO):
            logger.info("Processing %s", job.info(logger.isEnabledFor(logging.DEBUG)))
        function = self.functions.get(job.function)
        if function is None:
            registered = ", ".join(sorted(self.functions)) or "none"
            return "failed", (
                f"No function named {job.function!r} is registered with worker {self.id} "
                f"(registered: {registered}). Is the worker configured with this function?"
            )
        # The function runs in this task, which abort, timeout and stop cancel (no task
        # of its own: that costs more than the rest of a small job's overhead).
        running.task = asyncio.current_task()
        timer = None
        if job.timeout:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(job.timeout, running.cancel, "timeout")
        try:
            if self.before_process:
                await _call_hooks(self.before_process, context)
            return "complete", await _call(function, context, job.kwargs or {})
        except asyncio.CancelledError:
            if running.cancelled_for is None:
                raise
            uncancel = getattr(running.task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
            if running.cancelled_for == "abort":
                return "aborted", running.abort_error
            if running.cancelled_for == "stop":
                return "cancelled", None
            timeout = asyncio.TimeoutError(
                f"{job.function} ran past its timeout of {job.timeout} s"
            )
            context["exception"] = timeout
            error = "".join(traceback.format_exception_only(type(timeout), timeout))
            return ("retry" if job.retryable else "failed"), error
        except Exception as exc:
            context["exception"] = exc
            if running.cancelled_for == "abort":
                return "aborted", running.abort_error
            return ("retry" if job.retryable else "failed"), traceback.format_exc()
        finally:
            running.task = None  # nothing may cancel this task after the function
            if timer is not None:
                timer.cancel()

    async def _store(self, job: Job, outcome: str, value: t.Any) -> None:
        """Write a job's outcome: finished, or back in the queue."""
        if outcome in ("retry", "cancelled"):
            error = value if outcome == "retry" else "cancelled"
            await self._settle(job, await self.queue._retry(job, error))
        elif outcome == "complete":
            await self._finish(job, Status.COMPLETE, result=value)
        else:
            status = Status.ABORTED if outcome == "aborted" else Status.FAILED
            await self._finish(job, status, error=value)

    async def _finish(
        self, job: Job, status: Status, *, result: t.Any = None, error: t.Optional[str] = None
    ) -> None:
        expected = _Expected.of(job)
        try:
            stored = await self.queue._finish(job, status, result, error)
        except TypeError as exc:  # the result cannot be serialised
            job.status = Status(expected.status)
            stored = await self.queue._finish(job, Status.FAILED, None, str(exc))
        await self._settle(job, stored)

    async def _settle(self, job: Job, stored: bool) -> None:
        """After a write that found the job changed: if it was aborted meanwhile, finish
        it ABORTED; if it was swept (re-queued or run elsewhere), leave it alone."""
        if stored:
            return
        current = await self.queue.job(job.key)
        if (
            current is not None
            and current.status == Status.ABORTING
            and current.worker_id == self.id
            and current.attempts == job.attempts
        ):
            await self.queue._finish(current, Status.ABORTED, None, current.error)
            job.replace(current)
        else:
            logger.warning(
                "Worker %s: %s changed while it ran (swept or finished elsewhere); "
                "its outcome here was not stored",
                self.id,
                job.info(),
            )

    async def abort(self, abort_threshold: float = 0.0) -> None:
        """Cancel the running jobs that were aborted through the queue."""
        if not self._running:
            return
        for key in await self.queue._aborting_keys(self.id):
            running = self._running.get(key)
            if running is None or running.task is None:
                continue  # not ours, or its function has returned
            if (running.job.duration("running") or 0) < abort_threshold * 1000:
                continue
            stored = await self.queue.job(key)
            running.abort_error = (stored.error if stored else None) or "aborted"
            running.job.status = Status.ABORTING
            running.cancel("abort")

    async def schedule(self) -> None:
        """Enqueue the next run of each cron job that is not scheduled yet."""
        for cron_job in self.cron_jobs:
            name = _function_name(cron_job.function)
            start = datetime.fromtimestamp(time.time(), self.cron_tz)
            next_run = croniter(cron_job.cron, start).get_next(float)
            if self._cron_next.get(name) == next_run:
                continue
            job = Job(
                name,
                kwargs=cron_job.kwargs,
                key=f"cron:{name}" if cron_job.unique else f"cron:{name}:{int(next_run)}",
                scheduled=int(next_run),
                **{field: getattr(cron_job, field)
                   for field in ("timeout", "heartbeat", "retries", "ttl")
                   if getattr(cron_job, field) is not None},
            )  # fmt: skip
            if not await self.queue.enqueue(job):
                pending = await self.queue.job(job.key)
                if pending is None or pending.scheduled != job.scheduled:
                    continue  # the previous run is still going: try again next time
            self._cron_next[name] = next_run

    async def upkeep(self) -> None:
        """Run each upkeep action once: cron, worker info, sweep and abort."""
        if self.cron_jobs:
            await self.schedule()
        await self._beat()
        await self._sweep()
        await self.abort()


def _hooks(hooks: Hooks) -> list[Hook]:
    if hooks is None:
        return []
    if callable(hooks):
        return [hooks]
    return list(hooks)


async def _call_hooks(hooks: list[Hook], context: Context) -> None:
    for hook in hooks:
        outcome = hook(context)
        if inspect.isawaitable(outcome):
            await outcome


async def _call(function: Function, context: Context, kwargs: dict[str, t.Any]) -> t.Any:
    """Call a job function: a coroutine function directly, others in a thread that
    sees this task's contextvars."""
    if inspect.iscoroutinefunction(function):
        return await function(context, **kwargs)
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, function, context, **kwargs)
    outcome = await loop.run_in_executor(None, call)
    if inspect.isawaitable(outcome):
        return await outcome
    return outcome


# =============================================================================
# Command line
# =============================================================================


def _import_settings(name: str) -> dict[str, t.Any]:
    """The settings dict that ``module.attribute`` names (called if callable)."""
    module_name, _, attribute = name.rpartition(".")
    if not module_name:
        raise ValueError(f"Settings {name!r} must be module.attribute, e.g. myapp.tasks.settings")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        settings = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"Module {module_name!r} has no attribute {attribute!r}") from None
    if callable(settings):
        settings = settings()
    if not isinstance(settings, dict):
        raise TypeError(
            f"Settings {name!r} must be a dict of Worker arguments (or a callable returning "
            f"one), got {type(settings).__name__}"
        )
    return dict(settings)


def _settings_queue(settings: dict[str, t.Any]) -> Queue:
    queue = settings.get("queue")
    if queue is None:
        return Queue(DEFAULT_PATH)
    if not isinstance(queue, Queue):
        raise TypeError(f"settings['queue'] must be a saqlite Queue, got {queue!r}")
    return queue


def _run_worker(settings_name: str, verbose: int) -> None:
    _configure_logging(verbose)
    settings = _import_settings(settings_name)
    queue = _settings_queue(settings)
    settings.pop("queue", None)
    worker = Worker(queue, **settings)
    asyncio.run(worker.start())


async def _check(queue: Queue) -> bool:
    try:
        info = await queue.info()
    finally:
        await queue.disconnect()
    return bool(info["workers"])


def _configure_logging(verbose: int) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: t.Optional[list[str]] = None) -> int:
    """The ``saqlite`` command: run workers from a settings dict, as ``saq`` does."""
    parser = argparse.ArgumentParser(
        prog="saqlite", description="Start saqlite workers from a settings dict."
    )
    parser.add_argument("settings", help="module.attribute naming a dict of Worker arguments")
    parser.add_argument("--workers", type=int, default=1, help="worker processes to start")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    parser.add_argument("-q", "--quiet", action="store_true", help="log only errors")
    parser.add_argument(
        "--check", action="store_true",
        help="exit 0 when a live worker is registered for the queue, else 1",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    verbose = -1 if args.quiet else args.verbose
    if args.check:
        settings = _import_settings(args.settings)
        return 0 if asyncio.run(_check(_settings_queue(settings))) else 1
    _import_settings(args.settings)  # fail here, not in every child, if it is wrong
    children = []
    context = multiprocessing.get_context("spawn")  # the same on every OS
    for _ in range(args.workers - 1):
        child = context.Process(target=_run_worker, args=(args.settings, verbose))
        child.start()
        children.append(child)
    try:
        _run_worker(args.settings, verbose)
    finally:
        for child in children:  # this process was told to stop: so are they
            if child.is_alive():
                child.terminate()
            child.join()
    return 0


if __name__ == "__main__":
    # `python -m saqlite` and `python saqlite.py` load this file as __main__; run the
    # copy that `import saqlite` gives the user's settings, so both see one Queue class.
    _name = __spec__.name if __spec__ else os.path.splitext(os.path.basename(__file__))[0]
    sys.exit(importlib.import_module(_name).main())

# Copyright (c) 2026 the saqlite authors
#
# Permission is hereby granted, free of charge, to any person obtaining a copy of this
# software and associated documentation files (the "Software"), to deal in the Software
# without restriction, including without limitation the rights to use, copy, modify,
# merge, publish, distribute, sublicense, and/or sell copies of the Software, and to
# permit persons to whom the Software is furnished to do so, subject to the following
# conditions: The above copyright notice and this permission notice shall be included
# in all copies or substantial portions of the Software. THE SOFTWARE IS PROVIDED "AS
# IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.
