# saqlite: SAQ's job queue on one SQLite file.
# Copyright (c) 2026 the saqlite authors. MIT licence:
#
# Permission is hereby granted, free of charge, to any person obtaining a copy of this
# software and associated documentation files (the "Software"), to deal in the Software
# without restriction, including without limitation the rights to use, copy, modify,
# merge, publish, distribute, sublicense, and/or sell copies of the Software, and to
# permit persons to whom the Software is furnished to do so, subject to the following
# conditions: The above copyright notice and this permission notice shall be included
# in all copies or substantial portions of the Software. THE SOFTWARE IS PROVIDED "AS
# IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.
"""saqlite: a durable async job queue in one Python file on one SQLite file.

It reproduces the API of SAQ (Simple Async Queue): ``Job``, ``CronJob``, ``Queue``,
``Worker`` and ``Status`` behave as in SAQ, on a SQLite database in WAL mode instead of
Redis or Postgres, so a program moves between the two by changing an import and a URL.

This module is a single file with two dependencies (aiosqlite and croniter). You may
copy it into your project (keep this notice); nothing in it depends on its own name.

Sections, in reading order (search for the banners):
    The public API, top down:
        Constants        defaults and tuning
        The schema       the tables, their migrations, and SQLite's clock (_SQL_NOW)
        Errors / Types   exceptions; the typed dicts and callables of the API
        Status, Job, CronJob
        Queue            the async client, pauses and limits too; each statement beside
                         the method that runs it
        Worker           claims and runs jobs, cron, sweeps
        step, sleep      resumable jobs: durable steps and sleeps
        SyncQueue        the same queue for code without an event loop
        Command line: running workers    ``python -m saqlite module.settings``
    The private machinery they run on:
        Storage steps    the statements of each operation, shared by Queue and SyncQueue
        The file         connection, lock waits, which processes are alive
        Group commit     _Batcher: many writes, one transaction
        Wake-ups         datagrams that tell waiters of new jobs, changes and aborts
        Running jobs     the worker's threads, hooks, storage outages
        The codec        a job to its row and back
        Running this file    ``python saqlite.py`` / ``python -m saqlite``: main()
    Then one marker line; after it only the operator tooling, which nothing above
    uses (cut the file there to vendor the core alone):
        Operator tooling: terminal commands   ``saqlite info|jobs|retry|...``, the
                                              figures (stats, /metrics, tail), export
        Operator tooling: the web page        the ASGI page, served by ThreadingHTTPServer
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import enum
import functools
import hmac
import html
import http
import http.server
import importlib
import inspect
import itertools
import json
import logging
import math
import multiprocessing
import os
import queue as queue_module
import random
import secrets
import select
import signal
import socket
import socketserver
import sqlite3
import sys
import threading
import time
import traceback
import typing as t
import urllib.parse
import uuid
import weakref
from datetime import datetime, timezone, tzinfo

import aiosqlite
from croniter import croniter

__version__ = "0.1.0"

__all__ = [
    "ACTIVE_STATUSES",
    "BeforeEnqueueType",
    "Context",
    "CountKind",
    "CronJob",
    "DEFAULT_PATH",
    "DEFAULT_SWEPT_JOB_ERROR",
    "DumpType",
    "EnqueueStreamError",
    "FlowRule",
    "Function",
    "InvalidUrlError",
    "Job",
    "JobError",
    "ListenCallback",
    "LoadType",
    "MIN_SQLITE_VERSION",
    "Queue",
    "QueueInfo",
    "SCHEMA_VERSION",
    "SYNCHRONOUS_MODES",
    "SettingsDict",
    "Status",
    "StorageError",
    "SyncQueue",
    "TERMINAL_STATUSES",
    "TimersDict",
    "UNSUCCESSFUL_TERMINAL_STATUSES",
    "Worker",
    "WorkerInfo",
    "WorkerStats",
    "exponential_backoff",
    "main",
    "now",
    "sleep",
    "step",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


# =============================================================================
# Constants
# =============================================================================

DEFAULT_PATH = "saqlite.db"
MIN_SQLITE_VERSION = (3, 35, 0)  # UPDATE ... RETURNING
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
#: The error of a job the sweeper retried or aborted (``Queue(swept_error_message=...)``).
DEFAULT_SWEPT_JOB_ERROR = "swept"

#: How long an idle waiter sleeps between checks of the file when no wake-up
#: datagram arrives (a datagram is a hint and can be lost).
_FALLBACK_POLL_S = 0.1
#: An idle waiter tries a claim at least this often, whatever it was told.
_FORCED_CLAIM_S = 1.0
#: A busy worker looks at its queue's pauses and limits at least this often (an idle
#: one whenever a claim takes nothing): to know which claim to run, and whose finish
#: to announce. (Limits hold whatever it knows: the claims read them.)
_FLOW_LOOK_S = 1.0
#: Longest pause between two tries of a write that found the file locked. Short
#: pauses keep lock waits fair between processes (SQLite's own busy handler sleeps
#: up to 100 ms and lets one process win every race).
_MAX_BUSY_PAUSE_S = 0.004
#: What a stopping worker allows its cancelled jobs for being written back as queued,
#: beyond cancellation_hard_deadline_s (more than a write needs, even waiting for a lock).
_WRITE_BACK_S = 5.0
#: A worker waiting out a storage error: first and longest pause between tries, and
#: how often it logs that it still waits.
_OUTAGE_PAUSE_S = 0.05
_OUTAGE_MAX_PAUSE_S = 2.0
_OUTAGE_LOG_S = 30.0
#: Rows per multi-row statement; keeps under SQLite's bound-parameter limit.
_ROWS_PER_STATEMENT = 500
#: Work on many rows (deleting expired jobs, a purge) or pages (giving them back to
#: the OS) goes in write transactions of about this long, each of as many rows or
#: pages as took that long lately (see _SliceSize), within these bounds...
_SLICE_TARGET_S = 0.005
_SLICE_ROWS = 500
_SLICE_MIN_ROWS = 10
_SLICE_MAX_PAGES = 1024
#: ... with this pause between them, longer than a lock waiter's (_MAX_BUSY_PAUSE_S),
#: so that other writers get the lock in between.
_SLICE_PAUSE_S = 0.005
#: Jobs per transaction of ``enqueue_stream``: a few ms of writing, and the most it holds.
_STREAM_SLICE = 1000
#: Largest duration a job option takes, in seconds (about 317 years): far enough,
#: and now + it stays a valid date and fits SQLite's 64-bit integers in ms.
_MAX_SECONDS = 1e10
#: Latest ``scheduled`` time: the end of the year 9999, the last that dates can show.
_MAX_EPOCH_S = 253402300799.0
#: How far ahead (s) a job waiting on dependencies has its run_at pushed: claims pass
#: it over as a job scheduled far ahead, through the index; its last dependency's end
#: brings it back (every real run_at, up to _MAX_EPOCH_S, is smaller).
_BLOCKED_S = 1e12


# =============================================================================
# The schema
# =============================================================================

# The columns of saqlite_jobs that a full write of a job sets, in order. The job
# itself is stored serialised in `data`, but for its result (in `result`); the columns
# beside it are what SQL filters on, and those that the claim, abort and finish
# statements change in place (_LOAD_COLUMNS) win over `data` on load.
_JOB_COLUMNS = (
    "queue", "key", "function", "status", "priority", "run_at", "group_key", "worker_id",
    "attempts", "queued", "started", "touched", "completed", "error", "ttl",
    "expire_at", "progress", "result", "data",
)  # fmt: skip
_LOAD_COLUMNS = (
    "data, status, attempts, worker_id, started, touched, completed, error, progress, result"
)

# Now, in epoch seconds, by SQLite's clock. Statements that compare times written by
# different processes read it in the statement itself rather than trust the clock of
# the process that runs them (works on SQLite >= 3.35, unlike unixepoch('subsec')).
_SQL_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_SQL_NOW_MS = f"CAST({_SQL_NOW} * 1000 AS INTEGER)"

# The figures of finished jobs (saqlite_stats, schema 8): the upper bounds, in seconds,
# of the histogram buckets of wait and run time (Prometheus' `le`; beyond the last:
# +Inf). Fixed by the schema (rows name buckets by index): changing them needs a migration.
_STATS_BOUNDS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
#: Minutes of figures kept apart (then folded into totals): a day and an hour, so that
#: a day's chart of whole hours has all its minutes.
_STATS_KEPT_MINUTES = 25 * 60
#: The columns of saqlite_stats that add up.
_STATS_COLUMNS = ("complete", "failed", "aborted", "wait_s", "run_s")


def _stats_bucket(seconds: str) -> str:
    """The index of the first of _STATS_BOUNDS at or above ``seconds`` (an SQL
    expression); past the last, len(_STATS_BOUNDS)."""
    found = " ".join(f"WHEN {seconds} <= {bound} THEN {i}" for i, bound in enumerate(_STATS_BOUNDS))
    return f"CASE {found} ELSE {len(_STATS_BOUNDS)} END"


def _stats_upsert(job: str, status: str, completed: str, source: str) -> str:
    """The statement that counts ended jobs in saqlite_stats: the rows of ``source``
    (a FROM clause, without FROM), with the job's columns under the name ``job`` and
    its new ``status`` and ``completed`` (epoch ms) given as expressions. A job that
    ran (``started`` set) adds its wait, from when it was due (``run_at``: enqueued,
    scheduled, retried or let through by its dependencies) to the start of its last
    attempt, and its run, from that start to its end."""
    ended = (
        f"SELECT {job}.queue AS queue, {job}.function AS function, {status} AS status,"
        f" CAST(COALESCE(NULLIF({completed}, 0), {_SQL_NOW_MS}) / 60000 AS INTEGER) AS minute,"
        f" {job}.started > 0 AS ran, MAX({job}.started / 1000.0 - {job}.run_at, 0) AS wait,"
        f" MAX({completed} - {job}.started, 0) / 1000.0 AS run FROM {source}"
    )
    return (
        "INSERT INTO saqlite_stats (queue, function, minute, wait_bucket, run_bucket,"
        f" {', '.join(_STATS_COLUMNS)}) SELECT queue, function, minute,"
        f" CASE WHEN ran THEN {_stats_bucket('wait')} ELSE -1 END,"
        f" CASE WHEN ran THEN {_stats_bucket('run')} ELSE -1 END,"
        " status = 'complete', status = 'failed', status = 'aborted', ran * wait, ran * run"
        f" FROM ({ended}) WHERE true"
        " ON CONFLICT (minute, queue, function, wait_bucket, run_bucket) DO UPDATE SET "
        + ", ".join(f"{c} = {c} + excluded.{c}" for c in _STATS_COLUMNS)
    )


_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # version 1
        """
        CREATE TABLE saqlite_jobs (
            queue     TEXT    NOT NULL,
            key       TEXT    NOT NULL,
            function  TEXT    NOT NULL,
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
            progress  REAL    NOT NULL DEFAULT 0,
            result    BLOB,  -- {"result": ...} through Queue.dump; NULL for None
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
    (  # version 2
        # How many times a job's worker died while running it (see Queue.sweep).
        "ALTER TABLE saqlite_jobs ADD COLUMN deaths INTEGER NOT NULL DEFAULT 0",
        # When the worker's process started, as the OS tells it (see _start_token):
        # with the pid, it tells a worker from a later process given the same pid.
        "ALTER TABLE saqlite_workers ADD COLUMN start_token TEXT",
    ),
    (  # version 3: costs that stay flat as the file grows
        # Jobs per queue and status, kept by triggers in the transaction of every
        # change (whoever writes: saqlite, the sqlite3 shell), so counts never scan.
        # Running jobs (active, aborting) are not kept: they are few, counted through
        # saqlite_jobs_ready, and a claim and a finish then fire one statement each.
        # (Status lists written out: a migration stays as it shipped.)
        """
        CREATE TABLE saqlite_counts (
            queue  TEXT    NOT NULL,
            status TEXT    NOT NULL,
            n      INTEGER NOT NULL,
            PRIMARY KEY (queue, status)
        ) WITHOUT ROWID
        """,
        """
        INSERT INTO saqlite_counts (queue, status, n)
        SELECT queue, status, COUNT(*) FROM saqlite_jobs
        WHERE status NOT IN ('active', 'aborting') GROUP BY queue, status
        """,
        """
        CREATE TRIGGER saqlite_jobs_count_insert AFTER INSERT ON saqlite_jobs
        WHEN new.status NOT IN ('active', 'aborting') BEGIN
            INSERT INTO saqlite_counts (queue, status, n) VALUES (new.queue, new.status, 1)
            ON CONFLICT (queue, status) DO UPDATE SET n = n + 1;
        END
        """,
        """
        CREATE TRIGGER saqlite_jobs_count_delete AFTER DELETE ON saqlite_jobs
        WHEN old.status NOT IN ('active', 'aborting') BEGIN
            UPDATE saqlite_counts SET n = n - 1 WHERE queue = old.queue AND status = old.status;
        END
        """,
        """
        CREATE TRIGGER saqlite_jobs_count_leave AFTER UPDATE OF queue, status ON saqlite_jobs
        WHEN (old.status IS NOT new.status OR old.queue IS NOT new.queue)
            AND old.status NOT IN ('active', 'aborting') BEGIN
            UPDATE saqlite_counts SET n = n - 1 WHERE queue = old.queue AND status = old.status;
        END
        """,
        """
        CREATE TRIGGER saqlite_jobs_count_enter AFTER UPDATE OF queue, status ON saqlite_jobs
        WHEN (old.status IS NOT new.status OR old.queue IS NOT new.queue)
            AND new.status NOT IN ('active', 'aborting') BEGIN
            INSERT INTO saqlite_counts (queue, status, n) VALUES (new.queue, new.status, 1)
            ON CONFLICT (queue, status) DO UPDATE SET n = n + 1;
        END
        """,
        # Waiting jobs by due time: the next one due, and how many are scheduled later,
        # without reading every waiting job.
        """
        CREATE INDEX saqlite_jobs_waiting ON saqlite_jobs (queue, status, run_at)
        WHERE status = 'queued'
        """,
        # Listings, newest first; those of failed and aborted jobs (few, among many
        # complete ones) apart, without a cost to a successful job.
        "CREATE INDEX saqlite_jobs_newest ON saqlite_jobs (queued)",
        """
        CREATE INDEX saqlite_jobs_unsuccessful ON saqlite_jobs (status, queued)
        WHERE status IN ('failed', 'aborted')
        """,
    ),
    (  # version 4: dependencies between jobs (see Job.depends_on)
        # (A migration records what was applied: it spells statuses out, where code
        # uses the status groups.)
        # 1 once a job names this one in its depends_on: only such a job's end is followed.
        "ALTER TABLE saqlite_jobs ADD COLUMN dependents INTEGER NOT NULL DEFAULT 0",
        # The dependency whose failure aborted this job: retrying it revives this job.
        "ALTER TABLE saqlite_jobs ADD COLUMN aborted_by TEXT",
        """
        CREATE INDEX saqlite_jobs_aborted_by ON saqlite_jobs (queue, aborted_by)
        WHERE aborted_by IS NOT NULL
        """,
        # Job `key` depends on job `depends_on` (done: that one ended as `key` needs).
        """
        CREATE TABLE saqlite_dependencies (
            queue        TEXT    NOT NULL,
            key          TEXT    NOT NULL,
            depends_on   TEXT    NOT NULL,
            allow_failed INTEGER NOT NULL,  -- the dependent runs even if this one fails
            done         INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (queue, key, depends_on)
        ) WITHOUT ROWID
        """,
        # (allow_failed in it too: without it, SQLite prefers to scan the queue's edges.)
        """
        CREATE INDEX saqlite_dependencies_dependents
        ON saqlite_dependencies (queue, depends_on, done, allow_failed)
        """,
        # How many of a job's dependencies have yet to end as it needs: a row of its own,
        # small, since a change to a job's row rewrites all of it (its data too, which
        # for a fan-in names every dependency).
        """
        CREATE TABLE saqlite_waiting (
            queue   TEXT    NOT NULL,
            key     TEXT    NOT NULL,
            waiting INTEGER NOT NULL,
            PRIMARY KEY (queue, key)
        ) WITHOUT ROWID
        """,
        # The last one ended: the job's run_at comes back (see _BLOCKED_S).
        f"""
        CREATE TRIGGER saqlite_waiting_over AFTER UPDATE OF waiting ON saqlite_waiting
        WHEN NEW.waiting = 0
        BEGIN
            UPDATE saqlite_jobs SET run_at = MAX(run_at - {_BLOCKED_S}, {_SQL_NOW})
            WHERE queue = NEW.queue AND key = NEW.key AND run_at >= {_BLOCKED_S};
        END
        """,
        # A dependency ends: each dependent it lets through counts one less to wait for,
        # in the transaction of that end. The cost is that job's own dependents; a job
        # nobody depends on stops at WHEN.
        # (Two triggers, COMPLETE and not, so that each query is plain equalities that
        # the index serves; an OR in them makes SQLite scan the queue's edges.)
        """
        CREATE TRIGGER saqlite_dependency_completed AFTER UPDATE OF status ON saqlite_jobs
        WHEN NEW.dependents AND NEW.status = 'complete'
            AND OLD.status NOT IN ('complete', 'failed', 'aborted')
        BEGIN
            UPDATE saqlite_waiting SET waiting = waiting - 1
            WHERE queue = NEW.queue AND key IN (
                SELECT key FROM saqlite_dependencies
                WHERE queue = NEW.queue AND depends_on = NEW.key AND done = 0);
            UPDATE saqlite_dependencies SET done = 1
            WHERE queue = NEW.queue AND depends_on = NEW.key AND done = 0;
        END
        """,
        """
        CREATE TRIGGER saqlite_dependency_ended AFTER UPDATE OF status ON saqlite_jobs
        WHEN NEW.dependents AND NEW.status IN ('failed', 'aborted')
            AND OLD.status NOT IN ('complete', 'failed', 'aborted')
        BEGIN
            UPDATE saqlite_waiting SET waiting = waiting - 1
            WHERE queue = NEW.queue AND key IN (
                SELECT key FROM saqlite_dependencies
                WHERE queue = NEW.queue AND depends_on = NEW.key AND done = 0
                  AND allow_failed = 1);
            UPDATE saqlite_dependencies SET done = 1
            WHERE queue = NEW.queue AND depends_on = NEW.key AND done = 0 AND allow_failed = 1;
        END
        """,
        # A dependency ends FAILED or ABORTED: its waiting dependents are aborted, and
        # theirs, transitively (unless allow_failed), naming the dependency they lost.
        # (A trigger does not fire itself again: the recursion is the query's; the one
        # above does fire for each job aborted here.)
        f"""
        CREATE TRIGGER saqlite_dependency_failed AFTER UPDATE OF status ON saqlite_jobs
        WHEN NEW.dependents AND NEW.status IN ('failed', 'aborted')
            AND OLD.status NOT IN ('complete', 'failed', 'aborted')
        BEGIN
            UPDATE saqlite_jobs SET status = 'aborted', error = lost.error,
                completed = {_SQL_NOW_MS}, aborted_by = NEW.key,
                expire_at = CASE WHEN ttl > 0 THEN {_SQL_NOW} + ttl END
            FROM (
                WITH RECURSIVE lost(key, error) AS (
                    SELECT key, printf('dependency %s ended %s', quote(NEW.key), NEW.status)
                    FROM saqlite_dependencies
                    WHERE queue = NEW.queue AND depends_on = NEW.key AND done = 0
                      AND allow_failed = 0
                    UNION
                    SELECT edge.key, printf('dependency %s ended aborted', quote(lost.key))
                    FROM lost JOIN saqlite_dependencies AS edge
                      ON edge.queue = NEW.queue AND edge.depends_on = lost.key
                    WHERE edge.done = 0 AND edge.allow_failed = 0
                )
                SELECT key, MIN(error) AS error FROM lost GROUP BY key
            ) AS lost
            WHERE saqlite_jobs.queue = NEW.queue AND saqlite_jobs.key = lost.key
              AND saqlite_jobs.status = 'queued' AND saqlite_jobs.run_at >= {_BLOCKED_S};
        END
        """,
        # The failed dependency is retried: the jobs its failure aborted wait again
        # (their count and run_at were left as they were).
        """
        CREATE TRIGGER saqlite_dependency_retried AFTER UPDATE OF status ON saqlite_jobs
        WHEN NEW.dependents AND NEW.status = 'queued' AND OLD.status IN ('failed', 'aborted')
        BEGIN
            UPDATE saqlite_jobs SET status = 'queued', error = NULL, completed = 0,
                expire_at = NULL, aborted_by = NULL
            WHERE queue = NEW.queue AND aborted_by = NEW.key AND status = 'aborted';
        END
        """,
        # A deleted job takes its own dependencies' edges along (not those of the jobs
        # that depend on it: they still name it).
        """
        CREATE TRIGGER saqlite_dependencies_deleted AFTER DELETE ON saqlite_jobs
        BEGIN
            DELETE FROM saqlite_dependencies WHERE queue = OLD.queue AND key = OLD.key;
            DELETE FROM saqlite_waiting WHERE queue = OLD.queue AND key = OLD.key;
        END
        """,
    ),
    (  # version 5: durable steps and sleeps (see step() and sleep())
        # The record of a job's durable steps and sleeps (see step() and sleep()).
        """
        CREATE TABLE saqlite_steps (
            queue    TEXT    NOT NULL,
            key      TEXT    NOT NULL,
            name     TEXT    NOT NULL,
            run      INTEGER NOT NULL,  -- Job.started of the run that wrote it (epoch ms)
            started  INTEGER NOT NULL,  -- epoch ms
            finished INTEGER,  -- epoch ms; NULL while it runs; a sleep's: when it ends
            outcome  TEXT    NOT NULL,  -- 'running', 'done', 'failed' or 'sleeping'
            result   BLOB,  -- {"result": ...} through Queue.dump, for 'done'
            error    TEXT,  -- what a failed step raised
            PRIMARY KEY (queue, key, name)
        ) WITHOUT ROWID
        """,
        # The record goes with its job: when the job is deleted, or when its key is
        # enqueued again after it finished (a new job: the upsert sets a new `queued`).
        """
        CREATE TRIGGER saqlite_steps_of_deleted_job AFTER DELETE ON saqlite_jobs
        BEGIN DELETE FROM saqlite_steps WHERE queue = OLD.queue AND key = OLD.key; END
        """,
        """
        CREATE TRIGGER saqlite_steps_of_replaced_job AFTER UPDATE OF queued ON saqlite_jobs
        WHEN OLD.queued IS NOT NEW.queued
        BEGIN DELETE FROM saqlite_steps WHERE queue = OLD.queue AND key = OLD.key; END
        """,
    ),
    (  # version 6: listings of one function's jobs, newest first, without a scan
        "CREATE INDEX saqlite_jobs_newest_function ON saqlite_jobs (function, queued)",
    ),
    (  # version 7: flow control (see Queue.pause and Queue.limit)
        # A queue's pauses and limits: per function, or for the whole queue (function '').
        # A row holds only what is set: clearing its last setting deletes it (below).
        """
        CREATE TABLE saqlite_flow (
            queue        TEXT    NOT NULL,
            function     TEXT    NOT NULL,  -- '' for the whole queue
            paused       INTEGER NOT NULL DEFAULT 0,
            paused_until REAL,     -- epoch s by SQLite's clock; NULL: until resumed
            rate         INTEGER,  -- at most `rate` starts ...
            period       REAL,     -- ... in any `period` seconds
            concurrency  INTEGER,  -- at most this many running at once
            per_group    INTEGER,  -- (whole queue) running at once per group_key; NULL: 1
            starts       INTEGER NOT NULL DEFAULT 0,  -- starts logged so far (their seq)
            PRIMARY KEY (queue, function)
        ) WITHOUT ROWID
        """,
        """
        CREATE TRIGGER saqlite_flow_cleared
        AFTER UPDATE OF paused, rate, concurrency, per_group ON saqlite_flow
        WHEN NOT NEW.paused AND NEW.rate IS NULL AND NEW.concurrency IS NULL
            AND NEW.per_group IS NULL
        BEGIN
            DELETE FROM saqlite_flow WHERE queue = NEW.queue AND function = NEW.function;
        END
        """,
        # The starts of rate-limited functions (and queues) within their period: the
        # claim allows a start while fewer than `rate` are newer than now - period.
        # Written by the claim's own statement (the trigger below), pruned as it goes.
        # Each has its number (seq, in order of start): how many a period holds is the
        # last number less the first in it, one index look-up however many it holds.
        """
        CREATE TABLE saqlite_flow_starts (
            queue    TEXT    NOT NULL,
            function TEXT    NOT NULL,  -- '' for the whole queue
            started  INTEGER NOT NULL,  -- epoch ms by SQLite's clock: the job's `started`
            seq      INTEGER NOT NULL   -- saqlite_flow.starts as it was logged
        )
        """,
        """
        CREATE INDEX saqlite_flow_starts_window
        ON saqlite_flow_starts (queue, function, started, seq)
        """,
        """
        CREATE TRIGGER saqlite_flow_started AFTER UPDATE OF status ON saqlite_jobs
        WHEN NEW.status = 'active' AND OLD.status = 'queued' AND EXISTS (
            SELECT 1 FROM saqlite_flow WHERE queue = NEW.queue
              AND function IN ('', NEW.function) AND rate IS NOT NULL)
        BEGIN
            UPDATE saqlite_flow SET starts = starts + 1
            WHERE queue = NEW.queue AND function IN ('', NEW.function) AND rate IS NOT NULL;
            INSERT INTO saqlite_flow_starts (queue, function, started, seq)
            SELECT queue, function, NEW.started, starts FROM saqlite_flow
            WHERE queue = NEW.queue AND function IN ('', NEW.function) AND rate IS NOT NULL;
            DELETE FROM saqlite_flow_starts WHERE rowid IN (
                SELECT start.rowid FROM saqlite_flow AS rule
                JOIN saqlite_flow_starts AS start
                  ON start.queue = rule.queue AND start.function = rule.function
                WHERE rule.queue = NEW.queue AND rule.function IN ('', NEW.function)
                  AND rule.rate IS NOT NULL
                  AND start.started <= NEW.started - rule.period * 1000);
        END
        """,
        # A rate's log goes with it.
        """
        CREATE TRIGGER saqlite_flow_rate_cleared AFTER UPDATE OF rate ON saqlite_flow
        WHEN NEW.rate IS NULL
        BEGIN
            DELETE FROM saqlite_flow_starts WHERE queue = NEW.queue AND function = NEW.function;
        END
        """,
        """
        CREATE TRIGGER saqlite_flow_deleted AFTER DELETE ON saqlite_flow
        BEGIN
            DELETE FROM saqlite_flow_starts WHERE queue = OLD.queue AND function = OLD.function;
        END
        """,
        # Waiting jobs by function: a claim under limits takes each function's next
        # jobs from here, so the jobs a limit holds back are never read past.
        """
        CREATE INDEX saqlite_jobs_function ON saqlite_jobs (queue, function, priority, run_at)
        WHERE status = 'queued'
        """,
    ),
    (  # version 8: the figures of finished jobs (saqlite stats, /metrics, the page)
        # The jobs that ended, by queue, function, minute of their end (epoch minute;
        # 0: the minutes the sweep folded in once a day old, see Queue.sweep), and the
        # histogram buckets (see _STATS_BOUNDS; -1: it never ran) of their wait and run
        # time: how many ended of each status, with their waits and runs summed. (A row
        # per pair of buckets: one small row to change per end; the few pairs seen in a
        # minute are summed per bucket when read.) Counted whoever ends a job, in the
        # transaction of that end, so the figures hold jobs deleted since (ttl) and never
        # go down; reading them costs the rows of a day, whatever the number of jobs.
        # (Counting starts at this version: jobs that ended before are not in it.)
        """
        CREATE TABLE saqlite_stats (
            queue       TEXT    NOT NULL,
            function    TEXT    NOT NULL,
            minute      INTEGER NOT NULL,
            wait_bucket INTEGER NOT NULL,
            run_bucket  INTEGER NOT NULL,
            complete    INTEGER NOT NULL,
            failed      INTEGER NOT NULL,
            aborted     INTEGER NOT NULL,
            wait_s      REAL    NOT NULL,
            run_s       REAL    NOT NULL,
            PRIMARY KEY (minute, queue, function, wait_bucket, run_bucket)
        ) WITHOUT ROWID
        """,
        # A job ends (a worker's finish, an abort, the sweep, a dependency's failure,
        # an edit in the sqlite3 shell). A job deleted as it ends (ttl -1) is counted
        # by the statement that deletes it (see _write_steps).
        f"""
        -- (Equalities, not IN lists: a trigger would build the list's table for each
        -- row it fires on, claims too, which shows in a worker's jobs per second.)
        CREATE TRIGGER saqlite_stats_ended AFTER UPDATE OF status ON saqlite_jobs
        WHEN (NEW.status = 'complete' OR NEW.status = 'failed' OR NEW.status = 'aborted')
            AND OLD.status <> 'complete' AND OLD.status <> 'failed' AND OLD.status <> 'aborted'
        BEGIN
            {_stats_upsert("NEW", "NEW.status", "NEW.completed", "(SELECT 1) AS one")};
        END
        """,
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


_SQL_CREATE_META = "CREATE TABLE IF NOT EXISTS saqlite_meta (name TEXT PRIMARY KEY, value)"
_SQL_SCHEMA_VERSION = "SELECT value FROM saqlite_meta WHERE name = 'schema_version'"
_SQL_SET_SCHEMA_VERSION = (
    "INSERT OR REPLACE INTO saqlite_meta (name, value) VALUES ('schema_version', ?)"
)


_SQL_AUTO_VACUUM = "PRAGMA auto_vacuum"
_SQL_SET_INCREMENTAL_VACUUM = "PRAGMA auto_vacuum = INCREMENTAL"
_INCREMENTAL = 2  # what PRAGMA auto_vacuum reads for INCREMENTAL


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StorageError(path, f"{path} cannot use WAL journal mode (got {mode!r})")
    # Pages freed by deletes go back to the OS in the sweep (incremental_vacuum). It
    # applies at once to a new file; an older one is rebuilt once below. (Set only
    # when not yet: setting it writes, and a full disk must not stop the file opening.)
    if conn.execute(_SQL_AUTO_VACUUM).fetchone()[0] != _INCREMENTAL:
        conn.execute(_SQL_SET_INCREMENTAL_VACUUM)
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
    if conn.execute(_SQL_AUTO_VACUUM).fetchone()[0] != _INCREMENTAL:
        _rebuild_on_open(conn, path)


#: An older file is rebuilt as it opens only up to this size: VACUUM holds the write
#: lock while it rewrites the file (about a second for this much on a laptop's disk).
_REBUILD_ON_OPEN_MAX_BYTES = 64 * 1024 * 1024


def _rebuild(conn: sqlite3.Connection) -> None:
    """Rewrite the file with VACUUM, its auto_vacuum INCREMENTAL from then on."""
    conn.execute(_SQL_SET_INCREMENTAL_VACUUM)
    conn.execute("VACUUM")


def _rebuild_on_open(conn: sqlite3.Connection, path: str) -> None:
    """Rebuild a file made before schema 3 (auto_vacuum off) with VACUUM, so that its
    free space can go back to the OS; at once when it is small. A larger one works as it
    is (its free pages are reused) until ``saqlite vacuum FILE`` rebuilds it; a rebuild
    that can't run now (another writer, a full disk: it needs room for a copy) is tried
    again at the next open. (Checked at each open, not by schema version, for that.)"""
    size = os.path.getsize(path)
    if size > _REBUILD_ON_OPEN_MAX_BYTES:
        logger.warning(
            "%s was made by an older saqlite: its free space is reused but not given back "
            "to the OS until it is rebuilt once; run `saqlite vacuum %s` when a pause of "
            "about a second per %d MiB suits its writers",
            path,
            path,
            _REBUILD_ON_OPEN_MAX_BYTES // 2**20,
        )
        return
    try:
        _rebuild(conn)
    except sqlite3.Error as exc:
        logger.warning(
            "Could not rebuild %s so that its space can be given back (%s): it works as "
            "it is, and saqlite tries again when it next opens it",
            path,
            exc,
        )


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


class EnqueueStreamError(Exception):
    """``enqueue_stream`` stopped at a job it could not store; the jobs before that
    job's slice are stored, the rest are not.

    Attributes:
        stored: how many jobs were stored before it (as the call would have returned).
        done: how many items were read and dealt with (stored, or their key already
            waiting or running) before it: go on with the items from there.
    """

    def __init__(self, stored: int, done: int, where: str, cause: BaseException) -> None:
        super().__init__(
            f"enqueue_stream stopped at {where}: {type(cause).__name__}: {cause}. "
            f"{stored} job(s) were stored before it (items 0 to {done - 1} dealt with; "
            f"none from item {done} on). Fix the item and run again from item {done}, "
            "or with the same keys (jobs still waiting are not stored twice)"
        )
        self.stored = stored
        self.done = done


class InvalidUrlError(ValueError):
    """``Queue.from_url`` or ``SyncQueue.from_url`` was given a URL it cannot open."""


class _OpsError(Exception):
    """A command cannot do what it was asked; the message says why and what to do.

    Args:
        code: the exit code: 2 a usage or settings error, 1 a job missing.
    """

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# =============================================================================
# Types
# =============================================================================

if t.TYPE_CHECKING:
    from collections.abc import (
        AsyncIterable,
        AsyncIterator,
        Awaitable,
        Callable,
        Iterable,
        Sequence,
    )

    from typing_extensions import TypeAlias, Unpack

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
    dependencies: dict[str, t.Any]  # saqlite only: each dependency's key: its result


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


class FlowRule(t.TypedDict):
    """saqlite only: a pause or limits of a queue (``function`` None) or of one of its
    functions, with their current use (see ``Queue.pause``, ``Queue.limit``)."""

    function: t.Optional[str]
    paused: bool
    paused_until: t.Optional[float]  # epoch s, while paused until a time
    rate: t.Optional[str]  # "60/m": at most 60 starts in any 60 s
    concurrency: t.Optional[int]
    per_group: t.Optional[int]  # whole queue: running at once per group_key
    running: int  # jobs of the function (or queue) running now
    started: t.Optional[int]  # starts within the rate's last period
    busiest_group: t.Optional[int]  # with per_group: most running in one group_key


class _QueueCounts(t.TypedDict):
    """SAQ's fields of ``QueueInfo``."""

    workers: dict[str, WorkerInfo]
    name: str
    queued: int
    active: int
    scheduled: int
    jobs: list[dict[str, t.Any]]


class QueueInfo(_QueueCounts, total=False):
    """What ``Queue.info()`` returns; ``flow`` (saqlite only) while the queue has a
    pause or a limit."""

    flow: list[FlowRule]


class _QueueOptions(t.TypedDict, total=False):
    """The keyword options a ``SyncQueue`` passes on to its ``Queue`` twin."""

    synchronous: str
    lock_timeout: float
    priorities: t.Optional[tuple[int, int]]


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


#: The status groups, each defined once for the Python and the SQL (see _sql_list).
#: A waiting job is QUEUED (due or scheduled); a running one is claimed by a worker
#: (ABORTING: told to stop); a finished one is terminal.
_RUNNING_STATUSES = (Status.ACTIVE, Status.ABORTING)
_FINISHED_STATUSES = (Status.COMPLETE, Status.FAILED, Status.ABORTED)
ACTIVE_STATUSES = frozenset({Status.NEW, Status.QUEUED, Status.ACTIVE})
TERMINAL_STATUSES = frozenset(_FINISHED_STATUSES)
_UNSUCCESSFUL_STATUSES = (Status.FAILED, Status.ABORTED)
UNSUCCESSFUL_TERMINAL_STATUSES = frozenset(_UNSUCCESSFUL_STATUSES)


def _sql_list(statuses: tuple[Status, ...]) -> str:
    """A status group as an SQL list, e.g. ``('active', 'aborting')``: rendered once,
    when a statement is built, so a statement costs no more than with the literal."""
    return "(" + ", ".join(f"'{status.value}'" for status in statuses) + ")"


_RUNNING_SQL = _sql_list(_RUNNING_STATUSES)
_FINISHED_SQL = _sql_list(_FINISHED_STATUSES)
_UNSUCCESSFUL_SQL = _sql_list(_UNSUCCESSFUL_STATUSES)


def now() -> int:
    """The current time in epoch milliseconds, the unit of Job's time fields."""
    return int(time.time() * 1000)


def _seconds(ms: float) -> float:
    return ms / 1000


@functools.cache
def _node() -> int:
    return uuid.getnode()


def _stuck_at(job: Job, current: int) -> bool:
    """Whether a job is running and past its timeout or heartbeat at ``current`` (ms)."""
    if job.status not in _RUNNING_STATUSES:
        return False
    return bool(
        (job.timeout and _seconds(current - job.started) > job.timeout)
        or (job.heartbeat and _seconds(current - job.touched) > job.heartbeat)
    )


def exponential_backoff(
    attempts: int,
    base_delay: float,
    max_delay: t.Optional[float] = None,
    jitter: bool = True,
) -> float:
    """Seconds to wait before a retry: ``base_delay * 2 ** (attempts - 1)``, at most
    ``max_delay`` (None = no limit), times a random factor in [0, 1) with ``jitter``.
    As SAQ's ``saq.utils.exponential_backoff``; ``Job.next_retry_delay`` calls it."""
    if max_delay is None:
        max_delay = float("inf")
    backoff = min(max_delay, base_delay * float(2 ** max(attempts - 1, 0)))
    if jitter:
        backoff = backoff * random.random()
    return backoff


def _new_key() -> str:
    """A job key: a uuid1 as in SAQ, made in Python with the node given, which is
    several times faster than the C call behind a bare uuid1() (a lock on a clock file)."""
    return str(uuid.uuid1(_node()))


@dataclasses.dataclass(eq=False)
class Job:
    """A call of a registered function, and its state in a queue.

    Times ``queued``, ``started``, ``touched`` and ``completed`` are epoch milliseconds;
    ``scheduled`` is epoch seconds (0 = now); ``timeout``, ``heartbeat`` and ``ttl`` are
    seconds. Jobs compare equal when their keys are equal. ``depends_on`` and
    ``allow_failed_dependencies`` are saqlite's own, after SAQ's fields.
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
    meta: dict[t.Any, t.Any] = dataclasses.field(default_factory=dict)
    worker_id: t.Optional[str] = None
    # saqlite only (SAQ's Job has no such fields): the jobs or keys of this queue that
    # must end COMPLETE before this job runs, and whether it runs anyway when one of
    # them ends FAILED or ABORTED (else it is aborted, naming that dependency).
    depends_on: Sequence[t.Union[str, Job]] = dataclasses.field(default_factory=list)
    allow_failed_dependencies: bool = False

    def __post_init__(self) -> None:
        self.status = Status(self.status)
        #: Set by the worker running this object: its writes are then guarded.
        self._lease: t.Optional[_Running] = None

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
        """The fields that differ from their defaults (``queue`` as its name,
        ``depends_on`` as keys)."""
        values = self.__dict__  # a hot path: the worker stores every job it finishes
        result = {name: values[name] for name, default in _JOB_DEFAULTS if values[name] != default}
        if "queue" in result:
            result["queue"] = result["queue"].name
        if not self.meta:
            result.pop("meta", None)
        if self.depends_on:
            result["depends_on"] = _dependency_keys(self)
        else:
            result.pop("depends_on", None)
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
        return _stuck_at(self, now())

    @property
    def retryable(self) -> bool:
        """Whether a failure now would be retried: ``retries > attempts``."""
        return self.retries > self.attempts

    def next_retry_delay(self) -> float:
        """Seconds to wait before the next attempt, with backoff and jitter if asked."""
        if self.retry_backoff is False:
            return self.retry_delay
        max_delay = None if self.retry_backoff is True else self.retry_backoff
        # Looked up in the module at each call, so a test may patch it as in SAQ.
        return exponential_backoff(
            attempts=self.attempts, base_delay=self.retry_delay, max_delay=max_delay, jitter=True
        )

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


def _dependency_keys(job: Job) -> list[str]:
    """The keys of a job's dependencies (Jobs given as such stand for their key)."""
    return [
        dependency if isinstance(dependency, str) else dependency.key
        for dependency in job.depends_on
    ]


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
        try:
            croniter(self.cron, time.time()).get_next(float)
        except (ValueError, OverflowError) as exc:  # CroniterBadDateError is a ValueError
            raise ValueError(
                f"Cron expression {self.cron!r} for {_function_name(self.function)} never "
                f"fires ({exc}): check its day and month (e.g. there is no 30 February)"
            ) from exc


def _function_name(function: Function) -> str:
    return str(getattr(function, "__qualname__", None) or getattr(function, "__name__", function))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_range(owner: str, name: str, value: object, limit: float, what: str) -> None:
    """A number from 0 to ``limit``: NaN, infinities and the like can't be stored or
    compared, so they are refused where they are given."""
    if not _is_number(value) or not 0 <= t.cast(float, value) <= limit:
        raise ValueError(f"{owner} {name} must be {what} from 0 to {limit:.0f}, got {value!r}")


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"Job {name} must be a string, got {type(value).__name__} {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"Job {name} {value!r} is not valid text ({exc.reason} at index {exc.start}): "
            "SQLite stores UTF-8 only"
        ) from exc


#: The numeric options of a job: name, upper bound, and what they are, for errors.
_JOB_RANGES = (
    ("timeout", _MAX_SECONDS, "a number of seconds"),
    ("heartbeat", _MAX_SECONDS, "a number of seconds"),
    ("retry_delay", _MAX_SECONDS, "a number of seconds"),
    ("retries", _MAX_SECONDS, "a number"),
    ("scheduled", _MAX_EPOCH_S, "an epoch time in seconds (0 = now)"),
)
_INT64 = (-(2**63), 2**63 - 1)
_PLAIN_NUMBERS = frozenset({int, float})


def _check_job_options(job: Job) -> None:
    """Refuse, naming the option, the values of a job that could not be stored or run."""
    values = job.__dict__
    for name, limit, what in _JOB_RANGES:
        value = values[name]
        if type(value) not in _PLAIN_NUMBERS or not 0 <= value <= limit:  # NaN too
            _check_range("Job", name, value, limit, what)  # int and float subclasses pass
    ttl = job.ttl
    if not (isinstance(ttl, int) and _is_number(ttl) and -1 <= ttl <= _MAX_SECONDS):
        raise ValueError(
            f"Job ttl must be -1 (delete at once), 0 (keep) or whole seconds up to "
            f"{_MAX_SECONDS:.0f}, got {ttl!r}"
        )
    backoff = job.retry_backoff
    if backoff is not True and backoff is not False:
        what = "True, False or the longest delay in seconds"
        _check_range("Job", "retry_backoff", backoff, _MAX_SECONDS, what)
    progress = job.progress
    if not (_is_number(progress) and -math.inf < progress < math.inf):
        raise ValueError(f"Job progress must be a finite number, got {progress!r}")
    priority = job.priority
    if not (isinstance(priority, int) and _is_number(priority)):
        raise ValueError(f"Job priority must be an int, got {priority!r}")
    if not _INT64[0] <= priority <= _INT64[1]:
        raise ValueError(
            f"Job priority must fit in 64 bits (-2**63 to 2**63 - 1), got {priority!r}"
        )
    for name in ("function", "key", "group_key"):
        text = values[name]
        if not (type(text) is str and text.isascii()) and (text is not None or name != "group_key"):
            _check_text(name, text)  # non-ASCII text, or not text


def _check_dependencies(job: Job, queue: str) -> None:
    """Refuse, naming the problem, a ``depends_on`` that is not a list of Jobs or keys
    of the job's own queue, or that names the job itself; keep its keys, in order."""
    given = job.depends_on
    if not isinstance(given, (list, tuple)):
        raise ValueError(
            f"Job depends_on must be a list of Jobs or job keys, got {type(given).__name__} "
            f"{given!r}"
        )
    if job.allow_failed_dependencies not in (True, False):
        raise ValueError(
            "Job allow_failed_dependencies must be True or False, got "
            f"{job.allow_failed_dependencies!r}"
        )
    keys: dict[str, None] = {}
    for index, given_one in enumerate(given):
        if isinstance(given_one, Job):
            other = given_one.queue.name if given_one.queue is not None else queue
            if other != queue:
                raise ValueError(
                    f"Job depends_on[{index}] is job {given_one.key!r} of queue {other!r}: "
                    f"a job can depend only on jobs of its own queue ({queue!r})"
                )
            key = given_one.key
        elif isinstance(given_one, str) and given_one:
            key = given_one
        else:
            raise ValueError(
                f"Job depends_on[{index}] must be a Job or a job key, got "
                f"{type(given_one).__name__} {given_one!r}"
            )
        _check_text(f"depends_on[{index}]", key)
        if key == job.key:
            raise ValueError(f"Job {job.key!r} depends on itself: remove it from its depends_on")
        keys[key] = None
    job.depends_on = [key for key in keys]


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
        priorities: ``(low, high)``: claim only jobs whose priority is in this range,
            both ends included, as SAQ's SQL queues do (default: every priority).
        swept_error_message: the error of a job the sweeper retries or aborts
            (default ``"swept"``, as in SAQ).
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
        priorities: t.Optional[tuple[int, int]] = None,
        swept_error_message: t.Optional[str] = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Queue name must be a non-empty string, got {name!r}")
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(
                f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, got {synchronous!r}"
            )
        _check_range("Queue", "lock_timeout", lock_timeout, _MAX_SECONDS, "a number of seconds")
        self.path = os.fspath(path)
        self.name = name
        self._place = (os.path.abspath(self.path), name)  # which queue, for wake-ups
        self.synchronous = synchronous.upper()
        self.lock_timeout = lock_timeout
        self.priorities = _check_priorities(priorities)
        self._codec = _Codec(self, dump, load)
        self._conn: t.Optional[aiosqlite.Connection] = None
        self._connect_lock: t.Optional[asyncio.Lock] = None
        # The task whose transaction is open on the connection, and what ends it (_atomic).
        self._owner: t.Optional[asyncio.Future[t.Any]] = None
        self._unowned: t.Optional[asyncio.Future[None]] = None
        self._before_enqueues: dict[int, BeforeEnqueueType] = {}
        self._inserts = _Batcher(self._insert_rows)
        self._writes = _Batcher(self._write_rows)
        self._result_reads = _Batcher(self._read_results)
        self._step_writes = _Batcher(self._write_step_rows)  # see step(): no job changes
        self._wakeup = _Wakeup(self)
        # Whether the file had pauses or limits for this queue when last looked at
        # (which claim to run: see Queue._claim), the functions with a concurrency
        # limit ('': the whole queue; a finish of theirs wakes claimers), and when.
        self._flow = False
        self._capped: frozenset[str] = frozenset()
        self._flow_seen = -math.inf
        self.worst_lock_wait = 0.0  # seconds: the longest a statement waited for the file
        self.started = now()
        self.complete = 0
        self.failed = 0
        self.retried = 0
        self.aborted = 0
        self._swept_error_message = swept_error_message or DEFAULT_SWEPT_JOB_ERROR

    def __repr__(self) -> str:
        return f"Queue<path={self.path!r}, name={self.name!r}>"

    @property
    def swept_error_message(self) -> str:
        """The error of a job the sweeper retries or aborts."""
        return self._swept_error_message

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running event loop (as in SAQ)."""
        return asyncio.get_running_loop()

    @classmethod
    def from_url(cls, url: str, **kwargs: t.Any) -> Queue:
        """A queue from ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.

        Keyword arguments go to ``Queue()`` (``name``, ``dump``, ``synchronous`` ...).

        Raises:
            InvalidUrlError: for another URL (``redis://`` and ``postgres://`` are SAQ's).
        """
        prefix = "sqlite:///"
        if not url.startswith(prefix) or len(url) == len(prefix):
            raise InvalidUrlError(
                f"Unsupported queue URL {url!r}: use sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db (redis:// and postgres:// URLs are for SAQ's "
                "Queue.from_url; `saqlite export` moves jobs there)"
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
            # A queue nobody disconnected (say, used again after Worker.stop) must not keep
            # the process from exiting: its thread is a daemon. Every statement commits
            # on its own, so being stopped at exit is no worse than a crash: nothing is
            # half-written. (aiosqlite before 0.20 is itself the thread.)
            thread = getattr(conn, "_thread", conn)
            if isinstance(thread, threading.Thread):
                thread.daemon = True
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
        await self._result_reads.drain()
        await self._step_writes.drain()
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
                set them; the rest are the function's kwargs. ``depends_on=[job, "key"]``
                (saqlite only) stores the job at once and runs it once those jobs of
                this queue have all ended COMPLETE (see README "Pipelines").

        Returns:
            The job, or None when a job with the same key is already waiting or running.

        Raises:
            ValueError: the job belongs to another queue, or an option is invalid (for
                ``depends_on``: a key not in the queue, a failed dependency, a cycle).
            TypeError: the job cannot be serialised (e.g. a kwarg JSON cannot encode).
        """
        job = self._codec.prepare(job_or_func, kwargs)
        await self._before_enqueue(job)
        if job.depends_on:  # stored with its links, in one transaction
            inserted = (await self._insert_all([job]))[0]
        else:
            inserted = await self._inserts.submit(self._codec.row(job))
        if not inserted:
            return None
        if logger.isEnabledFor(logging.INFO):
            logger.info("Enqueuing %s", job.info(logger.isEnabledFor(logging.DEBUG)))
        return job

    async def enqueue_many(
        self, jobs: Iterable[t.Union[Job, str]], **kwargs: t.Any
    ) -> list[t.Optional[Job]]:
        """Store many jobs in one transaction: all of them, or (on any error, or if the
        process dies meanwhile) none. Much faster than a loop of enqueue.

        Args:
            jobs: Jobs, or function names (then ``kwargs`` apply to each, as in enqueue).

        Returns:
            Each job, or None where its key was already waiting or running, in order.

        Raises:
            ValueError, TypeError: as enqueue, for the first bad job; none is stored.
        """
        prepared = [self._codec.prepare(job, dict(kwargs)) for job in jobs]
        for job in prepared:
            await self._before_enqueue(job)
        inserted = await self._insert_all(prepared)
        return [job if ok else None for job, ok in zip(prepared, inserted)]

    async def enqueue_stream(
        self,
        jobs: t.Union[Iterable[t.Union[Job, str]], AsyncIterable[t.Union[Job, str]]],
        **kwargs: t.Any,
    ) -> int:
        """saqlite only: store jobs read lazily from any iterable, sync or async, in
        short transactions of up to 1,000, holding no more than one slice in memory,
        for a number of jobs too big for ``enqueue_many``.

        Args:
            jobs: Jobs, or function names (then ``kwargs`` apply to each, as in enqueue).

        Returns:
            How many jobs were stored; a job whose key is already waiting or running is
            not stored and not counted (as enqueue_many gives None for it).

        Raises:
            EnqueueStreamError: a job could not be stored (its ``__cause__`` says why:
                ValueError, TypeError as enqueue). The slices before it are stored; it
                says how many, and from which item to go on.
        """
        stored = done = 0
        async for chunk in _stream_slices(jobs):
            prepared = _prepare_stream_slice(self._codec, chunk, kwargs, stored, done)
            try:
                for job in prepared:
                    await self._before_enqueue(job)
                stored += sum(await self._insert_all(prepared))
            except Exception as exc:
                raise EnqueueStreamError(stored, done, _slice_items(done, chunk), exc) from exc
            done += len(chunk)
        return stored

    async def _before_enqueue(self, job: Job) -> None:
        for callback in list(self._before_enqueues.values()):
            await callback(job)

    # -- reading -------------------------------------------------------------

    async def job(self, job_key: str) -> t.Optional[Job]:
        """The job with this key, or None."""
        return (await self.jobs([job_key]))[0]

    async def jobs(self, job_keys: Iterable[str]) -> list[t.Optional[Job]]:
        """The jobs with these keys, in the order asked (None where missing)."""
        return await self._drive(_jobs_steps(self, list(job_keys)))

    # NOT INDEXED: in rowid order, each batch starts where the last one stopped (by an
    # index, each would find and sort every job of those statuses).
    _SQL_ITER_JOBS = f"""
    SELECT rowid, {_LOAD_COLUMNS} FROM saqlite_jobs NOT INDEXED
    WHERE queue = ? AND rowid > ? AND status IN ({{statuses}})
    ORDER BY rowid LIMIT ?
    """

    async def _dependency_results(self, job: Job) -> dict[str, t.Any]:
        """Each of a job's dependencies' key: its result (None if it is gone). The
        jobs a worker starts together read them in one statement."""
        return await self._result_reads.submit(_dependency_keys(job))

    async def _read_results(
        self, wanted: list[list[str]]
    ) -> list[t.Union[dict[str, t.Any], Exception]]:
        keys = list({key: None for keys in wanted for key in keys})
        found = await self._drive(_results_steps(self, keys))
        return [{key: found[key] for key in keys} for keys in wanted]

    async def iter_jobs(
        self, statuses: Iterable[Status] = tuple(Status), batch_size: int = 100
    ) -> AsyncIterator[Job]:
        """Every job with one of these statuses, oldest first, read a batch at a time.

        No read transaction stays open between batches, so iterating slowly does not
        stop the file from being checkpointed.
        """
        names = [Status(s).value for s in statuses]
        sql = self._SQL_ITER_JOBS.format(statuses=_placeholders(len(names)))
        last = 0
        while True:
            rows = await self._fetch(sql, (self.name, last, *names, batch_size))
            for row in rows:
                yield self._codec.job(row[1:])
            if len(rows) < batch_size:
                return
            last = rows[-1][0]

    async def count(self, kind: CountKind) -> int:
        """How many jobs: ``"queued"`` (due now), ``"active"`` or ``"incomplete"``. As in
        SAQ, a job being aborted (ABORTING) is neither active nor incomplete.

        Raises:
            ValueError: for another kind.
        """
        return await self._drive(_count_steps(self, kind))

    async def info(self, jobs: bool = False, offset: int = 0, limit: int = 10) -> QueueInfo:
        """Live workers (within their ``worker_info`` ttl), counts as ``count`` gives
        them, and (with ``jobs``) the unfinished jobs, as in SAQ.

        Args:
            jobs: include job dicts: the running ones, then the waiting ones (scheduled
                included) in the order they will be claimed.
            offset: skip this many jobs.
            limit: at most this many jobs.
        """
        return await self._drive(_info_steps(self, jobs, offset, limit))

    # -- flow control (saqlite only) -----------------------------------------

    async def pause(
        self,
        function: t.Optional[str] = None,
        *,
        until: t.Union[datetime, float, None] = None,
        for_s: t.Optional[float] = None,
    ) -> None:
        """saqlite only: stop starting jobs of the queue, or of one function in it,
        until ``resume`` (or until a time). Their jobs stay queued; running jobs finish.
        Workers in every process obey at their next claim (they are woken now); the
        pause lives in the file, so it outlasts restarts.

        Args:
            function: a job function's name; None pauses the whole queue.
            until: end the pause at this time (a datetime, or epoch seconds).
            for_s: end the pause this many seconds from now.

        Raises:
            ValueError: a bad function name, both ``until`` and ``for_s``, or a time
                that has passed.
        """
        await self._drive(_pause_steps(self.name, function, until, for_s))
        await self._wakeup.notify("jobs")

    async def resume(self, function: t.Optional[str] = None) -> None:
        """saqlite only: end the pause of the queue (None), or of one function: its
        jobs are claimed again at once. A function paused on its own stays paused
        when the queue resumes."""
        await self._drive(_resume_steps(self.name, function))
        await self._wakeup.notify("jobs")

    async def limit(
        self,
        function: t.Optional[str] = None,
        *,
        rate: t.Union[str, tuple[int, float], None] = None,
        concurrency: t.Optional[int] = None,
        per_group: t.Optional[int] = None,
        clear: bool = False,
    ) -> None:
        """saqlite only: limit how jobs of one function (or of the whole queue, None)
        start, exactly, across every worker of every process. Limits given are set,
        the others kept; they live in the file.

        Args:
            rate: at most N starts in any window of a period: ``"60/m"``, ``"100/s"``,
                ``"5/10s"``, ``"1000/h"``, ``"2/d"``, or ``(N, seconds)``.
            concurrency: at most this many running at once.
            per_group: (whole queue only) at most this many jobs of one ``group_key``
                running at once (1 without it).
            clear: remove the function's (or queue's) limits first.

        Raises:
            ValueError: a bad rate or count (they are whole numbers from 1), or
                ``per_group`` with a function.
        """
        params = _limit_params(
            self.name,
            function,
            rate=rate,
            concurrency=concurrency,
            per_group=per_group,
            clear=clear,
        )
        await self._atomic(_limit_steps(params))
        await self._wakeup.notify("jobs")

    async def flow(self) -> list[FlowRule]:
        """saqlite only: the pauses and limits in force on this queue, with their use
        (also in ``info()["flow"]``)."""
        return await self._drive(_flow_steps(self.name))

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
            The results in order; None for a job deleted on finishing (``ttl=-1``).

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
        await self._insert_all(mapping.jobs)
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
            if current is not None and current.status == Status.ABORTING:
                await self._wakeup.notify("aborts")
        if current is not None:
            job.replace(current)

    async def finish(
        self,
        job: Job,
        status: Status,
        *,
        result: t.Any = None,
        error: t.Optional[str] = None,
        **kwargs: t.Any,
    ) -> None:
        """Finish a job with a terminal status, keeping it ``ttl`` seconds.

        As in SAQ the write is by key: it applies whoever changed the job since this
        ``job`` object was loaded. ``kwargs`` are more fields to set.
        """
        self._set_fields(job, kwargs)
        self._set_finished(job, status, result, error)
        await self._finished(job, await self._set(job, kwargs.keys() | {"status"}))

    async def _finish(
        self, job: Job, status: Status, result: t.Any, error: t.Optional[str], finish_only: bool
    ) -> bool:
        """Finish a job a worker or sweeper ran; whether it was still as they saw it.
        ``finish_only`` writes only what a finish changes, for a caller that knows
        nothing else changed."""
        expected = _Expected.of(job)
        self._set_finished(job, status, result, error)
        stored = await self._write(job, expected, finish_only=finish_only)
        await self._finished(job, stored)
        return stored

    async def _finished(self, job: Job, stored: bool) -> None:
        if not stored:
            return
        self._count(job.status)
        if logger.isEnabledFor(logging.INFO):
            logger.info("Finished %s", job.info(logger.isEnabledFor(logging.DEBUG)))
        if job.group_key is not None or (  # the next of its group or limit may run
            self._capped and ("" in self._capped or job.function in self._capped)
        ):
            await self._wakeup.notify("jobs")

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
        """Put a job back in the queue after a failure, after its retry delay.

        As in SAQ the write is by key (see ``finish``).
        """
        self._set_retried(job, error)
        await self._retried(job, await self._set(job, ("status", "started")))

    async def _retry(self, job: Job, error: t.Optional[str]) -> bool:
        """Retry a job a worker or sweeper ran; whether it was still as they saw it."""
        expected = _Expected.of(job)
        self._set_retried(job, error)
        stored = await self._write(job, expected)
        await self._retried(job, stored)
        return stored

    async def _retried(self, job: Job, stored: bool) -> None:
        if not stored:
            return
        self.retried += 1
        if logger.isEnabledFor(logging.INFO):
            logger.info("Retrying %s", job.info(logger.isEnabledFor(logging.DEBUG)))
        await self._wakeup.notify("jobs")

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

    async def _sleep(self, job: Job, until: float) -> bool:
        """Put back a job its worker ran until ``until`` (epoch s), without charging
        the attempt (see sleep()); whether it was still as its worker saw it."""
        asleep = dataclasses.replace(
            job,
            status=Status.QUEUED,
            attempts=job.attempts - 1,
            scheduled=math.ceil(until),  # whole seconds, as SAQ's
            started=0,
            touched=now(),
        )
        stored = await self._write(asleep, _Expected.of(job))
        if stored:
            job.replace(asleep)
            if logger.isEnabledFor(logging.INFO):
                logger.info("Sleeping %s", job.info(logger.isEnabledFor(logging.DEBUG)))
            await self._wakeup.notify("jobs")
        return stored

    async def update(self, job: Job, **kwargs: t.Any) -> None:
        """Set fields of a job and store it by key, as SAQ does; this touches it (a
        heartbeat). The stored status stays as it is unless ``status=`` is given;
        ``status=Status.ABORTING`` asks the job's worker to stop it.
        """
        self._set_fields(job, kwargs)
        job.touched = now()
        stored = await self._set(job, kwargs.keys())
        if stored and job.status == Status.ABORTING:
            await self._wakeup.notify("aborts")

    @staticmethod
    def _set_fields(job: Job, fields: dict[str, t.Any]) -> None:
        for name, value in fields.items():
            if name not in _JOB_FIELD_NAMES:
                raise ValueError(
                    f"Job has no field {name!r}: use one of {', '.join(sorted(_JOB_FIELD_NAMES))}"
                )
            if name in _ENQUEUE_ONLY_FIELDS and value != getattr(job, name):
                raise ValueError(
                    f"Job {name} is set when a job is enqueued and cannot change: enqueue "
                    "the job again once it has finished"
                )
        _check_job_options(dataclasses.replace(job, **fields))
        for name, value in fields.items():
            setattr(job, name, value)
        job.status = Status(job.status)

    async def _set(self, job: Job, given: Iterable[str]) -> bool:
        """Write a job by key, with the claim's columns only where ``given``; whether
        it was stored. Through the Job a worker runs, the write applies only while
        the job is still that run's, and the run is told when it is not."""
        stored = await self._writes.submit(_set_item(self, job, frozenset(given)))
        if not stored and job._lease is not None:
            job._lease.lost()
        return stored

    async def schedule(self, _lock: int = 1) -> list[str]:
        """As in SAQ, where Redis moves due scheduled jobs into the queue. Here a
        scheduled job is claimable once due without a move: nothing to do.

        Returns:
            The ids of the jobs moved: always empty.
        """
        return []

    async def finish_abort(self, job: Job) -> None:
        """Finish an aborting job as ABORTED with its error (as in SAQ)."""
        await job.finish(Status.ABORTED, error=job.error)

    # Running jobs, with SQLite's now (epoch ms) to judge them stuck by, and their deaths.
    _SQL_RUNNING_JOBS = f"""
    SELECT {_LOAD_COLUMNS}, {_SQL_NOW_MS}, deaths FROM saqlite_jobs
    WHERE queue = ? AND status IN {_RUNNING_SQL}
    """

    _SQL_DELETE_WORKERS = "DELETE FROM saqlite_workers WHERE id IN ({ids})"

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        """Delete expired jobs and workers, and recover stuck jobs.

        Expired jobs go a slice at a time (short write transactions that let other
        writers in), then their space is given back to the OS and the -wal file emptied.
        The per-minute figures of jobs that ended over a day ago are added into their
        totals (see saqlite_stats), a slice at a time too.

        A job is stuck when it is past its timeout or heartbeat, or when the worker
        running it has died: its process is gone (or the pid now belongs to another
        process), or, where this process can't see it, it stopped beating. Times are
        read from SQLite's clock, not this process's. One sweeper runs at a time across
        all processes.

        A job whose worker died goes back to the queue as it was, without charging
        the attempt, up to 3 times; the third death fails it. A stuck job of a live
        worker is first aborted and given ``abort`` seconds to stop, then retried if it
        may be, else finished ABORTED with error ``"swept"``. A job that was being
        aborted (``abort()``) ends ABORTED with the abort's error.

        Args:
            lock: seconds this sweeper holds the sweep lease.
            abort: seconds to wait for a live worker to abort a stuck job.

        Returns:
            The ids of the jobs swept.
        """
        await self.connect()
        if not await self._take_lock(f"sweep:{self.name}", lock):
            return []
        expired = await self._delete_expired()
        if expired:
            logger.info("Deleted %d expired job(s)", expired)
        await self._fold_stats()
        # Running jobs first, then workers: a worker registers before it claims, so
        # every worker of these jobs is in the list read after them.
        rows = await self._fetch(self._SQL_RUNNING_JOBS, (self.name,))
        workers = await self._workers()
        live = {worker.id for worker in workers if worker.alive}
        dead = [worker.id for worker in workers if not worker.alive]
        if dead:
            await self._fetch(self._SQL_DELETE_WORKERS.format(ids=_placeholders(len(dead))), dead)
        await self._wakeup.forget_dead()
        await self._give_back_space()
        orphans: list[tuple[Job, int]] = []
        stuck: list[Job] = []
        for row in rows:
            job, current, deaths = self._codec.job(row[:-2]), row[-2], row[-1]
            if job.worker_id is not None and job.worker_id not in live:
                orphans.append((job, deaths))
            elif _stuck_at(job, current):
                stuck.append(job)
        for job in stuck:
            await self.abort(job, self.swept_error_message)
        if stuck:
            await self._wait_until_not_running([job.key for job in stuck], abort)
        swept = [job.id for job, deaths in orphans if await self._recover_orphan(job, deaths)]
        swept += [job.id for job in stuck if await self._recover(job)]
        return swept

    # Expired jobs of every queue, a slice of :limit at a time. A job others depend on
    # is kept, whatever its ttl, until they have all run.
    _SQL_DELETE_EXPIRED_JOBS = f"""
    DELETE FROM saqlite_jobs WHERE rowid IN (
        SELECT expired.rowid FROM saqlite_jobs AS expired
        WHERE expired.expire_at <= {_SQL_NOW} AND NOT (expired.dependents AND EXISTS (
            SELECT 1 FROM saqlite_dependencies AS edge JOIN saqlite_jobs AS dependent
              ON dependent.queue = edge.queue AND dependent.key = edge.key
            WHERE edge.queue = expired.queue AND edge.depends_on = expired.key
              AND dependent.status NOT IN {_FINISHED_SQL}))
        LIMIT :limit)
    RETURNING 1
    """

    async def _delete_expired(self) -> int:
        """Delete the expired jobs of every queue in short slices (see _SliceSize);
        how many."""
        deleted, size = 0, _SliceSize.of_rows()
        while True:
            limit, started = size.amount, time.perf_counter()
            rows = await self._fetch(self._SQL_DELETE_EXPIRED_JOBS, {"limit": limit})
            size.took(len(rows), time.perf_counter() - started)
            deleted += len(rows)
            if len(rows) < limit:
                return deleted
            await self._between_slices()

    # The figures of the minutes older than _STATS_KEPT_MINUTES, a slice of :limit rows
    # at a time (oldest first: the table is in minute order), added to their queue and
    # function's minute 0, then deleted: in one transaction, so nothing counts twice.
    _SQL_OLD_STATS = f"""
    SELECT queue, function, minute, wait_bucket, run_bucket FROM saqlite_stats
    WHERE minute BETWEEN 1 AND CAST({_SQL_NOW} / 60 AS INTEGER) - :kept
    ORDER BY minute LIMIT :limit
    """
    _SQL_FOLD_STATS = f"""
    INSERT INTO saqlite_stats (
        queue, function, minute, wait_bucket, run_bucket, {", ".join(_STATS_COLUMNS)})
    SELECT queue, function, 0, wait_bucket, run_bucket,
        {", ".join(f"SUM({c})" for c in _STATS_COLUMNS)}
    FROM saqlite_stats
    WHERE (queue, function, minute, wait_bucket, run_bucket) IN ({_SQL_OLD_STATS})
    GROUP BY queue, function, wait_bucket, run_bucket
    ON CONFLICT (minute, queue, function, wait_bucket, run_bucket) DO UPDATE SET
    {", ".join(f"{c} = {c} + excluded.{c}" for c in _STATS_COLUMNS)}
    """
    _SQL_DROP_OLD_STATS = f"""
    DELETE FROM saqlite_stats
    WHERE (queue, function, minute, wait_bucket, run_bucket) IN ({_SQL_OLD_STATS})
    RETURNING 1
    """

    async def _fold_stats(self) -> None:
        """Fold the per-minute figures of jobs that ended over a day ago into their
        totals (minute 0), in short transactions (see _SLICE_ROWS); first a look
        whether there are any, which takes no lock."""
        params = {"kept": _STATS_KEPT_MINUTES, "limit": _SLICE_ROWS}
        if not await self._fetch(self._SQL_OLD_STATS, {**params, "limit": 1}):
            return

        def fold() -> _Steps[int]:
            yield self._SQL_FOLD_STATS, params
            return len((yield self._SQL_DROP_OLD_STATS, params))

        while await self._atomic(fold()) == _SLICE_ROWS:
            await self._between_slices()

    _SQL_FREE_PAGES = "PRAGMA freelist_count"
    # A pragma's argument can't be bound: {pages} is an int of _SliceSize's.
    _SQL_GIVE_BACK_PAGES = "PRAGMA incremental_vacuum({pages:d})"
    # A checkpoint that lets writers on (it copies what it can), then one that empties
    # the -wal file: it holds writers up only while it copies what came in between.
    _SQL_CHECKPOINT_PASSIVE = "PRAGMA wal_checkpoint(PASSIVE)"
    _SQL_CHECKPOINT = "PRAGMA wal_checkpoint(TRUNCATE)"

    async def _give_back_space(self) -> None:
        """Give the file's free pages back to the OS in short slices (see _SliceSize),
        then copy the -wal file into the database and empty it (a no-op while a reader
        still needs it; the next call tries again)."""
        # A page given back from the end of the file is free, or it is moved (with its
        # parent's pointer) to a free page further in: in a file whose free pages are
        # scattered, a slice of 64 pages took 35 ms. Hence slices sized by time.
        free = (await self._fetch(self._SQL_FREE_PAGES))[0][0]
        size = _SliceSize.of_pages()
        while free:
            started = time.perf_counter()
            await self._fetch(self._SQL_GIVE_BACK_PAGES.format(pages=size.amount), script=True)
            seconds = time.perf_counter() - started
            left = (await self._fetch(self._SQL_FREE_PAGES))[0][0]
            if left >= free:  # not given back (auto_vacuum off): left for reuse
                break
            size.took(free - left, seconds)
            free = left
            await self._between_slices()
        await self._fetch(self._SQL_CHECKPOINT_PASSIVE)
        await self._fetch(self._SQL_CHECKPOINT)

    async def _between_slices(self) -> None:
        """Copy the slice just written out of the -wal file, so that the writer whose
        commit finds it long (another process's enqueue) is not the one made to copy it
        (SQLite's automatic checkpoint); then pause, so that other writers get the lock."""
        await self._fetch(self._SQL_CHECKPOINT_PASSIVE)
        await asyncio.sleep(_SLICE_PAUSE_S)

    async def _wait_until_not_running(self, keys: list[str], timeout: float) -> None:
        def stopped(statuses: dict[str, Status]) -> bool:
            return not any(statuses.get(key) in _RUNNING_STATUSES for key in keys)

        with contextlib.suppress(asyncio.TimeoutError):
            await self._wait_until(keys, stopped, timeout)

    async def _recover(self, job: Job) -> bool:
        """Retry or finish a stuck job the sweep aborted, unless it moved on since."""
        current = await self.job(job.key)
        if current is None or (current.attempts, current.worker_id) != (
            job.attempts,
            job.worker_id,
        ):
            return False
        logger.info("Sweeping job %s", current.info(True))
        if current.status == Status.ABORTING:  # its worker did not stop it in time
            return await self._end_aborted(current, current.error)
        if current.status == Status.ABORTED and current.error == self.swept_error_message:
            # Stopped by its worker: re-queued, unless an older worker finished it.
            return current.retryable and await self._retry(current, self.swept_error_message)
        return current.status == Status.QUEUED and current.error == self.swept_error_message

    # A job whose worker died goes back to the queue without the attempt it was charged.
    _SQL_REQUEUE_ORPHAN = f"""
    UPDATE saqlite_jobs
    SET status = 'queued', attempts = attempts - 1, deaths = deaths + 1, error = :error,
        started = 0, completed = 0, progress = 0, touched = {_SQL_NOW_MS}
    WHERE queue = :queue AND key = :key AND status = :status AND worker_id IS :worker_id
      AND attempts = :attempts
    RETURNING key
    """

    async def _recover_orphan(self, job: Job, deaths: int) -> bool:
        """Put back a job whose worker died (uncharged), or fail it after _MAX_DEATHS;
        a job being aborted ends ABORTED. Whether it was still as seen."""
        logger.info("Sweeping job %s: its worker %s is gone", job.info(True), job.worker_id)
        if job.status == Status.ABORTING:
            return await self._end_aborted(job, job.error)
        if deaths + 1 >= _MAX_DEATHS:
            error = (
                f"Its worker died {deaths + 1} times running it (killed, out of memory, "
                "or a crash in the function?): saqlite does not run it again"
            )
            return await self._finish(job, Status.FAILED, None, error, finish_only=False)
        params = {
            "queue": self.name,
            "key": job.key,
            "status": job.status.value,
            "worker_id": job.worker_id,
            "attempts": job.attempts,
            "error": self.swept_error_message,
        }
        if not await self._fetch(self._SQL_REQUEUE_ORPHAN, params):
            return False
        await self._wakeup.notify("jobs")
        await self._wakeup.notify("changes")
        return True

    async def _end_aborted(self, job: Job, error: t.Optional[str]) -> bool:
        """Write the end of a run stopped by an abort: the sweep's own abort
        (``"swept"``) retries the job if it may; any other abort sticks (ABORTED)."""
        if error == self.swept_error_message and job.retryable:
            return await self._retry(job, error)
        return await self._finish(job, Status.ABORTED, None, error, finish_only=False)

    # -- workers -------------------------------------------------------------

    _SQL_UPSERT_WORKER = f"""
    INSERT INTO saqlite_workers (id, queue, host, pid, start_token, beat, expire_at, info)
    VALUES (:id, :queue, :host, :pid, :start_token, {_SQL_NOW}, {_SQL_NOW} + :ttl, :info)
    ON CONFLICT (id) DO UPDATE SET
        beat = excluded.beat, expire_at = excluded.expire_at, info = excluded.info
    """

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
        pid = os.getpid()
        await self._fetch(
            self._SQL_UPSERT_WORKER,
            {
                "id": worker_id,
                "queue": self.name,
                "host": _HOST,
                "pid": pid,
                "start_token": _start_token(pid),
                "ttl": ttl,
                "info": json.dumps(info, default=str),
            },
        )
        return info

    _SQL_DELETE_WORKER = "DELETE FROM saqlite_workers WHERE id = ?"

    async def _forget_worker(self, worker_id: str) -> None:
        await self._fetch(self._SQL_DELETE_WORKER, (worker_id,))

    async def _workers(self) -> list[_WorkerState]:
        """Every registered worker of this queue, and whether it is alive."""
        return await self._drive(_workers_steps(self))

    # -- serialisation -------------------------------------------------------

    def serialize(self, job: Job) -> t.Union[str, bytes]:
        """The job as stored, through ``dump``.

        Raises:
            TypeError: when ``dump`` cannot encode it, naming the job.
        """
        return self._codec.encode(job.to_dict(), job)

    def deserialize(
        self,
        payload: t.Union[dict[str, t.Any], str, bytes, None],
        status: t.Union[Status, str, None] = None,
    ) -> t.Optional[Job]:
        """A Job from what ``serialize`` made, or from its dict (None for None).

        Args:
            status: the job's status instead of the one in the payload (as in SAQ).

        Raises:
            ValueError: the payload belongs to another queue.
        """
        if payload is None:
            return None
        job_dict = dict(payload) if isinstance(payload, dict) else self._codec.load(payload)
        queue_name = job_dict.pop("queue", self.name)
        if queue_name != self.name:
            raise ValueError(f"Job {job_dict} belongs to queue {queue_name!r}, not {self.name!r}")
        if status is not None:
            job_dict["status"] = status
        return Job(**job_dict, queue=self)

    def copy(self, job: Job) -> Job:
        """A separate copy of a job (through serialisation)."""
        copied = self.deserialize(self.serialize(job))
        assert copied is not None
        return copied

    # -- statements on the file: one, a sequence, a transaction, batched writes -

    async def _fetch(self, sql: str, params: t.Any = (), *, script: bool = False) -> list[t.Any]:
        """Run one statement (its own transaction) and return its rows.

        A busy file is tried again after short random pauses, so that processes take
        turns, until ``lock_timeout``. A ``script`` (no parameters, no rows) is run to
        its end: a statement without result columns is otherwise stepped only once
        (PRAGMA incremental_vacuum would free one page).
        """
        conn = self._conn
        if conn is None:
            await self.connect()
            conn = self._conn
            assert conn is not None
        wait = _LockWait(self)
        while True:
            if self._owner is not None and self._owner is not asyncio.current_task():
                # Another task's transaction is open: this statement must not join it.
                await asyncio.wait([t.cast("asyncio.Future[None]", self._unowned)])
                continue
            try:
                if script:
                    await conn.executescript(sql)
                    rows = []
                else:
                    rows = list(await conn.execute_fetchall(sql, params))
            except sqlite3.Error as exc:
                await asyncio.sleep(wait.pause(exc))
                continue
            wait.done()
            return rows

    async def _drive(self, steps: _Steps[_R]) -> _R:
        """Run a sequence of statements (see _Steps) on this queue's connection; a
        statement's exception is thrown into ``steps``, which may handle it."""
        stepper = _Stepper(steps)
        while stepper.statement is not None:
            try:
                rows = await self._fetch(*stepper.statement)
            except Exception as exc:
                stepper.resume(exc)
            else:
                stepper.resume(rows)
        return t.cast("_R", stepper.result)

    async def _atomic(self, steps: _Steps[_R]) -> _R:
        """Run a sequence of statements as one transaction: all commit, or none.

        Any exception rolls it back, cancellation too: the ROLLBACK is queued on the
        connection before any other statement. The connection is shared by every task
        of this queue (claims, batchers, reads): while the transaction is open, their
        statements wait in _fetch, so none is taken into it or rolled back with it.
        """
        while self._owner is not None:  # one transaction at a time
            await asyncio.wait([t.cast("asyncio.Future[None]", self._unowned)])
        unowned = asyncio.get_running_loop().create_future()
        self._owner, self._unowned = asyncio.current_task(), unowned
        # From here a ROLLBACK is due if anything fails: even a cancelled BEGIN may run.
        ended = False
        try:
            await self._fetch("BEGIN IMMEDIATE")
            result = await self._drive(steps)
            await self._fetch("COMMIT")
            ended = True
            return result
        finally:
            if ended or self._conn is None:
                self._release(unowned)
            else:
                rollback = asyncio.ensure_future(self._conn.execute("ROLLBACK"))
                # Until it ran, the transaction is the ROLLBACK's: this task's next
                # statement (say, after it caught a ValueError) must wait for it too.
                self._owner = rollback
                rollback.add_done_callback(lambda done: self._release(unowned, done))

    def _release(
        self, unowned: asyncio.Future[None], rollback: t.Optional[asyncio.Future[t.Any]] = None
    ) -> None:
        """End _atomic's hold on the connection (after its ROLLBACK, if any)."""
        if rollback is not None and not rollback.cancelled():
            rollback.exception()  # "no transaction is active" after a failed BEGIN: fine
        self._owner = self._unowned = None
        unowned.set_result(None)

    async def _insert_all(self, jobs: list[Job]) -> list[bool]:
        """Insert jobs in one transaction; raise (storing none) if one can't be."""
        steps = _enqueue_steps(self.name, jobs, [self._codec.row(job) for job in jobs])
        # One job without dependencies is one statement, atomic on its own: no BEGIN
        # and COMMIT to wait for.
        alone = len(jobs) == 1 and not jobs[0].depends_on
        inserted = await (self._drive(steps) if alone else self._atomic(steps))
        if any(inserted):
            await self._wakeup.notify("jobs")
        return inserted

    async def _insert_rows(self, rows: list[tuple[t.Any, ...]]) -> list[_Outcome]:
        """Insert job rows; for each, whether it went in (False: a duplicate key), or
        the exception that kept it out."""
        results = await self._drive(_insert_steps(rows))
        if any(result is True for result in results):
            await self._wakeup.notify("jobs")
        return results

    async def _write(self, job: Job, expected: _Expected, *, finish_only: bool = False) -> bool:
        """Store a job's new state if it is still as expected; whether it was."""
        return await self._writes.submit(_write_item(self, job, expected, finish_only=finish_only))

    async def _write_rows(self, items: list[tuple[str, tuple[t.Any, ...]]]) -> list[_Outcome]:
        """Apply guarded writes gathered while the previous batch was in flight.

        A job written twice in one batch (e.g. a progress update, then its finish) is
        written in order, by splitting the batch where a key repeats.
        """
        depended_on: list[str] = []
        results = await self._drive(_write_steps(items, depended_on))
        await self._wakeup.notify("changes")
        if depended_on:  # their end may have let jobs waiting on them through
            await self._wakeup.notify("jobs")
        return results

    async def _write_step_rows(self, items: list[tuple[str, tuple[t.Any, ...]]]) -> list[_Outcome]:
        """Write steps of jobs' records (see step()): as _write_rows, but no job
        changed, so there is no news for those waiting on jobs."""
        return await self._drive(_write_steps(items))

    # -- claiming ------------------------------------------------------------

    # Whether a queue has a pause or a limit in force (an ended pause_until is none).
    _SQL_FLOW_IN_FORCE = f"""
    EXISTS (SELECT 1 FROM saqlite_flow WHERE queue = :queue AND (
        rate IS NOT NULL OR concurrency IS NOT NULL OR per_group IS NOT NULL
        OR (paused AND (paused_until IS NULL OR paused_until > {_SQL_NOW}))))
    """

    @staticmethod
    @functools.lru_cache(maxsize=2)
    def _claim_sql(in_range: bool) -> str:
        """The claim, with the test of Queue(priorities=...) if ``in_range``. Without one
        a job of any priority is claimed (so a row whose priority is not a number, left by
        an older saqlite, is claimed and fails alone: see Queue._claim)."""
        # Claim up to N due jobs of a queue in one statement: by priority, then run_at,
        # then enqueue order. A job with a group_key is taken only when no job of its group
        # is running, and only the first of its group in one claim.
        # Only priorities from :low to :high are claimed; times are SQLite's (see _SQL_NOW).
        # (+priority: grouped jobs are found through their own index, not among all queued.)
        # INDEXED BY: saqlite_jobs_waiting would find every due job, then sort them all.
        test = " AND priority BETWEEN :low AND :high" if in_range else ""
        grouped_test = " AND +priority BETWEEN :low AND :high" if in_range else ""
        return f"""
        WITH ungrouped AS (
            SELECT rowid AS id, priority, run_at FROM saqlite_jobs INDEXED BY saqlite_jobs_ready
            WHERE queue = :queue AND status = 'queued'{test}
              AND run_at <= {_SQL_NOW} AND group_key IS NULL
            ORDER BY priority, run_at, rowid LIMIT :limit
        ), grouped AS (
            SELECT id, priority, run_at FROM (
                SELECT rowid AS id, priority, run_at, ROW_NUMBER() OVER (
                    PARTITION BY group_key ORDER BY priority, run_at, rowid) AS n
                FROM saqlite_jobs INDEXED BY saqlite_jobs_group
                WHERE queue = :queue AND status = 'queued'{grouped_test}
                  AND run_at <= {_SQL_NOW} AND group_key IS NOT NULL
                  AND group_key NOT IN (
                      SELECT group_key FROM saqlite_jobs
                      WHERE queue = :queue AND group_key IS NOT NULL
                        AND status IN {_RUNNING_SQL})
            ) WHERE n = 1
        )
        UPDATE saqlite_jobs
        SET status = 'active', worker_id = :worker_id, attempts = attempts + 1,
            started = {_SQL_NOW_MS}, touched = {_SQL_NOW_MS}
        WHERE rowid IN (
            SELECT id FROM (SELECT * FROM ungrouped UNION ALL SELECT * FROM grouped)
            ORDER BY priority, run_at, id LIMIT :limit)
          AND NOT {Queue._SQL_FLOW_IN_FORCE}
        RETURNING key, priority, run_at, {_LOAD_COLUMNS}
        """

    @staticmethod
    @functools.lru_cache(maxsize=2)
    def _flow_claim_sql(in_range: bool) -> str:
        """The claim of a queue with pauses or limits (see Queue.limit): as _claim_sql,
        in one statement, but it takes each function's next jobs apart (one index seek
        per function with waiting jobs: held-back jobs are never read past), at most
        the budget each limit has left. Starts are logged by saqlite_flow_started."""
        # budget: how many more may start now; 0 while paused. MAX(.., 0): a limit
        # lowered below its use must not give a negative LIMIT (which means none).
        test = " AND priority BETWEEN :low AND :high" if in_range else ""
        return f"""
        WITH RECURSIVE rules AS (
            SELECT r.function, r.per_group, MAX(0, CASE
                WHEN r.paused AND (r.paused_until IS NULL OR r.paused_until > {_SQL_NOW}) THEN 0
                ELSE MIN(:limit,
                    COALESCE(r.rate - {_sql_starts_in_period("r")}, :limit),
                    COALESCE(r.concurrency - (SELECT COUNT(*) FROM saqlite_jobs AS job
                        WHERE job.queue = :queue AND job.status IN {_RUNNING_SQL}
                          AND (r.function = '' OR job.function = r.function)), :limit))
                END) AS budget
            FROM saqlite_flow AS r WHERE r.queue = :queue
        ), whole AS (
            SELECT COALESCE((SELECT budget FROM rules WHERE function = ''), :limit) AS budget,
                COALESCE((SELECT per_group FROM rules WHERE function = ''), 1) AS per_group
        ), waiting(function) AS (
            SELECT (SELECT function FROM saqlite_jobs INDEXED BY saqlite_jobs_function
                    WHERE queue = :queue AND status = 'queued' ORDER BY function LIMIT 1)
            UNION ALL
            SELECT (SELECT job.function FROM saqlite_jobs AS job INDEXED BY saqlite_jobs_function
                    WHERE job.queue = :queue AND job.status = 'queued'
                      AND job.function > waiting.function
                    ORDER BY job.function LIMIT 1)
            FROM waiting WHERE waiting.function IS NOT NULL
        ), allowed AS (
            SELECT waiting.function, COALESCE(rules.budget, :limit) AS budget
            FROM waiting LEFT JOIN rules ON rules.function = waiting.function
            WHERE waiting.function IS NOT NULL AND COALESCE(rules.budget, :limit) > 0
        ), full_group AS (
            SELECT group_key FROM saqlite_jobs
            WHERE queue = :queue AND group_key IS NOT NULL AND status IN {_RUNNING_SQL}
            GROUP BY group_key HAVING COUNT(*) >= (SELECT per_group FROM whole)
        ), candidate AS (
            SELECT job.rowid AS id, job.priority, job.run_at, job.function, job.group_key,
                allowed.budget
            FROM allowed, saqlite_jobs AS job
            WHERE job.rowid IN (
                SELECT rowid FROM saqlite_jobs INDEXED BY saqlite_jobs_function
                WHERE queue = :queue AND status = 'queued' AND function = allowed.function{test}
                  AND run_at <= {_SQL_NOW}
                  AND (group_key IS NULL OR group_key NOT IN (SELECT group_key FROM full_group))
                ORDER BY priority, run_at, rowid LIMIT :limit)
        ), ranked AS (
            SELECT id, priority, run_at, group_key, budget,
                ROW_NUMBER() OVER (
                    PARTITION BY function ORDER BY priority, run_at, id) AS in_function,
                ROW_NUMBER() OVER (
                    PARTITION BY group_key ORDER BY priority, run_at, id) AS in_group
            FROM candidate
        )
        UPDATE saqlite_jobs
        SET status = 'active', worker_id = :worker_id, attempts = attempts + 1,
            started = {_SQL_NOW_MS}, touched = {_SQL_NOW_MS}
        WHERE rowid IN (
            SELECT id FROM ranked
            WHERE in_function <= budget AND (group_key IS NULL OR in_group + (
                SELECT COUNT(*) FROM saqlite_jobs AS job
                WHERE job.queue = :queue AND job.group_key = ranked.group_key
                  AND job.status IN {_RUNNING_SQL}) <= (SELECT per_group FROM whole))
            ORDER BY priority, run_at, id LIMIT (SELECT budget FROM whole))
        RETURNING key, priority, run_at, {_LOAD_COLUMNS}
        """

    async def _claim(self, limit: int, worker_id: t.Optional[str]) -> list[Job]:
        """Mark up to ``limit`` due jobs ACTIVE for a worker, in one statement."""
        low, high = self.priorities
        params = {
            "queue": self.name,
            "low": low,
            "high": high,
            "worker_id": worker_id,
            "limit": limit,
        }
        in_range = self.priorities != _ALL_PRIORITIES
        if time.monotonic() - self._flow_seen > _FLOW_LOOK_S:
            await self._look_at_flow()
        rows = await self._fetch(self._claim_statement(in_range), params)
        if not rows:
            # None came: maybe because pauses or limits came or went (the plain claim
            # takes nothing while any is in force, so it never oversteps one).
            if not await self._look_at_flow():
                return []
            rows = await self._fetch(self._claim_statement(in_range), params)
            if not rows:
                return []
        claimed: list[tuple[t.Any, t.Any, Job]] = []
        failed = False
        for key, priority, run_at, *loaded in rows:
            try:
                if not (_is_number(priority) and _is_number(run_at)):
                    raise ValueError(f"priority {priority!r} and run_at {run_at!r} must be numbers")
                claimed.append((priority, run_at, self._codec.job(loaded)))
            except Exception as exc:  # the job alone fails: the others run
                failed = await self._fail_unloadable(key, loaded[2], exc) or failed
        # RETURNING gives no order: run them in the order they were chosen.
        claimed.sort(key=lambda entry: entry[:2])
        await self._wakeup.notify("changes")
        if failed:  # the next job of its group may run
            await self._wakeup.notify("jobs")
        return [job for _, _, job in claimed]

    def _claim_statement(self, in_range: bool) -> str:
        return self._flow_claim_sql(in_range) if self._flow else self._claim_sql(in_range)

    _SQL_FLOW_STATE = f"""
    SELECT {_SQL_FLOW_IN_FORCE}, (
        SELECT json_group_array(function) FROM saqlite_flow
        WHERE queue = :queue AND concurrency IS NOT NULL)
    """

    async def _look_at_flow(self) -> bool:
        """Read whether pauses or limits are in force, and which functions have a
        concurrency limit; whether the claim to run changed."""
        ((in_force, capped),) = await self._fetch(self._SQL_FLOW_STATE, {"queue": self.name})
        self._flow_seen = time.monotonic()
        self._capped = frozenset(json.loads(capped))
        changed = bool(in_force) != self._flow
        self._flow = bool(in_force)
        return changed

    # The jobs a worker holds (its running jobs: few, found through the ready index).
    _SQL_HELD_JOBS = f"""
    SELECT {_LOAD_COLUMNS} FROM saqlite_jobs
    WHERE queue = :queue AND status IN {_RUNNING_SQL} AND worker_id = :worker_id
    """

    async def _held_by(self, worker_id: str) -> list[Job]:
        """The running jobs claimed by ``worker_id``, as stored."""
        rows = await self._fetch(self._SQL_HELD_JOBS, {"queue": self.name, "worker_id": worker_id})
        return [self._codec.job(row) for row in rows]

    # A claimed job that cannot be loaded (see Queue._claim) fails on its own.
    _SQL_FAIL_UNLOADABLE = """
    UPDATE saqlite_jobs
    SET status = 'failed', error = :error, completed = :now_ms,
        expire_at = CASE WHEN ttl > 0 THEN :now + ttl END
    WHERE queue = :queue AND key = :key AND status = 'active' AND attempts = :attempts
    RETURNING key
    """

    async def _fail_unloadable(self, key: str, attempts: int, exc: Exception) -> bool:
        """Finish FAILED a claimed job that can't be loaded (it has no Job object)."""
        error = f"saqlite could not load job {key!r} of queue {self.name!r}: {exc!r}"
        logger.error("%s", error)
        current = time.time()
        params = {
            "error": error,
            "now_ms": int(current * 1000),
            "now": current,
            "queue": self.name,
            "key": key,
            "attempts": attempts,
        }
        if not await self._fetch(self._SQL_FAIL_UNLOADABLE, params):
            return False
        self._count(Status.FAILED)
        return True

    async def _claim_waiting(
        self, limit: int, worker_id: t.Optional[str], timeout: float
    ) -> list[Job]:
        """Claim jobs, waiting up to ``timeout`` seconds (0 = forever) for some."""
        await self._wakeup.want("jobs")
        deadline = time.monotonic() + timeout if timeout else math.inf
        while True:
            generation = self._wakeup.generation("jobs")
            since = time.time()  # (a rate token that frees after this wakes the wait)
            jobs = await self._claim(limit, worker_id)
            if jobs:
                return jobs
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await self._wait_for_work(generation, remaining, since)

    # When the next scheduled job falls due (jobs due now but not claimed wait for their
    # group: the end of the group's running job wakes the claimers).
    # In seconds from now, by SQLite's clock.
    _SQL_NEXT_RUN_AT = f"""
    SELECT MIN(run_at) - {_SQL_NOW} FROM saqlite_jobs INDEXED BY saqlite_jobs_waiting
    WHERE queue = ? AND status = 'queued' AND run_at > {_SQL_NOW}
    """

    # When the next pause ends or the next rate token frees after :since (epoch s: just
    # before the claim that took nothing), in seconds from now by SQLite's clock
    # (negative: it came meanwhile); NULL if neither comes. A rate whose period held
    # `rate` starts then frees a token as the oldest of them leaves (plus a
    # millisecond: starts are whole ms); one lowered below its use wakes early, and
    # looks again. A token already free then was not what held the claim back.
    _SQL_NEXT_FLOW_AT = f"""
    SELECT MIN(at) - {_SQL_NOW} FROM (
        SELECT paused_until AS at FROM saqlite_flow WHERE queue = :queue AND paused
        UNION ALL
        SELECT (SELECT MIN(start.started) FROM saqlite_flow_starts AS start
                WHERE start.queue = r.queue AND start.function = r.function
                  AND start.started > :since * 1000 - r.period * 1000
                HAVING COUNT(*) >= r.rate) / 1000.0 + r.period + 0.001
        FROM saqlite_flow AS r WHERE r.queue = :queue AND r.rate IS NOT NULL)
    WHERE at > :since
    """

    async def _wait_for_work(self, generation: int, limit: float, since: float) -> None:
        """Sleep until work may be ready: a wake-up, a scheduled job falling due, or a
        commit by another process (checked every _FALLBACK_POLL_S), at most ``limit``
        seconds and at most _FORCED_CLAIM_S (a commit can slip between the claim and
        the first look at data_version); under pauses or limits, also the end of a
        pause or a rate token freeing after ``since`` (epoch s), when the claim was tried.
        """
        version = await self._data_version()
        deadline = time.monotonic() + min(limit, _FORCED_CLAIM_S)
        rows = await self._fetch(self._SQL_NEXT_RUN_AT, (self.name,))
        if self._flow:
            rows += await self._fetch(self._SQL_NEXT_FLOW_AT, {"queue": self.name, "since": since})
        for (seconds,) in rows:
            if seconds is not None:
                deadline = min(deadline, time.monotonic() + max(seconds, 0))
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if await self._wakeup.wait("jobs", generation, min(remaining, _FALLBACK_POLL_S)):
                return
            if await self._data_version() != version:
                return

    _SQL_DATA_VERSION = "PRAGMA data_version"

    async def _data_version(self) -> int:
        rows = await self._fetch(self._SQL_DATA_VERSION)
        return int(rows[0][0])

    _SQL_ABORTING_KEYS = """
    SELECT key FROM saqlite_jobs WHERE queue = ? AND worker_id = ? AND status = 'aborting'
    """

    async def _aborting_keys(self, worker_id: str) -> list[str]:
        return [
            key for (key,) in await self._fetch(self._SQL_ABORTING_KEYS, (self.name, worker_id))
        ]

    # A lease: taken when free, expired, or already ours (by SQLite's clock).
    _SQL_TAKE_LOCK = f"""
    INSERT INTO saqlite_locks (name, owner, expire_at) VALUES (:name, :owner, {_SQL_NOW} + :seconds)
    ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expire_at = excluded.expire_at
    WHERE saqlite_locks.expire_at <= {_SQL_NOW} OR saqlite_locks.owner = excluded.owner
    RETURNING owner
    """

    async def _take_lock(self, name: str, seconds: float) -> bool:
        params = {"name": name, "owner": f"{_HOST}:{os.getpid()}:{id(self)}", "seconds": seconds}
        return bool(await self._fetch(self._SQL_TAKE_LOCK, params))


# =============================================================================
# Worker
# =============================================================================


class Worker:
    """Runs the jobs of one queue, ``concurrency`` at a time, plus cron and upkeep.

    Args:
        queue: the queue to work on.
        functions: callables (registered by ``__qualname__``) or ``(name, callable)``
            pairs; each is called as ``function(ctx, **job.kwargs)``, sync ones in one
            of the worker's ``concurrency`` threads with the caller's contextvars.
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
        handle_signals: whether ``start()`` stops the worker on SIGINT and SIGTERM
            (the handlers it replaces are put back at stop). saqlite only: a program
            that handles signals itself passes False and calls ``stop()``.

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
        handle_signals: bool = True,
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
        self.handle_signals = handle_signals
        self.context: Context = {"worker": self, "queue": queue}
        self._running: dict[str, _Running] = {}
        self._slot_freed: t.Optional[asyncio.Event] = None
        self._stop_event: t.Optional[asyncio.Event] = None
        self._tasks: list[asyncio.Task[t.Any]] = []
        self._job_tasks: set[asyncio.Task[t.Any]] = set()
        self._claimed = 0
        self._cron_next: dict[str, float] = {}
        self._stopping: t.Optional[asyncio.Future[None]] = None
        self._threads = _Threads(concurrency, f"saqlite-worker-{self.id[:8]}")
        self._restore_signals: list[Callable[[], None]] = []
        self._connected_queue = False
        self._giving_up_writes = False

    def __repr__(self) -> str:
        return f"Worker<id={self.id!r}, queue={self.queue.name!r}>"

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        """Run until ``stop()``, SIGINT or SIGTERM (or, in burst mode, an empty queue)."""
        logger.info("Worker starting: %s", repr(self.queue))
        self._stop_event = asyncio.Event()
        self._stopping = None
        self._giving_up_writes = False
        self._slot_freed = asyncio.Event()
        if self.handle_signals:
            self._install_signal_handlers()
        try:
            self._connected_queue = self.queue._conn is None
            await self.queue.connect()
            await _call_hooks(self.startup, self.context)
            await self.queue.worker_info(self.id, self.queue.name, self.metadata, self._info_ttl)
            self._tasks = [
                asyncio.create_task(self._every("worker_info", self._beat)),
                asyncio.create_task(self._every("sweep", self._sweep)),
                asyncio.create_task(self._watch_aborts()),
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
        caller waits for the one stop to end.

        A sync function cannot be stopped: a job whose thread still runs after
        ``cancellation_hard_deadline_s`` keeps running, owned by this worker, which
        stays registered (alive to sweepers) and writes the job back when the thread
        returns, as long as the event loop runs. If the process exits first, the job
        is recovered by a sweep like a dead worker's."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        logger.info("Working shutting down")  # SAQ's words (sic), for log-based alerts
        if self._stop_event is not None:
            self._stop_event.set()
        self._remove_signal_handlers()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._put_back_unstarted()
        if self._job_tasks and self.shutdown_grace_period_s:
            await asyncio.wait(set(self._job_tasks), timeout=self.shutdown_grace_period_s)
        for running in list(self._running.values()):
            running.cancel("stop")
        if self._job_tasks:
            await asyncio.wait(set(self._job_tasks), timeout=self.cancellation_hard_deadline_s)
        for running in self._running.values():
            logger.warning(
                "Function: %s did not finish cancellation in time, it may be stuck or blocked",
                running.job.function,
            )
            logger.warning(
                "Worker %s: %s still runs in a thread; it stays active, owned by this worker, "
                "until it returns (if this process exits first, a sweep recovers it)",
                self.id,
                running.job.info(),
            )
        lingering = {running.runner for running in self._running.values() if running.runner}
        writing = self._job_tasks - lingering
        if writing:  # the cancelled jobs are written back as queued
            self._giving_up_writes = True
            await asyncio.wait(writing, timeout=_WRITE_BACK_S)
        try:
            await _call_hooks(self.shutdown, self.context)
        finally:
            if lingering:
                self._tasks = [asyncio.create_task(self._linger(lingering))]
            else:
                await self._leave()

    async def _put_back_unstarted(self) -> None:
        """Put back the jobs this worker claimed but never started: a stop that came
        while a claim's rows were on their way (the statement had committed) cut the
        claim short. Without this they would wait, active, for a sweep."""
        if self.queue._conn is None:
            return
        try:
            held = await self.queue._held_by(self.id)
        except StorageError as exc:
            logger.warning("Worker %s could not look for unstarted jobs: %s", self.id, exc)
            return
        for job in held:
            if job.key not in self._running:
                await self._store(job, "stop", None)

    async def _linger(self, jobs: set[asyncio.Task[t.Any]]) -> None:
        """Keep this worker registered while jobs whose threads outlived stop() run
        and are written back, then leave."""
        pending = set(jobs)
        while pending:
            _done, pending = await asyncio.wait(pending, timeout=self.timers["worker_info"])
            with contextlib.suppress(Exception):
                await self._beat()
        await self._leave()

    async def _leave(self) -> None:
        """Unregister, and close the queue if the worker opened it."""
        self._threads.shutdown()
        with contextlib.suppress(StorageError, ValueError):
            await self.queue._forget_worker(self.id)
        if self._connected_queue:
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
        # The loop's own handlers (asyncio keeps them in a private dict) and the
        # signal module's, so that stop() can put back what was there.
        loop_handlers = getattr(loop, "_signal_handlers", {})
        for signum in self.SIGNALS:
            before = loop_handlers.get(signum)
            try:
                previous = signal.getsignal(signum)
                loop.add_signal_handler(signum, event.set)
            except (NotImplementedError, RuntimeError, ValueError):
                # Windows, or not the main thread: signal.signal where allowed.
                try:
                    signal.signal(signum, lambda *_: loop.call_soon_threadsafe(event.set))
                except ValueError:
                    continue
                self._restore_signals.append(
                    functools.partial(_restore_loop_signal, None, signum, None, previous)
                )
            else:
                self._restore_signals.append(
                    functools.partial(_restore_loop_signal, loop, signum, before, previous)
                )

    def _remove_signal_handlers(self) -> None:
        while self._restore_signals:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, TypeError):
                self._restore_signals.pop()()

    @property
    def _info_ttl(self) -> int:
        return int(max(self.timers["worker_info"] * 3, 30))

    async def _every(self, timer: str, action: Callable[[], Awaitable[t.Any]]) -> None:
        period = float(self.timers[timer])  # type: ignore[literal-required]
        outage = _Outage(self, f"run its {timer} timer")
        while True:
            try:
                await action()
            except asyncio.CancelledError:
                raise
            except StorageError as exc:  # a locked or full file: said once, then now and then
                outage.failed(exc)
            except Exception:
                logger.exception("Worker %s: %s failed", self.id, timer)
            else:
                outage.ended()
            await asyncio.sleep(period)

    async def _watch_aborts(self) -> None:
        """Cancel aborted jobs as soon as an abort is announced, and every
        ``timers["abort"]`` seconds in case an announcement was lost."""
        wakeup = self.queue._wakeup
        await wakeup.want("aborts")
        while True:
            generation = wakeup.generation("aborts")
            try:
                await self._cancel_aborted()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Worker %s: abort failed", self.id)
            await wakeup.wait("aborts", generation, float(self.timers["abort"]))

    async def worker_info(self, ttl: int = 60) -> WorkerInfo:
        """Store this worker's counters and metadata, listed for ``ttl`` seconds."""
        return await self.queue.worker_info(
            self.id, queue_key=self.queue.name, metadata=self.metadata, ttl=ttl
        )

    async def _beat(self) -> None:
        await self.worker_info(self._info_ttl)

    async def _sweep(self) -> None:
        swept = await self.queue.sweep(lock=math.ceil(self.timers["sweep"]))
        if swept:
            logger.info("Swept %d job(s)", len(swept))

    # -- running jobs --------------------------------------------------------

    async def _dispatch(self) -> None:
        """Claim as many due jobs as there are free slots, and start them. A storage
        error (a full disk, a write lock held past lock_timeout) is waited out."""
        assert self._slot_freed is not None
        outage = _Outage(self, "claim jobs")
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
            try:
                if self.burst and self._running:
                    jobs = await self.queue._claim(free, self.id)
                    if not jobs:
                        await self._wait_for_slot()
                        continue
                else:
                    jobs = await self.queue._claim_waiting(free, self.id, timeout)
                    if not jobs:
                        return  # burst: nothing came within dequeue_timeout
            except StorageError as exc:
                await asyncio.sleep(outage.failed(exc))
                continue
            outage.ended()
            self._claimed += len(jobs)
            for job in jobs:
                self._start_job(job)

    async def _wait_for_slot(self) -> None:
        assert self._slot_freed is not None
        await self._slot_freed.wait()
        await asyncio.sleep(0)  # let jobs that end together free their slots

    def _start_job(self, job: Job) -> None:
        running = _Running(job, self.id)
        self._running[job.key] = running
        task = asyncio.create_task(self._run(running))
        running.runner = task
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
        running = _Running(jobs[0], self.id, runner=asyncio.current_task())
        self._running[jobs[0].key] = running
        await self._run(running)
        return True

    async def _run(self, running: _Running) -> None:
        """Run one claimed job and store its outcome. Its slot is freed as soon as the
        function returns, so the next claim overlaps with this job's write."""
        job = running.job
        # Writes through this Job object apply while the job is this run's; one that
        # finds it taken over (swept while this worker was paused) cancels the run.
        job._lease = running
        context: Context = {**self.context, "job": job}
        cancelled = False
        try:
            outcome, value = await self._execute(running, context)
        except _Abandoned:  # the thread still runs: leave the job to it (see stop())
            raise asyncio.CancelledError from None
        except asyncio.CancelledError:  # this task itself, not the job's, was cancelled
            outcome, value, cancelled = "stop", None, True
        finally:
            job._lease = None
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
            error = (
                f"No function named {job.function!r} is registered with worker {self.id} "
                f"(registered: {registered}). Is the worker configured with this function?"
            )
            return self._failed(job, error)
        # The function runs in this task, which abort, timeout and stop cancel (no task
        # of its own: that costs more than the rest of a small job's overhead).
        running.task = asyncio.current_task()
        timer = None
        if job.timeout:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(job.timeout, running.cancel, "timeout")
        try:
            if job.depends_on:
                context["dependencies"] = await self.queue._dependency_results(job)
            if self.before_process:
                await _call_hooks(self.before_process, context)
            result = await _call(function, context, job.kwargs or {}, self._threads)
            if running.cancelled_for is None:
                return "complete", result
        except _Abandoned:
            raise
        except _Sleep as sleeping:
            if running.cancelled_for is None:
                return "sleep", sleeping.until
        except asyncio.CancelledError:
            if running.cancelled_for is None:
                raise
        except Exception as exc:
            context["exception"] = exc
            if running.cancelled_for is None:
                return self._failed(job, traceback.format_exc(), exc)
        finally:
            running.task = None  # nothing may cancel this task after the function
            if timer is not None:
                timer.cancel()
        # Cancelled: the reason decides the outcome, whatever the function did with
        # the cancellation (raised it, or caught it and returned).
        uncancel = getattr(asyncio.current_task(), "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()
        if running.cancelled_for == "abort":
            return "aborted", running.abort_error
        if running.cancelled_for in ("stop", "lost"):
            return str(running.cancelled_for), None
        timeout = asyncio.TimeoutError(f"{job.function} ran past its timeout of {job.timeout} s")
        context["exception"] = timeout
        return self._failed(
            job, "".join(traceback.format_exception_only(type(timeout), timeout)), timeout
        )

    @staticmethod
    def _failed(job: Job, error: str, exc: t.Optional[BaseException] = None) -> tuple[str, t.Any]:
        """The outcome of a failed run, logged as SAQ does ("Error processing job"),
        at WARNING when the job will be retried and at ERROR when it fails."""
        retry = job.retryable
        if logger.isEnabledFor(logging.WARNING if retry else logging.ERROR):
            if exc is None:
                logger.log(
                    logging.WARNING if retry else logging.ERROR,
                    "Error processing job %s: %s",
                    job,
                    error,
                )
            else:
                logger.log(
                    logging.WARNING if retry else logging.ERROR,
                    "Error processing job %s",
                    job,
                    exc_info=exc,
                )
        return ("retry" if retry else "failed"), error

    async def _store(self, job: Job, outcome: str, value: t.Any) -> None:
        """Write a job's outcome: finished, or back in the queue."""
        # The sweep aborts a stuck job to retry it: the job goes back if it may.
        swept = outcome == "aborted" and value == self.queue.swept_error_message and job.retryable
        if outcome == "lost":
            logger.warning(
                "Worker %s lost %s: the job was taken over (swept, then run again) while "
                "this run was paused or cut off; this run is cancelled and stores nothing",
                self.id,
                job.info(),
            )
        elif outcome == "sleep":
            stored = await self._persist(job, lambda: self.queue._sleep(job, value))
            await self._settle(job, stored)
        elif outcome in ("retry", "stop") or swept:
            error = "cancelled" if outcome == "stop" else value
            stored = await self._persist(job, lambda: self.queue._retry(job, error))
            await self._settle(job, stored)
        elif outcome == "complete":
            await self._finish(job, Status.COMPLETE, result=value)
        else:
            status = Status.ABORTED if outcome == "aborted" else Status.FAILED
            await self._finish(job, status, error=value)

    async def _finish(
        self, job: Job, status: Status, *, result: t.Any = None, error: t.Optional[str] = None
    ) -> None:
        # A job's function may change its meta in place and expect it kept (as SAQ
        # stores the whole job); other fields change only through job.update().
        finish_only = not job.meta
        status_before = job.status
        try:
            stored = await self._persist(
                job,
                lambda: self.queue._finish(job, status, result, error, finish_only=finish_only),
            )
        except TypeError as exc:  # the result cannot be serialised
            job.status = status_before
            error = str(exc)
            stored = await self._persist(
                job, lambda: self.queue._finish(job, Status.FAILED, None, error, finish_only=False)
            )
        await self._settle(job, stored)

    async def _persist(self, job: Job, write: Callable[[], Awaitable[bool]]) -> bool:
        """Write a job's outcome until it lands: a storage error (a full disk, a
        write lock held past lock_timeout) is logged and the write tried again, until
        it lands or the worker stops (then the job stays active for a sweep)."""
        status, outage = job.status, None
        while True:
            job.status = status  # as the worker saw it: the guard of the write
            try:
                stored = await write()
            except StorageError as exc:
                if self._giving_up_writes:
                    logger.error(
                        "Worker %s stopped without storing the outcome of %s: %s; "
                        "a sweep will recover the job",
                        self.id,
                        job.info(),
                        exc,
                    )
                    return True  # nothing more to settle
                outage = outage or _Outage(self, f"store the outcome of {job.info()}")
                await asyncio.sleep(outage.failed(exc))
                continue
            if outage is not None:
                outage.ended()
            return stored

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
            await self.queue._end_aborted(current, current.error)
            job.replace(current)
        else:
            logger.warning(
                "Worker %s lost %s: the job changed while it ran (swept, or finished "
                "elsewhere); its outcome here was not stored",
                self.id,
                job.info(),
            )

    async def abort(self, abort_threshold: float = 0.0) -> None:
        """Cancel the running jobs that were aborted through the queue and have run
        for at least ``abort_threshold`` seconds, and wait until their functions have
        returned (a sync function's thread cannot be stopped: its job keeps its slot
        until it returns) and they are finished ABORTED."""
        current = asyncio.current_task()
        waited = {
            running.runner
            for running in await self._cancel_aborted(abort_threshold)
            if running.runner is not None and running.runner is not current
        }
        if waited:
            await asyncio.wait(waited)

    async def _cancel_aborted(self, abort_threshold: float = 0.0) -> list[_Running]:
        if not self._running:
            return []
        cancelled = []
        for key in await self.queue._aborting_keys(self.id):
            running = self._running.get(key)
            if running is None or running.task is None:
                continue  # not ours, or its function has returned
            if (running.job.duration("running") or 0) < abort_threshold * 1000:
                continue
            stored = await self.queue.job(key)
            logger.info("Aborting %s", running.job.id)
            running.abort_error = (stored.error if stored else None) or "aborted"
            running.job.status = Status.ABORTING
            running.cancel("abort")
            cancelled.append(running)
        return cancelled

    async def schedule(self, lock: int = 1) -> None:
        """Enqueue the next run of each cron job that is not scheduled yet.

        Args:
            lock: kept for SAQ compatibility (a run's key makes it unique already).
        """
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
                **{
                    field: getattr(cron_job, field)
                    for field in ("timeout", "heartbeat", "retries", "ttl")
                    if getattr(cron_job, field) is not None
                },
            )
            if await self.queue.enqueue(job):
                logger.info("Scheduled %s", [job.id])
            else:
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


# =============================================================================
# Resumable jobs: step and sleep
# =============================================================================

#: How early (ms) a sleeping job may run again and count its sleep as over: the
#: claim reads SQLite's clock, the job's record Python's.
_SLEEP_SLACK_MS = 10


class _StepRow(t.NamedTuple):
    """A step or sleep of a job's record, as a run of the job reads it."""

    outcome: str
    started: int
    finished: t.Optional[int]
    result: t.Union[str, bytes, None]


class _Sleep(BaseException):
    """Raised by sleep() through the job's function to end its run: its worker puts
    the job back in the queue until ``until`` (epoch s). Not an Exception, so that a
    function's ``except Exception`` does not take it for an error."""

    def __init__(self, until: float) -> None:
        super().__init__(until)
        self.until = until


async def step(
    ctx: Context, name: str, fn: Callable[..., t.Any], /, *args: t.Any, **kwargs: t.Any
) -> t.Any:
    """Run ``fn(*args, **kwargs)`` once for the job: a durable step.

    Its result is recorded in the file when it returns; when the job runs again (a
    retry after an error, a worker killed or stopped, a resume after ``sleep``) the
    recorded result comes back without calling ``fn``. A step that started but did
    not finish runs again: a step runs at least once, so make it safe to repeat.
    What it returns is what its record gives back (through the queue's ``dump`` and
    ``load``: JSON turns a tuple into a list), on the first run as on a replay.

    Call it from an async job function, with the job's ``ctx``. An async ``fn`` runs
    in the job's task; a plain one in one of the worker's threads (as sync jobs
    do). Under SAQ's own Worker (no file) it just calls ``fn``.

    Args:
        ctx: the job function's ctx.
        name: the step's name, unique within the job (a step or a sleep).
        fn: the function; ``args`` and ``kwargs`` go to it.

    Raises:
        ValueError: ``name`` is not a non-empty string, or was used before in this run.
        RuntimeError: ``ctx`` is not that of a job this process's worker runs.
        TypeError: the result cannot be encoded by the queue's ``dump``.
    """
    run = _run_of(ctx, "step", name)
    if run is None:  # SAQ's Worker: no record to keep
        return await _call_step(ctx, fn, args, kwargs)
    record = await _record_of(run)
    queue = run.job.get_queue()
    row = record.get(name)
    if row is not None and row.outcome == "done":
        return None if row.result is None else queue._codec.load(row.result)["result"]
    started = now()
    # The start is written while fn runs, before the end (the writes keep their order);
    # if the job turns out to be no longer this run's, the run is cancelled then.
    beginning = queue._step_writes.put(
        _step_item(run, name, started=started, finished=None, outcome="running")
    )
    beginning.add_done_callback(functools.partial(_check_lease, run))
    try:
        value = await _call_step(ctx, fn, args, kwargs)
    except Exception as exc:
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        await _record_step(
            run,
            _step_item(run, name, started=started, finished=now(), outcome="failed", error=error),
        )
        raise
    try:
        result = None if value is None else queue._codec.dump({"result": value})
        replayed = None if result is None else queue._codec.load(result)["result"]
    except Exception as exc:  # whatever dump raises
        error = (
            f"The result of step {name!r} of {run.job.info()} cannot be recorded: {exc!r}. "
            "A step must return what the queue's dump can encode (JSON by default), "
            "or the Queue needs dump= and load= that can"
        )
        await _record_step(
            run,
            _step_item(run, name, started=started, finished=now(), outcome="failed", error=error),
        )
        raise TypeError(error) from exc
    finished = now()
    await _record_step(
        run,
        _step_item(run, name, started=started, finished=finished, outcome="done", result=result),
    )
    record[name] = _StepRow("done", started, finished, result)
    return replayed


async def sleep(ctx: Context, name: str, seconds: float) -> None:
    """Let the job sleep ``seconds``: a durable sleep.

    The job gives back its worker slot and goes back in the queue (QUEUED, scheduled
    for its end) without using a retry; while it sleeps the tools show it as
    sleeping. When it runs again, its finished steps replay from the record and it
    carries on after this call. The job's timeout counts per run: from its claim to
    a sleep, and from its resume on; time asleep does not count. Call it from the job
    function itself (not inside a step). Under SAQ's own Worker it just sleeps.

    Args:
        ctx: the job function's ctx.
        name: the sleep's name, unique within the job (a step or a sleep).
        seconds: how long, from 0 to 1e10.

    Raises:
        ValueError: ``seconds`` is negative, not a number or too large; ``name`` is
            not a non-empty string, or was used before in this run.
        RuntimeError: ``ctx`` is not that of a job this process's worker runs.
    """
    _check_range("saqlite.sleep()", "seconds", seconds, _MAX_SECONDS, "a number of seconds")
    run = _run_of(ctx, "sleep", name)
    if run is None:  # SAQ's Worker: no record to keep
        await asyncio.sleep(seconds)
        return
    row = (await _record_of(run)).get(name)
    if row is not None and row.outcome == "done":
        return
    if row is None or row.outcome != "sleeping" or row.finished is None:
        started = now()
        until = started + math.ceil(seconds * 1000)
        await _record_step(
            run, _step_item(run, name, started=started, finished=until, outcome="sleeping")
        )
        raise _Sleep(until / 1000)
    current = now()
    if current < row.finished - _SLEEP_SLACK_MS:  # run again early: sleep the rest
        raise _Sleep(row.finished / 1000)
    await _record_step(
        run, _step_item(run, name, started=row.started, finished=current, outcome="done")
    )


def _run_of(ctx: Context, what: str, name: object) -> t.Optional[_Running]:
    """The run of the job whose ctx this is, with ``name`` taken in it; None under
    SAQ's Worker, whose ctx holds SAQ's Job."""
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"saqlite.{what}() needs a name, a non-empty string unique within the job, got {name!r}"
        )
    job = ctx.get("job") if isinstance(ctx, dict) else None
    if job is None:
        keys = sorted(ctx) if isinstance(ctx, dict) else type(ctx).__name__
        raise RuntimeError(
            f"saqlite.{what}({name!r}) needs the ctx a worker passes a job's function "
            f"(with ctx['job']), got {keys!r}: call it from a job function, with its ctx"
        )
    if not isinstance(job, Job):
        return None
    run = job._lease
    if run is None:
        raise RuntimeError(
            f"saqlite.{what}({name!r}) was called for {job.info()}, which no worker of this "
            "process is running: call it from the job's function, while it runs"
        )
    if name in run.named:
        raise ValueError(
            f"saqlite.{what}() name {name!r} is used twice in one run of {job.info()}: "
            f"give each step and sleep of a job its own name (in a loop: f'{name}-{{i}}')"
        )
    run.named.add(name)
    return run


_SQL_STEP_RECORD = """
SELECT name, outcome, started, finished, result FROM saqlite_steps WHERE queue = ? AND key = ?
"""


async def _record_of(run: _Running) -> dict[str, _StepRow]:
    """The job's record of steps, read once per run."""
    if run.record is None:
        queue = run.job.get_queue()
        rows = await queue._fetch(_SQL_STEP_RECORD, (queue.name, run.job.key))
        run.record = {name: _StepRow(*values) for name, *values in rows}
    return run.record


async def _record_step(run: _Running, item: tuple[str, tuple[t.Any, ...]]) -> None:
    """Write a step of the record, unless the job is no longer this run's: then the
    run is cancelled (as a write through job.update() would do) and stores nothing."""
    if await run.job.get_queue()._step_writes.submit(item):
        return
    run.lost()
    await asyncio.sleep(0)  # lost() cancelled the run's task: it ends here
    raise asyncio.CancelledError  # (if it was cancelled for another reason already)


def _check_lease(run: _Running, write: asyncio.Future[bool]) -> None:
    """After the write of a step's start: cancel the run if the job is no longer its
    own. (A failed write is left to the write of the step's end, which tells too.)"""
    if not write.cancelled() and write.exception() is None and not write.result():
        run.lost()


async def _call_step(
    ctx: Context, fn: Callable[..., t.Any], args: tuple[t.Any, ...], kwargs: dict[str, t.Any]
) -> t.Any:
    """Call a step's function: an async one in this task, a plain one in a thread
    (the worker's own, seeing this task's contextvars)."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    call = functools.partial(fn, *args, **kwargs)
    worker = ctx.get("worker")
    if isinstance(worker, Worker):
        return await _call(lambda _context: call(), ctx, {}, worker._threads)
    outcome = await asyncio.to_thread(call)
    return await outcome if inspect.isawaitable(outcome) else outcome


# =============================================================================
# SyncQueue
# =============================================================================


class SyncQueue:
    """The same queue for code without an event loop: Tk or Qt handlers, Flask or
    Django views, scripts. Plain methods on the standard library's sqlite3, with no
    thread of its own; safe to share between threads.

    Jobs it returns belong to ``self.queue``, the async ``Queue`` twin, so they have
    the usual fields and ids.

    Args:
        path: the file, as for ``Queue``; or an async ``Queue``, whose file, name,
            dump, load and options this client shares (give nothing else then).
        name, dump, load: as for ``Queue`` (name: ``"default"`` when not given).
        options: the rest of ``Queue``'s keyword options: ``synchronous``,
            ``lock_timeout``, ``priorities``.

    Raises:
        TypeError: for ``swept_error_message`` (only a worker's sweep uses it), or
            for other arguments beside a ``Queue``.
    """

    def __init__(
        self,
        path: t.Union[str, os.PathLike[str], Queue] = DEFAULT_PATH,
        name: t.Optional[str] = None,
        dump: t.Optional[DumpType] = None,
        load: t.Optional[LoadType] = None,
        **options: Unpack[_QueueOptions],
    ) -> None:
        if "swept_error_message" in options:  # a Queue option that only a sweep uses
            raise TypeError(
                "SyncQueue takes no swept_error_message: only a worker's sweep uses it; "
                "give it to the Queue of the Worker"
            )
        if isinstance(path, Queue):
            if name is not None or dump is not None or load is not None or options:
                raise TypeError(
                    "SyncQueue(queue) takes nothing else: the queue's file, name, dump, "
                    "load and options are the client's"
                )
            self.queue = path
        else:
            self.queue = Queue(path, "default" if name is None else name, dump, load, **options)
        self._codec = self.queue._codec  # one codec: jobs are the twin's
        self._conn: t.Optional[sqlite3.Connection] = None
        # One statement (or transaction) at a time on the connection. Lock order: this
        # lock, then the wake-ups' condition; no database call is made while holding the
        # condition (an event-loop callback takes it: see _SyncWakeup).
        self._lock = threading.RLock()
        self._wakeup = _SyncWakeup(self)

    def __repr__(self) -> str:
        return f"SyncQueue<path={self.path!r}, name={self.name!r}>"

    @classmethod
    def from_url(cls, url: str, **kwargs: t.Any) -> SyncQueue:
        """A client from ``sqlite:///relative.db`` or ``sqlite:////absolute.db``.

        Raises:
            InvalidUrlError: for another URL.
        """
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
            except sqlite3.Error as exc:
                raise _storage_error(self.path, exc) from exc
            try:
                for pragma in _connection_pragmas(self.queue.synchronous):
                    conn.execute(pragma)
            except sqlite3.Error as exc:
                conn.close()
                raise _storage_error(self.path, exc) from exc
            self._conn = conn

    def close(self) -> None:
        """Close the file. Safe to call twice; a later call opens it again."""
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
        """Store many jobs in one transaction, all or none: as ``Queue.enqueue_many``."""
        prepared = [self._codec.prepare(job, dict(kwargs)) for job in jobs]
        inserted = self._insert_all(prepared)
        return [job if ok else None for job, ok in zip(prepared, inserted)]

    def enqueue_stream(self, jobs: Iterable[t.Union[Job, str, Function]], **kwargs: t.Any) -> int:
        """saqlite only: store jobs read lazily, in short transactions of up to 1,000:
        as ``Queue.enqueue_stream``; how many were stored."""
        stored = done = 0
        iterator = iter(jobs)
        while chunk := list(itertools.islice(iterator, _STREAM_SLICE)):
            prepared = _prepare_stream_slice(self._codec, chunk, kwargs, stored, done)
            try:
                stored += sum(self._insert_all(prepared))
            except Exception as exc:
                raise EnqueueStreamError(stored, done, _slice_items(done, chunk), exc) from exc
            done += len(chunk)
        return stored

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
        """Live workers, counts, and (with ``jobs``) unfinished jobs: as ``Queue.info``."""
        return self._drive(_info_steps(self.queue, jobs, offset, limit))

    def pause(
        self,
        function: t.Optional[str] = None,
        *,
        until: t.Union[datetime, float, None] = None,
        for_s: t.Optional[float] = None,
    ) -> None:
        """saqlite only: pause the queue, or one function in it: as ``Queue.pause``."""
        self._drive(_pause_steps(self.name, function, until, for_s))
        self._wakeup.notify("jobs")

    def resume(self, function: t.Optional[str] = None) -> None:
        """saqlite only: end a pause: as ``Queue.resume``."""
        self._drive(_resume_steps(self.name, function))
        self._wakeup.notify("jobs")

    def limit(
        self,
        function: t.Optional[str] = None,
        *,
        rate: t.Union[str, tuple[int, float], None] = None,
        concurrency: t.Optional[int] = None,
        per_group: t.Optional[int] = None,
        clear: bool = False,
    ) -> None:
        """saqlite only: limit starts and running jobs: as ``Queue.limit``."""
        params = _limit_params(
            self.name,
            function,
            rate=rate,
            concurrency=concurrency,
            per_group=per_group,
            clear=clear,
        )
        self._atomic(_limit_steps(params))
        self._wakeup.notify("jobs")

    def flow(self) -> list[FlowRule]:
        """saqlite only: the pauses and limits in force, with their use: as ``Queue.flow``."""
        return self._drive(_flow_steps(self.name))

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
        self._insert_all(mapping.jobs)
        self._wait_until(mapping.keys, mapping.settled, timeout)
        return mapping.results(self.jobs(mapping.keys))

    def abort(self, job: Job, error: str) -> None:
        """Abort a job: as ``Queue.abort``; ``job`` is updated in place."""
        current, changed = self._drive(_abort_steps(self.queue, job.key, error))
        if changed:
            self._wakeup.notify("changes")
            if current is not None and current.status == Status.ABORTING:
                self._wakeup.notify("aborts")
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
        """Run a sequence of statements (see _Steps) on this client's connection; a
        statement's exception is thrown into ``steps``, which may handle it."""
        stepper = _Stepper(steps)
        while stepper.statement is not None:
            try:
                rows = self._fetch(*stepper.statement)
            except Exception as exc:
                stepper.resume(exc)
            else:
                stepper.resume(rows)
        return t.cast("_R", stepper.result)

    def _fetch(self, sql: str, params: t.Any = ()) -> list[t.Any]:
        """Run one statement (its own transaction) and return its rows."""
        wait = _LockWait(self.queue)
        while True:
            try:
                with self._lock:
                    rows = self._connection().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                time.sleep(wait.pause(exc))
                continue
            wait.done()
            return rows

    def _connection(self) -> sqlite3.Connection:
        """The connection, opened again if another thread closed it; call it holding
        the lock."""
        if self._conn is None:
            self.connect()
        return t.cast(sqlite3.Connection, self._conn)

    def _insert_all(self, jobs: list[Job]) -> list[bool]:
        """Insert jobs in one transaction; raise (storing none) if one can't be."""
        steps = _enqueue_steps(self.name, jobs, [self._codec.row(job) for job in jobs])
        if len(jobs) == 1 and not jobs[0].depends_on:  # one statement, atomic on its own
            inserted = self._drive(steps)
        else:
            inserted = self._atomic(steps)
        if any(inserted):
            self._wakeup.notify("jobs")
        return inserted

    def _atomic(self, steps: _Steps[_R]) -> _R:
        """Run a sequence of statements as one transaction: all commit, or none. The
        lock is held throughout, so no other thread's statement joins it.

        ``steps`` is run once: a busy file is waited for at BEGIN, before any step."""
        wait = _LockWait(self.queue)
        with self._lock:
            while True:
                conn = self._connection()
                began = False
                try:
                    with _transaction(conn):
                        began = True
                        wait.done()
                        return self._drive(steps)
                except sqlite3.Error as exc:  # BEGIN or COMMIT: statements raise StorageError
                    if not began:
                        time.sleep(wait.pause(exc))  # raises StorageError if not a lock wait
                        continue
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise _storage_error(self.path, exc) from exc


# =============================================================================
# Command line: running workers
# =============================================================================

_SETTINGS_HELP = "module.attribute naming a dict of Worker arguments, or a module with `settings`"
_VERBOSE_HELP = "log DEBUG too (default INFO); -vv adds aiosqlite's line per statement"
#: The operator tooling's commands (after the marker), named here so that a copy of
#: this file cut at the marker says what it lacks rather than take one for settings.
_OPS_COMMANDS = (
    "info", "jobs", "job", "retry", "abort", "purge", "vacuum", "burst", "web", "export",
    "pause", "resume", "limit", "drain", "stats", "tail",
)  # fmt: skip


def _import_settings(name: str) -> dict[str, t.Any]:
    """The settings dict that ``module.attribute`` names (called if callable), or the
    ``settings`` of the module ``name`` (``saqlite examples.settings``), as SAQ takes.

    Raises:
        _OpsError: no such settings, or not a dict (an error raised inside the
            settings module itself is not caught: its traceback shows where).
    """
    cwd = os.getcwd()
    if cwd not in sys.path:  # settings are found from where the command runs, as in SAQ
        sys.path.insert(0, cwd)
    module_name, _, attribute = name.rpartition(".")
    candidates = [(module_name, attribute)] if module_name else []
    candidates.append((name, "settings"))
    reasons = []
    for candidate, attribute_name in candidates:
        try:
            module = importlib.import_module(candidate)
        except ModuleNotFoundError as exc:
            if not exc.name or not (candidate + ".").startswith(exc.name + "."):
                raise  # a module that the settings module imports is missing: show where
            reasons.append(str(exc))
            continue
        settings = getattr(module, attribute_name, None)
        if inspect.ismodule(settings):  # a package's submodule, once imported
            settings = getattr(settings, "settings", None)
        if settings is not None:
            break
        reasons.append(f"module {candidate!r} has no {attribute_name!r}")
    else:
        raise _OpsError(
            f"Cannot find the settings {name!r} ({'; '.join(dict.fromkeys(reasons))}): give "
            "module.attribute naming a dict of Worker arguments, e.g. myapp.tasks.settings, "
            f"or a module holding a `settings` dict, importable from {cwd}"
        )
    if callable(settings):
        settings = settings()
    if not isinstance(settings, dict):
        raise _OpsError(
            f"Settings {name!r} must be a dict of Worker arguments (or a callable returning "
            f"one), got {type(settings).__name__}"
        )
    return dict(settings)


def _load_settings(name: str) -> tuple[Queue, dict[str, t.Any]]:
    """The queue and the other Worker arguments of a settings dict.

    Raises:
        _OpsError: the settings cannot be found or imported, or hold no valid queue.
    """
    try:
        settings = _import_settings(name)
    except _OpsError:
        raise
    except Exception as exc:  # in the settings module: its traceback shows where
        traceback.print_exc()
        raise _OpsError(
            f"importing the settings {name!r} raised {type(exc).__name__}: {exc} (see above)"
        ) from exc
    try:
        queue = _settings_queue(settings)
    except TypeError as exc:
        raise _OpsError(str(exc)) from None
    settings.pop("queue", None)
    return queue, settings


def _settings_queue(settings: dict[str, t.Any]) -> Queue:
    queue = settings.get("queue")
    if queue is None:
        return Queue(DEFAULT_PATH)
    if not isinstance(queue, Queue):
        raise TypeError(f"settings['queue'] must be a saqlite Queue, got {queue!r}")
    return queue


def _run_worker(settings_name: str, verbose: int) -> None:
    _configure_logging(verbose)
    queue, settings = _load_settings(settings_name)
    worker = Worker(queue, **settings)
    asyncio.run(worker.start())


async def _check(queue: Queue) -> bool:
    try:
        info = await queue.info()
    finally:
        await queue.disconnect()
    return bool(info["workers"])


def _configure_logging(verbose: int) -> None:
    """Log to stderr: -1 (``-q``) errors only; 0 INFO; 1 (``-v``) DEBUG, but for
    aiosqlite's line per statement; 2 (``-vv``) every DEBUG line."""
    level = {-1: logging.ERROR, 0: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiosqlite").setLevel(
        logging.DEBUG if verbose >= 2 else max(level, logging.INFO)
    )


class _CommandLineExtras(t.NamedTuple):
    """What the operator tooling (the section after the marker) adds to ``main()``.
    It appends itself to ``_EXTRAS`` at import: a copy of this file cut at the marker
    runs workers without it, and says so when asked for a command."""

    #: Runs ``saqlite COMMAND ...`` (see _OPS_COMMANDS); None when argv names settings.
    run_command: Callable[[list[str]], t.Optional[int]]
    #: The commands, for ``saqlite -h``.
    epilog: str
    #: Adds ``--web`` and its options to the workers' parser.
    add_arguments: Callable[[argparse.ArgumentParser], None]
    #: Runs a worker with the page when the arguments ask for it; False when not.
    serve: Callable[[argparse.Namespace, int], bool]


_EXTRAS: list[_CommandLineExtras] = []


def main(argv: t.Optional[list[str]] = None) -> int:
    """The ``saqlite`` command: run workers from a settings dict, as ``saq`` does."""
    argv = sys.argv[1:] if argv is None else argv
    extras = _EXTRAS[0] if _EXTRAS else None
    if extras is not None:
        code = extras.run_command(argv)
        if code is not None:
            return code
    elif argv and argv[0] in _OPS_COMMANDS:
        print(
            f"saqlite: this copy of saqlite has no operator commands (`saqlite {argv[0]}`): "
            "it was cut at the operator tooling marker. Run them with the whole saqlite.py "
            "(pip install saqlite)",
            file=sys.stderr,
        )
        return 2
    parser = argparse.ArgumentParser(
        prog="saqlite",
        description="Start saqlite workers from a settings dict, as `saq` does.",
        epilog=extras.epilog if extras is not None else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("settings", help=_SETTINGS_HELP)
    parser.add_argument("--workers", type=int, default=1, help="worker processes to start")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=_VERBOSE_HELP)
    parser.add_argument("-q", "--quiet", action="store_true", help="log only errors")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 0 when a live worker is registered for the queue, else 1",
    )
    if extras is not None:
        extras.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    verbose = -1 if args.quiet else args.verbose
    try:  # here, not in every worker process, if the settings are wrong
        queue, settings = _load_settings(args.settings)
        Worker(queue, **settings)
    except (_OpsError, ValueError, TypeError) as exc:
        parser.error(f"settings {args.settings}: {exc}")
    if args.check:
        return 0 if asyncio.run(_check(queue)) else 1
    children = []
    context = multiprocessing.get_context("spawn")  # the same on every OS
    for _ in range(args.workers - 1):
        child = context.Process(target=_run_worker, args=(args.settings, verbose))
        child.start()
        children.append(child)
    try:
        if extras is None or not extras.serve(args, verbose):
            _run_worker(args.settings, verbose)
    except _OpsError as exc:
        print(f"saqlite: {exc}", file=sys.stderr)
        return 2
    finally:
        for child in children:  # this process was told to stop: so are they
            if child.is_alive():
                child.terminate()
            child.join()
    return 0


# =============================================================================
# Storage steps: each operation's statements, shared by Queue and SyncQueue
# =============================================================================

#
# Each is a generator that yields (sql, params), receives the statement's rows and
# finally returns the operation's result; Queue._drive runs them on aiosqlite and
# SyncQueue._drive on sqlite3, so the async and the sync client share every query.

_Statement = tuple[str, t.Any]
#: A write's outcome for one item: whether it applied, or why it could not be made.
_Outcome = t.Union[bool, Exception]
if t.TYPE_CHECKING:
    from collections.abc import Generator

    _Steps: TypeAlias = Generator[_Statement, list[t.Any], _R]


class _Stepper(t.Generic[_R]):
    """Where a client is in running a sequence of statements (see _Steps): the next
    ``statement`` to run, or None once done (then ``result`` is the sequence's)."""

    def __init__(self, steps: _Steps[_R]) -> None:
        self._steps = steps
        self.statement: t.Optional[_Statement] = None
        self.result: t.Optional[_R] = None
        self.resume(None)  # to the first statement

    def resume(self, outcome: t.Union[list[t.Any], Exception, None]) -> None:
        """Give the sequence the last statement's rows, or throw its exception in."""
        try:
            if isinstance(outcome, Exception):
                self.statement = self._steps.throw(outcome)
            else:
                self.statement = self._steps.send(t.cast("list[t.Any]", outcome))
        except StopIteration as finished:
            self.statement = None
            self.result = finished.value


def _rows_named(columns: t.Sequence[str]) -> str:
    """The rows of a write as a table ``v`` with these columns (``{rows}``: the
    placeholders, filled in per statement)."""
    return f"WITH v({', '.join(columns)}) AS (VALUES {{rows}}) "


# Enqueue: a key that is waiting or running is left alone (no row comes back);
# a finished one is replaced by the new job. An unscheduled job (run_at NULL) is due
# from now by SQLite's clock.
_SQL_INSERT_JOBS = (
    _rows_named(_JOB_COLUMNS)
    + f"INSERT INTO saqlite_jobs ({', '.join(_JOB_COLUMNS)}) SELECT "
    + ", ".join(f"COALESCE(run_at, {_SQL_NOW})" if c == "run_at" else c for c in _JOB_COLUMNS)
    + " FROM v WHERE true ON CONFLICT (queue, key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _JOB_COLUMNS[2:])
    + ", deaths = 0, aborted_by = NULL"
    + f" WHERE saqlite_jobs.status IN {_FINISHED_SQL} RETURNING key"
)


def _insert_steps(rows: list[tuple[t.Any, ...]]) -> _Steps[list[_Outcome]]:
    """Insert job rows; for each, whether it went in (False: its key was taken), or
    the exception that kept that row out (the others go in: see _isolated)."""
    inserted: set[str] = set()
    failed: dict[int, Exception] = {}

    def statement(chunk: t.Sequence[tuple[t.Any, ...]]) -> _Statement:
        sql = _SQL_INSERT_JOBS.format(rows=_row_placeholders(len(chunk), len(_JOB_COLUMNS)))
        return sql, [value for row in chunk for value in row]

    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        end = min(start + _ROWS_PER_STATEMENT, len(rows))
        found = yield from _isolated(statement, rows, start, end, failed)
        inserted.update(key for (key,) in found)
    results: list[_Outcome] = []
    for index, row in enumerate(rows):
        if index in failed:
            results.append(failed[index])
            continue
        results.append(row[1] in inserted)
        inserted.discard(row[1])  # a key repeated in one call goes in once
    return results


def _enqueue_steps(
    queue: str, jobs: list[Job], rows: list[tuple[t.Any, ...]]
) -> _Steps[list[bool]]:
    """Insert the rows of these jobs and link those with dependencies; the first
    failure is raised inside the steps, so that the transaction they run in is rolled
    back: a graph goes in whole or not at all. Whether each job went in."""
    graph = any(job.depends_on for job in jobs)
    if graph:
        _check_graph(jobs)
    inserted = _succeeded((yield from _insert_steps(rows)))
    if graph:
        yield from _link_steps(queue, [job for job, ok in zip(jobs, inserted) if ok])
    return inserted


def _check_graph(jobs: list[Job]) -> None:
    """Refuse jobs of one call whose dependencies make a cycle, naming it."""
    depends_on: dict[str, list[str]] = {}
    for job in jobs:
        depends_on.setdefault(job.key, t.cast("list[str]", job.depends_on))
    # Take away jobs with no dependency left in the call; any left over wait in a cycle.
    waiting = {key: sum(d in depends_on for d in deps) for key, deps in depends_on.items()}
    dependents: dict[str, list[str]] = {}
    for key, deps in depends_on.items():
        for dependency in deps:
            dependents.setdefault(dependency, []).append(key)
    ready = [key for key, count in waiting.items() if count == 0]
    while ready:
        for dependent in dependents.get(ready.pop(), ()):
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    left = {key for key, count in waiting.items() if count}
    if not left:
        return
    path = [min(left)]
    while path.count(path[-1]) < 2:  # follow dependencies within the cycle's jobs
        path.append(min(d for d in depends_on[path[-1]] if d in left))
    cycle = path[path.index(path[-1]) :]
    raise ValueError(
        "Job dependencies make a cycle, so none of its jobs could ever run: "
        + " -> ".join(repr(key) for key in cycle)
        + " (each depends on the next): remove one of these dependencies"
    )


# A job enqueued again under a finished one's key: the old job's links go.
_SQL_UNLINK = (
    "DELETE FROM saqlite_dependencies WHERE queue = ? AND key IN ({keys})",
    "DELETE FROM saqlite_waiting WHERE queue = ? AND key IN ({keys})",
)
# Mark the jobs depended on (so that their end is followed) and read their state.
_SQL_DEPENDED_ON = """
UPDATE saqlite_jobs SET dependents = 1 WHERE queue = ? AND key IN ({keys})
RETURNING key, status, ttl
"""
_SQL_LINK = (
    "INSERT INTO saqlite_dependencies (queue, key, depends_on, allow_failed, done) VALUES {rows}"
)
_SQL_WAIT = "INSERT INTO saqlite_waiting (queue, key, waiting) VALUES {rows}"
_SQL_BLOCK = (
    f"UPDATE saqlite_jobs SET run_at = run_at + {_BLOCKED_S} WHERE queue = ? AND key IN ({{keys}})"
)


def _link_steps(queue: str, jobs: list[Job]) -> _Steps[None]:
    """Link just inserted jobs to their dependencies: a dependency must be in the
    queue (here or just inserted), and not FAILED or ABORTED unless the job allows
    it; the jobs with dependencies yet to end wait for them (see _BLOCKED_S)."""
    jobs = [job for job in jobs if job.depends_on]
    keys = [job.key for job in jobs]
    for chunk in _chunks(keys, _ROWS_PER_STATEMENT):
        for sql in _SQL_UNLINK:
            yield sql.format(keys=_placeholders(len(chunk))), [queue, *chunk]
    wanted = list({key: None for job in jobs for key in t.cast("list[str]", job.depends_on)})
    found: dict[str, tuple[Status, int]] = {}
    for chunk in _chunks(wanted, _ROWS_PER_STATEMENT):
        rows = yield _SQL_DEPENDED_ON.format(keys=_placeholders(len(chunk))), [queue, *chunk]
        found.update((key, (Status(status), ttl)) for key, status, ttl in rows)
    edges: list[tuple[t.Any, ...]] = []
    waits: list[tuple[str, str, int]] = []
    for job in jobs:
        waiting = 0
        for dependency in t.cast("list[str]", job.depends_on):
            done = _dependency_done(queue, job, dependency, found.get(dependency))
            waiting += not done
            edges.append((queue, job.key, dependency, job.allow_failed_dependencies, done))
        if waiting:
            waits.append((queue, job.key, waiting))
    for rows, sql, width in ((edges, _SQL_LINK, 5), (waits, _SQL_WAIT, 3)):
        for row_chunk in _chunks(rows, _ROWS_PER_STATEMENT):
            yield (
                sql.format(rows=_row_placeholders(len(row_chunk), width)),
                [value for row in row_chunk for value in row],
            )
    blocked = [key for _, key, _ in waits]
    for keys_chunk in _chunks(blocked, _ROWS_PER_STATEMENT):
        yield _SQL_BLOCK.format(keys=_placeholders(len(keys_chunk))), [queue, *keys_chunk]


def _dependency_done(queue: str, job: Job, key: str, found: t.Optional[tuple[Status, int]]) -> bool:
    """Whether a dependency already ended as ``job`` needs; raise if it never can."""
    if found is None:
        raise ValueError(
            f"Job {job.key!r} depends on {key!r}, which is not in queue {queue!r} (never "
            "enqueued, or deleted after its ttl): enqueue it first, or in the same enqueue_many"
        )
    status, ttl = found
    if ttl == -1:
        raise ValueError(
            f"Job {job.key!r} depends on {key!r}, whose ttl=-1 deletes it as it ends, so "
            f"{job.key!r} could not see it end: give {key!r} a ttl of 0 (keep) or more"
        )
    if status in UNSUCCESSFUL_TERMINAL_STATUSES and not job.allow_failed_dependencies:
        raise ValueError(
            f"Job {job.key!r} depends on {key!r}, which ended {status}: retry {key!r} "
            "first, or give allow_failed_dependencies=True to run anyway"
        )
    return status in TERMINAL_STATUSES


def _isolated(
    statement: Callable[[t.Sequence[_T]], _Statement],
    items: t.Sequence[_T],
    start: int,
    end: int,
    failed: dict[int, Exception],
) -> _Steps[list[t.Any]]:
    """Run ``statement(items[start:end])`` and return its rows. If it fails because of
    its values rather than the file (see _fails_every_item), run it again on each half,
    down to single items, so only the bad items fail: their exceptions go in ``failed``
    by index, and every other item is written once."""
    try:
        return (yield statement(items[start:end]))
    except Exception as exc:
        if _fails_every_item(exc):
            raise
        if end - start == 1:
            failed[start] = exc
            return []
    middle = (start + end) // 2
    first = yield from _isolated(statement, items, start, middle, failed)
    return first + (yield from _isolated(statement, items, middle, end, failed))


def _fails_every_item(exc: Exception) -> bool:
    """Whether a failed statement failed for the file (a lock wait ran out, the disk
    is full, the file is unreadable), so that writing its items apart would not help."""
    cause = exc.__cause__ if isinstance(exc, StorageError) else exc
    return isinstance(cause, sqlite3.Error) and not isinstance(
        cause,
        (
            sqlite3.IntegrityError,
            sqlite3.DataError,
            sqlite3.InterfaceError,
            sqlite3.ProgrammingError,
        ),
    )


def _succeeded(outcomes: list[_Outcome]) -> list[bool]:
    """The outcomes of an all-or-nothing call: the first failure is raised."""
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
    return t.cast("list[bool]", outcomes)


def _write_item(
    queue: Queue, job: Job, expected: _Expected, *, finish_only: bool = False
) -> tuple[str, tuple[t.Any, ...]]:
    """A guarded write of a job's state, for _write_steps; with ``finish_only``, only
    the fields a finish changes (see Queue._finish)."""
    guard = expected.values(queue.name, job.key)
    if job.ttl == -1 and job.status in TERMINAL_STATUSES:
        return "delete", (*guard, job.status.value, job.completed)
    if finish_only:
        finished = (job.status.value, job.completed, job.error, job.progress)
        return "finish", (*guard, *finished, queue._codec.encode_result(job), _expire_at(job))
    return "update", (*guard[2:], *queue._codec.row(job))


def _set_item(queue: Queue, job: Job, given: frozenset[str]) -> tuple[str, tuple[t.Any, ...]]:
    """A write by key of a job's state, for _write_steps: the columns of
    _KEPT_UNLESS_SET only where ``given``, guarded by the job's lease if it has one."""
    lease = job._lease
    guard = (None, None) if lease is None else (lease.worker_id, lease.attempts)
    if job.ttl == -1 and job.status in TERMINAL_STATUSES:
        return "remove", (*guard, queue.name, job.key, job.status.value, job.completed)
    row = list(queue._codec.row(job))
    for index in _KEPT_COLUMN_INDEXES:
        if _JOB_COLUMNS[index] not in given:
            row[index] = None
    return "set", (*guard, *row)


def _step_item(
    run: _Running,
    name: str,
    *,
    started: int,
    finished: t.Optional[int],
    outcome: str,
    result: t.Union[str, bytes, None] = None,
    error: t.Optional[str] = None,
) -> tuple[str, tuple[t.Any, ...]]:
    """A write of one step of a running job's record, for _write_steps: it applies
    only while the job is still that run's."""
    job = run.job
    queue = job.get_queue()
    return "step", (
        run.worker_id, run.attempts, queue.name, job.key, name, job.started, started, finished,
        outcome, result, error,
    )  # fmt: skip


# A guarded write of whole jobs: each row applies only where the job is still in
# the state its writer last saw (status, worker and attempt), so a late writer never
# overwrites an abort or a sweep that came in between.
# A write's run_at: NULL (unscheduled) keeps the time the job became due; a job still
# waiting on dependencies stays pushed ahead (see _BLOCKED_S) at its new time.
_SQL_NEW_RUN_AT = (
    f"COALESCE(v.run_at + (saqlite_jobs.run_at >= {_BLOCKED_S}) * {_BLOCKED_S},"
    " saqlite_jobs.run_at)"
)
_GUARD_COLUMNS = ("expected_status", "expected_worker", "expected_attempts")
_GUARD = (
    "saqlite_jobs.queue = v.queue AND saqlite_jobs.key = v.key"
    " AND saqlite_jobs.status = v.expected_status"
    " AND saqlite_jobs.worker_id IS v.expected_worker"
    " AND saqlite_jobs.attempts = v.expected_attempts"
)
_WRITE_COLUMNS = (*_GUARD_COLUMNS, *_JOB_COLUMNS)
_SQL_WRITE_JOBS = (
    _rows_named(_WRITE_COLUMNS)
    + "UPDATE saqlite_jobs SET "
    + ", ".join(
        # run_at NULL: an unscheduled job keeps the time it became due
        f"run_at = {_SQL_NEW_RUN_AT}" if c == "run_at" else f"{c} = v.{c}"
        for c in _JOB_COLUMNS
        if c not in ("queue", "key")
    )
    + f" FROM v WHERE {_GUARD} RETURNING saqlite_jobs.key, saqlite_jobs.dependents"
)
# A worker's finish: only the fields a finish changes, so the job is not serialised
# again (see Queue._finish). Guarded like _SQL_WRITE_JOBS.
_FINISH_COLUMNS = ("status", "completed", "error", "progress", "result", "expire_at")
_FINISH_WRITE_COLUMNS = ("queue", "key", *_GUARD_COLUMNS, *_FINISH_COLUMNS)
_SQL_FINISH_JOBS = (
    _rows_named(_FINISH_WRITE_COLUMNS)
    + "UPDATE saqlite_jobs SET "
    + ", ".join(f"{c} = v.{c}" for c in _FINISH_COLUMNS)
    + f" FROM v WHERE {_GUARD} RETURNING saqlite_jobs.key, saqlite_jobs.dependents"
)
# (A deleted job's new status and end, for its figures: see _SQL_COUNT_DELETED.)
_DELETE_COLUMNS = ("queue", "key", *_GUARD_COLUMNS, "status", "completed")
_SQL_DELETE_JOBS = (
    _rows_named(_DELETE_COLUMNS) + "DELETE FROM saqlite_jobs WHERE rowid IN ("
    f" SELECT saqlite_jobs.rowid FROM saqlite_jobs JOIN v ON {_GUARD}"
    ") RETURNING key, dependents"
)

# A write by key, as SAQ's: the last writer wins. The columns a claim owns (status,
# worker_id, attempts, started) keep their stored value where the row gives NULL,
# i.e. unless the call sets them. A row with a lease (the worker and attempt that run
# the job) applies only while that run still owns the job.
_KEPT_UNLESS_SET = ("status", "worker_id", "attempts", "started")
_LEASE_COLUMNS = ("lease_worker", "lease_attempts")
_LEASE_GUARD = (
    "saqlite_jobs.queue = v.queue AND saqlite_jobs.key = v.key AND (v.lease_worker IS NULL"
    " OR (saqlite_jobs.worker_id = v.lease_worker"
    " AND saqlite_jobs.attempts = v.lease_attempts"
    f" AND saqlite_jobs.status IN {_RUNNING_SQL}))"
)
_SET_COLUMNS = (*_LEASE_COLUMNS, *_JOB_COLUMNS)
_SQL_SET_JOBS = (
    _rows_named(_SET_COLUMNS)
    + "UPDATE saqlite_jobs SET "
    + ", ".join(
        f"run_at = {_SQL_NEW_RUN_AT}"
        if c == "run_at"
        else f"{c} = COALESCE(v.{c}, saqlite_jobs.{c})"
        if c in _KEPT_UNLESS_SET
        else f"{c} = v.{c}"
        for c in _JOB_COLUMNS
        if c not in ("queue", "key")
    )
    + f" FROM v WHERE {_LEASE_GUARD} RETURNING saqlite_jobs.key, saqlite_jobs.dependents"
)
_REMOVE_COLUMNS = (*_LEASE_COLUMNS, "queue", "key", "status", "completed")
_SQL_REMOVE_JOBS = (
    _rows_named(_REMOVE_COLUMNS) + "DELETE FROM saqlite_jobs WHERE rowid IN ("
    f" SELECT saqlite_jobs.rowid FROM saqlite_jobs JOIN v ON {_LEASE_GUARD}"
    ") RETURNING key, dependents"
)

# A step of a job's record (see step()), written only while the run that writes it
# still owns the job: the lease of a write by key.
_STEP_COLUMNS = (
    "queue", "key", "name", "run", "started", "finished", "outcome", "result", "error",
)  # fmt: skip
_STEP_WRITE_COLUMNS = (*_LEASE_COLUMNS, *_STEP_COLUMNS)
_SQL_WRITE_STEPS = (
    _rows_named(_STEP_WRITE_COLUMNS)
    + f"INSERT INTO saqlite_steps ({', '.join(_STEP_COLUMNS)}) SELECT "
    + ", ".join(f"v.{c}" for c in _STEP_COLUMNS)
    + f" FROM v JOIN saqlite_jobs ON {_LEASE_GUARD} WHERE true"
    + " ON CONFLICT (queue, key, name) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STEP_COLUMNS[3:])
    + " RETURNING key, 0"  # as every write: the key, and whether others wait on it
)

# A job deleted as it ends (ttl -1) is counted in saqlite_stats by a statement just
# before the one that deletes it (no trigger can tell how a deleted job ended); were
# the job changed by another writer in between, it would be counted without its delete.
_SQL_COUNT_DELETED = {
    kind: _rows_named(columns)
    + _stats_upsert(
        "saqlite_jobs",
        "v.status",
        "v.completed",
        f"v JOIN saqlite_jobs ON {guard} AND saqlite_jobs.status NOT IN {_FINISHED_SQL}",
    )
    for kind, columns, guard in (
        ("delete", _DELETE_COLUMNS, _GUARD),
        ("remove", _REMOVE_COLUMNS, _LEASE_GUARD),
    )
}

#: Each kind of write: its statement, and the columns of its rows.
_WRITES = {
    "update": (_SQL_WRITE_JOBS, _WRITE_COLUMNS),
    "finish": (_SQL_FINISH_JOBS, _FINISH_WRITE_COLUMNS),
    "delete": (_SQL_DELETE_JOBS, _DELETE_COLUMNS),
    "set": (_SQL_SET_JOBS, _SET_COLUMNS),
    "remove": (_SQL_REMOVE_JOBS, _REMOVE_COLUMNS),
    "step": (_SQL_WRITE_STEPS, _STEP_WRITE_COLUMNS),
}
#: Where the key is in the values of each kind of write.
_KEY_INDEX = {kind: columns.index("key") for kind, (_, columns) in _WRITES.items()}
_KEPT_COLUMN_INDEXES = tuple(_JOB_COLUMNS.index(name) for name in _KEPT_UNLESS_SET)


def _write_steps(
    items: list[tuple[str, tuple[t.Any, ...]]], depended_on: t.Optional[list[str]] = None
) -> _Steps[list[_Outcome]]:
    """Apply guarded writes; for each, whether the job was still as expected, or the
    exception that kept that write out (the others are written: see _isolated). The
    keys written of jobs that others depend on go in ``depended_on``.

    A job written twice in one batch (e.g. a progress update, then its finish) is
    written in order, by splitting the batch where a key repeats.
    """
    done: list[_Outcome] = []
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
        failed: dict[int, Exception] = {}
        for kind, (sql, columns) in _WRITES.items():
            indexes = [i for i in range(start, end) if items[i][0] == kind]
            if not indexes:
                continue

            def statement(
                chunk: t.Sequence[int], sql: str = sql, width: int = len(columns)
            ) -> _Statement:
                params = [value for i in chunk for value in items[i][1]]
                return sql.format(rows=_row_placeholders(len(chunk), width)), params

            kind_failed: dict[int, Exception] = {}
            if kind in _SQL_COUNT_DELETED:
                count = functools.partial(statement, sql=_SQL_COUNT_DELETED[kind])
                yield from _isolated(count, indexes, 0, len(indexes), {})
            found = yield from _isolated(statement, indexes, 0, len(indexes), kind_failed)
            for key, dependents in found:
                written.add(key)
                if dependents and depended_on is not None:
                    depended_on.append(key)
            failed.update((indexes[i], exc) for i, exc in kind_failed.items())
        done.extend(failed.get(i, _written_key(items[i]) in written) for i in range(start, end))
        start = end
    return done


def _written_key(item: tuple[str, tuple[t.Any, ...]]) -> str:
    kind, values = item
    return str(values[_KEY_INDEX[kind]])


_SQL_GET_JOBS = (
    f"SELECT key, {_LOAD_COLUMNS} FROM saqlite_jobs WHERE queue = ? AND key IN ({{keys}})"
)


def _jobs_steps(queue: Queue, keys: list[str]) -> _Steps[list[t.Optional[Job]]]:
    found: dict[str, Job] = {}
    for chunk in _chunks(keys, _ROWS_PER_STATEMENT):
        rows = yield _SQL_GET_JOBS.format(keys=_placeholders(len(chunk))), (queue.name, *chunk)
        for row in rows:
            found[row[0]] = queue._codec.job(row[1:])
    return [found.get(key) for key in keys]


_SQL_GET_RESULTS = "SELECT key, result FROM saqlite_jobs WHERE queue = ? AND key IN ({keys})"


def _results_steps(queue: Queue, keys: list[str]) -> _Steps[dict[str, t.Any]]:
    """The results of these jobs by key, in order (None for a job that is gone)."""
    results: dict[str, t.Any] = dict.fromkeys(keys)
    load = queue._codec.load
    for chunk in _chunks(keys, _ROWS_PER_STATEMENT):
        rows = yield _SQL_GET_RESULTS.format(keys=_placeholders(len(chunk))), [queue.name, *chunk]
        results.update(
            (key, None if result is None else load(result)["result"]) for key, result in rows
        )
    return results


_SQL_GET_STATUSES = "SELECT key, status FROM saqlite_jobs WHERE queue = ? AND key IN ({keys})"


def _statuses_steps(queue: Queue, keys: list[str]) -> _Steps[dict[str, Status]]:
    """The statuses of these jobs (missing ones left out)."""
    found: dict[str, Status] = {}
    for chunk in _chunks(keys, _ROWS_PER_STATEMENT):
        sql = _SQL_GET_STATUSES.format(keys=_placeholders(len(chunk)))
        rows = yield sql, (queue.name, *chunk)
        found.update((key, Status(status)) for key, status in rows)
    return found


# As in SAQ, an ABORTING job is neither active nor incomplete: it is on its way out.
# Waiting jobs come from saqlite_counts, active ones through saqlite_jobs_ready. Only
# the split of the waiting ones into due now and due later needs counting (through
# saqlite_jobs_waiting), each side up to a limit (-1: no limit, 0: not counted).
_SQL_WAITING = """
SELECT COUNT(*) FROM (
    SELECT 1 FROM saqlite_jobs INDEXED BY saqlite_jobs_waiting
    WHERE queue = :queue AND status = 'queued' AND run_at {} LIMIT :{})
"""
_SQL_COUNTS = f"""
SELECT
    (SELECT COALESCE(SUM(n), 0) FROM saqlite_counts WHERE queue = :queue AND status = 'queued'),
    (SELECT COUNT(*) FROM saqlite_jobs WHERE queue = :queue AND status = 'active'),
    ({_SQL_WAITING.format(f"> {_SQL_NOW}", "later")}),
    ({_SQL_WAITING.format(f"<= {_SQL_NOW}", "due")})
"""
_COUNT_PROBE = 1000


def _counts_steps(name: str, split: bool = True) -> _Steps[tuple[int, int, int]]:
    """How many jobs of a queue are queued and due, scheduled for later, and active
    (with ``split=False``: waiting, 0, and active, without telling due from later).

    The split counts about the fewer of the two sides, never the whole queue: both
    up to a probe growing eightfold while it is small beside the waiting jobs, then
    one side up to half of them (if it has more, the other side has fewer)."""
    probe = _COUNT_PROBE if split else 0
    while True:
        rows = yield _SQL_COUNTS, {"queue": name, "later": probe, "due": probe}
        waiting, active, later, due = (int(n) for n in rows[0])
        if not split:
            return waiting, 0, active
        if later < probe:
            return waiting - later, later, active
        if due < probe:
            return due, waiting - due, active
        if probe * 8 > waiting // 8:
            break
        probe *= 8
    half = waiting // 2 + 1
    rows = yield _SQL_COUNTS, {"queue": name, "later": half, "due": 0}
    waiting, active, later, _ = (int(n) for n in rows[0])
    if later < half:
        return waiting - later, later, active
    rows = yield _SQL_COUNTS, {"queue": name, "later": 0, "due": -1}
    waiting, active, _, due = (int(n) for n in rows[0])
    return due, waiting - due, active


def _count_steps(queue: Queue, kind: str) -> _Steps[int]:
    if kind not in ("queued", "active", "incomplete"):
        raise ValueError(
            f"Can't count unknown type {kind!r}: use 'queued', 'active' or 'incomplete'"
        )
    queued, scheduled, active = yield from _counts_steps(queue.name, split=kind == "queued")
    return {"queued": queued, "active": active, "incomplete": queued + scheduled + active}[kind]


class _WorkerState(t.NamedTuple):
    """A registered worker: alive (for the sweep), and listed (alive and within its
    worker_info ttl, as SAQ lists workers)."""

    id: str
    info: WorkerInfo
    alive: bool
    listed: bool


# Each worker, and whether its worker_info ttl has run out (by SQLite's clock).
_SQL_WORKERS = f"""
SELECT id, host, pid, start_token, expire_at <= {_SQL_NOW}, info FROM saqlite_workers
WHERE queue = ?
"""


def _workers_steps(queue: Queue) -> _Steps[list[_WorkerState]]:
    """Every registered worker of a queue."""
    rows = yield _SQL_WORKERS, (queue.name,)
    workers = []
    for worker_id, host, pid, start_token, expired, info in rows:
        alive = _alive(host, pid, start_token, bool(expired))
        workers.append(_WorkerState(worker_id, json.loads(info), alive, alive and not expired))
    return workers


# Unfinished jobs of one status (as info() lists them), in the order they are claimed.
_SQL_LIST_JOBS = f"""
SELECT {_LOAD_COLUMNS} FROM saqlite_jobs WHERE queue = ? AND status = ?
ORDER BY priority, run_at, rowid LIMIT ? OFFSET ?
"""


def _info_steps(queue: Queue, jobs: bool, offset: int, limit: int) -> _Steps[QueueInfo]:
    queued, scheduled, active = yield from _counts_steps(queue.name)
    workers = yield from _workers_steps(queue)
    job_dicts: list[dict[str, t.Any]] = []
    if jobs:  # unfinished jobs, as in SAQ: the running ones, then those waiting
        rows: list[t.Any] = []
        if offset < active:
            rows = yield _SQL_LIST_JOBS, (queue.name, Status.ACTIVE.value, limit, offset)
        if len(rows) < limit:
            waiting = (queue.name, Status.QUEUED.value, limit - len(rows), max(offset - active, 0))
            rows += yield _SQL_LIST_JOBS, waiting
        job_dicts = [queue._codec.job(row).to_dict() for row in rows]
    info: QueueInfo = {
        "workers": {worker.id: worker.info for worker in workers if worker.listed},
        "name": queue.name,
        "queued": queued,
        "active": active,
        "scheduled": scheduled,
        "jobs": job_dicts,
    }
    flow = yield from _flow_steps(queue.name)
    if flow:
        info["flow"] = flow
    return info


_SQL_REQUEST_ABORT = """
UPDATE saqlite_jobs SET status = 'aborting', error = :error
WHERE queue = :queue AND key = :key AND status = 'active' AND attempts = :attempts
RETURNING key
"""


def _abort_steps(queue: Queue, key: str, error: str) -> _Steps[tuple[t.Optional[Job], bool]]:
    """Abort a job: finish it ABORTED if it waits, else ask its worker to stop it.

    Returns the job as it now is, and whether this call changed it.
    """
    while True:
        (current,) = yield from _jobs_steps(queue, [key])
        if current is None or current.status in TERMINAL_STATUSES | {Status.ABORTING}:
            return current, False
        if current.status == Status.ACTIVE:
            params = {"error": error, "queue": queue.name, "key": key, "attempts": current.attempts}
            if (yield _SQL_REQUEST_ABORT, params):
                current.status, current.error = Status.ABORTING, error
                return current, True
        else:
            expected = _Expected.of(current)
            queue._set_finished(current, Status.ABORTED, None, error)
            (stored,) = _succeeded(
                (yield from _write_steps([_write_item(queue, current, expected)]))
            )
            if stored:
                queue.aborted += 1
                return current, True

        # It moved on (claimed, or finished) between the read and the write: look again.


# -- flow control: pauses and limits (see Queue.pause and Queue.limit) -------------

_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: The largest count a limit takes (a rate's n, a concurrency, a per_group).
_MAX_FLOW_N = 2**31 - 1


def _flow_key(function: object) -> str:
    """A function's name as saqlite_flow keys it: '' for the whole queue (None)."""
    if function is None:
        return ""
    if not isinstance(function, str) or not function:
        raise ValueError(
            f"function must be the name of a job function, or None for the whole queue, "
            f"got {function!r}"
        )
    return function


def _flow_count(name: str, value: object) -> int:
    """A limit's count: a whole number from 1."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_FLOW_N:
        raise ValueError(
            f"{name} must be a whole number from 1 to {_MAX_FLOW_N}, got {value!r} "
            "(to remove a limit, call limit(..., clear=True))"
        )
    return value


def _parse_rate(rate: object) -> tuple[int, float]:
    """A rate's (n, period in seconds): "60/m" (at most 60 starts in any minute),
    "5/10s", "1000/h", "2/d", or a tuple (n, seconds)."""
    if isinstance(rate, tuple) and len(rate) == 2:
        n, period = rate
    elif isinstance(rate, str) and rate.count("/") == 1:
        n_text, period_text = rate.strip().split("/")
        unit = period_text.strip()[-1:]
        number = period_text.strip()[:-1]
        try:
            n = int(n_text)
            period = _RATE_UNITS[unit] * (float(number) if number else 1.0)
        except (KeyError, ValueError):
            n = period = None
    else:
        n = period = None
    if n is None or period is None:
        raise ValueError(
            f"rate must be 'N/period' with a unit of s, m, h or d (e.g. '60/m', '5/10s') "
            f"or a tuple (N, seconds), got {rate!r}"
        )
    _flow_count("rate's N", n)
    if not _is_number(period) or not 0 < period <= _MAX_SECONDS:
        raise ValueError(
            f"rate's period must be seconds above 0 and up to {_MAX_SECONDS:.0f}, got "
            f"{period!r} in {rate!r}"
        )
    return t.cast(int, n), float(period)


def _rate_text(n: int, period: float) -> str:
    """A rate as text, by the largest unit that divides its period: "60/m"."""
    for unit, seconds in reversed(_RATE_UNITS.items()):
        count = period / seconds
        if count == int(count):
            return f"{n}/{unit}" if count == 1 else f"{n}/{int(count)}{unit}"
    return f"{n}/{period:g}s"


def _pause_until(until: object, for_s: object) -> tuple[t.Optional[float], t.Optional[float]]:
    """(until as epoch s, for_s) of a pause, at most one given; (None, None): until
    resumed."""
    if until is not None and for_s is not None:
        raise ValueError("pause takes until= or for_s=, not both")
    if for_s is not None:
        if not _is_number(for_s) or not 0 < t.cast(float, for_s) <= _MAX_SECONDS:
            raise ValueError(
                f"for_s must be seconds above 0 and up to {_MAX_SECONDS:.0f}, got {for_s!r}"
            )
        return None, float(t.cast(float, for_s))
    if until is None:
        return None, None
    epoch = until.timestamp() if isinstance(until, datetime) else until
    if not _is_number(epoch) or not 0 < t.cast(float, epoch) <= _MAX_EPOCH_S:
        raise ValueError(f"until must be a datetime or an epoch time in seconds, got {until!r}")
    if t.cast(float, epoch) <= time.time():
        raise ValueError(f"until {until} has passed: give a later time (resume() ends a pause now)")
    return float(t.cast(float, epoch)), None


def _sql_starts_in_period(rule: str) -> str:
    """How many starts the period of ``rule`` (a saqlite_flow row's alias) holds now:
    its last number less the first one in the period, plus one (0 when none is)."""
    return f"""
    COALESCE({rule}.starts + 1 - (
        SELECT start.seq FROM saqlite_flow_starts AS start
        WHERE start.queue = {rule}.queue AND start.function = {rule}.function
          AND start.started > {_SQL_NOW_MS} - {rule}.period * 1000
        ORDER BY start.started, start.seq LIMIT 1), 0)
    """


_SQL_PAUSE = f"""
INSERT INTO saqlite_flow (queue, function, paused, paused_until)
VALUES (:queue, :function, 1, COALESCE(:until, {_SQL_NOW} + :for_s))
ON CONFLICT (queue, function) DO UPDATE SET paused = 1, paused_until = excluded.paused_until
"""
# (A row left with nothing set is deleted by the saqlite_flow_cleared trigger.)
_SQL_RESUME = """
UPDATE saqlite_flow SET paused = 0, paused_until = NULL
WHERE queue = :queue AND function = :function
"""
_SQL_CLEAR_LIMITS = """
UPDATE saqlite_flow SET rate = NULL, period = NULL, concurrency = NULL, per_group = NULL
WHERE queue = :queue AND function = :function
"""
_SQL_SET_LIMITS = """
INSERT INTO saqlite_flow (queue, function, rate, period, concurrency, per_group)
VALUES (:queue, :function, :rate, :period, :concurrency, :per_group)
ON CONFLICT (queue, function) DO UPDATE SET
    rate = COALESCE(excluded.rate, rate), period = COALESCE(excluded.period, period),
    concurrency = COALESCE(excluded.concurrency, concurrency),
    per_group = COALESCE(excluded.per_group, per_group)
"""


def _pause_steps(
    queue: str, function: t.Optional[str], until: object, for_s: object
) -> _Steps[None]:
    end, seconds = _pause_until(until, for_s)
    params = {"queue": queue, "function": _flow_key(function), "until": end, "for_s": seconds}
    yield _SQL_PAUSE, params


def _resume_steps(queue: str, function: t.Optional[str]) -> _Steps[None]:
    yield _SQL_RESUME, {"queue": queue, "function": _flow_key(function)}


def _limit_params(
    queue: str,
    function: t.Optional[str],
    *,
    rate: t.Union[str, tuple[int, float], None],
    concurrency: t.Optional[int],
    per_group: t.Optional[int],
    clear: bool,
) -> dict[str, t.Any]:
    """The checked parameters of a limit() call (see _limit_steps)."""
    key = _flow_key(function)
    n, period = _parse_rate(rate) if rate is not None else (None, None)
    if concurrency is not None:
        _flow_count("concurrency", concurrency)
    if per_group is not None:
        _flow_count("per_group", per_group)
        if key:
            raise ValueError(
                "per_group limits the jobs of each group_key of the whole queue, whatever "
                f"their function: call limit(per_group={per_group}) without function={key!r}"
            )
    if not clear and n is None and concurrency is None and per_group is None:
        raise ValueError(
            "limit needs rate=, concurrency= or per_group= (or clear=True to remove the limits)"
        )
    return {
        "queue": queue,
        "function": key,
        "rate": n,
        "period": period,
        "concurrency": concurrency,
        "per_group": per_group,
        "clear": clear,
    }


def _limit_steps(params: dict[str, t.Any]) -> _Steps[None]:
    """Set limits (see _limit_params), in one transaction: no claim sees them half set."""
    if params["clear"]:
        yield _SQL_CLEAR_LIMITS, {"queue": params["queue"], "function": params["function"]}
    if any(params[name] is not None for name in ("rate", "concurrency", "per_group")):
        yield _SQL_SET_LIMITS, {name: value for name, value in params.items() if name != "clear"}


# Each pause or limit in force, with its use: running jobs (through the ready index,
# as few as are running), starts within the rate's period, and the most running jobs
# of one group_key.
_SQL_FLOW = f"""
SELECT rule.function,
    rule.paused AND (rule.paused_until IS NULL OR rule.paused_until > {_SQL_NOW}),
    rule.paused_until, rule.rate, rule.period, rule.concurrency, rule.per_group,
    (SELECT COUNT(*) FROM saqlite_jobs AS job
     WHERE job.queue = rule.queue AND job.status IN {_RUNNING_SQL}
       AND (rule.function = '' OR job.function = rule.function)),
    CASE WHEN rule.rate IS NOT NULL THEN {_sql_starts_in_period("rule")} END,
    CASE WHEN rule.per_group IS NOT NULL THEN (
        SELECT COALESCE(MAX(n), 0) FROM (
            SELECT COUNT(*) AS n FROM saqlite_jobs AS job
            WHERE job.queue = rule.queue AND job.group_key IS NOT NULL
              AND job.status IN {_RUNNING_SQL}
            GROUP BY job.group_key)) END
FROM saqlite_flow AS rule WHERE rule.queue = ?
ORDER BY rule.function
"""


def _flow_steps(queue: str) -> _Steps[list[FlowRule]]:
    """The pauses and limits in force on a queue, with their use."""
    rows = yield _SQL_FLOW, (queue,)
    rules: list[FlowRule] = []
    for (
        function,
        paused,
        until,
        rate,
        period,
        concurrency,
        per_group,
        running,
        started,
        busiest,
    ) in rows:
        if not (paused or rate or concurrency or per_group):
            continue  # a pause that has ended
        rules.append(
            {
                "function": function or None,
                "paused": bool(paused),
                "paused_until": until if paused else None,
                "rate": _rate_text(rate, period) if rate is not None else None,
                "concurrency": concurrency,
                "per_group": per_group,
                "running": running,
                "started": started,
                "busiest_group": busiest,
            }
        )
    return rules


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
            self.jobs.append(queue._codec.prepare(template, {**defaults, **job_kwargs}))
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
            if job is None:  # deleted on finishing (ttl=-1): as in SAQ, None in its slot
                results.append(None)
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


# =============================================================================
# The file: connection, lock waits, processes
# =============================================================================

_HOST = socket.gethostname()
#: Times a job's worker may die while running it before the sweep gives up on it.
_MAX_DEATHS = 3
#: SQLite's INTEGER range: the priorities claimed when a Queue is given none.
_ALL_PRIORITIES = (-(2**63), 2**63 - 1)


class _SliceSize:
    """How much (rows, pages) the next slice of a long piece of work takes: as much as
    keeps its write near _SLICE_TARGET_S, between ``least`` and ``most``, so that it
    stays short however large the file grows (a row costs more to delete in a bigger
    file, a page more to give back in a fragmented one) and however busy the machine.
    """

    def __init__(self, start: int, least: int, most: int) -> None:
        self.amount, self._least, self._most = start, least, most

    @classmethod
    def of_rows(cls) -> _SliceSize:
        return cls(_SLICE_ROWS // 4, _SLICE_MIN_ROWS, _SLICE_ROWS)

    @classmethod
    def of_pages(cls) -> _SliceSize:
        # Few at first: a page can cost half a millisecond (see Queue._give_back_space).
        return cls(16, 1, _SLICE_MAX_PAGES)

    def took(self, done: int, seconds: float) -> None:
        """Learn from a slice that did ``done`` (rows, pages) in ``seconds``."""
        if done < self.amount:  # the last slice, short of work: it tells nothing
            return
        if seconds > _SLICE_TARGET_S:
            self.amount = max(self._least, int(self.amount * _SLICE_TARGET_S / seconds))
        elif seconds < _SLICE_TARGET_S / 2:
            self.amount = min(self._most, self.amount * 2)


def _check_priorities(priorities: t.Optional[tuple[int, int]]) -> tuple[int, int]:
    """The range of priorities a queue claims; ValueError naming the problem."""
    if priorities is None:
        return _ALL_PRIORITIES
    if (
        not isinstance(priorities, (tuple, list))
        or len(priorities) != 2
        or not all(isinstance(p, int) and not isinstance(p, bool) for p in priorities)
        or not _ALL_PRIORITIES[0] <= priorities[0] <= priorities[1] <= _ALL_PRIORITIES[1]
    ):
        raise ValueError(
            f"priorities must be two ints (low, high) with low <= high, such as "
            f"priorities=(0, 32767), got {priorities!r}"
        )
    return int(priorities[0]), int(priorities[1])


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


def _prepare_stream_slice(
    codec: _Codec, chunk: list[t.Any], kwargs: dict[str, t.Any], stored: int, done: int
) -> list[Job]:
    """The jobs of one slice of ``enqueue_stream`` (its first item is item ``done``),
    checked; EnqueueStreamError naming the first bad one."""
    prepared: list[Job] = []
    for item in chunk:
        try:
            prepared.append(codec.prepare(item, dict(kwargs)))
        except Exception as exc:
            where = f"item {done + len(prepared)} ({item!r:.80})"
            raise EnqueueStreamError(stored, done, where, exc) from exc
    return prepared


def _slice_items(done: int, chunk: list[t.Any]) -> str:
    return f"the slice of items {done} to {done + len(chunk) - 1}"


async def _stream_slices(
    items: t.Union[Iterable[_T], AsyncIterable[_T]], size: int = _STREAM_SLICE
) -> AsyncIterator[list[_T]]:
    """Lists of up to ``size`` items read lazily from a sync or async iterable."""
    if not hasattr(items, "__aiter__"):
        iterator = iter(items)
        while chunk := list(itertools.islice(iterator, size)):
            yield chunk
        return
    chunk = []
    async for item in t.cast("AsyncIterable[_T]", items):
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _chunks(items: t.Sequence[_T], size: int) -> t.Iterator[t.Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _alive(host: str, pid: int, start_token: t.Optional[str], expired: bool) -> bool:
    """Whether a worker lives: by its process where we can see it (its pid, and when
    that process started, so that a later process given the same pid is not taken
    for it), else by its beat (``expired``: its worker_info ttl has run out)."""
    if host == _HOST:
        running = _pid_running(pid)
        if running is False:
            return False
        if running and start_token is not None:
            token = _start_token(pid)
            if token is not None:
                return token == start_token
    return not expired


def _start_token(pid: int) -> t.Optional[str]:
    """When a process started, as a string to compare (None where not cheap to know):
    on Linux, field 22 of /proc/<pid>/stat (clock ticks after boot)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


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


# =============================================================================
# Group commit
# =============================================================================


class _Batcher(t.Generic[_T, _R]):
    """Group commit: items submitted while one flush runs go together in the next.

    The first item after a quiet spell is flushed on the next loop iteration, so a
    lone write waits for nothing. ``flush`` gives each item its result, or the
    exception for that item alone; an exception it raises fails the whole batch.
    """

    def __init__(
        self, flush: Callable[[list[_T]], Awaitable[list[t.Union[_R, Exception]]]]
    ) -> None:
        self._flush = flush
        self._pending: list[tuple[_T, asyncio.Future[_R]]] = []
        self._task: t.Optional[asyncio.Task[None]] = None

    async def submit(self, item: _T) -> _R:
        return await self.put(item)

    def put(self, item: _T) -> asyncio.Future[_R]:
        """Submit an item now, in order with those submitted before; its result later."""
        future: asyncio.Future[_R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return future

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
                    if future.done():
                        continue
                    if isinstance(result, Exception):  # this item alone failed
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._task = None


# =============================================================================
# Wake-ups
# =============================================================================

_NEWS = ("jobs", "changes", "aborts")


#: The waiters (_Wakeup, _SyncWakeup) of this process, told of news directly.
_local_wakeups: weakref.WeakSet[t.Any] = weakref.WeakSet()
_SQL_UNREGISTER_WAKEUP = "DELETE FROM saqlite_wakeup WHERE queue = ? AND port = ?"
_SQL_WAKEUP_PORTS = "SELECT kind, port, host, pid FROM saqlite_wakeup WHERE queue = ?"
_SQL_DELETE_WAKEUP = "DELETE FROM saqlite_wakeup WHERE host = ? AND pid = ?"


class _Wakeup:
    """How waiters of a queue learn that something changed, without polling hard.

    Three kinds of news (_NEWS): ``"jobs"`` (work was enqueued or retried) and
    ``"aborts"`` (a running job is to be aborted) for workers, and ``"changes"`` (a job
    changed state) for ``listen`` and ``apply``. Waiters in this
    process are told at once (a future per waiter). Other processes are told by a
    UDP datagram to the port each registered in the file (``saqlite_wakeup``); a
    datagram can be lost, so waiters also check the file's data_version now and then.
    """

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        self.place = queue._place
        self._generations = dict.fromkeys(_NEWS, 0)
        self._waiters: dict[str, list[asyncio.Future[None]]] = {kind: [] for kind in _NEWS}
        self._loop: t.Optional[asyncio.AbstractEventLoop] = None
        self._transport: t.Optional[asyncio.DatagramTransport] = None
        self._port = 0
        self._wanted: set[str] = set()
        self._announcer = _Announcer()
        self._want_lock: t.Optional[asyncio.Lock] = None

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
        if self._want_lock is None:
            self._want_lock = asyncio.Lock()
        async with self._want_lock:
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
        transport, self._transport = self._transport, None
        self._announcer.close()
        self._wanted.clear()
        if transport is not None:
            try:  # closed even if the unregistering is cancelled or fails
                with contextlib.suppress(StorageError):
                    await self._queue._fetch(_SQL_UNREGISTER_WAKEUP, (self._queue.name, self._port))
            finally:
                transport.close()


def _notify_local(queue: Queue, kind: str) -> None:
    """Wake the waiters on this queue in this process, whatever their thread."""
    for wakeup in list(_local_wakeups):
        if wakeup.place == queue._place:
            wakeup.wake_threadsafe(kind)


_SQL_REGISTER_WAKEUP = """
INSERT OR REPLACE INTO saqlite_wakeup (queue, kind, port, host, pid) VALUES (?, ?, ?, ?, ?)
"""


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
            # Closed with the announcer too: a queue used again after it was closed,
            # or never closed, must not leave the socket to the GC (a ResourceWarning).
            weakref.finalize(self, self._socket.close)
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
        if kind in _NEWS:
            self._wakeup.news(kind)


class _SyncWakeup:
    """_Wakeup for SyncQueue: threads wait on a Condition; one of them at a time reads
    the UDP socket that other processes send news to.

    The condition guards this object's state only: no database call is made while
    holding it, as an event loop's thread takes it too (wake_threadsafe), and so that
    the client's lock is always taken first (see SyncQueue.__init__).
    """

    def __init__(self, client: SyncQueue) -> None:
        self._client = client
        self.place = client.queue._place
        self._condition = threading.Condition()
        self._generations = dict.fromkeys(_NEWS, 0)
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
            port = self._port
        self._client._fetch(*_register_wakeup(self._client.queue, kind, port))
        with self._condition:
            registered = self._socket is not None and self._port == port
            if registered:
                self._wanted.add(kind)
        if not registered:  # closed meanwhile: nobody reads that port any more
            self._client._fetch(_SQL_UNREGISTER_WAKEUP, (self._client.name, port))

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
        try:  # closed by another thread meanwhile: OSError, here or in recv
            sock.settimeout(timeout)
            data = sock.recv(256)
        except OSError:  # timed out, or closed meanwhile
            return None
        kind = data.decode(errors="replace").partition("\0")[0]
        return kind if kind in _NEWS else None

    def notify(self, kind: str) -> None:
        """Tell waiters in this process and in other processes about news."""
        _notify_local(self._client.queue, kind)
        with self._condition:
            self._announcer.send(kind, self._client.name)
            stale = self._announcer.stale()
        if stale:
            rows = self._client._fetch(*_Announcer.query(self._client.queue))
            with self._condition:
                self._announcer.send(kind, self._client.name, self._announcer.update(rows))

    def close(self) -> None:
        with self._condition:
            _local_wakeups.discard(self)
            sock, self._socket = self._socket, None
            self._announcer.close()
            self._wanted.clear()
        if sock is not None:
            try:  # the socket is closed whatever the unregistering meets
                with contextlib.suppress(StorageError):
                    self._client._fetch(
                        _SQL_UNREGISTER_WAKEUP, (self._client.name, sock.getsockname()[1])
                    )
            finally:
                sock.close()


# =============================================================================
# Running jobs: the worker's machinery
# =============================================================================


@dataclasses.dataclass
class _Running:
    """A job this worker runs: the task running its function while it may be
    cancelled, why it was cancelled ("abort", "timeout", "stop" or "lost"), and the
    task that runs the job and stores its outcome.

    It is also the run's lease on the Job object (``Job._lease``): writes through
    that object apply only while the job is still this run's (``worker_id``,
    ``attempts``), and ``lost()`` is called when one finds that it is not."""

    job: Job
    worker_id: str
    task: t.Optional[asyncio.Task[t.Any]] = None
    cancelled_for: t.Optional[str] = None
    abort_error: t.Optional[str] = None
    runner: t.Optional[asyncio.Task[t.Any]] = None
    #: The job's record of steps (read at its first step), and the names taken.
    record: t.Optional[dict[str, _StepRow]] = None
    named: set[str] = dataclasses.field(default_factory=set)

    def __post_init__(self) -> None:
        self.attempts = self.job.attempts

    def cancel(self, reason: str) -> None:
        if self.task is not None and self.cancelled_for is None:
            self.cancelled_for = reason
            self.task.cancel()

    def lost(self) -> None:
        self.cancel("lost")


class _Abandoned(asyncio.CancelledError):
    """The task waiting for a job's thread was cancelled again: the thread still
    runs, so nothing may be written for the job (see _call)."""


class _Threads:
    """The worker's own threads for sync functions: at most ``size`` (one per slot,
    and a job keeps its slot until its thread returns), named, and daemons, so that
    a function that never returns does not keep the process from exiting."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._calls: queue_module.SimpleQueue[
            t.Optional[tuple[concurrent.futures.Future[t.Any], Callable[[], t.Any]]]
        ] = queue_module.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, call: Callable[[], t.Any]) -> concurrent.futures.Future[t.Any]:
        future: concurrent.futures.Future[t.Any] = concurrent.futures.Future()
        self._calls.put((future, call))
        if not self._idle.acquire(blocking=False):
            with self._lock:
                if len(self._threads) < self._size:
                    thread = threading.Thread(
                        target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
                    )
                    thread.start()
                    self._threads.append(thread)
        return future

    def shutdown(self) -> None:
        """Let every thread end once it is idle (a busy one ends after its call)."""
        with self._lock:
            for _ in self._threads:
                self._calls.put(None)
            self._threads = []

    def _work(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            future, call = item
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del item, future, call  # drop the result before waiting for the next call
            self._idle.release()


class _Outage:
    """A storage error the worker waits out (a full disk, a write lock held past
    lock_timeout): logged when it starts, then every _OUTAGE_LOG_S, and when it ends;
    the pause before the next try grows from _OUTAGE_PAUSE_S to _OUTAGE_MAX_PAUSE_S."""

    def __init__(self, worker: Worker, what: str) -> None:
        self._worker = worker
        self._what = what
        self._since = 0.0
        self._logged = 0.0
        self._pause = _OUTAGE_PAUSE_S

    def failed(self, exc: Exception) -> float:
        """Log the error if it is time to; seconds to wait before trying again."""
        current = time.monotonic()
        if not self._since:
            self._since = current
        if current - self._logged >= _OUTAGE_LOG_S:
            self._logged = current
            logger.warning(
                "Worker %s cannot %s (for %.0f s so far): %s; it keeps trying",
                self._worker.id,
                self._what,
                current - self._since,
                exc,
            )
        pause = self._pause
        self._pause = min(self._pause * 2, _OUTAGE_MAX_PAUSE_S)
        return pause

    def ended(self) -> None:
        if self._since:
            logger.info(
                "Worker %s can %s again after %.1f s",
                self._worker.id,
                self._what,
                time.monotonic() - self._since,
            )
            self._since = self._logged = 0.0
            self._pause = _OUTAGE_PAUSE_S


def _restore_loop_signal(
    loop: t.Optional[asyncio.AbstractEventLoop],
    signum: int,
    before: t.Optional[asyncio.Handle],
    previous: t.Any,
) -> None:
    """Undo a Worker's signal handler: the loop's handler it replaced (given a
    loop), or else the signal module's handler that was there before."""
    if loop is not None:
        loop.remove_signal_handler(signum)
    if loop is not None and before is not None:
        callback = getattr(before, "_callback", None)
        if callback is not None:
            loop.add_signal_handler(signum, callback, *getattr(before, "_args", ()))
            return
    if previous is not None:
        signal.signal(signum, previous)


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


async def _call(
    function: Function, context: Context, kwargs: dict[str, t.Any], threads: _Threads
) -> t.Any:
    """Call a job function: a coroutine function directly, others in one of the
    worker's threads, seeing this task's contextvars. A thread cannot be stopped:
    when this call is cancelled, it waits for the thread to return, then raises
    CancelledError (so the job keeps its slot); cancelled again meanwhile, it
    raises _Abandoned."""
    if inspect.iscoroutinefunction(function):
        return await function(context, **kwargs)
    call = functools.partial(contextvars.copy_context().run, function, context, **kwargs)
    thread = threads.submit(call)
    try:
        outcome = await asyncio.wrap_future(thread)
    except asyncio.CancelledError:
        if not thread.done():
            try:
                await asyncio.wait([asyncio.wrap_future(thread)])
            except asyncio.CancelledError:
                raise _Abandoned from None
        raise
    if inspect.isawaitable(outcome):
        return await outcome
    return outcome


# =============================================================================
# The codec: a job to its row and back
# =============================================================================

_JOB_DEFAULTS = tuple((field.name, field.default) for field in dataclasses.fields(Job))
_JOB_FIELD_NAMES = frozenset(name for name, _ in _JOB_DEFAULTS)
#: Fields an update may not change: the dependencies are linked when a job is stored.
_ENQUEUE_ONLY_FIELDS = frozenset({"depends_on", "allow_failed_dependencies"})
#: The fields of a job its columns give on load, between data, status and result.
_LOADED_FIELDS = tuple(_LOAD_COLUMNS.split(", ")[2:-1])
_INFO_FULL_ONLY = frozenset({"kwargs", "result", "error", "status", "progress", "meta"})


def _expire_at(job: Job) -> t.Optional[float]:
    """When a finished job is to be deleted (None: not finished, or kept forever)."""
    if job.status in TERMINAL_STATUSES and job.ttl > 0:
        return time.time() + job.ttl
    return None


class _Codec:
    """How a queue's jobs become rows of saqlite_jobs and back, through its ``dump``
    and ``load``: the one codec of Queue, SyncQueue and the tooling."""

    def __init__(
        self, queue: Queue, dump: t.Optional[DumpType], load: t.Optional[LoadType]
    ) -> None:
        self.queue = queue
        self.dump: DumpType = dump or json.dumps
        self.load: LoadType = load or json.loads

    def prepare(self, job_or_func: t.Union[str, Job, Function], kwargs: dict[str, t.Any]) -> Job:
        """The job to store for ``enqueue(job_or_func, **kwargs)``, checked."""
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
        if job.queue is not None and job.queue.name != self.queue.name:
            raise ValueError(
                f"{job.info()} belongs to queue {job.queue.name!r}, not {self.queue.name!r}"
            )
        _check_job_options(job)
        if job.depends_on or job.allow_failed_dependencies is not False:
            _check_dependencies(job, self.queue.name)
        job.queue = self.queue
        job.queued = now()
        job.status = Status.QUEUED
        job.attempts = 0
        job.started = job.completed = job.touched = 0
        job.worker_id = None
        return job

    def encode(self, value: dict[str, t.Any], job: Job) -> t.Union[str, bytes]:
        try:
            return self.dump(value)
        except Exception as exc:  # whatever dump raises (RecursionError for deep nesting)
            raise TypeError(
                f"Cannot serialise {job.info()} for queue {self.queue.name!r}: {exc}. Job kwargs, "
                "meta and results must be JSON-encodable, or give the Queue dump= and load="
            ) from exc

    def encode_result(self, job: Job) -> t.Union[str, bytes, None]:
        """The value of the result column: the result as ``{"result": ...}``."""
        return None if job.result is None else self.encode({"result": job.result}, job)

    def row(self, job: Job) -> tuple[t.Any, ...]:
        """The values of _JOB_COLUMNS for a job."""
        fields = job.to_dict()
        fields.pop("result", None)  # it has a column of its own
        run_at = job.scheduled or None  # None: due from now, by SQLite's clock
        return (
            self.queue.name, job.key, job.function, job.status.value, job.priority, run_at,
            job.group_key, job.worker_id, job.attempts, job.queued, job.started, job.touched,
            job.completed, job.error, job.ttl, _expire_at(job), job.progress,
            self.encode_result(job), self.encode(fields, job),
        )  # fmt: skip

    def job(self, row: t.Sequence[t.Any]) -> Job:
        """A Job from the _LOAD_COLUMNS of a row."""
        data, status, *fields, result = row
        job = self.queue.deserialize(data)
        assert job is not None
        job.status = Status(status)
        for name, value in zip(_LOADED_FIELDS, fields):
            setattr(job, name, value)
        if result is not None:
            job.result = self.load(result)["result"]
        return job


# =============================================================================
# Running this file
# =============================================================================

if __name__ == "__main__":
    # `python -m saqlite` and `python saqlite.py` load this file as __main__; run the
    # copy that `import saqlite` gives the user's settings, so both see one Queue class.
    _name = __spec__.name if __spec__ else os.path.splitext(os.path.basename(__file__))[0]
    sys.exit(importlib.import_module(_name).main())


# #############################################################################
# OPERATOR TOOLING: only the terminal commands, the page and their command-line
# options come after this line; nothing above uses anything below. A copy of this
# file cut here runs queues and workers (test_saqlite_layout.py checks it).
#
# Besides the public API, the tooling uses these internals, and only these:
#   Queue._fetch (one statement), Queue._retry (a guarded retry), Queue._wakeup
#   (want, generation, wait: the news saqlite tail looks on), Queue._codec
#   (dump, load, a job from _LOAD_COLUMNS); Queue._drive with _counts_steps (the
#   counts of info()); Queue._between_slices and Queue._give_back_space, with
#   _SliceSize.of_rows (work on many rows); _LOAD_COLUMNS, the status groups
#   (_RUNNING_STATUSES, _FINISHED_STATUSES, _UNSUCCESSFUL_STATUSES, _RUNNING_SQL,
#   _UNSUCCESSFUL_SQL), _alive, _seconds, _BLOCKED_S (the run_at of a job waiting
#   on dependencies), _rebuild (saqlite vacuum); _STATS_BOUNDS (the buckets of
#   saqlite_stats, the figures of finished jobs); Queue._wakeup, a _Wakeup (want,
#   generation and wait: the page's live events, saqlite tail);
#   the command line's _OpsError, _load_settings, _configure_logging, _OPS_COMMANDS,
#   _SETTINGS_HELP, _VERBOSE_HELP, and _EXTRAS, which it fills with a _CommandLineExtras.
# #############################################################################


# =============================================================================
# Operator tooling: terminal commands
# =============================================================================

_OPS_EPILOG = """\
commands on a saqlite file (a path or sqlite:/// URL; no settings needed):
  saqlite info FILE              queues with their counts, and live workers
  saqlite jobs FILE              jobs, newest first (--queue, --status, --function, --page)
  saqlite job FILE KEY           one job in full: kwargs, result, error, progress, times
  saqlite stats FILE             per function: jobs ended, failure rate, wait/run p50 p95
  saqlite tail FILE              a line per job event as it happens, until Ctrl-C
  saqlite retry FILE KEY...      put failed or aborted jobs back in the queue (or --all)
  saqlite abort FILE KEY...      abort waiting or running jobs (or --all)
  saqlite purge FILE --older-than 7d   delete finished jobs older than an age
  saqlite vacuum FILE           rebuild a file from before saqlite's schema 3 so it can shrink
  saqlite web FILE [--port 8080] serve the monitoring page
  saqlite burst module.settings  run the jobs there are; exit 1 if any failed or is pending
  saqlite export FILE URL        move waiting and scheduled jobs into SAQ (redis://, postgres://)
  saqlite pause FILE [--function F] [--for 10m|--until TIME]   stop starting jobs (kept queued)
  saqlite resume FILE [--function F]   end a pause
  saqlite limit FILE [--function F] --rate 60/m --concurrency N --per-group N (or --clear)
  saqlite drain FILE [--timeout S]   pause, wait for running jobs to end (exit 1 on timeout)
Add --json for output a script can read. saqlite COMMAND -h tells more.

exit codes, the same for every command:
  0  done
  1  a job failed or was aborted, or was left pending (burst); a job named is
     missing or cannot be retried or aborted
  2  a usage or settings error: a bad option, settings not found or invalid, a
     file that is missing, locked or not a saqlite database"""

_BURST_HELP = """\
Run a settings dict's worker on the jobs there are, then stop (for CI).
It runs every job that is due, and jobs that become due while it runs; it waits
for the retries of the jobs it ran, however long their retry_delay, and for their
sleeps (saqlite.sleep); it stops
once nothing has been running or due for --wait seconds. Jobs still waiting then
(scheduled later, or held by a pause) are listed as pending. Exit 0 when all is
done; 1 when a job failed or was aborted, or jobs are pending (unless
--allow-pending or --max-jobs); 2 on a usage or settings error, or a file that
does not exist."""
#: Seconds between a burst's looks at whether work is left.
_BURST_POLL_S = 0.1
_ALLOWED_HOST_HELP = (
    "a host name the page answers to, besides IP addresses and localhost (repeatable; "
    "'*' any); by default any with AUTH_PASSWORD set"
)
_FINISHED = tuple(status.value for status in _FINISHED_STATUSES)
_RETRYABLE = ("failed", "aborted")
_ABORTABLE = ("queued", "active")
_STATUS_NAMES = tuple(status.value for status in Status if status != Status.NEW)
#: Rows one retry, abort or purge statement handles; progress is shown between them.
_OPS_BATCH = 500
#: The last page number a listing takes (its OFFSET stays a 64-bit integer).
_MAX_PAGE = 10**9
#: Seconds a command waits for another connection's lock when it opens a file.
_OPS_OPEN_TIMEOUT_S = 5.0
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# Job counts by queue and status: those saqlite_counts keeps, and the running jobs
# (few) through saqlite_jobs_ready, for every queue that ever had a job.
_SQL_OPS_COUNTS = f"""
SELECT queue, status, n FROM saqlite_counts WHERE n > 0
UNION ALL
SELECT queues.queue, jobs.status, COUNT(*)
FROM (SELECT DISTINCT queue FROM saqlite_counts) AS queues
JOIN saqlite_jobs AS jobs ON jobs.queue = queues.queue AND jobs.status IN {_RUNNING_SQL}
GROUP BY queues.queue, jobs.status
"""
# Queue names in a file: those with jobs, and those with registered workers.
_SQL_OPS_QUEUE_NAMES = (
    f"SELECT queue FROM ({_SQL_OPS_COUNTS}) UNION SELECT queue FROM saqlite_workers "
    "UNION SELECT queue FROM saqlite_flow ORDER BY 1"
)
#: Characters of a job's data, result or error a listing reads; a job with more is
#: listed from its columns (kwargs and result left out), an error is cut in the middle.
_LIST_VALUE_CAP = 8192
_SQL_OPS_COUNT_OLD_JOBS = "SELECT COUNT(*) FROM saqlite_jobs WHERE {where} AND completed < :before"


# Job filters: the conditions a _JobFilter uses, joined with AND (all bound parameters).
_SQL_OPS_WHERE_QUEUE = "queue = :queue"
_SQL_OPS_WHERE_STATUSES = "status IN (SELECT value FROM json_each(:statuses))"
_SQL_OPS_WHERE_FUNCTION = "function = :function"


@dataclasses.dataclass(frozen=True)
class _JobFilter:
    """Which jobs a command works on: a queue, statuses, a function name (None = any)."""

    queue: t.Optional[str] = None
    statuses: tuple[str, ...] = ()
    function: t.Optional[str] = None

    def where(self) -> tuple[str, dict[str, t.Any]]:
        """The SQL condition and its parameters."""
        conditions = []
        if self.queue is not None:
            conditions.append(_SQL_OPS_WHERE_QUEUE)
        if self.statuses:
            conditions.append(_SQL_OPS_WHERE_STATUSES)
        if self.function is not None:
            conditions.append(_SQL_OPS_WHERE_FUNCTION)
        params = {
            "queue": self.queue,
            "statuses": json.dumps(list(self.statuses)),
            "function": self.function,
        }
        return " AND ".join(conditions) or "1", params

    def counts(self, queue: str, status: str) -> bool:
        """Whether jobs of this queue and status match (the function aside)."""
        return self.queue in (None, queue) and (not self.statuses or status in self.statuses)


class _Store:
    """One saqlite file, with a Queue per queue name in it, opened when first used.

    Args:
        path: the database file.
        queues: queues of this file whose ``dump``/``load`` to use for their names.
    """

    def __init__(self, path: str, queues: Sequence[Queue] = ()) -> None:
        self.path = path
        self._templates = {queue.name: queue for queue in queues}
        self._queues: dict[str, Queue] = {}

    def queue(self, name: str) -> Queue:
        """This file's queue of that name (its own connection)."""
        queue = self._queues.get(name)
        if queue is None:
            template = self._templates.get(name)
            queue = Queue(
                self.path,
                name,
                dump=template._codec.dump if template else None,
                load=template._codec.load if template else None,
            )
            self._queues[name] = queue
        return queue

    @property
    def reader(self) -> Queue:
        """The queue whose connection runs statements on the whole file."""
        return self.queue(next(iter(self._templates), "default"))

    async def fetch(self, sql: str, params: t.Any = ()) -> list[t.Any]:
        """Run one statement on the file (see ``Queue._fetch``)."""
        return await self.reader._fetch(sql, params)

    async def close(self) -> None:
        """Close every queue opened here."""
        for queue in self._queues.values():
            await queue.disconnect()

    def load(self, row: Sequence[t.Any]) -> Job:
        """A Job from a row of ``queue, key, _LOAD_COLUMNS``; one whose data cannot be
        read (another ``dump``) still shows its key, status and error."""
        queue = self.queue(row[0])
        try:
            return queue._codec.job(row[2:])
        except (ValueError, TypeError, KeyError):
            status, error = row[3], row[9]
            return _UnreadableJob("?", queue=queue, key=row[1], status=status, error=error)


class _ListedJob(Job):
    """A job too big to read for a listing, made from its columns; ``cut`` has the
    size in characters of each value left out."""

    cut: dict[str, int]


class _UnreadableJob(Job):
    """A job whose data another ``dump`` wrote: shown, never written back."""

    def refusal(self, action: str) -> str:
        """Why ``action`` ("retry" or "abort") is refused, and what to do instead."""
        return (
            f"Job {self.key!r} was stored with a custom dump/load, so it cannot be read here "
            f"and is left as it is: {action} it from your code (queue.{action}(job)), or serve "
            "the page with saqlite.web_app(queue) given your Queue"
        )


def _listed_job(store: _Store, row: Sequence[t.Any]) -> Job:
    """A Job from a row of ``_SQL_OPS_LIST_JOBS``."""
    if row[2] is not None:
        return store.load(row[:12])
    _, key, _, status, attempts, worker_id, started, touched, completed, error, progress = row[:11]
    function, queued, priority, run_at, group_key, data_size, result_size = row[12:]
    job = _ListedJob(
        function, queue=store.queue(row[0]), key=key, status=status, attempts=attempts,
        worker_id=worker_id, started=started, touched=touched, completed=completed,
        error=error, progress=progress, queued=queued, priority=priority, scheduled=run_at,
        group_key=group_key,
    )  # fmt: skip
    job.cut = {"kwargs": data_size, **({"result": result_size} if result_size else {})}
    return job


_SQL_OPS_IS_SAQLITE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'saqlite_jobs'"


def _open_store(target: str) -> _Store:
    """The store for a path or ``sqlite:///`` URL; it must be a saqlite file.

    Raises:
        _OpsError: the file is missing or is not a saqlite database.
    """
    path = Queue.from_url(target).path if target.startswith("sqlite:") else target
    if os.path.isdir(path):
        raise _OpsError(f"{path} is a folder: give the path of a saqlite database file")
    if not os.path.isfile(path):
        raise _OpsError(
            f"{path} does not exist: give the path or sqlite:/// URL of a saqlite database"
        )
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=_OPS_OPEN_TIMEOUT_S)
        try:
            found = conn.execute(_SQL_OPS_IS_SAQLITE).fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise _OpsError(
                f"{path} is locked by another connection ({exc}): try again when it is released"
            ) from exc
        if "not a database" in str(exc) or "malformed" in str(exc):
            raise _OpsError(f"{path} is not a SQLite database ({exc})") from exc
        raise _OpsError(f"{path} cannot be read ({exc})") from exc
    if not found:
        raise _OpsError(f"{path} is not a saqlite database: it has no saqlite_jobs table")
    return _Store(path)


# -- reading and changing jobs --------------------------------------------------


_SQL_OPS_WORKERS = (
    "SELECT id, queue, host, pid, beat, expire_at, info FROM saqlite_workers ORDER BY queue, id"
)


async def _overview(store: _Store, queue: t.Optional[str] = None) -> dict[str, t.Any]:
    """Per queue: job counts by status and live workers; and the live workers."""
    current = time.time()
    names = [name for (name,) in await store.fetch(_SQL_OPS_QUEUE_NAMES)]
    counts: dict[str, dict[str, int]] = {}
    for name, status, n in await store.fetch(_SQL_OPS_COUNTS):
        counts.setdefault(name, {})[status] = n
    workers = []
    for worker_id, name, host, pid, beat, expire_at, info in await store.fetch(_SQL_OPS_WORKERS):
        if not _alive(host, pid, None, expire_at <= current) or queue not in (None, name):
            continue
        stats = json.loads(info)
        workers.append(
            {
                "id": worker_id,
                "queue": name,
                "host": host,
                "pid": pid,
                "beat": beat,
                "stats": stats.get("stats", {}),
                "metadata": stats.get("metadata"),
            }
        )
    queues = []
    for name in names:
        if queue not in (None, name):
            continue
        found = counts.get(name, {})
        due, scheduled, _ = await store.reader._drive(_counts_steps(name)) if found else (0, 0, 0)
        entry: dict[str, t.Any] = {
            "name": name,
            "queued": due,
            "scheduled": scheduled,
            "active": sum(found.get(status, 0) for status in _RUNNING_STATUSES),
            **{status: found.get(status, 0) for status in _FINISHED},
        }
        entry["workers"] = sum(worker["queue"] == name for worker in workers)
        flow = await store.queue(name).flow()
        if flow:  # as in info(): while a pause or limit is in force
            entry["flow"] = flow
        queues.append(entry)
    return {"path": store.path, "queues": queues, "workers": workers}


# -- figures of finished jobs (saqlite_stats) ----------------------------------------
# They come from saqlite_stats (see schema 8): per queue, function and minute, so that
# reading a window costs its minutes, never the jobs (and holds those deleted since).


class _Figures(t.NamedTuple):
    """The sums of one queue and function's figures over a window (see _figures)."""

    queue: str
    function: str
    complete: int
    failed: int
    aborted: int
    ran: int  # jobs that ran (started), the observations of wait and run time
    wait_s: float  # the sum of their waits, in seconds
    run_s: float  # and of their runs
    wait_le: tuple[int, ...]  # how many waited at most each of _STATS_BOUNDS
    run_le: tuple[int, ...]  # how many ran at most each of _STATS_BOUNDS


class _FunctionStats(t.TypedDict):
    """One function's figures over a window, as ``saqlite stats`` and the page show them.

    ``runs`` are the jobs that ended (complete, failed or aborted: an aborted job may
    never have run) and ``failure_rate`` the share of them that did not complete
    (failed + aborted). Wait is from when a job was due (enqueued, its scheduled time,
    its retry's, or when its dependencies let it through) to the start of its last
    attempt; run is from that start to its end. The percentiles, in seconds, are read
    from histogram buckets as Prometheus' histogram_quantile reads them (linear within
    a bucket; beyond the last bound, that bound); None when none of them ran.
    """

    queue: str
    function: str
    runs: int
    complete: int
    failed: int
    aborted: int
    failure_rate: float
    wait_p50: t.Optional[float]
    wait_p95: t.Optional[float]
    run_p50: t.Optional[float]
    run_p95: t.Optional[float]


class _Bucket(t.TypedDict):
    """The jobs that ended in one time bucket of a chart (see _throughput)."""

    start: float  # epoch seconds
    complete: int
    failed: int
    aborted: int


# (Rows of a pair of buckets: summed per bucket in _figures.) The table is in minute
# order: a window reads its minutes only.
_SQL_OPS_FIGURES = """
SELECT queue, function, wait_bucket, run_bucket,
    SUM(complete), SUM(failed), SUM(aborted), SUM(wait_s), SUM(run_s)
FROM saqlite_stats WHERE minute >= :since AND (:queue IS NULL OR queue = :queue)
GROUP BY queue, function, wait_bucket, run_bucket ORDER BY queue, function
"""
_SQL_OPS_THROUGHPUT = """
SELECT minute / :per, SUM(complete), SUM(failed), SUM(aborted) FROM saqlite_stats
WHERE minute >= :since AND (:queue IS NULL OR queue = :queue)
GROUP BY minute / :per
"""
#: A window that reaches further back than the minutes kept reads every figure.
_STATS_ALL = math.inf


async def _figures(
    store: _Store, queue: t.Optional[str] = None, since_s: float = _STATS_ALL
) -> list[_Figures]:
    """Each queue's (or one queue's) figures per function over the last ``since_s``
    seconds (whole minutes, the current one included); all since counting began
    (schema 8) when ``since_s`` is _STATS_ALL."""
    since = 0 if since_s == _STATS_ALL else int((time.time() - since_s) // 60)
    rows = await store.fetch(_SQL_OPS_FIGURES, {"since": since, "queue": queue})
    figures: list[_Figures] = []
    for (name, function), group in itertools.groupby(rows, key=lambda row: row[:2]):
        complete = failed = aborted = 0
        wait_s = run_s = 0.0
        waits = [0] * (len(_STATS_BOUNDS) + 1)
        runs = [0] * (len(_STATS_BOUNDS) + 1)
        for row in group:
            wait_bucket, run_bucket, *ended = row[2:7]
            complete, failed, aborted = complete + ended[0], failed + ended[1], aborted + ended[2]
            wait_s, run_s = wait_s + row[7], run_s + row[8]
            if wait_bucket >= 0:
                waits[wait_bucket] += sum(ended)
                runs[run_bucket] += sum(ended)
        wait_le = tuple(itertools.accumulate(waits[:-1]))
        run_le = tuple(itertools.accumulate(runs[:-1]))
        ran = sum(waits)
        figures.append(
            _Figures(name, function, complete, failed, aborted, ran, wait_s, run_s, wait_le, run_le)
        )
    return figures


def _quantile(q: float, cumulative: t.Sequence[int], count: int) -> t.Optional[float]:
    """The ``q`` quantile of ``count`` observations in buckets of _STATS_BOUNDS (as
    histogram_quantile: linear within its bucket; beyond the last bound, that bound)."""
    if not count:
        return None
    rank = q * count
    lower, below = 0.0, 0
    for bound, n in zip(_STATS_BOUNDS, cumulative):
        if n >= rank and n > below:
            return lower + (bound - lower) * (rank - below) / (n - below)
        lower, below = bound, n
    return _STATS_BOUNDS[-1]


def _function_stats(figures: _Figures) -> _FunctionStats:
    """What ``saqlite stats`` and the page show of one function's figures."""
    runs = figures.complete + figures.failed + figures.aborted
    return {
        "queue": figures.queue,
        "function": figures.function,
        "runs": runs,
        "complete": figures.complete,
        "failed": figures.failed,
        "aborted": figures.aborted,
        "failure_rate": (figures.failed + figures.aborted) / runs if runs else 0.0,
        "wait_p50": _quantile(0.5, figures.wait_le, figures.ran),
        "wait_p95": _quantile(0.95, figures.wait_le, figures.ran),
        "run_p50": _quantile(0.5, figures.run_le, figures.ran),
        "run_p95": _quantile(0.95, figures.run_le, figures.ran),
    }


async def _stats(
    store: _Store, queue: t.Optional[str] = None, since_s: float = 3600.0
) -> list[_FunctionStats]:
    """Per queue and function, the figures of the jobs that ended in the last
    ``since_s`` seconds (at most a day: see _STATS_KEPT_MINUTES; or _STATS_ALL)."""
    return [_function_stats(figures) for figures in await _figures(store, queue, since_s)]


async def _throughput(
    store: _Store, queue: t.Optional[str] = None, buckets: int = 60, bucket_s: int = 60
) -> list[_Bucket]:
    """The jobs that ended per bucket of ``bucket_s`` seconds (a whole number of
    minutes), oldest first, the last one the current (partial) bucket: by default
    the last hour by minute; ``buckets=24, bucket_s=3600``: the last day by hour."""
    per = max(bucket_s // 60, 1)
    last = int(time.time() // 60) // per
    params = {"per": per, "since": (last - buckets + 1) * per, "queue": queue}
    found = {row[0]: row[1:] for row in await store.fetch(_SQL_OPS_THROUGHPUT, params)}
    chart: list[_Bucket] = []
    for index in range(last - buckets + 1, last + 1):
        complete, failed, aborted = found.get(index, (0, 0, 0))
        start = index * per * 60.0
        chart.append({"start": start, "complete": complete, "failed": failed, "aborted": aborted})
    return chart


#: The media type of Prometheus' text format.
_METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METRICS_HELP = {
    "saqlite_jobs": (
        "gauge",
        "Jobs by queue and status (queued: due now; scheduled: due later; active: running)",
    ),
    "saqlite_jobs_completed_total": ("counter", "Jobs that ended complete"),
    "saqlite_jobs_failed_total": ("counter", "Jobs that ended failed (their last attempt)"),
    "saqlite_jobs_aborted_total": ("counter", "Jobs that ended aborted"),
    "saqlite_job_wait_seconds": (
        "histogram",
        "Seconds from when a job was due to the start of its last attempt, of jobs that ended",
    ),
    "saqlite_job_run_seconds": (
        "histogram",
        "Seconds from the start of a job's last attempt to its end, of jobs that ended",
    ),
    "saqlite_workers": ("gauge", "Live workers by queue"),
}
_METRICS_STATUSES = ("queued", "scheduled", "active", *_FINISHED)


def _metric_labels(labels: dict[str, str]) -> str:
    """Prometheus labels, their values escaped as its text format wants."""
    escaped = (
        (name, value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
        for name, value in labels.items()
    )
    return "{" + ",".join(f'{name}="{value}"' for name, value in escaped) + "}"


def _metric_number(value: float) -> str:
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(value)


def _metrics_text(files: Sequence[tuple[dict[str, str], dict[str, t.Any], list[_Figures]]]) -> str:
    """/metrics in Prometheus' text format (0.0.4), from each file's labels (none for a
    single file; else its path), its _overview and its _figures since counting began."""
    samples: dict[str, list[str]] = {name: [] for name in _METRICS_HELP}

    def add(name: str, labels: dict[str, str], value: float) -> None:
        family = name if name in samples else name.rsplit("_", 1)[0]
        samples[family].append(f"{name}{_metric_labels(labels)} {_metric_number(value)}")

    for file, overview, figures in files:
        for queue in overview["queues"]:
            labels = {**file, "queue": queue["name"]}
            for status in _METRICS_STATUSES:
                add("saqlite_jobs", {**labels, "status": status}, queue[status])
            add("saqlite_workers", labels, queue["workers"])
        for f in figures:
            labels = {**file, "queue": f.queue, "function": f.function}
            add("saqlite_jobs_completed_total", labels, f.complete)
            add("saqlite_jobs_failed_total", labels, f.failed)
            add("saqlite_jobs_aborted_total", labels, f.aborted)
            for name, cumulative, total in (
                ("saqlite_job_wait_seconds", f.wait_le, f.wait_s),
                ("saqlite_job_run_seconds", f.run_le, f.run_s),
            ):
                for bound, count in zip(_STATS_BOUNDS, cumulative):
                    add(f"{name}_bucket", {**labels, "le": _metric_number(bound)}, count)
                add(f"{name}_bucket", {**labels, "le": "+Inf"}, f.ran)
                add(f"{name}_sum", labels, total)
                add(f"{name}_count", labels, f.ran)
    lines = []
    for name, (kind, text) in _METRICS_HELP.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples[name]]
    return "\n".join(lines) + "\n"


async def _metrics(stores: Sequence[_Store]) -> str:
    """/metrics of these files (see _metrics_text): costs their queues, workers and a
    day of figures, whatever the number of jobs."""
    files = []
    for store in stores:
        file = {"file": store.path} if len(stores) > 1 else {}
        files.append((file, await _overview(store), await _figures(store)))
    return _metrics_text(files)


# _LOAD_COLUMNS within the cap (else NULL), then the columns to list a bigger job by.
_SQL_OPS_LIST_COLUMNS = """queue, key,
    CASE WHEN length(data) <= :cap AND ifnull(length(result), 0) <= :cap THEN data END,
    status, attempts, worker_id, started, touched, completed,
    CASE WHEN length(error) <= :cap THEN error
        ELSE substr(error, 1, :cap / 2) || char(10) || '...' || char(10) || substr(error, -:cap / 2)
    END,
    progress, CASE WHEN ifnull(length(result), 0) <= :cap THEN result END,
    function, queued, priority, CAST(run_at AS INTEGER), group_key, length(data), length(result),
    rowid"""
_SQL_OPS_LIST_JOBS = f"""
SELECT {_SQL_OPS_LIST_COLUMNS}
FROM saqlite_jobs INDEXED BY {{index}} WHERE {{where}}
ORDER BY queued DESC, rowid DESC LIMIT :limit OFFSET :offset
"""
# A listing that has few jobs to list (by _SQL_OPS_COUNTS) finds them by queue and
# status and sorts them; else it walks, from the newest, saqlite_jobs_unsuccessful for
# failed and aborted jobs, saqlite_jobs_newest_function for one function's, or else
# saqlite_jobs_newest.
_LIST_SORT_MAX = 10000
_SQL_OPS_WHERE_FEW = (
    "queue IN (SELECT value FROM json_each(:queues))"
    " AND status IN (SELECT value FROM json_each(:listed))"
)
# A listing's next page: the jobs after the last one shown (keyset: no OFFSET to skip).
_SQL_OPS_WHERE_AFTER = "queued <= :queued AND (queued < :queued OR rowid < :rowid)"


async def _list_jobs(
    store: _Store,
    where: _JobFilter,
    offset: int = 0,
    limit: int = 20,
    after: t.Optional[str] = None,
) -> tuple[list[Job], t.Optional[str]]:
    """Jobs matching a filter, newest first, from ``offset`` or after the job the
    cursor ``after`` names; and the cursor of the next page (None at the end).

    Raises:
        _OpsError: ``after`` is not a cursor a listing gave.
    """
    index, condition, params = await _listing(store, where, after)
    sql = _SQL_OPS_LIST_JOBS.format(where=condition, index=index)
    params = {**params, "limit": limit + 1, "offset": offset, "cap": _LIST_VALUE_CAP}
    rows = await store.fetch(sql, params)
    jobs = [_listed_job(store, row[:-1]) for row in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return jobs, None if last is None else f"{last[13]}:{last[-1]}"


async def _listing(
    store: _Store, where: _JobFilter, after: t.Optional[str] = None
) -> tuple[str, str, dict[str, t.Any]]:
    """How to walk the jobs of a filter newest first: the index, the condition (with
    the cursor ``after``, if any) and its parameters.

    Raises:
        _OpsError: ``after`` is not a cursor a listing gave.
    """
    condition, params = where.where()
    counts = [row for row in await store.fetch(_SQL_OPS_COUNTS) if where.counts(*row[:2])]
    index = "saqlite_jobs_newest"
    if where.statuses and set(where.statuses) <= {s.value for s in _UNSUCCESSFUL_STATUSES}:
        index = "saqlite_jobs_unsuccessful"  # its WHERE; and one status: in index order
        condition += f" AND status IN {_UNSUCCESSFUL_SQL}"
        if len(set(where.statuses)) == 1:
            condition += " AND status = :only"
            params["only"] = where.statuses[0]
    elif where.function is not None:
        index = "saqlite_jobs_newest_function"
    if sum(n for _, _, n in counts) <= _LIST_SORT_MAX:
        index = "saqlite_jobs_ready"
        condition += " AND " + _SQL_OPS_WHERE_FEW
        params["queues"] = json.dumps(sorted({name for name, _, _ in counts}))
        params["listed"] = json.dumps(sorted({status for _, status, _ in counts}))
    if after is not None:
        try:
            queued, rowid = (int(part) for part in after.split(":"))
        except ValueError:
            raise _OpsError(
                f"{after!r} is not a listing's cursor: give the 'next' value of a listing"
            ) from None
        condition += " AND " + _SQL_OPS_WHERE_AFTER
        params.update(queued=queued, rowid=rowid)
    return index, condition, params


_SQL_OPS_COUNT_JOBS = "SELECT COUNT(*) FROM saqlite_jobs WHERE {where}"


async def _count_jobs(store: _Store, where: _JobFilter) -> int:
    if where.function is None:  # from the counts, without reading the jobs
        rows = await store.fetch(_SQL_OPS_COUNTS)
        return sum(n for name, status, n in rows if where.counts(name, status))
    condition, params = where.where()
    rows = await store.fetch(_SQL_OPS_COUNT_JOBS.format(where=condition), params)
    return int(rows[0][0])


# NOT INDEXED: by rowid, each batch from where the last one stopped (by an index,
# each would find and sort every match).
_SQL_OPS_SELECT_JOBS = f"""
SELECT rowid, queue, key, {_LOAD_COLUMNS} FROM saqlite_jobs NOT INDEXED
WHERE {{where}} AND rowid > :after ORDER BY rowid LIMIT :limit
"""


async def _matching_jobs(store: _Store, where: _JobFilter) -> AsyncIterator[list[Job]]:
    """Jobs matching a filter, a batch at a time, oldest first."""
    condition, params = where.where()
    sql = _SQL_OPS_SELECT_JOBS.format(where=condition)
    after = 0
    while True:
        rows = await store.fetch(sql, {**params, "after": after, "limit": _OPS_BATCH})
        if rows:
            yield [store.load(row[1:]) for row in rows]
        if len(rows) < _OPS_BATCH:
            return
        after = rows[-1][0]


_SQL_OPS_FIND_JOB = (
    f"SELECT queue, key, {_LOAD_COLUMNS} FROM saqlite_jobs WHERE queue = :queue AND key = :key"
)


async def _find_jobs(store: _Store, ref: str, queue: t.Optional[str] = None) -> list[Job]:
    """The jobs a key (or a ``saqlite:job:<queue>:<key>`` id) names, in any queue."""
    candidates: list[tuple[str, str]] = []
    prefix = "saqlite:job:"
    if ref.startswith(prefix):  # queue names may hold ':' too: try every split
        rest = ref[len(prefix) :]
        candidates += [(rest[:i], rest[i + 1 :]) for i, c in enumerate(rest) if c == ":"]
    names = [queue] if queue else [name for (name,) in await store.fetch(_SQL_OPS_QUEUE_NAMES)]
    candidates += [(name, ref) for name in names]
    found = []
    for name, key in candidates:
        if queue in (None, name):
            rows = await store.fetch(_SQL_OPS_FIND_JOB, {"queue": name, "key": key})
            found += [store.load(row) for row in rows]
    return list({(job.get_queue().name, job.key): job for job in found}.values())


async def _retry_job(job: Job, error: str) -> bool:
    """Put a failed or aborted job back in its queue (see ``Queue.retry``: after its
    ``retry_delay``, as in SAQ); whether it was.

    Raises:
        _OpsError: the job cannot be read here (another ``dump``).
    """
    if job.status not in UNSUCCESSFUL_TERMINAL_STATUSES:
        return False
    if isinstance(job, _UnreadableJob):
        raise _OpsError(job.refusal("retry"), code=1)
    return await job.get_queue()._retry(job, error)


async def _abort_job(job: Job, error: str) -> bool:
    """Abort a waiting or running job (see ``Queue.abort``); whether it was.

    Raises:
        _OpsError: the job cannot be read here (another ``dump``).
    """
    if job.status in TERMINAL_STATUSES or job.status == Status.ABORTING:
        return False
    if isinstance(job, _UnreadableJob):
        raise _OpsError(job.refusal("abort"), code=1)
    await job.get_queue().abort(job, error)
    return job.status in (Status.ABORTED, Status.ABORTING)


# A purge reads the rows to delete (no lock held while it searches), then deletes
# them by rowid if they still match: each write touches at most :limit rows.
# (NOT INDEXED: by rowid, from where the last slice stopped, as _SQL_OPS_SELECT_JOBS.)
_SQL_OPS_PURGEABLE = """
SELECT rowid FROM saqlite_jobs NOT INDEXED WHERE {where} AND completed < :before AND rowid > :after
ORDER BY rowid LIMIT :limit
"""
_SQL_OPS_PURGE = """
DELETE FROM saqlite_jobs NOT INDEXED
WHERE rowid IN (SELECT value FROM json_each(:rowids)) AND {where} AND completed < :before
RETURNING 1
"""


async def _purge(
    store: _Store, where: _JobFilter, before_ms: int, progress: t.Optional[_Progress] = None
) -> int:
    """Delete finished jobs (of a filter) completed before a time; how many."""
    condition, params = where.where()
    params = {**params, "before": before_ms}
    total = int((await store.fetch(_SQL_OPS_COUNT_OLD_JOBS.format(where=condition), params))[0][0])
    if progress is not None:
        progress.total = total
    deleted = 0
    find = _SQL_OPS_PURGEABLE.format(where=condition)
    delete = _SQL_OPS_PURGE.format(where=condition)
    after, size = 0, _SliceSize.of_rows()
    while True:
        limit = size.amount
        found = await store.fetch(find, {**params, "after": after, "limit": limit})
        rowids = [rowid for (rowid,) in found]
        if rowids:
            started = time.perf_counter()
            deleted += len(await store.fetch(delete, {**params, "rowids": json.dumps(rowids)}))
            size.took(len(rowids), time.perf_counter() - started)
            if progress is not None:
                progress.update(deleted)
        if len(rowids) < limit:
            await store.reader._give_back_space()
            return deleted
        after = rowids[-1]
        await store.reader._between_slices()


# -- text output -------------------------------------------------------------

# Control characters would move the cursor or recolour the terminal: show them escaped.
_CONTROL_CHARS = {
    code: f"\\x{code:02x}" for code in (*range(9), *range(11, 32), 127, *range(0x80, 0xA0))
}


def _clean(text: object, one_line: bool = False) -> str:
    """Text safe to print on a terminal (and on one line if asked)."""
    cleaned = str(text).translate(_CONTROL_CHARS)
    return " ".join(cleaned.split()) if one_line else cleaned


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _error_line(error: t.Optional[str]) -> str:
    """The last line of an error (a traceback's exception), on one line."""
    lines = [line for line in (error or "").splitlines() if line.strip()]
    return _clean(lines[-1], one_line=True) if lines else ""


def _fmt_time(ms: float) -> str:
    if not ms:
        return "-"
    try:
        return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):  # beyond the year 9999, or before 1
        return f"{ms / 1000:.0f} s after 1970-01-01"


def _fmt_span(ms: t.Optional[float]) -> str:
    """A duration for people: 340 ms, 2.5 s, 3m 12s, 2h 05m, 4d 2h."""
    if ms is None:
        return "-"
    if not math.isfinite(ms):
        return str(ms)
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def _fmt_ago(ms: float, current_ms: t.Optional[float] = None) -> str:
    if not ms:
        return "-"
    delta = (current_ms if current_ms is not None else now()) - ms
    return f"{_fmt_span(delta)} ago" if delta >= 0 else f"in {_fmt_span(-delta)}"


def _progress_bar(fraction: float, width: int = 20) -> str:
    filled = round(max(0.0, min(fraction, 1.0)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], right: Iterable[int] = ()
) -> str:
    """Rows in aligned columns; the columns in ``right`` are aligned right."""
    cells = [[_clean(cell, one_line=True) for cell in row] for row in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *cells)]
    numeric = set(right)
    lines = []
    for row in [list(headers), *cells]:
        parts = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _job_json(job: Job) -> dict[str, t.Any]:
    """Every field of a job, for ``--json`` and the page's API."""
    data = {field.name: getattr(job, field.name) for field in dataclasses.fields(job)}
    data["queue"] = job.queue.name if job.queue else None
    data["status"] = job.status.value
    data["id"] = job.id if job.queue else None
    kinds = ["start", "process", "total"]
    if job.status in _RUNNING_STATUSES:
        kinds.append("running")
    data["durations_ms"] = {kind: job.duration(kind) for kind in kinds}
    if isinstance(job, _ListedJob):
        for name, size in job.cut.items():
            data[name] = f"(not read for a listing: {size} characters; ask for this job alone)"
        data["cut"] = sorted(job.cut)
    return data


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, default=str))


def _format_overview(overview: dict[str, t.Any]) -> str:
    current = now()
    lines = [_clean(overview["path"])]
    if not overview["queues"]:
        return lines[0] + "\nno jobs or workers"
    headers: tuple[str, ...] = ("QUEUE", "QUEUED", "SCHEDULED", "ACTIVE", "COMPLETE", "FAILED")
    headers += ("ABORTED", "WORKERS")
    kinds = ("queued", "scheduled", "active", "complete", "failed", "aborted", "workers")
    rows = [[q["name"], *(q[kind] for kind in kinds)] for q in overview["queues"]]
    lines.append(_table(headers, rows, right=range(1, 8)))
    flow = _format_flow(overview["queues"])
    if flow:
        lines.append("\n" + flow)
    workers = overview["workers"]
    lines.append(f"\n{len(workers)} live worker{'' if len(workers) == 1 else 's'}")
    if workers:
        headers = (
            "WORKER",
            "QUEUE",
            "HOST:PID",
            "BEAT",
            "UPTIME",
            "COMPLETE",
            "FAILED",
            "RETRIED",
            "ABORTED",
        )
        rows = []
        for w in workers:
            stats = w["stats"]
            rows.append(
                [
                    w["id"],
                    w["queue"],
                    f"{w['host']}:{w['pid']}",
                    _fmt_ago(w["beat"] * 1000, current),
                    _fmt_span(stats.get("uptime")),
                    stats.get("complete", 0),
                    stats.get("failed", 0),
                    stats.get("retried", 0),
                    stats.get("aborted", 0),
                ]
            )
        lines.append(_table(headers, rows, right=range(5, 9)))
    return "\n".join(lines)


def _flow_use(rule: FlowRule) -> list[str]:
    """A pause or limit, with its use, as short phrases: "rate 60/m (12 started)"."""
    parts = []
    if rule["paused"]:
        until = rule["paused_until"]
        parts.append(f"paused until {_fmt_time(until * 1000)}" if until else "paused")
    if rule["rate"]:
        parts.append(f"rate {rule['rate']} ({rule['started']} started)")
    if rule["concurrency"]:
        parts.append(f"concurrency {rule['concurrency']} ({rule['running']} running)")
    if rule["per_group"]:
        parts.append(f"per group {rule['per_group']} (busiest {rule['busiest_group']})")
    return parts


def _format_flow(queues: list[dict[str, t.Any]]) -> str:
    """The pauses and limits of the queues of an overview, a line each."""
    rows = [
        [q["name"], rule["function"] or "(whole queue)", ", ".join(_flow_use(rule))]
        for q in queues
        for rule in q.get("flow", ())
    ]
    if not rows:
        return ""
    return "pauses and limits\n" + _table(("QUEUE", "FUNCTION", "IN FORCE (USE)"), rows)


def _fmt_seconds(seconds: t.Optional[float]) -> str:
    """A wait or run time: 0.42 ms, 35 ms, 2.5 s, 3m 12s."""
    if seconds is None:
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1000:.2g} ms"
    return _fmt_span(seconds * 1000)


def _format_stats(path: str, window: str, stats: Sequence[_FunctionStats]) -> str:
    """``saqlite stats``: a line per queue and function."""
    if not stats:
        return f"{_clean(path)}\nno job ended {window}"
    headers = (
        "QUEUE", "FUNCTION", "RUNS", "COMPLETE", "FAILED", "ABORTED", "FAILURE",
        "WAIT P50", "WAIT P95", "RUN P50", "RUN P95",
    )  # fmt: skip
    rows = [
        [
            e["queue"], e["function"], e["runs"], e["complete"], e["failed"], e["aborted"],
            f"{e['failure_rate']:.1%}", _fmt_seconds(e["wait_p50"]), _fmt_seconds(e["wait_p95"]),
            _fmt_seconds(e["run_p50"]), _fmt_seconds(e["run_p95"]),
        ]
        for e in stats
    ]  # fmt: skip
    return f"{_clean(path)}: jobs that ended {window}\n" + _table(headers, rows, range(2, 11))


def _format_jobs(
    jobs: Sequence[Job],
    page: int,
    limit: int,
    cursor: t.Optional[str],
    sleeping: set[tuple[str, str]],
    *,
    after: bool = False,
) -> str:
    if not jobs:
        return "no jobs match" if page == 1 else f"no jobs on page {page}"
    current = now()
    headers = ("QUEUE", "KEY", "FUNCTION", "STATUS", "TRIES", "QUEUED", "TOOK", "ERROR")
    rows = [
        [
            job.get_queue().name, job.key, job.function,
            f"{job.status.value}, sleeping"
            if (job.get_queue().name, job.key) in sleeping else job.status.value,
            job.attempts,
            _fmt_ago(job.queued, current), _fmt_span(job.duration("process")),
            _cut(_error_line(job.error), 60),
        ]
        for job in jobs
    ]  # fmt: skip
    first = (page - 1) * limit + 1
    footer = f"{len(jobs)} jobs" if after else f"page {page}: jobs {first}-{first + len(jobs) - 1}"
    if cursor is not None:
        more = f"--after {cursor}" if after else f"--page {page + 1} (or --after {cursor})"
        footer += f"; more with {more}"
    return _table(headers, rows, right=[4]) + "\n" + footer


def _job_facts(job: Job) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A job's settings and its times, as (label, text) pairs for people."""
    current = now()
    running = job.duration("running") if job.status in _RUNNING_STATUSES else None
    ttl = {0: "keep", -1: "delete when finished"}.get(job.ttl, f"{job.ttl} s")
    settings = [
        ("id", job.id), ("function", job.function), ("queue", job.get_queue().name),
        ("status", job.status.value), ("attempts", f"{job.attempts} of {job.retries}"),
        ("priority", str(job.priority)), ("group key", job.group_key or "-"),
        ("worker", job.worker_id or "-"),
        ("timeout", f"{job.timeout} s" if job.timeout else "none"),
        ("heartbeat", f"{job.heartbeat} s" if job.heartbeat else "off"), ("TTL", ttl),
    ]  # fmt: skip
    times = [
        ("scheduled", _fmt_time(job.scheduled * 1000) if job.scheduled else "-"),
        ("queued", f"{_fmt_time(job.queued)} ({_fmt_ago(job.queued, current)})"),
        ("started", _fmt_time(job.started)), ("touched", _fmt_time(job.touched)),
        ("completed", _fmt_time(job.completed)), ("waited", _fmt_span(job.duration("start"))),
        ("ran", _fmt_span(job.duration("process") or running)),
        ("total", _fmt_span(job.duration("total"))),
    ]  # fmt: skip
    return settings, times


def _format_job(job: Job) -> str:
    settings, times = _job_facts(job)
    progress = ("progress", f"{_progress_bar(job.progress)} {job.progress * 100:.0f}%")
    fields = [*settings[:5], progress, *settings[5:], *times]
    width = max(len(name) for name, _ in fields)
    lines = [
        f"{name.lower().ljust(width)}  {_clean(value, one_line=True)}" for name, value in fields
    ]
    for name, value in (("kwargs", job.kwargs), ("result", job.result), ("meta", job.meta)):
        if value not in (None, {}):
            lines += [f"\n{name}:", _indent(_clean(_pretty(value)))]
    if job.error:
        lines += ["\nerror:", _indent(_clean(job.error.rstrip()))]
    return "\n".join(lines)


def _pretty(value: object) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


class _Progress:
    """Progress of a long operation on stderr: a line rewritten in place on a
    terminal, else a line at most every ``interval`` seconds (none for a short one).

    Args:
        label: what is done, e.g. ``"purge"``.
        total: how many items there are (None = unknown).
        enabled: False shows nothing (``--quiet``).
    """

    def __init__(
        self,
        label: str,
        total: t.Optional[int] = None,
        *,
        enabled: bool = True,
        stream: t.Optional[t.TextIO] = None,
        interval: float = 1.0,
    ) -> None:
        self.label = label
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = 0.1 if self.tty else interval
        self._last = time.monotonic()
        self._shown = False
        self._text = ""

    def update(self, done: int, detail: str = "") -> None:
        """Show that ``done`` items are done (at most every ``interval`` seconds)."""
        self._text = self._line(done, detail)
        current = time.monotonic()
        if not self.enabled or current - self._last < self.interval:
            return
        self._last = current
        self._show()

    def close(self) -> None:
        """End the progress line (a last line if any was shown)."""
        if self.enabled and self._shown:
            self._show()
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()

    def _line(self, done: int, detail: str) -> str:
        if self.total:
            fraction = done / self.total
            text = f"{self.label}: {done}/{self.total} {_progress_bar(fraction)} {fraction:.0%}"
        else:
            text = f"{self.label}: {done}"
        return f"{text} {detail}".rstrip()

    def _show(self) -> None:
        self._shown = True
        if self.tty:
            self.stream.write("\r\x1b[K" + self._text)
        else:
            self.stream.write(self._text + "\n")
        self.stream.flush()


# -- the commands --------------------------------------------------------------


def _statuses(
    values: t.Optional[list[str]], allowed: Sequence[str], default: Sequence[str]
) -> tuple[str, ...]:
    """Statuses from repeated or comma-separated ``--status`` options.

    Raises:
        _OpsError: a status is not one of ``allowed``.
    """
    if not values:
        return tuple(default)
    statuses = [s.strip().lower() for value in values for s in value.split(",") if s.strip()]
    for status in statuses:
        if status not in allowed:
            raise _OpsError(f"Status {status!r} is not allowed here: use {', '.join(allowed)}")
    return tuple(dict.fromkeys(statuses))


def _parse_age(text: str) -> float:
    """Seconds from ``90``, ``30s``, ``15m``, ``12h``, ``7d`` or ``2w``.

    Raises:
        _OpsError: another form.
    """
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _AGE_UNITS else "s"
    number = value[:-1] if value[-1:] in _AGE_UNITS else value
    try:
        seconds = float(number) * _AGE_UNITS[unit]
    except ValueError:
        seconds = -1
    if not 0 <= seconds < math.inf:  # also refuses nan
        raise _OpsError(f"Age {text!r} is not valid: use a number with s, m, h, d or w, e.g. 7d")
    return seconds


def _run_on_store(target: str, action: Callable[[_Store], Awaitable[int]]) -> int:
    store = _open_store(target)

    async def run() -> int:
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _cmd_info(args: argparse.Namespace) -> int:
    async def action(store: _Store) -> int:
        overview = await _overview(store, args.queue)
        if args.queue and not overview["queues"]:
            raise _OpsError(f"{store.path} has no queue named {args.queue!r}", code=1)
        if args.json:
            _print_json(overview)
        else:
            print(_format_overview(overview))
        return 0

    return _run_on_store(args.file, action)


#: Figures are kept per minute for a day (then as totals): the longest --since.
_STATS_MAX_SINCE_S = 86400.0


def _stats_window(text: str) -> float:
    """Seconds from ``saqlite stats --since`` (an age up to a day), or _STATS_ALL."""
    if text.strip().lower() == "all":
        return _STATS_ALL
    seconds = _parse_age(text)
    if not 0 < seconds <= _STATS_MAX_SINCE_S:
        raise _OpsError(
            f"--since {text} is out of range: give an age from 1s to 1d (figures are kept "
            "per minute for a day), or 'all' for every job counted"
        )
    return seconds


def _cmd_stats(args: argparse.Namespace) -> int:
    since = _stats_window(args.since)
    window = "since counting began" if since == _STATS_ALL else f"in the last {args.since}"

    async def action(store: _Store) -> int:
        stats = await _stats(store, args.queue, since)
        if args.queue and not stats:
            names = [name for (name,) in await store.fetch(_SQL_OPS_QUEUE_NAMES)]
            if args.queue not in names:
                raise _OpsError(f"{store.path} has no queue named {args.queue!r}", code=1)
        if args.json:
            since_s = None if since == _STATS_ALL else since
            _print_json({"path": store.path, "since_s": since_s, "functions": stats})
        else:
            print(_format_stats(store.path, window, stats))
        return 0

    return _run_on_store(args.file, action)


# -- saqlite tail --------------------------------------------------------------------
# Each look reads, in one snapshot: the jobs enqueued since the last (through
# saqlite_jobs_newest), the running ones (few, through saqlite_jobs_ready), the jobs
# it follows (seen running, or new while fewer than _TAIL_FOLLOWED wait: by key), and
# the counts of ends of the last minutes in saqlite_stats. An end it did not see one by
# one (a job deleted as it ended, one it does not follow that ran between two looks)
# is in those counts: it shows as a line of how many more ended. Nothing is scanned:
# each look costs what changed, and the jobs it follows.
_TAIL_COLUMNS = (
    "queue", "key", "function", "status", "attempts", "queued", "started", "completed", "error",
    "progress",
)  # fmt: skip
# New jobs: the enqueue times of those from :since on (from the index alone), then the
# rows of those not seen yet, by rowid.
_SQL_TAIL_ENQUEUED = """
SELECT rowid, queued FROM saqlite_jobs INDEXED BY saqlite_jobs_newest
WHERE queued >= :since ORDER BY queued, rowid LIMIT :limit
"""
_SQL_TAIL_NEW = f"""
SELECT {", ".join(_TAIL_COLUMNS)} FROM saqlite_jobs
WHERE rowid IN (SELECT value FROM json_each(:rowids)) ORDER BY queued
"""
_SQL_TAIL_RUNNING = f"""
SELECT {", ".join(f"jobs.{c}" for c in _TAIL_COLUMNS)}
FROM (SELECT DISTINCT queue FROM saqlite_counts) AS queues
JOIN saqlite_jobs AS jobs ON jobs.queue = queues.queue AND jobs.status IN {_RUNNING_SQL}
"""
_SQL_TAIL_JOBS = f"""
SELECT {", ".join(f"jobs.{c}" for c in _TAIL_COLUMNS)}
FROM json_each(:jobs) AS wanted JOIN saqlite_jobs AS jobs
  ON jobs.queue = json_extract(wanted.value, '$[0]')
  AND jobs.key = json_extract(wanted.value, '$[1]')
"""
_SQL_TAIL_ENDS = """
SELECT queue, function, minute, SUM(complete), SUM(failed), SUM(aborted)
FROM saqlite_stats WHERE minute >= :since
GROUP BY queue, function, minute
"""
_SQL_TAIL_QUEUES = "SELECT DISTINCT queue FROM saqlite_counts"
_SQL_TAIL_NEWEST = "SELECT MAX(queued) FROM saqlite_jobs"
_RUNNING = tuple(status.value for status in _RUNNING_STATUSES)
#: New jobs a tail follows while they wait, at most (it reads each at every look).
_TAIL_FOLLOWED = 1000
#: Minutes of ends a look compares with the last (a job ends in the minute it ends,
#: by its worker's clock: a little slack for a late commit).
_TAIL_MINUTES = 5
#: New jobs a look reads at most (the next look goes on at once).
_TAIL_NEW = 1000
#: Milliseconds a job's enqueue time may lag behind the newest seen (another process
#: whose statement commits later): new jobs are looked for that far back (the index
#: alone tells which of them were seen).
_TAIL_LAG_MS = 5000
#: Seconds a tail waits for news before it looks anyway (a wake-up datagram is lost).
_TAIL_FALLBACK_S = 1.0


class _TailRow(t.NamedTuple):
    queue: str
    key: str
    function: str
    status: str
    attempts: int
    queued: int
    started: int
    completed: int
    error: t.Optional[str]
    progress: float


class _TailEvent(t.NamedTuple):
    """A line of ``saqlite tail``: a job's new status (or progress), or how many more
    ``jobs`` ended that it did not see one by one."""

    time: float  # epoch ms
    queue: str
    function: str
    status: str
    key: t.Optional[str] = None
    attempts: int = 0
    error: str = ""
    progress: t.Optional[float] = None
    jobs: int = 0

    def json(self) -> dict[str, t.Any]:
        event = {"time": self.time / 1000, "queue": self.queue, "function": self.function}
        event["status"] = self.status
        if self.jobs:
            return {**event, "jobs": self.jobs}
        return {**event, "key": self.key, "attempts": self.attempts, "error": self.error or None,
                "progress": self.progress}  # fmt: skip

    def line(self) -> str:
        when = datetime.fromtimestamp(self.time / 1000).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        if self.jobs:
            parts = [self.queue, self.function, f"{self.jobs} more ended {self.status}"]
            parts.append("(not seen one by one)")
        else:
            parts = [self.queue, self.function, str(self.key), self.status]
            if self.attempts:
                parts.append(f"attempt {self.attempts}")
            if self.progress is not None:
                parts.append(f"progress {self.progress:.0%}")
            if self.error:
                parts.append(_cut(self.error, 120))
        return "  ".join([when, *(_clean(part, one_line=True) for part in parts)])


class _Tail:
    """What ``saqlite tail`` knows between two looks (see _SQL_TAIL_ENQUEUED)."""

    def __init__(self, store: _Store, where: _JobFilter) -> None:
        self.store = store
        self.where = where
        self.after = 0  # the newest enqueue time seen (epoch ms)
        self.seen: set[tuple[int, int]] = set()  # (rowid, queued), within _TAIL_LAG_MS of after
        self.followed: dict[tuple[str, str], _TailRow] = {}  # oldest first
        self.ended: dict[tuple[str, str, int], list[int]] = {}  # per queue, function, minute
        self.owed: dict[tuple[str, str, str], int] = {}

    async def start(self) -> None:
        """Take the file as it is now: only what changes from here on is shown."""
        async with self._snapshot():
            self.after = (await self.store.fetch(_SQL_TAIL_NEWEST))[0][0] or 0
            params = {"since": self.after - _TAIL_LAG_MS, "limit": -1}
            self.seen = {(rowid, queued) for rowid, queued in await self.store.fetch(
                _SQL_TAIL_ENQUEUED, params
            )}  # fmt: skip
            for row in await self._rows(_SQL_TAIL_RUNNING):
                self.followed[(row.queue, row.key)] = row
            await self._count_ends()
        self.owed.clear()  # ended before

    async def look(self) -> tuple[list[_TailEvent], bool]:
        """The events since the last look, oldest first; and whether more are left."""
        events: list[_TailEvent] = []
        async with self._snapshot():
            params = {"since": self.after - _TAIL_LAG_MS, "limit": len(self.seen) + _TAIL_NEW}
            enqueued = await self.store.fetch(_SQL_TAIL_ENQUEUED, params)
            unseen = [
                (rowid, queued) for rowid, queued in enqueued if (rowid, queued) not in self.seen
            ]
            self.seen.update(unseen)
            rowids = json.dumps([rowid for rowid, _ in unseen])
            waiting = sum(row.status not in _RUNNING for row in self.followed.values())
            for row in await self._rows(_SQL_TAIL_NEW, {"rowids": rowids}):
                job = (row.queue, row.key)
                self.after = max(self.after, row.queued)
                events.append(
                    self._event(row._replace(attempts=0), "queued", row.queued, error=False)
                )
                if row.status not in _RUNNING and waiting >= _TAIL_FOLLOWED:
                    continue  # its end shows in the counts
                waiting += row.status not in _RUNNING
                self.followed.pop(job, None)
                self.followed[job] = row._replace(status="queued", attempts=0, progress=0.0)
                self._changed(self.followed[job], row, events)
            running = {(row.queue, row.key): row for row in await self._rows(_SQL_TAIL_RUNNING)}
            wanted = [job for job in self.followed if job not in running]
            found = await self._rows(_SQL_TAIL_JOBS, {"jobs": json.dumps(wanted)})
            for row in [*found, *running.values()]:
                old = self.followed.get((row.queue, row.key))
                if old is None:  # running, not seen before
                    old = row._replace(status="queued", attempts=row.attempts - 1)
                self._changed(old, row, events)
            await self._count_ends()
        self.seen = {seen for seen in self.seen if seen[1] >= self.after - _TAIL_LAG_MS}
        current = now()
        for (queue, function, status), count in self.owed.items():
            if count > 0:
                events.append(_TailEvent(current, queue, function, status, jobs=count))
        self.owed.clear()
        events.sort(key=lambda event: event.time)
        more = len(enqueued) == params["limit"]
        return [event for event in events if self._shown(event)], more

    def _changed(self, old: _TailRow, row: _TailRow, events: list[_TailEvent]) -> None:
        """The events between two states of a job; follow it on, or not once it ended."""
        job = (row.queue, row.key)
        if row.attempts > old.attempts and row.started:
            events.append(self._event(row, Status.ACTIVE.value, row.started, error=False))
        if row.status in _RUNNING and row.progress and row.progress != old.progress:
            progress = self._event(row, row.status, now(), error=False)
            events.append(progress._replace(progress=row.progress))
        if row.status not in (old.status, Status.ACTIVE.value):
            events.append(self._event(row, row.status, row.completed or now()))
        if row.status in _FINISHED:
            self.followed.pop(job, None)
            owed = (row.queue, row.function, row.status)
            self.owed[owed] = self.owed.get(owed, 0) - 1
        else:
            self.followed[job] = row

    def _event(self, row: _TailRow, status: str, when: float, error: bool = True) -> _TailEvent:
        return _TailEvent(
            when, row.queue, row.function, status, row.key, row.attempts,
            _error_line(row.error) if error else "",
        )  # fmt: skip

    async def _count_ends(self) -> None:
        """Owe a line to each end counted in the last minutes since the last look (those
        seen one by one pay theirs back)."""
        since = int(time.time() // 60) - _TAIL_MINUTES
        for queue, function, minute, *counts in await self.store.fetch(
            _SQL_TAIL_ENDS, {"since": since}
        ):
            before = self.ended.get((queue, function, minute), [0, 0, 0])
            for status, count, old in zip(_FINISHED, counts, before):
                if count > old:
                    owed = (queue, function, status)
                    self.owed[owed] = self.owed.get(owed, 0) + count - old
            self.ended[(queue, function, minute)] = counts
        self.ended = {counted: n for counted, n in self.ended.items() if counted[2] >= since}

    def _shown(self, event: _TailEvent) -> bool:
        where = self.where
        return (
            where.queue in (None, event.queue)
            and where.function in (None, event.function)
            and (not where.statuses or event.status in where.statuses)
        )

    async def _rows(self, sql: str, params: t.Any = ()) -> list[_TailRow]:
        return [_TailRow(*row) for row in await self.store.fetch(sql, params)]

    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[None]:
        """Reads in one transaction: the jobs and the counts of their ends agree."""
        await self.store.fetch("BEGIN")
        try:
            yield
        finally:
            await self.store.fetch("COMMIT")

    async def queues(self) -> list[str]:
        """The queues with jobs, whose news to wait for."""
        names = [name for (name,) in await self.store.fetch(_SQL_TAIL_QUEUES)]
        return [name for name in names if self.where.queue in (None, name)]


async def _tail(store: _Store, where: _JobFilter, as_json: bool, stop: asyncio.Event) -> None:
    """Print a line per job event until ``stop`` is set; each look follows news of
    changes and of new jobs (wake-ups), or _TAIL_FALLBACK_S without any."""
    tail = _Tail(store, where)
    await tail.start()
    print(f"saqlite tail: following {store.path} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            waits = []
            for name in await tail.queues():
                wakeup = store.queue(name)._wakeup
                for kind in ("changes", "jobs"):
                    await wakeup.want(kind)
                    waits.append(asyncio.ensure_future(
                        wakeup.wait(kind, wakeup.generation(kind), _TAIL_FALLBACK_S)
                    ))  # fmt: skip
            events, more = await tail.look()
            for event in events:
                print(json.dumps(event.json()) if as_json else event.line(), flush=True)
            if not more:
                await asyncio.wait(
                    [stopped, *waits], timeout=_TAIL_FALLBACK_S, return_when=asyncio.FIRST_COMPLETED
                )
            for waiting in waits:
                waiting.cancel()
    finally:
        stopped.cancel()


def _cmd_tail(args: argparse.Namespace) -> int:
    where = _JobFilter(args.queue, _statuses(args.status, _STATUS_NAMES, ()), args.function)

    async def action(store: _Store) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(number, stop.set)
            except (NotImplementedError, RuntimeError):  # Windows: no loop signal handlers
                signal.signal(number, lambda *_: loop.call_soon_threadsafe(stop.set))
        await _tail(store, where, args.json, stop)
        return 0

    try:
        return _run_on_store(args.file, action)
    except BrokenPipeError:  # the reader went away (saqlite tail FILE | head): done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise _OpsError(f"--limit {args.limit} is out of range: give 1 to 1000")
    if not 1 <= args.page <= _MAX_PAGE:
        raise _OpsError(f"--page {args.page} is out of range: give 1 to {_MAX_PAGE}")
    where = _JobFilter(args.queue, _statuses(args.status, _STATUS_NAMES, ()), args.function)
    if args.after is not None and args.page != 1:
        raise _OpsError("--after continues a listing where it stopped: drop --page")

    async def action(store: _Store) -> int:
        offset = (args.page - 1) * args.limit
        jobs, cursor = await _list_jobs(store, where, offset, args.limit, args.after)
        sleeping = await _sleeping(store, jobs)
        if args.json:
            listed = [
                {**_job_json(job), "sleeping": (job.get_queue().name, job.key) in sleeping}
                for job in jobs
            ]
            _print_json(
                {
                    "jobs": listed,
                    "page": args.page,
                    "limit": args.limit,
                    "more": cursor is not None,
                    "next": cursor,
                }
            )
        else:
            print(
                _format_jobs(
                    jobs, args.page, args.limit, cursor, sleeping, after=args.after is not None
                )
            )
        return 0

    return _run_on_store(args.file, action)


async def _one_job(store: _Store, ref: str, queue: t.Optional[str]) -> Job:
    """The one job a key names.

    Raises:
        _OpsError: none, or several (in different queues) without ``--queue``.
    """
    jobs = await _find_jobs(store, ref, queue)
    if not jobs:
        where = f" in queue {queue!r}" if queue else ""
        raise _OpsError(f"No job {ref!r}{where} in {store.path}", code=1)
    if len(jobs) > 1:
        names = ", ".join(sorted(job.get_queue().name for job in jobs))
        raise _OpsError(f"Key {ref!r} is in several queues ({names}): add --queue")
    return jobs[0]


# A job's links: the jobs it depends on, and those that depend on it (at most
# _LINKS_SHOWN of each), with their statuses (NULL: deleted since).
_SQL_OPS_DEPENDENCIES = """
SELECT edge.depends_on, job.status FROM saqlite_dependencies AS edge
LEFT JOIN saqlite_jobs AS job ON job.queue = edge.queue AND job.key = edge.depends_on
WHERE edge.queue = :queue AND edge.key = :key ORDER BY edge.depends_on LIMIT :limit
"""
_SQL_OPS_DEPENDENTS = """
SELECT edge.key, job.status FROM saqlite_dependencies AS edge
LEFT JOIN saqlite_jobs AS job ON job.queue = edge.queue AND job.key = edge.key
WHERE edge.queue = :queue AND edge.depends_on = :key ORDER BY edge.key LIMIT :limit
"""
_LINKS_SHOWN = 1000


async def _job_links(job: Job) -> dict[str, list[dict[str, t.Optional[str]]]]:
    """The jobs ``job`` depends on and those that depend on it, each with its status."""
    queue = job.get_queue()
    params = {"queue": queue.name, "key": job.key, "limit": _LINKS_SHOWN}
    links = {}
    for name, sql in (("dependencies", _SQL_OPS_DEPENDENCIES), ("dependents", _SQL_OPS_DEPENDENTS)):
        rows = await queue._fetch(sql, params)
        links[name] = [{"key": key, "status": status} for key, status in rows]
    return links


# The jobs linked to one through dependencies, either way, at most _PIPELINE_SHOWN.
_SQL_OPS_PIPELINE = """
WITH RECURSIVE linked(key) AS (
    SELECT :key
    UNION
    SELECT edge.depends_on FROM linked JOIN saqlite_dependencies AS edge
      ON edge.queue = :queue AND edge.key = linked.key
    UNION
    SELECT edge.key FROM linked JOIN saqlite_dependencies AS edge
      ON edge.queue = :queue AND edge.depends_on = linked.key
    LIMIT :limit
)
SELECT linked.key, job.status, edge.depends_on FROM linked
LEFT JOIN saqlite_jobs AS job ON job.queue = :queue AND job.key = linked.key
LEFT JOIN saqlite_dependencies AS edge ON edge.queue = :queue AND edge.key = linked.key
"""
_PIPELINE_SHOWN = 100


class _PipelineNode(t.NamedTuple):
    status: t.Optional[str]  # None: deleted
    depends_on: list[str]


async def _pipeline(job: Job) -> dict[str, _PipelineNode]:
    """The jobs linked to ``job`` by dependencies, each with its status and its own."""
    queue = job.get_queue()
    params = {"queue": queue.name, "key": job.key, "limit": _PIPELINE_SHOWN}
    nodes: dict[str, _PipelineNode] = {}
    for key, status, dependency in await queue._fetch(_SQL_OPS_PIPELINE, params):
        node = nodes.setdefault(key, _PipelineNode(status, []))
        if dependency is not None:
            node.depends_on.append(dependency)
    return nodes


def _format_links(links: dict[str, list[dict[str, t.Optional[str]]]]) -> str:
    lines = []
    for name, linked in links.items():
        if linked:
            lines += [f"\n{name}:"] + [
                f"  {link['status'] or 'deleted':<9} {_clean(str(link['key']), one_line=True)}"
                for link in linked
            ]
    return "\n".join(lines)


# A job's record of steps and sleeps (see saqlite.step), in the order they began.
_SQL_OPS_STEPS = """
SELECT name, run, started, finished, outcome, error FROM saqlite_steps
WHERE queue = :queue AND key = :key ORDER BY started, name
"""


async def _timeline(store: _Store, job: Job) -> list[dict[str, t.Any]]:
    """A job's steps and sleeps: name, started (epoch ms), duration_ms, outcome
    (done, failed, running, sleeping, or interrupted: cut off by a crash, a stop or
    an abort), until (a sleep's end, epoch ms) and error."""
    params = {"queue": job.get_queue().name, "key": job.key}
    current = now()
    timeline = []
    for name, run, started, finished, stored, error in await store.fetch(_SQL_OPS_STEPS, params):
        this_run = job.status in _RUNNING_STATUSES and run == job.started
        outcome, end, until = stored, finished, None
        if stored == "running":
            outcome = "running" if this_run else "interrupted"
            end = current if this_run else None
        elif stored == "sleeping":
            until = finished
            if job.status in _FINISHED_STATUSES:
                outcome, end = "interrupted", None
        timeline.append(
            {
                "name": name,
                "started": started,
                "duration_ms": None if end is None else end - started,
                "outcome": outcome,
                "until": until,
                "error": error,
            }
        )
    return timeline


def _format_timeline(timeline: list[dict[str, t.Any]]) -> str:
    rows = [
        [
            step["name"], _fmt_time(step["started"]), _fmt_span(step["duration_ms"]),
            f"{step['outcome']} until {_fmt_time(step['until'])}"
            if step["outcome"] == "sleeping" else step["outcome"],
            _cut(_error_line(step["error"]), 60),
        ]
        for step in timeline
    ]  # fmt: skip
    return _table(("STEP", "STARTED", "TOOK", "OUTCOME", "ERROR"), rows, right=[2])


# Which of some jobs (JSON [[queue, key], ...]) wait in a sleep (see saqlite.sleep).
_SQL_OPS_SLEEPING = """
SELECT queue, key FROM saqlite_steps WHERE outcome = 'sleeping' AND (queue, key) IN (
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:jobs))
"""


async def _sleeping(store: _Store, jobs: Sequence[Job]) -> set[tuple[str, str]]:
    """The (queue, key) of the jobs that are queued because they sleep."""
    queued = [[job.get_queue().name, job.key] for job in jobs if job.status == Status.QUEUED]
    if not queued:
        return set()
    rows = await store.fetch(_SQL_OPS_SLEEPING, {"jobs": json.dumps(queued)})
    return {(queue, key) for queue, key in rows}


def _cmd_job(args: argparse.Namespace) -> int:
    async def action(store: _Store) -> int:
        job = await _one_job(store, args.key, args.queue)
        links = await _job_links(job)
        timeline = await _timeline(store, job)
        if args.json:
            _print_json({**_job_json(job), **links, "steps": timeline})
        else:
            print(_format_job(job) + _format_links(links))
            if timeline:
                print("\nsteps:\n" + _indent(_format_timeline(timeline)))
        return 0

    return _run_on_store(args.file, action)


def _cmd_change(args: argparse.Namespace) -> int:
    """``retry`` and ``abort``: the keys given, or ``--all`` the filter matches."""
    retry = args.command == "retry"
    allowed = _RETRYABLE if retry else _ABORTABLE
    if bool(args.keys) == bool(args.all):
        raise _OpsError("Name the jobs by key, or give --all (with --queue, --status, --function)")
    if args.keys and (args.status or args.function):
        raise _OpsError("--status and --function select jobs with --all; drop them or the keys")
    where = _JobFilter(args.queue, _statuses(args.status, allowed, allowed), args.function)
    error = args.error or f"{'retried' if retry else 'aborted'} by saqlite {args.command}"
    change = _retry_job if retry else _abort_job
    verb = "retried" if retry else "aborted"

    async def action(store: _Store) -> int:
        done: list[Job] = []
        skipped: list[Job] = []
        missing: list[str] = []
        refused: list[Job] = []

        async def change_one(job: Job) -> None:
            try:
                (done if await change(job, error) else skipped).append(job)
            except _OpsError as exc:
                print(f"saqlite {args.command}: {exc}", file=sys.stderr)
                refused.append(job)

        if args.keys:
            for ref in args.keys:
                try:
                    job = await _one_job(store, ref, args.queue)
                except _OpsError as exc:
                    print(f"saqlite {args.command}: {exc}", file=sys.stderr)
                    missing.append(ref)
                    continue
                await change_one(job)
        else:
            progress = _Progress(
                f"{args.command}", await _count_jobs(store, where), enabled=not args.quiet
            )
            async for batch in _matching_jobs(store, where):
                await asyncio.gather(*(change_one(job) for job in batch))
                progress.update(len(done) + len(skipped) + len(refused))
            progress.close()
        if args.json:
            _print_json(
                {
                    verb: [
                        {"queue": j.get_queue().name, "key": j.key, "status": j.status.value}
                        for j in done
                    ],
                    "skipped": [
                        {"queue": j.get_queue().name, "key": j.key, "status": j.status.value}
                        for j in skipped
                    ],
                    "missing": missing,
                    "refused": [
                        {"queue": j.get_queue().name, "key": j.key, "status": j.status.value}
                        for j in refused
                    ],
                }
            )
        else:
            if args.keys:
                for job in done:
                    print(
                        f"{verb} {_clean(job.get_queue().name)} {_clean(job.key)}: now {job.status}"
                    )
            for job in skipped:
                print(
                    f"skipped {_clean(job.get_queue().name)} {_clean(job.key)}: it is "
                    f"{job.status}; only {' or '.join(allowed)} jobs can be {verb}",
                    file=sys.stderr,
                )
            print(f"{verb} {len(done)} job{'' if len(done) == 1 else 's'}")
        return 1 if missing or refused or (args.keys and skipped) else 0

    return _run_on_store(args.file, action)


def _cmd_vacuum(args: argparse.Namespace) -> int:
    """Rebuild the file with VACUUM, so that a file made before schema 3 (auto_vacuum
    off) gives its free space back from now on; it shrinks at once too."""
    path = _open_store(args.file).path

    async def opened(store: _Store) -> int:
        await store.fetch("SELECT 1")  # opens the file: checks and migrates it
        return 0

    _run_on_store(path, opened)
    before = _file_size(path)
    conn = sqlite3.connect(path, isolation_level=None, timeout=args.timeout)
    try:
        _rebuild(conn)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise _OpsError(
            f"Could not rebuild {path}: {exc} (VACUUM needs the write lock for the whole "
            "rewrite and free disk room for a copy of the file)",
            code=1,
        ) from exc
    finally:
        conn.close()
    after = _file_size(path)
    if args.json:
        _print_json({"file": path, "bytes_before": before, "bytes_after": after})
    else:
        mib = 2**20
        print(f"rebuilt {path}: {before / mib:.1f} MiB before, {after / mib:.1f} MiB now")
    return 0


def _file_size(path: str) -> int:
    """The database and its -wal file, in bytes."""
    wal = f"{path}-wal"
    return os.path.getsize(path) + (os.path.getsize(wal) if os.path.exists(wal) else 0)


def _cmd_purge(args: argparse.Namespace) -> int:
    age = _parse_age(args.older_than)
    where = _JobFilter(args.queue, _statuses(args.status, _FINISHED, _FINISHED), args.function)
    before_ms = int((time.time() - age) * 1000)

    async def action(store: _Store) -> int:
        if args.dry_run:
            condition, params = where.where()
            sql = _SQL_OPS_COUNT_OLD_JOBS.format(where=condition)
            count = int((await store.fetch(sql, {**params, "before": before_ms}))[0][0])
        else:
            progress = _Progress("purge", enabled=not args.quiet)
            count = await _purge(store, where, before_ms, progress)
            progress.close()
        if args.json:
            _print_json(
                {"purged": 0 if args.dry_run else count, "matched": count, "dry_run": args.dry_run}
            )
        else:
            would = "would delete" if args.dry_run else "deleted"
            statuses = "/".join(where.statuses)
            print(
                f"{would} {count} {statuses} job{'' if count == 1 else 's'} finished before "
                f"{_fmt_time(before_ms)}"
            )
        return 0

    return _run_on_store(args.file, action)


_SQL_OPS_WORKER_FAILURES = """
SELECT key, status, error FROM saqlite_jobs
WHERE queue = :queue AND worker_id = :worker_id AND status IN ('failed', 'aborted')
ORDER BY completed
"""
# Whether a burst has work: a job of its worker running or waiting to be retried, or
# any job of its queue due (but for those a pause holds).
_SQL_OPS_BURST_BUSY = f"""
SELECT EXISTS (
    SELECT 1 FROM saqlite_jobs WHERE queue = :queue AND worker_id = :worker_id
    AND (status IN {_RUNNING_SQL} OR (status = 'queued' AND attempts > 0))
) OR EXISTS (
    SELECT 1 FROM saqlite_jobs AS job
    WHERE job.queue = :queue AND job.status = 'queued' AND job.run_at <= :now
      AND NOT EXISTS (  -- a pause holds it: it is left pending
          SELECT 1 FROM saqlite_flow WHERE queue = :queue AND function IN ('', job.function)
            AND paused AND (paused_until IS NULL OR paused_until > :now))
) OR EXISTS (
    SELECT 1 FROM saqlite_jobs JOIN saqlite_steps USING (queue, key)
    WHERE queue = :queue AND worker_id = :worker_id AND status = 'queued'
      AND outcome = 'sleeping'
)
"""
# The jobs aborted because a job this burst ran failed (they never ran themselves).
_SQL_OPS_BURST_LOST = """
SELECT key, status, error FROM saqlite_jobs
WHERE queue = :queue AND status = 'aborted' AND aborted_by IN (
    SELECT key FROM saqlite_jobs
    WHERE queue = :queue AND worker_id = :worker_id AND status IN ('failed', 'aborted'))
ORDER BY completed
"""
# What a burst leaves behind: waiting jobs but for the cron jobs a worker schedules.
_SQL_OPS_BURST_PENDING = """
SELECT key, function, run_at FROM saqlite_jobs
WHERE queue = :queue AND status = 'queued' AND key NOT LIKE 'cron:%' ORDER BY run_at
"""


def _cmd_burst(args: argparse.Namespace) -> int:
    """Run a worker until the queue's work is done (see ``_BURST_HELP``); exit 1 if
    any job failed or was aborted, or if jobs are left pending."""
    if not 0 <= args.wait < math.inf:
        raise _OpsError(f"--wait {args.wait} is not valid: give seconds, 0 or more")
    _configure_logging(-1 if args.quiet else args.verbose)
    queue, settings = _load_settings(args.settings)
    if not os.path.isfile(queue.path):
        raise _OpsError(
            f"{queue.path} does not exist: check the queue's path in {args.settings} "
            "(burst runs the jobs of an existing saqlite file; it does not create one)"
        )
    settings.update(burst=False, max_burst_jobs=args.max_jobs)
    try:
        worker = Worker(queue, **settings)
    except (ValueError, TypeError) as exc:
        raise _OpsError(f"settings {args.settings}: {exc}") from None
    progress = _Progress("burst", enabled=not args.quiet)

    def detail() -> tuple[int, str]:
        done = queue.complete + queue.failed + queue.aborted
        return done, (
            f"jobs ({queue.complete} complete, {queue.failed} failed, "
            f"{queue.aborted} aborted, {queue.retried} retried)"
        )

    async def watch() -> None:
        """Stop the worker once it has been idle for ``--wait`` seconds."""
        idle_since: t.Optional[float] = None
        while True:
            await asyncio.sleep(_BURST_POLL_S)
            progress.update(*detail())
            params = {"queue": queue.name, "worker_id": worker.id, "now": time.time()}
            if (await queue._fetch(_SQL_OPS_BURST_BUSY, params))[0][0]:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= args.wait:
                await worker.stop()
                return

    async def run() -> tuple[list[t.Any], list[t.Any], list[t.Any]]:
        working = asyncio.create_task(worker.start())
        watcher = asyncio.create_task(watch())
        try:
            done, _ = await asyncio.wait([working, watcher], return_when=asyncio.FIRST_COMPLETED)
            broken = watcher in done and watcher.exception() is not None
            if broken:  # it could not look at the file: stop, and say why
                await worker.stop()
            await working
            if broken:
                watcher.result()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        try:
            params = {"queue": queue.name, "worker_id": worker.id}
            failures = await queue._fetch(_SQL_OPS_WORKER_FAILURES, params)
            lost = await queue._fetch(_SQL_OPS_BURST_LOST, params)
            pending = await queue._fetch(_SQL_OPS_BURST_PENDING, {"queue": queue.name})
            return failures, lost, pending
        finally:
            await queue.disconnect()

    started = time.monotonic()
    failures, lost, pending = asyncio.run(run())
    failures += lost
    progress.update(*detail())
    progress.close()
    seconds = time.monotonic() - started
    done = queue.complete + queue.failed + queue.aborted + len(lost)
    failed = bool(queue.failed or queue.aborted or lost)
    left = bool(pending) and not (args.allow_pending or args.max_jobs is not None)
    if args.json:
        _print_json(
            {
                "path": queue.path,
                "jobs": done,
                "complete": queue.complete,
                "failed": queue.failed,
                "aborted": queue.aborted + len(lost),
                "aborted_by_dependency": len(lost),
                "retried": queue.retried,
                "pending": len(pending),
                "seconds": round(seconds, 3),
                "failures": [{"key": k, "status": s, "error": e} for k, s, e in failures],
                "pending_jobs": [
                    {"key": k, "function": f, "due": _fmt_due(due)} for k, f, due in pending[:100]
                ],
            }
        )
    else:
        for key, status, error in failures[:20]:
            print(f"{status} {_clean(key)}: {_error_line(error)}", file=sys.stderr)
        if len(failures) > 20:
            print(f"... and {len(failures) - 20} more", file=sys.stderr)
        for key, function, due in pending[:20]:
            print(
                f"pending {_clean(key)} ({_clean(function)}): due {_fmt_due(due)}",
                file=sys.stderr,
            )
        if len(pending) > 20:
            print(f"... and {len(pending) - 20} more pending", file=sys.stderr)
        verdict = "FAILED" if failed else "PENDING" if left else "ok"
        by_dependency = f" ({len(lost)} by a failed dependency)" if lost else ""
        print(
            f"burst {verdict} on {_clean(queue.path)}: {done} job{'' if done == 1 else 's'} in "
            f"{seconds:.2f} s: {queue.complete} complete, {queue.failed} failed, "
            f"{queue.aborted + len(lost)} aborted{by_dependency}, "
            f"{queue.retried} retried, {len(pending)} pending"
        )
    return 1 if failed or left else 0


def _fmt_due(run_at: float) -> str:
    """When a waiting job is due: its time, or that it waits on dependencies."""
    return "after its dependencies" if run_at >= _BLOCKED_S else _fmt_time(run_at * 1000)


def _cmd_web(args: argparse.Namespace) -> int:
    stores = [_open_store(target) for target in args.files]
    app = web_app(
        [store.path for store in stores], refresh_s=args.refresh, allowed_hosts=args.allowed_host
    )

    server = None
    try:  # Ctrl-C as soon as the page says it serves is a clean stop too
        server = _PageServer(app, args.host, args.port)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.stop()
    return 0


# -- export to SAQ ---------------------------------------------------------------

#: The worker_id of a job an export has taken out of the file: it stays QUEUED but
#: is never due (run_at below) until SAQ has it; then it is deleted. A rerun after an
#: interrupted export finds these first.
_EXPORT_MARK = "saqlite export"
_EXPORT_HOLD = 253402300799.0  # run_at of a taken job: the end of year 9999
_EXPORT_SLICE = 100
_EXPORT_SCHEMES = ("redis", "rediss", "postgres", "postgresql")
#: The Job fields an export keeps (those SAQ's Job has), besides function and kwargs.
_EXPORT_FIELDS = (
    "key",
    "scheduled",
    "priority",
    "retries",
    "timeout",
    "heartbeat",
    "ttl",
    "meta",
    "retry_delay",
    "retry_backoff",
    "group_key",
    "attempts",
)


def _export_load(store: _Store, row: Sequence[t.Any]) -> Job:
    """The job of a ``rowid, queue, key, _LOAD_COLUMNS`` row.

    Raises:
        _OpsError: its data cannot be read (stored with another ``dump``).
    """
    try:
        return store.queue(row[1])._codec.job(row[3:])
    except (ValueError, TypeError, KeyError) as exc:
        raise _OpsError(
            f"Cannot read job {row[2]!r} of queue {row[1]!r} ({exc}): export reads jobs "
            "stored as JSON; nothing of this slice was moved",
            code=1,
        ) from exc


def _saq_job(saq: t.Any, job: Job) -> t.Any:
    """SAQ's Job for a saqlite job: the same function, kwargs and options."""
    known = {field.name for field in dataclasses.fields(saq.Job)}
    options = {name: getattr(job, name) for name in _EXPORT_FIELDS if name in known}
    return saq.Job(function=job.function, kwargs=job.kwargs, **options)


_SQL_EXPORT_TAKE = """
UPDATE saqlite_jobs SET worker_id = :mark, run_at = :hold
WHERE rowid IN (SELECT value FROM json_each(:rowids)) AND status = 'queued'
  AND worker_id IS NOT :mark
RETURNING rowid
"""
_SQL_EXPORT_DELETE = """
DELETE FROM saqlite_jobs WHERE queue = :queue AND status = 'queued' AND worker_id = :mark
  AND key IN (SELECT value FROM json_each(:keys))
"""
_SQL_EXPORT_RESTORE = """
UPDATE saqlite_jobs SET worker_id = NULL, run_at = :run_at
WHERE queue = :queue AND key = :key AND status = 'queued' AND worker_id = :mark
"""


async def _export_slice(
    store: _Store, saq_queue: t.Any, saq: t.Any, rows: list[t.Any], taken_before: bool
) -> tuple[int, int, list[Job]]:
    """Take one slice out of the file's reach (unless a killed run did), put it into
    SAQ, then delete it from the file.

    Returns:
        How many were enqueued, how many SAQ had already (a killed run's), and the jobs
        left in the file because SAQ has another job waiting with their key.
    """
    loaded = {row[0]: _export_load(store, row) for row in rows}
    if not taken_before:
        params = {"mark": _EXPORT_MARK, "hold": _EXPORT_HOLD, "rowids": json.dumps(list(loaded))}
        taken = {rowid for (rowid,) in await store.fetch(_SQL_EXPORT_TAKE, params)}
        loaded = {rowid: job for rowid, job in loaded.items() if rowid in taken}
    jobs = list(loaded.values())
    present: set[str] = set()
    if taken_before:  # a killed run may have enqueued these before it could delete them
        found = await saq_queue.jobs([job.key for job in jobs])
        present = {job.key for job in found if job is not None}
    moved, conflicts = 0, []
    for job in jobs:
        if job.key in present:
            continue
        if await saq_queue.enqueue(_saq_job(saq, job)) is None:
            conflicts.append(job)
        else:
            moved += 1
    for job in conflicts:
        run_at = job.scheduled or _seconds(job.queued or now())
        params = {"queue": saq_queue.name, "key": job.key, "mark": _EXPORT_MARK, "run_at": run_at}
        await store.fetch(_SQL_EXPORT_RESTORE, params)
    keys = [job.key for job in jobs if job not in conflicts]
    await store.fetch(
        _SQL_EXPORT_DELETE,
        {"queue": saq_queue.name, "mark": _EXPORT_MARK, "keys": json.dumps(keys)},
    )
    return moved, len(present), conflicts


# A slice of jobs a killed export left taken, and a slice of waiting jobs (read, then
# taken by rowid once they are known to load: those a worker claimed meanwhile stay).
# Jobs waiting on dependencies stay too: SAQ has none, it would run them at once.
_SQL_EXPORT_TAKEN = f"""
SELECT rowid, queue, key, {_LOAD_COLUMNS} FROM saqlite_jobs
WHERE queue = :queue AND status = 'queued' AND worker_id = :mark AND rowid > :after
ORDER BY rowid LIMIT :limit
"""
_SQL_EXPORT_WAITING = f"""
SELECT rowid, queue, key, {_LOAD_COLUMNS} FROM saqlite_jobs
WHERE queue = :queue AND status = 'queued' AND worker_id IS NOT :mark AND rowid > :after
  AND run_at < {_BLOCKED_S}
ORDER BY rowid LIMIT :limit
"""


async def _export_queue(
    store: _Store, saq: t.Any, url: str, name: str, advance: Callable[[int], None]
) -> tuple[int, int, list[Job]]:
    """Export one queue, slice by slice: first what a killed run left taken, then the
    waiting jobs; ``advance`` is told how many jobs each slice had. Returns what
    ``_export_slice`` does, summed."""
    moved = already = 0
    conflicts: list[Job] = []
    saq_queue = saq.Queue.from_url(url, name=name)
    await saq_queue.connect()
    try:
        for sql, taken_before in ((_SQL_EXPORT_TAKEN, True), (_SQL_EXPORT_WAITING, False)):
            params = {"queue": name, "mark": _EXPORT_MARK, "after": 0, "limit": _EXPORT_SLICE}
            while True:
                rows = await store.fetch(sql, params)
                if not rows:
                    break
                params["after"] = max(row[0] for row in rows)
                n_moved, n_already, left = await _export_slice(
                    store, saq_queue, saq, rows, taken_before
                )
                moved, already = moved + n_moved, already + n_already
                conflicts += left
                advance(len(rows))
    finally:
        await saq_queue.disconnect()
    return moved, already, conflicts


_SQL_EXPORT_QUEUES = (
    "SELECT DISTINCT queue FROM saqlite_jobs"
    f" WHERE status = 'queued' OR status IN {_RUNNING_SQL} "
    "ORDER BY 1"
)
_SQL_EXPORT_COUNTS = (
    "SELECT COUNT(*) FROM saqlite_jobs WHERE queue = :queue AND status = 'queued'"
    f" AND run_at < {_BLOCKED_S}"
)
_SQL_EXPORT_RUNNING = (
    "SELECT key, status FROM saqlite_jobs "
    f"WHERE queue = :queue AND status IN {_RUNNING_SQL} ORDER BY rowid"
)
_SQL_EXPORT_BLOCKED = (
    "SELECT key FROM saqlite_jobs WHERE queue = :queue AND status = 'queued'"
    f" AND run_at >= {_BLOCKED_S} ORDER BY rowid"
)


def _cmd_export(args: argparse.Namespace) -> int:
    """Move the waiting and scheduled jobs of a file into SAQ."""
    scheme = urllib.parse.urlparse(args.url).scheme.lower()
    if scheme not in _EXPORT_SCHEMES:
        raise _OpsError(
            f"Cannot export to {args.url!r}: give SAQ's redis://HOST:PORT or "
            "postgres://USER@HOST/DB URL"
        )
    saq: t.Any = None
    if not args.dry_run:
        try:
            saq = importlib.import_module("saq")
        except ImportError:
            extra = "redis" if scheme.startswith("redis") else "postgres"
            print(
                f"saqlite export: SAQ is not installed here: pip install 'saq[{extra}]>=0.26' "
                "in this environment, then run the command again",
                file=sys.stderr,
            )
            return 2

    async def action(store: _Store) -> int:
        names = (
            [args.queue]
            if args.queue
            else [name for (name,) in await store.fetch(_SQL_EXPORT_QUEUES)]
        )
        waiting = {}
        for name in names:
            waiting[name] = int((await store.fetch(_SQL_EXPORT_COUNTS, {"queue": name}))[0][0])
        report: dict[str, t.Any] = {"url": args.url, "dry_run": args.dry_run, "queues": {}}
        running: list[dict[str, str]] = []
        blocked: list[dict[str, str]] = []
        conflicts: list[dict[str, str]] = []
        progress = _Progress(
            "export", sum(waiting.values()), enabled=not args.quiet and not args.dry_run
        )
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            progress.update(done)

        for name in names:
            for key, status in await store.fetch(_SQL_EXPORT_RUNNING, {"queue": name}):
                running.append({"queue": name, "key": key, "status": status})
            for (key,) in await store.fetch(_SQL_EXPORT_BLOCKED, {"queue": name}):
                blocked.append({"queue": name, "key": key})
            if args.dry_run:
                report["queues"][name] = {"to_move": waiting[name], "moved": 0}
                continue
            try:
                moved, already, left = await _export_queue(store, saq, args.url, name, advance)
            except _OpsError:
                raise
            except Exception as exc:  # SAQ's back-end: a refused connection, a bad URL ...
                raise _OpsError(
                    f"SAQ at {args.url} failed while queue {name!r} was moving: "
                    f"{type(exc).__name__}: {exc}. Jobs already moved are in SAQ and gone from "
                    "the file; the rest stay in the file (those in flight kept from its "
                    "workers): fix the cause and run the same command again to finish",
                    code=1,
                ) from exc
            report["queues"][name] = {"moved": moved, "already_in_saq": already}
            conflicts += [{"queue": name, "key": job.key} for job in left]
        progress.close()
        report["running"] = running
        report["waiting_on_dependencies"] = blocked
        report["conflicts"] = conflicts
        if args.json:
            _print_json(report)
        else:
            for name, outcome in report["queues"].items():
                if args.dry_run:
                    print(f"{_clean(name)}: would move {outcome['to_move']} job(s)")
                else:
                    extra = (
                        f" ({outcome['already_in_saq']} already there from an interrupted export)"
                        if outcome["already_in_saq"]
                        else ""
                    )
                    print(f"{_clean(name)}: moved {outcome['moved']} job(s) to SAQ{extra}")
            for job in conflicts:
                print(
                    f"kept {_clean(job['queue'])} {_clean(job['key'])}: SAQ has another job "
                    "waiting with this key",
                    file=sys.stderr,
                )
        if running:
            print(
                f"saqlite export: {len(running)} running job(s) were not moved: stop the "
                "workers first (they finish or put their jobs back), then export again",
                file=sys.stderr,
            )
        if blocked:
            print(
                f"saqlite export: {len(blocked)} job(s) waiting on dependencies were not "
                "moved (SAQ has no dependencies: it would run them at once): let a saqlite "
                "worker run their pipelines, then export again",
                file=sys.stderr,
            )
        return 1 if running or blocked or conflicts else 0

    return _run_on_store(args.file, action)


# -- flow control: pause, resume, limit, drain ----------------------------------

_DRAIN_HELP = """\
Pause the queues (every queue in the file, or --queue), then wait for their running
jobs to end: for deploys and upgrades. Waiting jobs stay queued, and the queues stay
paused until `saqlite resume FILE`. Exit 0 once nothing runs; 1 if jobs still run
after --timeout seconds (they are named); 2 on a usage error."""
#: Seconds between a drain's looks at the running jobs.
_DRAIN_POLL_S = 0.1

# The running jobs of some queues (through saqlite_jobs_ready: as few as are running).
_SQL_OPS_RUNNING = f"""
SELECT queue, key, function, worker_id FROM saqlite_jobs
WHERE queue IN (SELECT value FROM json_each(:queues)) AND status IN {_RUNNING_SQL}
ORDER BY queue, started
"""


async def _flow_queues(store: _Store, queue: t.Optional[str]) -> list[Queue]:
    """The queues a flow command acts on: ``queue``, or every queue in the file."""
    if queue is not None:
        return [store.queue(queue)]
    names = [name for (name,) in await store.fetch(_SQL_OPS_QUEUE_NAMES)]
    return [store.queue(name) for name in names or ["default"]]


def _flow_target(queue: Queue, function: t.Optional[str]) -> str:
    return f"{_clean(queue.name)}{'' if function is None else ' ' + _clean(function)}"


def _pause_end(args: argparse.Namespace) -> dict[str, t.Any]:
    """``pause``'s --for or --until, as Queue.pause's keyword."""
    if args.for_ is not None and args.until is not None:
        raise _OpsError("Give --for or --until, not both")
    if args.for_ is not None:
        seconds = _parse_age(args.for_)
        if not seconds:
            raise _OpsError("--for must be longer than 0, e.g. 30s, 10m, 2h")
        return {"for_s": seconds}
    if args.until is not None:
        try:
            return {"until": datetime.fromisoformat(args.until)}
        except ValueError:
            raise _OpsError(
                f"--until {args.until!r} is not a time: use ISO 8601, e.g. 2026-12-24T18:00 "
                "(local time) or 2026-12-24T17:00+00:00"
            ) from None
    return {}


def _cmd_flow(args: argparse.Namespace) -> int:
    """``pause``, ``resume`` and ``limit``, on one queue or every queue in the file."""
    end = _pause_end(args) if args.command == "pause" else {}
    if args.command == "limit" and not (
        args.clear or args.rate or args.concurrency is not None or args.per_group is not None
    ):
        raise _OpsError("limit needs --rate, --concurrency or --per-group (or --clear)")

    async def action(store: _Store) -> int:
        queues = await _flow_queues(store, args.queue)
        for queue in queues:
            target = _flow_target(queue, args.function)
            try:
                if args.command == "pause":
                    await queue.pause(args.function, **end)
                    done = f"paused {target}"
                elif args.command == "resume":
                    await queue.resume(args.function)
                    done = f"resumed {target}"
                else:
                    await queue.limit(
                        args.function,
                        rate=args.rate,
                        concurrency=args.concurrency,
                        per_group=args.per_group,
                        clear=args.clear,
                    )
                    done = f"limits of {target} set"
            except ValueError as exc:
                raise _OpsError(str(exc)) from exc
            if not args.json:
                rules = [r for r in await queue.flow() if r["function"] == args.function]
                now_in_force = ", ".join(part for r in rules for part in _flow_use(r))
                print(f"{done}: {now_in_force or 'nothing in force'}")
        if args.json:  # the queues' pauses and limits as they now are
            _print_json({queue.name: await queue.flow() for queue in queues})
        return 0

    return _run_on_store(args.file, action)


def _cmd_drain(args: argparse.Namespace) -> int:
    if not 0 <= args.timeout < math.inf:
        raise _OpsError(f"--timeout must be seconds from 0, got {args.timeout}")

    async def action(store: _Store) -> int:
        queues = await _flow_queues(store, args.queue)
        for queue in queues:
            await queue.pause()
        names = json.dumps([queue.name for queue in queues])
        deadline = time.monotonic() + args.timeout
        while True:
            rows = await store.fetch(_SQL_OPS_RUNNING, {"queues": names})
            if not rows or time.monotonic() >= deadline:
                break
            await asyncio.sleep(_DRAIN_POLL_S)
        paused = ", ".join(_clean(queue.name) for queue in queues)
        if args.json:
            running = [
                {"queue": queue, "key": key, "function": function, "worker": worker}
                for queue, key, function, worker in rows
            ]
            _print_json({"paused": [queue.name for queue in queues], "running": running})
        elif rows:
            print(
                f"saqlite drain: {len(rows)} job(s) still running after {args.timeout:g} s "
                f"(queues stay paused: {paused}):",
                file=sys.stderr,
            )
            for queue, key, function, worker in rows:
                print(f"  {_clean(queue)} {_clean(key)} ({_clean(function)}, worker {worker})")
        else:
            print(
                f"drained {paused}: nothing running; the queues stay paused until "
                f"`saqlite resume {args.file}`"
            )
        return 1 if rows else 0

    return _run_on_store(args.file, action)


def _ops_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saqlite",
        description="Operate saqlite queues.",
        epilog=_OPS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, run: Callable[[argparse.Namespace], int]) -> t.Any:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        if name != "burst":
            sub.add_argument("file", metavar="FILE", help="saqlite database path or sqlite:/// URL")
        if name != "web":
            sub.add_argument("--json", action="store_true", help="print JSON for scripts")
        return sub

    def filters(sub: t.Any, statuses: Sequence[str]) -> None:
        sub.add_argument("--queue", help="only this queue")
        sub.add_argument(
            "--status",
            action="append",
            metavar="STATUS",
            help=f"only these statuses, comma-separated ({', '.join(statuses)})",
        )
        sub.add_argument("--function", help="only jobs of this function")

    sub = command("info", "Queues with their job counts, and the live workers.", _cmd_info)
    sub.add_argument("--queue", help="only this queue")
    sub = command(
        "stats", "Per function: jobs that ended, failure rate, wait and run times.", _cmd_stats
    )
    sub.add_argument("--queue", help="only this queue")
    sub.add_argument(
        "--since",
        default="1h",
        metavar="AGE",
        help="jobs that ended in this last while: 1s to 1d, e.g. 15m (default 1h), or 'all'",
    )
    sub = command("tail", "A line per job event as it happens (JSON lines with --json).", _cmd_tail)
    filters(sub, _STATUS_NAMES)
    sub = command("jobs", "Jobs, newest first, a page at a time.", _cmd_jobs)
    filters(sub, _STATUS_NAMES)
    sub.add_argument("--limit", type=int, default=20, help="jobs per page (default 20)")
    sub.add_argument("--page", type=int, default=1, help="page number, from 1")
    sub.add_argument(
        "--after",
        metavar="CURSOR",
        help="the page after the one that printed this cursor (quick at any depth)",
    )
    sub = command("job", "One job in full.", _cmd_job)
    sub.add_argument("key", help="the job's key (or its id, saqlite:job:QUEUE:KEY)")
    sub.add_argument("--queue", help="the job's queue, when the key is in several")
    for name, help, statuses in (
        ("retry", "Put failed or aborted jobs back in the queue, due at once.", _RETRYABLE),
        ("abort", "Abort waiting or running jobs.", _ABORTABLE),
    ):
        sub = command(name, help, _cmd_change)
        sub.add_argument("keys", nargs="*", metavar="KEY", help="the jobs' keys")
        sub.add_argument("--all", action="store_true", help="every job the filters match")
        filters(sub, statuses)
        sub.add_argument("--error", help="the error to store (default: who did it)")
        sub.add_argument("-q", "--quiet", action="store_true", help="no progress")
    sub = command("purge", "Delete finished jobs that finished longer ago than an age.", _cmd_purge)
    sub.add_argument(
        "--older-than", required=True, metavar="AGE", help="e.g. 30s, 15m, 12h, 7d, 2w (0 = all)"
    )
    filters(sub, _FINISHED)
    sub.add_argument("--dry-run", action="store_true", help="only count them")
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress")
    sub = command("vacuum", "Rebuild a file so that it shrinks and gives space back.", _cmd_vacuum)
    sub.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for other writers (default 30)",
    )
    sub = command("burst", "Run the jobs there are with a settings dict's worker (CI).", _cmd_burst)
    sub.description = _BURST_HELP
    sub.formatter_class = argparse.RawDescriptionHelpFormatter
    sub.add_argument("settings", help=_SETTINGS_HELP)
    sub.add_argument("--max-jobs", type=int, help="stop after this many jobs (the rest may wait)")
    sub.add_argument(
        "--wait",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="stop once nothing ran or was due for this long (default 1)",
    )
    sub.add_argument(
        "--allow-pending",
        action="store_true",
        help="exit 0 though jobs are left waiting (scheduled later)",
    )
    sub.add_argument("-v", "--verbose", action="count", default=0, help=_VERBOSE_HELP)
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress, log only errors")
    sub = command("web", "Serve the monitoring page for saqlite files.", _cmd_web)
    sub.add_argument("files", nargs="*", metavar="FILE", help="more files to show")
    sub.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sub.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free)")
    sub.add_argument(
        "--refresh",
        type=float,
        default=3.0,
        help="seconds between looks for changes the wake-ups missed (default 3; the poll "
        "of a browser without EventSource)",
    )
    sub.add_argument("--allowed-host", action="append", metavar="NAME", help=_ALLOWED_HOST_HELP)
    sub = command(
        "export",
        "Move the waiting and scheduled jobs into SAQ at a redis:// or postgres:// "
        "URL (SAQ must be installed). Running jobs stay: stop the workers first. An "
        "interrupted export loses nothing: run it again to finish.",
        _cmd_export,
    )
    sub.add_argument("url", metavar="URL", help="SAQ's queue URL: redis://... or postgres://...")
    sub.add_argument("--queue", help="only this queue (default: every queue with jobs)")
    sub.add_argument("--dry-run", action="store_true", help="only count what would move")
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress")
    every_queue = "only this queue (default: every queue in the file)"
    one_function = "only this job function (default: the whole queue)"
    sub = command(
        "pause",
        "Stop starting jobs of the queues, or of one function (saqlite only). Waiting jobs "
        "stay queued; running jobs finish; workers in every process obey at once.",
        _cmd_flow,
    )
    sub.add_argument("--queue", help=every_queue)
    sub.add_argument("--function", help=one_function)
    sub.add_argument(
        "--for", dest="for_", metavar="AGE", help="end the pause after 30s, 10m, 2h ..."
    )
    sub.add_argument("--until", metavar="TIME", help="end the pause at an ISO time")
    sub = command("resume", "End a pause (saqlite only).", _cmd_flow)
    sub.add_argument("--queue", help=every_queue)
    sub.add_argument("--function", help=one_function)
    sub = command(
        "limit",
        "Limit how jobs start, exactly across every worker process (saqlite only). "
        "Limits given are set, the others kept.",
        _cmd_flow,
    )
    sub.add_argument("--queue", help=every_queue)
    sub.add_argument("--function", help=one_function)
    sub.add_argument("--rate", help="at most N starts in any period: 60/m, 100/s, 5/10s, 1000/h")
    sub.add_argument("--concurrency", type=int, metavar="N", help="at most N running at once")
    sub.add_argument(
        "--per-group", type=int, metavar="N", help="(whole queue) at most N per group_key at once"
    )
    sub.add_argument("--clear", action="store_true", help="remove the limits first")
    sub = command("drain", "Pause, then wait for running jobs to end (deploys).", _cmd_drain)
    sub.description = _DRAIN_HELP
    sub.formatter_class = argparse.RawDescriptionHelpFormatter
    sub.add_argument("--queue", help=every_queue)
    sub.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up after this long, exit 1 (default 60)",
    )
    return parser


def _ops_main(argv: list[str]) -> t.Optional[int]:
    """Run an operations command; None when ``argv`` is not one (then it names settings).

    Returns:
        The exit code (see ``_OPS_EPILOG``).
    """
    if not argv or argv[0] not in _OPS_COMMANDS:
        return None
    args = _ops_parser().parse_args(argv)
    if args.command == "web":
        args.files = [args.file, *args.files]
    try:
        return int(args.run(args))
    except (_OpsError, StorageError) as exc:
        print(f"saqlite {args.command}: {exc}", file=sys.stderr)
        return exc.code if isinstance(exc, _OpsError) else 2
    except KeyboardInterrupt:
        return 130


def _add_web_arguments(parser: argparse.ArgumentParser) -> None:
    """``saqlite module.settings --web``: the options of the page served beside a worker."""
    parser.add_argument("--web", action="store_true", help="also serve the monitoring page")
    parser.add_argument(
        "-e",
        "--extra-web-settings",
        action="append",
        default=[],
        help="more settings whose queues the page shows (repeatable)",
    )
    parser.add_argument("--port", type=int, default=8080, help="the page's port (default 8080)")
    parser.add_argument("--allowed-host", action="append", metavar="NAME", help=_ALLOWED_HOST_HELP)


def _serve_if_asked(args: argparse.Namespace, verbose: int) -> bool:
    """Run the worker of ``saqlite module.settings --web`` with its page; False
    without ``--web``."""
    if not args.web:
        return False
    _serve_web_with_worker(
        args.settings,
        port=args.port,
        extra_settings=args.extra_web_settings,
        verbose=verbose,
        allowed_hosts=args.allowed_host,
    )
    return True


# =============================================================================
# Operator tooling: the web page
# =============================================================================

if t.TYPE_CHECKING:
    _ASGIMessage = t.MutableMapping[str, t.Any]
    _ASGIReceive = Callable[[], Awaitable[_ASGIMessage]]
    _ASGISend = Callable[[_ASGIMessage], Awaitable[None]]

_WEB_PAGE_SIZE = 20
#: Characters of a value (kwargs, result, meta, error) the job's page shows.
_WEB_VALUE_CAP = 256 * 1024
_WEB_MAX_BODY = 64 * 1024
_HTTP_READ_TIMEOUT_S = 30.0
_WEB_NOTICES = {
    "retried": "The job is back in the queue.",
    "aborted": "The job was aborted (a running one stops when its worker sees it).",
    "not-retried": "Only failed or aborted jobs can be retried.",
    "not-aborted": "Only waiting or running jobs can be aborted.",
}
#: A bulk action: its verb, the statuses it works on, and what they are called.
_WEB_BULK = {
    "retry": ("Retried", _RETRYABLE, "failed or aborted"),
    "abort": ("Aborted", _ABORTABLE, "waiting or running"),
    "delete": ("Deleted", _FINISHED, "finished"),
}
#: Rows a search reads per page at most (newest first, within the filter).
_WEB_SEARCH_WINDOW = 2000
#: Seconds between an event's news and the next one (the browser debounces too).
_WEB_EVENT_GAP_S = 0.25
#: Seconds of silence after which an event stream sends a comment (keeps proxies open).
_WEB_KEEPALIVE_S = 15.0

_WEB_CSS = """
:root{color-scheme:light dark}
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
a{color:#1f56b8}
header{display:flex;gap:.4em 1.2em;align-items:center;flex-wrap:wrap;padding:.6em 1.2em;
background:#1d2433;color:#fff}
header a{color:#fff;text-decoration:none}header .brand{font-weight:700;font-size:1.1em}
header label{margin-left:auto;font-size:.9em}
main{padding:1em 1.2em;max-width:1200px}
h2{font-size:1.15em;margin:1.2em 0 .5em;overflow-wrap:anywhere}h2:first-child{margin-top:0}
h3{font-size:1em;margin:1em 0 .4em}
.scroll{overflow-x:auto;max-width:100%;margin-bottom:1em}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #e3e6eb;vertical-align:top}
th{background:#eef0f4;font-weight:600}td.n,th.n{text-align:right}
tr.total td{font-weight:600;border-top:2px solid #c9ced8}
pre{background:#fff;border:1px solid #e3e6eb;padding:.7em;overflow:auto;white-space:pre-wrap;
overflow-wrap:anywhere}
pre.error{border-color:#e4a2a2;background:#fff5f5}
.status{padding:.05em .45em;border-radius:.6em;font-size:.85em;background:#e3e6eb}
.status.complete{background:#d3f2dc}.status.failed{background:#f8d4d4}
.status.aborted,.status.aborting{background:#f7e5c8}.status.active{background:#d6e6fb}
.status.sleeping{background:#ece3f7}
.notice{padding:.5em .8em;background:#fff8d8;border:1px solid #eedc82;margin-bottom:1em}
.muted{color:#6a7385}.err{color:#a12b2b}
form.inline{display:inline}button{cursor:pointer;padding:.3em .9em}
form.filters{display:flex;gap:.6em;align-items:end;margin-bottom:.8em;flex-wrap:wrap}
form.filters input,form.filters select{max-width:100%}
.bulk{display:flex;gap:.5em;flex-wrap:wrap;margin:.2em 0 .8em}
progress{width:16em;max-width:60%}.paging{display:flex;gap:1em;flex-wrap:wrap}
div.facts{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start}
table.facts{width:auto;flex:1 1 20em}table.facts th{width:8em}
svg.pipeline{background:#fff;border:1px solid #e3e6eb}
svg.pipeline rect{fill:#e3e6eb;stroke:#9aa3b2}svg.pipeline rect.this{stroke:#222;stroke-width:2}
svg.pipeline rect.complete{fill:#d3f2dc}svg.pipeline rect.failed{fill:#f8d4d4}
svg.pipeline rect.aborted,svg.pipeline rect.aborting{fill:#f7e5c8}
svg.pipeline rect.active{fill:#d6e6fb}svg.pipeline line{stroke:#9aa3b2}
svg.pipeline text{font-size:12px}
.charts{display:flex;gap:1em;flex-wrap:wrap}.charts figure{margin:0;flex:1 1 22em;min-width:0}
svg.chart{width:100%;height:auto;background:#fff;border:1px solid #e3e6eb}
svg.chart text{font-size:11px;fill:#6a7385}svg.chart line{stroke:#c9ced8}
svg.chart rect.complete{fill:#4caf6d}svg.chart rect.failed{fill:#d9534f}
svg.chart rect.aborted{fill:#e0a040}
figcaption{font-size:.9em;margin:.2em 0}.key{display:inline-block;width:.8em;height:.8em}
.key.complete{background:#4caf6d}.key.failed{background:#d9534f}
.key.aborted{background:#e0a040}
@media (max-width:600px){
main{padding:.8em .6em}header{padding:.5em .6em}header label{margin-left:0}
th,td{padding:.3em .4em}table.facts{flex-basis:100%}table.facts th{width:6em}
}
@media (prefers-color-scheme:dark){
body{color:#d8dce4;background:#14171d}a{color:#8ab4ff}header{background:#0b0d11}
table,pre,svg.pipeline,svg.chart{background:#1d2129}th{background:#262b35}
th,td,pre,svg.pipeline,svg.chart{border-color:#333a46}
pre.error{background:#2d1b1d;border-color:#6b3236}
.status{background:#333a46}.status.complete{background:#1f4d2c}
.status.failed{background:#5c2326}.status.aborted,.status.aborting{background:#5a4319}
.status.active{background:#1f3d63}.status.sleeping{background:#3e2f57}
.notice{background:#3d3717;border-color:#6b5d1e}.muted{color:#8b93a3}.err{color:#ff8c8c}
svg.pipeline rect{fill:#333a46}svg.pipeline rect.complete{fill:#1f4d2c}
svg.pipeline rect.failed{fill:#5c2326}svg.pipeline rect.active{fill:#1f3d63}
svg.pipeline rect.aborted,svg.pipeline rect.aborting{fill:#5a4319}
svg.pipeline rect.this{stroke:#fff}svg.pipeline text{fill:#d8dce4}
svg.chart text{fill:#8b93a3}svg.chart line{stroke:#333a46}
}
"""

# Live updates: the server's event stream (GET /events) says when jobs changed; the
# page then fetches itself and swaps <main> in place (debounced; not while a field
# has focus or the tab is hidden; at most once a second). Without EventSource it polls.
_WEB_JS = """
(function () {
  var box = document.getElementById("live"), timer = null, last = 0;
  var saved = sessionStorage.getItem("saqlite-live");
  if (saved !== null) box.checked = saved === "1";
  function refresh() {
    var main = document.getElementById("main"), active = document.activeElement;
    if (!box.checked || document.hidden) return;
    if (active && main.contains(active) && /INPUT|SELECT|TEXTAREA/.test(active.tagName)) {
      soon(1000);
      return;
    }
    last = Date.now();
    fetch(location.href, {cache: "no-store", credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (!text) return;
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("main");
        if (fresh) document.getElementById("main").replaceWith(fresh);
      })
      .catch(function () {});
  }
  function soon(ms) {  // debounced, and at most one refresh a second
    var wait = Math.max(ms || 300, last + 1000 - Date.now());
    if (timer === null) timer = setTimeout(function () { timer = null; refresh(); }, wait);
  }
  box.addEventListener("change", function () {
    sessionStorage.setItem("saqlite-live", box.checked ? "1" : "0");
    soon();
  });
  document.addEventListener("visibilitychange", function () { soon(); });
  if (window.EventSource) {
    var events = new EventSource(EVENTS_URL);
    events.addEventListener("change", function () { soon(); });
    events.addEventListener("open", function () {  // what changed before it opened
      document.documentElement.setAttribute("data-live", "events");
      soon();
    });
  } else {
    setInterval(refresh, REFRESH_MS);
    document.documentElement.setAttribute("data-live", "poll");
  }
})();
"""


def _e(value: object) -> str:
    """A value as HTML text (attribute-safe)."""
    return html.escape(str(value), quote=True)


# -- what the page reads, besides the terminal commands' listings ----------------

# A search: the newest :window jobs of the filter, each with whether it holds the text.
_SQL_WEB_SEARCH = """
WITH newest AS (
    SELECT rowid, queued, key, function, data, error FROM saqlite_jobs INDEXED BY {index}
    WHERE {where} ORDER BY queued DESC, rowid DESC LIMIT :window
)
SELECT queued, rowid, instr(lower(key), :text) > 0 OR instr(lower(function), :text) > 0
    OR instr(lower(CAST(data AS TEXT)), :text) > 0 OR instr(lower(ifnull(error, '')), :text) > 0
FROM newest ORDER BY queued DESC, rowid DESC
"""
_SQL_WEB_JOBS_BY_ROWID = f"""
SELECT {_SQL_OPS_LIST_COLUMNS} FROM saqlite_jobs
WHERE rowid IN (SELECT value FROM json_each(:rowids)) ORDER BY queued DESC, rowid DESC
"""


async def _search_jobs(
    store: _Store, where: _JobFilter, text: str, limit: int, after: t.Optional[str] = None
) -> tuple[list[Job], t.Optional[str], int]:
    """The jobs of a filter whose key, function, kwargs or error hold ``text`` (any
    case), newest first, among the _WEB_SEARCH_WINDOW newest (after the cursor
    ``after``); the cursor to search on from, and how many jobs were read.

    Raises:
        _OpsError: ``after`` is not a cursor a listing gave.
    """
    index, condition, params = await _listing(store, where, after)
    params = {**params, "window": _WEB_SEARCH_WINDOW, "text": text.lower()}
    rows = await store.fetch(_SQL_WEB_SEARCH.format(index=index, where=condition), params)
    hits = [i for i, row in enumerate(rows) if row[2]]
    cursor = None
    read = len(rows)
    if len(hits) > limit:
        read = hits[limit - 1] + 1
        cursor = f"{rows[read - 1][0]}:{rows[read - 1][1]}"
    elif len(rows) == _WEB_SEARCH_WINDOW:
        cursor = f"{rows[-1][0]}:{rows[-1][1]}"
    rowids = json.dumps([rows[i][1] for i in hits[:limit]])
    found = await store.fetch(_SQL_WEB_JOBS_BY_ROWID, {"rowids": rowids, "cap": _LIST_VALUE_CAP})
    return [_listed_job(store, row[:-1]) for row in found], cursor, read


_SQL_WEB_COUNT = "SELECT COUNT(*) FROM saqlite_jobs INDEXED BY {index} WHERE {where}"


async def _count_upto(store: _Store, where: _JobFilter) -> t.Optional[int]:
    """How many jobs match a filter: from the counts; with a function, by reading
    the jobs when the rest of the filter leaves few (_LIST_SORT_MAX); else None."""
    if where.function is None:
        return await _count_jobs(store, where)
    index, condition, params = await _listing(store, where)
    if index != "saqlite_jobs_ready":  # too many to read for a count
        return None
    rows = await store.fetch(_SQL_WEB_COUNT.format(index=index, where=condition), params)
    return int(rows[0][0])


async def _bulk_action(store: _Store, where: _JobFilter, action: str) -> int:
    """Retry, abort or delete the jobs of a filter a slice at a time (other writers
    get the file between slices); how many changed. A job another ``dump`` wrote is
    left as it is."""
    if action == "delete":
        return await _purge(store, where, int(time.time() * 1000) + 1)
    change = _retry_job if action == "retry" else _abort_job
    error = f"{'retried' if action == 'retry' else 'aborted'} from the web page"

    async def change_one(job: Job) -> bool:
        try:
            return await change(job, error)
        except _OpsError:
            return False

    done = 0
    async for batch in _matching_jobs(store, where):
        done += sum(await asyncio.gather(*(change_one(job) for job in batch)))
        await store.reader._between_slices()
    return done


# Waiting jobs due later, soonest first (saqlite_jobs_waiting: queue, status, run_at).
_SQL_WEB_SCHEDULED = f"""
SELECT {_SQL_OPS_LIST_COLUMNS}, run_at FROM saqlite_jobs INDEXED BY saqlite_jobs_waiting
WHERE queue IN (SELECT value FROM json_each(:queues)) AND status = 'queued' AND run_at > :now
ORDER BY run_at, rowid LIMIT :limit OFFSET :offset
"""


async def _first_of(waits: Sequence[Awaitable[bool]], timeout: float) -> list[bool]:
    """The results of the waits that end first (the others are cancelled); none when
    none ends within ``timeout`` seconds."""
    if not waits:
        await asyncio.sleep(timeout)
        return []
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [task.result() for task in done if not task.cancelled()]


def _chart_svg(buckets: Sequence[_Bucket], id: str, bucket_s: float) -> str:
    """Jobs ended per time bucket as stacked bars (complete, failed, aborted), with axes."""
    width, height, left, bottom, top = 600, 170, 44, 22, 8
    plot_w, plot_h = width - left - 8, height - bottom - top
    ended = [b["complete"] + b["failed"] + b["aborted"] for b in buckets]
    peak = max([*ended, 1])
    step = plot_w / max(len(buckets), 1)
    parts = [
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 8}" y2="{top + plot_h}"/>',
        f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{peak:,}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for i, bucket in enumerate(buckets):
        x = left + i * step + step * 0.1
        y = float(top + plot_h)
        for kind in ("complete", "failed", "aborted"):
            n = bucket[kind]
            if n:
                h = plot_h * n / peak
                y -= h
                parts.append(
                    f'<rect class="{kind}" x="{x:.1f}" y="{y:.1f}" width="{step * 0.8:.1f}" '
                    f'height="{h:.1f}"><title>{_e(_fmt_time(bucket["start"] * 1000))}: '
                    f"{int(n):,} {kind}</title></rect>"
                )
    clock = "%H:%M"
    for i in sorted({0, len(buckets) // 2, len(buckets) - 1} if buckets else set()):
        x = left + i * step + step / 2
        label = time.strftime(clock, time.localtime(buckets[i]["start"]))
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle">{label}</text>')
    total = sum(ended)
    return (
        f'<svg class="chart" id="{_e(id)}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{int(total):,} jobs ended, per {_fmt_span(bucket_s * 1000)}">'
        f"{''.join(parts)}</svg>"
    )


@dataclasses.dataclass
class _WebRequest:
    """An HTTP request as the page sees it."""

    method: str
    path: str  # below the mount point
    base: str  # the mount point (ASGI root_path), "" at the root
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    segments: list[str] = dataclasses.field(default_factory=list)  # of the path, decoded

    def form(self) -> dict[str, str]:
        pairs = urllib.parse.parse_qsl(self.body.decode("utf-8", "replace"))
        return dict(pairs)


@dataclasses.dataclass
class _WebResponse:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    stream: t.Optional[t.AsyncGenerator[bytes, None]] = None  # sent after body, until it ends


class _WebApp:
    """The monitoring page as an ASGI application: see ``web_app``."""

    def __init__(
        self,
        stores: list[_Store],
        auth_user: str,
        auth_password: t.Optional[str],
        refresh_s: float,
        allowed_hosts: t.Optional[Sequence[str]] = None,
        *,
        csrf_secret: t.Optional[str] = None,
    ) -> None:
        self.stores = stores
        self.auth_user = auth_user
        self.auth_password = auth_password
        self.refresh_s = refresh_s
        self.allowed_hosts = None if allowed_hosts is None else [h.lower() for h in allowed_hosts]
        self._csrf_key = (csrf_secret or secrets.token_hex(32)).encode("utf-8")
        self._routes: dict[tuple[str, str], Callable[[_WebRequest, str], Awaitable[_WebResponse]]]
        self._routes = {
            ("GET", "/"): self._overview_page,
            ("GET", "/jobs"): self._jobs_page,
            ("GET", "/scheduled"): self._scheduled_page,
            ("GET", "/job"): self._job_page,
            ("POST", "/retry"): self._change,
            ("POST", "/abort"): self._change,
            ("POST", "/bulk"): self._bulk_page,
            ("GET", "/events"): self._events,
            ("GET", "/health"): self._health,
            ("POST", "/pause"): self._flow_change,
            ("POST", "/resume"): self._flow_change,
            ("POST", "/limit"): self._flow_change,
            ("GET", "/api/queues"): self._api_queues,
            ("GET", "/api/queues/{queue}"): self._api_queue,
            ("GET", "/api/queues/{queue}/jobs/{key}"): self._api_job,
            ("POST", "/api/queues/{queue}/jobs/{key}/retry"): self._api_change,
            ("POST", "/api/queues/{queue}/jobs/{key}/abort"): self._api_change,
            ("POST", "/api/bulk"): self._api_bulk,
            ("GET", "/api/csrf"): self._api_csrf,
            ("GET", "/api/jobs"): self._api_jobs,
            ("GET", "/api/job"): self._api_job,
            ("GET", "/metrics"): self._metrics,
        }

    async def __call__(self, scope: _ASGIMessage, receive: _ASGIReceive, send: _ASGISend) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(f"The saqlite page serves HTTP only, not {scope['type']!r}")
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body") or len(body) > _WEB_MAX_BODY:
                break
        base = scope.get("root_path", "").rstrip("/")
        path = scope["path"]
        if base and path.startswith(base):  # servers that keep the mount in the path
            path = path[len(base) :]
        # The path's segments from the raw path, so a queue or key may hold a '/'.
        raw = scope.get("raw_path") or path.encode("utf-8")
        raw_text = raw.decode("latin-1")
        quoted_base = urllib.parse.quote(base)
        if base and raw_text.startswith(quoted_base):
            raw_text = raw_text[len(quoted_base) :]
        segments = [urllib.parse.unquote(part) for part in raw_text.split("/")[1:]]
        if "/" + "/".join(segments) != (path or "/"):
            segments = path.split("/")[1:]
        request = _WebRequest(
            method=scope["method"],
            path=path or "/",
            base=base,
            query=dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"))),
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            body=body,
            segments=segments,
        )
        if len(body) > _WEB_MAX_BODY:
            response = _WebResponse(413, b"Request body too large", "text/plain")
        else:
            response = await self.handle(request)
        headers = [
            ("content-type", response.content_type),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "same-origin"),
            ("cache-control", "no-store"),
            *response.headers,
        ]
        if response.stream is None:
            headers.append(("content-length", str(len(response.body))))
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        if response.stream is not None and request.method != "HEAD":
            await _stream(response.stream, receive, send)
            return
        await send(
            {
                "type": "http.response.body",
                "body": b"" if request.method == "HEAD" else response.body,
            }
        )

    async def _lifespan(self, receive: _ASGIReceive, send: _ASGISend) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def close(self) -> None:
        """Close the files' connections (the app opens them again if used)."""
        for store in self.stores:
            await store.close()

    async def handle(self, request: _WebRequest) -> _WebResponse:
        """The response to one request."""
        host = request.headers.get("host")
        if host is not None and not self._host_allowed(request, host):
            message = (
                f"Host {host!r} is not served here (a defence against DNS rebinding): open "
                "the page by 127.0.0.1 or localhost, or allow that name with --allowed-host "
                "NAME (web_app(..., allowed_hosts=[NAME]) in code)"
            )
            return _WebResponse(421, message.encode("utf-8"), "text/plain; charset=utf-8")
        if not self._authorised(request) and request.path != "/health":
            challenge = 'Basic realm="saqlite", charset="UTF-8"'
            return _WebResponse(
                401, b"Authentication required", "text/plain", [("www-authenticate", challenge)]
            )
        method = "GET" if request.method == "HEAD" else request.method
        route = self._route(request)
        handler = self._routes.get((method, route))
        if handler is None:
            allowed = [m for m, path in self._routes if path == route]
            if allowed:
                return _WebResponse(
                    405, b"Method not allowed", "text/plain", [("allow", ", ".join(allowed))]
                )
            return self._error_page(request, 404, "No such page.")
        if method == "POST" and not _same_origin(request):
            return _WebResponse(403, b"Cross-site request refused", "text/plain")
        if method == "POST" and not self._csrf_valid(request):
            return self._error_page(request, 403, _csrf_refusal(request))
        nonce = secrets.token_urlsafe(12)
        try:
            response = await handler(request, nonce)
        except _WebError as exc:
            return self._error_page(request, exc.status, str(exc))
        except StorageError as exc:
            return self._error_page(request, 503, str(exc))
        except Exception:  # a page, not a dropped connection; the traceback goes to the log
            logger.exception("The page failed on %s %s", request.method, request.path)
            return self._error_page(request, 500, "The page failed: its log tells why.")
        if response.content_type.startswith("text/html"):
            response.headers.append(("content-security-policy", _csp(nonce)))
        return response

    def _host_allowed(self, request: _WebRequest, host: str) -> bool:
        """Whether a request's ``Host`` is one this page serves. A rebinding attack
        needs a domain name of the attacker's: an IP address, ``localhost`` and this
        machine's name are always served; other names when allowed, or by default
        when a password guards the page or an app it is mounted in checks hosts."""
        if self.allowed_hosts is None and (request.base or self.auth_password):
            return True
        allowed = self.allowed_hosts or []
        name = (urllib.parse.urlsplit("//" + host).hostname or "").rstrip(".")
        return (
            "*" in allowed
            or name in allowed
            or any(a.startswith(".") and name.endswith(a) for a in allowed)
            or name == "localhost"
            or name.endswith(".localhost")
            or name == socket.gethostname().lower()
            or _is_ip_address(name)
        )

    def _authorised(self, request: _WebRequest) -> bool:
        if not self.auth_password:
            return True
        kind, _, encoded = request.headers.get("authorization", "").partition(" ")
        if kind.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user.encode(), self.auth_user.encode()) & hmac.compare_digest(
            password.encode(), self.auth_password.encode()
        )

    def _user(self, request: _WebRequest) -> str:
        """The basic-auth user of a request ("" without one)."""
        kind, _, encoded = request.headers.get("authorization", "").partition(" ")
        if kind.lower() != "basic":
            return ""
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            return base64.b64decode(encoded).decode("utf-8").partition(":")[0]
        return ""

    def csrf_token(self, request: _WebRequest) -> str:
        """The token every POST of this user must carry (a form's ``csrf`` field, or the
        ``X-Saqlite-Csrf`` header of a JSON API call)."""
        user = self._user(request).encode("utf-8")
        return hmac.new(self._csrf_key, b"saqlite-csrf:" + user, "sha256").hexdigest()

    def _csrf_valid(self, request: _WebRequest) -> bool:
        if request.path.startswith("/api/"):
            given = request.headers.get(_CSRF_HEADER, "")
        else:
            given = request.form().get("csrf", "")
        return hmac.compare_digest(given.encode("utf-8"), self.csrf_token(request).encode())

    def _route(self, request: _WebRequest) -> str:
        """The route of a path: itself, or the pattern of a JSON API path with a queue
        and a key, which it puts in ``request.query``."""
        parts = request.segments
        if parts[:2] != ["api", "queues"] or len(parts) < 3 or not parts[2]:
            return request.path
        request.query["queue"] = parts[2]
        if len(parts) == 3:
            return "/api/queues/{queue}"
        if parts[3] != "jobs" or len(parts) not in (5, 6) or not parts[4]:
            return request.path
        request.query["key"] = parts[4]
        return "/api/queues/{queue}/jobs/{key}" + ("/" + parts[5] if len(parts) == 6 else "")

    # -- helpers ---------------------------------------------------------------

    def _store(self, request: _WebRequest, params: t.Optional[dict[str, str]] = None) -> _Store:
        value = (params or request.query).get("db", "0")
        if not (value.isascii() and value.isdigit()) or int(value) >= len(self.stores):
            raise _WebError(404, f"No saqlite file number {value}.")
        return self.stores[int(value)]

    def _url(self, request: _WebRequest, path: str, **params: object) -> str:
        """A link below the mount point; parameters that are None, "" or db=0 are left out."""
        kept = {k: str(v) for k, v in params.items() if v not in (None, "")}
        if kept.get("db") == "0":
            del kept["db"]
        return request.base + path + ("?" + urllib.parse.urlencode(kept) if kept else "")

    def _render(
        self, request: _WebRequest, nonce: str, title: str, body: str, live: bool = True
    ) -> _WebResponse:
        """A page: the header, ``body`` in <main>, and (if ``live``) the script that
        keeps it up to date."""
        events = json.dumps(self._url(request, "/events")).replace("<", "\\u003c")
        script = _WEB_JS.replace("REFRESH_MS", str(int(self.refresh_s * 1000)))
        script = script.replace("EVENTS_URL", events)
        db = request.query.get("db")
        toggle = (
            '<label title="updates as jobs change"><input type="checkbox" id="live" checked>'
            "live</label>"
            if live
            else ""
        )
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{_e(self.csrf_token(request))}">
<title>{_e(title)} - saqlite</title><style nonce="{_e(nonce)}">{_WEB_CSS}</style></head>
<body><header><a class="brand" href="{_e(self._url(request, "/"))}">saqlite</a>
<a href="{_e(self._url(request, "/"))}">Overview</a>
<a href="{_e(self._url(request, "/jobs", db=db))}">Jobs</a>
<a href="{_e(self._url(request, "/scheduled", db=db))}">Scheduled</a>
<a href="{_e(self._url(request, "/jobs", db=db, status="failed"))}">Failed</a>
{toggle}</header>
<main id="main">{body}</main>
{f'<script nonce="{_e(nonce)}">{script}</script>' if live else ""}</body></html>"""
        return _WebResponse(200, page.encode("utf-8"))

    def _csrf_field(self, request: _WebRequest) -> str:
        return f'<input type="hidden" name="csrf" value="{_e(self.csrf_token(request))}">'

    def _file_html(self, db: int) -> str:
        """The file a view shows, named the same way on every view."""
        label = f"file {db + 1}: " if len(self.stores) > 1 else ""
        return f'<p class="muted file">{_e(label)}{_e(self.stores[db].path)}</p>'

    def _error_page(self, request: _WebRequest, status: int, message: str) -> _WebResponse:
        if request.path.startswith("/api/"):
            return _json_response({"error": message}, status)
        nonce = secrets.token_urlsafe(12)
        phrase = http.HTTPStatus(status).phrase
        body = f'<h2>{status} {_e(phrase)}</h2><p class="err">{_e(message)}</p>'
        response = self._render(request, nonce, "Error", body, live=False)
        response.status = status
        response.headers.append(("content-security-policy", _csp(nonce)))
        return response

    def _filter(self, request: _WebRequest) -> tuple[_JobFilter, int, int]:
        query = request.query
        try:
            page = min(max(int(query.get("page", "1")), 1), _MAX_PAGE)
            limit = min(max(int(query.get("limit", str(_WEB_PAGE_SIZE))), 1), 500)
            chosen = [query["status"]] if query.get("status") else None
            statuses = _statuses(chosen, _STATUS_NAMES, ())
        except (ValueError, _OpsError) as exc:
            raise _WebError(400, f"Bad filter: {exc}") from None
        where = _JobFilter(query.get("queue") or None, statuses, query.get("function") or None)
        return where, page, limit

    async def _job(self, request: _WebRequest, params: dict[str, str]) -> Job:
        store = self._store(request, params)
        queue, key = params.get("queue", ""), params.get("key", "")
        jobs = await _find_jobs(store, key, queue) if queue and key else []
        if not jobs:
            raise _WebError(404, f"No job {key!r} in queue {queue!r}: it may have expired.")
        return jobs[0]

    # -- pages -------------------------------------------------------------------

    async def _overview_page(self, request: _WebRequest, nonce: str) -> _WebResponse:
        parts = []
        for db, store in enumerate(self.stores):
            overview = await _overview(store)
            activity = {
                "hour": await _throughput(store, buckets=12, bucket_s=300),
                "day": await _throughput(store, buckets=24, bucket_s=3600),
            }
            since = 86400.0 if request.query.get("stats") == "day" else 3600.0
            functions = await _stats(store, since_s=since)
            parts.append(self._overview_html(request, db, overview, activity, functions))
        return self._render(request, nonce, "Overview", "".join(parts))

    def _overview_html(
        self,
        request: _WebRequest,
        db: int,
        overview: dict[str, t.Any],
        activity: dict[str, list[_Bucket]],
        functions: list[_FunctionStats],
    ) -> str:
        current = now()
        day = request.query.get("stats") == "day"
        other = self._url(request, "/", stats=None if day else "day")
        window = "last day" if day else "last hour"
        window_link = f'<a href="{_e(other)}">{"last hour" if day else "last day"}</a>'

        kinds = (
            ("queued", "queued"),
            ("scheduled", "queued"),
            ("active", "active,aborting"),
            ("complete", "complete"),
            ("failed", "failed"),
            ("aborted", "aborted"),
        )
        rows = []
        for q in overview["queues"]:
            cells = [
                f'<td><a href="{_e(self._url(request, "/jobs", db=db, queue=q["name"]))}">'
                f"{_e(q['name'])}</a></td>"
            ]
            for kind, status in kinds:
                path = "/scheduled" if kind == "scheduled" else "/jobs"
                url = self._url(request, path, db=db, queue=q["name"], status=status)
                if kind == "scheduled":
                    url = self._url(request, path, db=db, queue=q["name"])
                cells.append(f'<td class="n"><a href="{_e(url)}">{q[kind]:,}</a></td>')
            cells.append(f'<td class="n">{_e(q["workers"])}</td>')
            rows.append("<tr>" + "".join(cells) + "</tr>")
        if rows:
            totals = "".join(
                f'<td class="n">{sum(q[kind] for q in overview["queues"]):,}</td>'
                for kind, _ in kinds
            )
            workers_total = sum(q["workers"] for q in overview["queues"])
            rows.append(
                f'<tr class="total"><td>Total</td>{totals}<td class="n">{workers_total}</td></tr>'
            )
        else:
            rows.append('<tr><td colspan="8" class="muted">No jobs or workers yet.</td></tr>')
        workers = []
        for w in overview["workers"]:
            stats = w["stats"]
            metadata = _pretty(w["metadata"]) if w["metadata"] else ""
            workers.append(
                f"<tr><td>{_e(w['id'])}</td><td>{_e(w['queue'])}</td>"
                f"<td>{_e(w['host'])}:{_e(w['pid'])}</td>"
                f"<td>{_e(_fmt_ago(w['beat'] * 1000, current))}</td>"
                f"<td class=n>{_e(_fmt_span(stats.get('uptime')))}</td>"
                + "".join(
                    f"<td class=n>{_e(stats.get(k, 0))}</td>"
                    for k in ("complete", "failed", "retried", "aborted")
                )
                + f"<td><code>{_e(metadata)}</code></td></tr>"
            )
        if not workers:
            workers.append('<tr><td colspan="10" class="muted">No live worker.</td></tr>')
        charts = "".join(
            f"<figure>{_chart_svg(activity[span], f'chart-{db}-{span}', seconds)}"
            f"<figcaption>{caption}</figcaption></figure>"
            for span, seconds, caption in (
                ("hour", 300, "Last hour, per 5 min"),
                ("day", 3600, "Last day, per hour"),
            )
        )
        return f"""<h2>Queues</h2>{self._file_html(db)}
<div class="scroll"><table id="queues" class="queues"><tr><th>Queue</th><th class="n">Queued</th>
<th class="n">Scheduled</th><th class="n">Active</th><th class="n">Complete</th>
<th class="n">Failed</th><th class="n">Aborted</th><th class="n">Workers</th></tr>
{"".join(rows)}</table></div>{self._flow_html(request, db, overview)}
<h2>Throughput</h2><p class="muted"><span class="key complete"></span> complete
<span class="key failed"></span> failed <span class="key aborted"></span> aborted</p>
<div class="charts">{charts}</div>
<h2>Functions <span class="muted">{_e(window)} &middot; {window_link}</span></h2>
{self._functions_html(functions, request, db)}
<h2>Workers</h2>
<div class="scroll"><table id="workers" class="workers"><tr><th>Worker</th><th>Queue</th>
<th>Host:pid</th><th>Last beat</th><th class="n">Uptime</th><th class="n">Complete</th>
<th class="n">Failed</th><th class="n">Retried</th><th class="n">Aborted</th><th>Metadata</th></tr>
{"".join(workers)}</table></div>"""

    def _functions_html(
        self, functions: list[_FunctionStats], request: _WebRequest, db: int
    ) -> str:
        """Per queue and function: runs, failure rate, wait and run time p50/p95."""
        rows = []
        for f in functions:
            url = self._url(request, "/jobs", db=db, queue=f["queue"], function=f["function"])
            times = "".join(
                f'<td class="n">{_e(_fmt_span(None if v is None else v * 1000))}</td>'
                for v in (f["wait_p50"], f["wait_p95"], f["run_p50"], f["run_p95"])
            )
            rows.append(
                f'<tr><td>{_e(f["queue"])}</td><td><a href="{_e(url)}">{_e(f["function"])}</a>'
                f'</td><td class="n">{f["runs"]:,}</td>'
                f'<td class="n">{f["failure_rate"] * 100:.1f}%</td>{times}</tr>'
            )
        if not rows:
            rows.append('<tr><td colspan="8" class="muted">No job ended in this window.</td></tr>')
        return f"""<div class="scroll"><table id="functions"><tr><th>Queue</th><th>Function</th>
<th class="n">Runs</th><th class="n">Failed</th><th class="n">Wait p50</th>
<th class="n">Wait p95</th><th class="n">Run p50</th><th class="n">Run p95</th></tr>
{"".join(rows)}</table></div>"""

    def _options(self, values: Iterable[str], chosen: t.Optional[str], everything: str) -> str:
        items = [f'<option value="">{_e(everything)}</option>'] if everything else []
        for value in values:
            selected = " selected" if value == chosen else ""
            items.append(f'<option value="{_e(value)}"{selected}>{_e(value)}</option>')
        return "".join(items)

    def _file_select(self, db: int) -> str:
        """A filter form's choice of file, when the page shows several."""
        if len(self.stores) == 1:
            return ""
        names = [f"{i + 1}: {store.path}" for i, store in enumerate(self.stores)]
        items = "".join(
            f'<option value="{i}"{" selected" if i == db else ""}>{_e(name)}</option>'
            for i, name in enumerate(names)
        )
        return f'<label>File<br><select name="db">{items}</select></label>'

    def _jobs_rows(
        self, request: _WebRequest, db: int, jobs: Sequence[Job], sleeping: set[tuple[str, str]]
    ) -> str:
        current = now()
        rows = []
        for job in jobs:
            url = self._url(request, "/job", db=db, queue=job.get_queue().name, key=job.key)
            rows.append(
                f'<tr><td>{_e(job.get_queue().name)}</td><td><a href="{_e(url)}">{_e(job.key)}</a>'
                f"</td><td>{_e(job.function)}</td>"
                f"<td>{_status_html(job.status)}"
                f"{_SLEEPING_HTML if (job.get_queue().name, job.key) in sleeping else ''}</td>"
                f'<td class="n">{_e(job.attempts)}</td>'
                f"<td>{_e(_fmt_ago(job.queued, current))}</td>"
                f'<td class="n">{_e(_fmt_span(job.duration("process")))}</td>'
                f'<td class="err">{_e(_cut(_error_line(job.error), 90))}</td></tr>'
            )
        if not rows:
            rows.append('<tr><td colspan="8" class="muted">No jobs match.</td></tr>')
        return f"""<div class="scroll"><table id="jobs" class="jobs"><tr><th>Queue</th><th>Key</th>
<th>Function</th><th>Status</th><th class="n">Tries</th><th>Queued</th><th class="n">Took</th>
<th>Error</th></tr>{"".join(rows)}</table></div>"""

    async def _jobs_page(self, request: _WebRequest, nonce: str) -> _WebResponse:
        store = self._store(request)
        db = self.stores.index(store)
        where, page, limit = self._filter(request)
        text = request.query.get("q", "").strip()
        status = request.query.get("status", "")
        params = {"db": db, "queue": where.queue, "status": status, "function": where.function}
        paging, searched = [], ""
        try:
            if text:
                jobs, cursor, read = await _search_jobs(
                    store, where, text, limit, request.query.get("after")
                )
            else:
                jobs, cursor = await _list_jobs(store, where, (page - 1) * limit, limit)
        except _OpsError as exc:
            raise _WebError(400, f"Bad filter: {exc}") from None
        total = await _count_upto(store, where)
        if total is None:
            counted, of_pages = f"Over {_LIST_SORT_MAX:,} jobs to read to count by function", ""
        else:
            counted = f"{total:,} job{'' if total == 1 else 's'}"
            of_pages = f" of {max(1, math.ceil(total / limit)):,}"
        if text:
            searched = (
                f"Searched the {read:,} newest jobs of this filter"
                f"{' after those before' if request.query.get('after') else ''} for "
                f"&ldquo;{_e(text)}&rdquo; (key, function, kwargs and error)."
            )
            if cursor is not None:
                url = self._url(request, "/jobs", **params, q=text, after=cursor)
                paging.append(f'<a href="{_e(url)}" rel="next">Search older jobs &rarr;</a>')
        else:
            if page > 1:
                url = self._url(request, "/jobs", **params, page=page - 1)
                paging.append(f'<a href="{_e(url)}" rel="prev">&larr; Newer</a>')
            paging.append(f'<span id="page">Page {page:,}{of_pages}</span>')
            if cursor is not None:
                url = self._url(request, "/jobs", **params, page=page + 1)
                paging.append(f'<a href="{_e(url)}" rel="next">Older &rarr;</a>')
        names = [name for (name,) in await store.fetch(_SQL_OPS_QUEUE_NAMES)]
        status_values = list(_STATUS_NAMES) + (
            [status] if status and status not in _STATUS_NAMES else []
        )
        done = request.query.get("done", "")
        notice = ""
        if done.startswith("bulk-") and done[5:] in _WEB_BULK:
            verb = _WEB_BULK[done[5:]][0]
            count = request.query.get("n", "0")
            jobs_word = "job" if count == "1" else "jobs"
            notice = f'<p class="notice" id="notice">{_e(verb)} {_e(count)} {jobs_word}.</p>'
        hidden = "".join(
            f'<input type="hidden" name="{name}" value="{_e(value)}">'
            for name, value in params.items()
            if value not in (None, "")
        )
        bulk = "".join(
            f'<form class="inline" method="post" action="{_e(self._url(request, "/bulk"))}">'
            f'{hidden}{self._csrf_field(request)}<input type="hidden" name="action" value="{a}">'
            f'<button type="submit" id="bulk-{a}">{a.capitalize()} {_e(what)}&hellip;</button>'
            "</form>"
            for a, (_, _, what) in _WEB_BULK.items()
        )
        body = f"""{notice}<h2>Jobs</h2>{self._file_html(db)}
<form class="filters" method="get" action="{_e(self._url(request, "/jobs"))}">
{self._file_select(db)}
<label>Queue<br><select name="queue">{self._options(names, where.queue, "all queues")}
</select></label>
<label>Status<br><select name="status">{self._options(status_values, status, "any status")}
</select></label>
<label>Function<br><input name="function" value="{_e(where.function or "")}" size="14"></label>
<label>Search<br><input type="search" name="q" id="search" value="{_e(text)}" size="18"
placeholder="key, function, kwargs, error"></label>
<button type="submit">Filter</button></form>
<p id="count"><strong>{counted}</strong> in this filter{f" &middot; {searched}" if searched else ""}
</p>
<div class="bulk">{bulk}</div>{
            '<p class="muted">Bulk actions work on the filter, not on the search.</p>'
            if text
            else ""
        }
{self._jobs_rows(request, db, jobs, await _sleeping(store, jobs))}
<div class="paging">{"".join(paging)}</div>"""
        return self._render(request, nonce, "Jobs", body)

    async def _scheduled_page(self, request: _WebRequest, nonce: str) -> _WebResponse:
        store = self._store(request)
        db = self.stores.index(store)
        where, page, limit = self._filter(request)
        names = [name for (name,) in await store.fetch(_SQL_OPS_QUEUE_NAMES)]
        queues = [where.queue] if where.queue else names
        rows = await store.fetch(
            _SQL_WEB_SCHEDULED,
            {
                "queues": json.dumps(queues),
                "now": time.time(),
                "limit": limit + 1,
                "offset": (page - 1) * limit,
                "cap": _LIST_VALUE_CAP,
            },
        )
        jobs = [_listed_job(store, row[:-1]) for row in rows[:limit]]
        sleeping = await _sleeping(store, jobs)
        current = now()
        cells = []
        for job, row in zip(jobs, rows):
            name = job.get_queue().name
            url = self._url(request, "/job", db=db, queue=name, key=job.key)
            cells.append(
                f'<tr><td>{_e(name)}</td><td><a href="{_e(url)}">{_e(job.key)}</a></td>'
                f"<td>{_e(job.function)}</td><td>{_e(_fmt_due(row[-1]))}"
                f"{_SLEEPING_HTML if (name, job.key) in sleeping else ''}</td>"
                f'<td class="n">{_e(job.attempts)}</td>'
                f"<td>{_e(_fmt_ago(job.queued, current))}</td></tr>"
            )
        if not cells:
            cells.append('<tr><td colspan="6" class="muted">No job is scheduled.</td></tr>')
        paging = []
        if page > 1:
            url = self._url(request, "/scheduled", db=db, queue=where.queue, page=page - 1)
            paging.append(f'<a href="{_e(url)}" rel="prev">&larr; Sooner</a>')
        paging.append(f"<span>Page {page:,}</span>")
        if len(rows) > limit:
            url = self._url(request, "/scheduled", db=db, queue=where.queue, page=page + 1)
            paging.append(f'<a href="{_e(url)}" rel="next">Later &rarr;</a>')
        body = f"""<h2>Scheduled</h2>{self._file_html(db)}
<form class="filters" method="get" action="{_e(self._url(request, "/scheduled"))}">
{self._file_select(db)}
<label>Queue<br><select name="queue">{self._options(names, where.queue, "all queues")}
</select></label><button type="submit">Filter</button></form>
<p class="muted">Waiting jobs that run later, soonest first.</p>
<div class="scroll"><table id="scheduled" class="jobs"><tr><th>Queue</th><th>Key</th>
<th>Function</th><th>Runs at</th><th class="n">Tries</th><th>Queued</th></tr>
{"".join(cells)}</table></div><div class="paging">{"".join(paging)}</div>"""
        return self._render(request, nonce, "Scheduled", body)

    def _bulk_filter(self, params: dict[str, str]) -> tuple[str, _JobFilter]:
        """A bulk action's name and the jobs it works on: the listing's filter, cut to
        the statuses the action takes.

        Raises:
            _WebError: an unknown action, or a status the action does not take.
        """
        action = params.get("action", "")
        if action not in _WEB_BULK:
            raise _WebError(400, f"Unknown bulk action {action!r}: give retry, abort or delete.")
        _, allowed, what = _WEB_BULK[action]
        status = params.get("status", "")
        chosen = [part for part in status.split(",") if part]
        if any(part not in allowed for part in chosen):
            raise _WebError(
                400,
                f"Only {what} jobs can be {_WEB_BULK[action][0].lower()}: choose status "
                f"{' or '.join(allowed)} (or any status) in the filter.",
            )
        statuses = tuple(chosen) or tuple(allowed)
        where = _JobFilter(params.get("queue") or None, statuses, params.get("function") or None)
        return action, where

    async def _bulk_page(self, request: _WebRequest, nonce: str) -> _WebResponse:
        """A bulk action: first a confirmation that says how many jobs it touches,
        then (confirmed) the action, and back to the listing with what was done."""
        params = request.form()
        store = self._store(request, params)
        db = self.stores.index(store)
        action, where = self._bulk_filter(params)
        verb, _, what = _WEB_BULK[action]
        filters = {
            "db": db,
            "queue": where.queue,
            "status": params.get("status", ""),
            "function": where.function,
        }
        if params.get("confirm") == "yes":
            done = await _bulk_action(store, where, action)
            url = self._url(request, "/jobs", **filters, done=f"bulk-{action}", n=done)
            return _WebResponse(303, b"", "text/plain", [("location", url)])
        count = await _count_jobs(store, where)
        scope = f"of queue {where.queue}" if where.queue else "of every queue"
        if where.function:
            scope += f" with function {where.function}"
        statuses = " or ".join(", ".join(where.statuses).rsplit(", ", 1))
        question = (
            f"{action.capitalize()} {count:,} {statuses} job{'s' if count != 1 else ''} {scope}?"
        )
        hidden = "".join(
            f'<input type="hidden" name="{name}" value="{_e(value)}">'
            for name, value in {**filters, "action": action, "confirm": "yes"}.items()
            if value not in (None, "")
        )
        back = self._url(request, "/jobs", **filters)
        if count:
            form = (
                f'<form method="post" action="{_e(self._url(request, "/bulk"))}">{hidden}'
                f'{self._csrf_field(request)}<button type="submit" id="confirm">'
                f"{action.capitalize()} {count:,} job{'s' if count != 1 else ''}</button> "
                f'<a href="{_e(back)}">Cancel</a></form>'
            )
        else:
            form = f'<p>No {_e(what)} job matches. <a href="{_e(back)}">Back</a></p>'
        body = f"""<h2>{_e(action.capitalize())} jobs</h2>{self._file_html(db)}
<p id="question"><strong>{_e(question)}</strong></p>
<p class="muted">{_e(verb)} a slice at a time, so that workers go on meanwhile; jobs that
change meanwhile are left as they are.</p>{form}"""
        response = self._render(request, nonce, "Confirm", body, live=False)
        return response

    async def _job_page(self, request: _WebRequest, nonce: str) -> _WebResponse:
        job = await self._job(request, request.query)
        db = self.stores.index(self._store(request))
        notice = _WEB_NOTICES.get(request.query.get("done", ""))
        actions = []
        for action, label, statuses in (
            ("retry", "Retry", _RETRYABLE),
            ("abort", "Abort", _ABORTABLE),
        ):
            if isinstance(job, _UnreadableJob) and job.status.value in statuses:
                notice = job.refusal(action) + "."
            elif job.status.value in statuses:
                actions.append(
                    f'<form class="inline" method="post" '
                    f'action="{_e(self._url(request, "/" + action))}">'
                    f'<input type="hidden" name="db" value="{db}">'
                    f'<input type="hidden" name="queue" value="{_e(job.get_queue().name)}">'
                    f'<input type="hidden" name="key" value="{_e(job.key)}">'
                    f"{self._csrf_field(request)}"
                    f'<button type="submit" id="{action}">{label}</button></form> '
                )
        tables = "".join(
            f'<table class="facts" id="{name}">'
            + "".join(
                f"<tr><th>{_e(label[:1].upper() + label[1:])}</th><td>{_e(text)}</td></tr>"
                for label, text in facts
            )
            + "</table>"
            for name, facts in zip(("job", "times"), _job_facts(job))
        )
        sections = []
        for name, value in (("Kwargs", job.kwargs), ("Result", job.result), ("Meta", job.meta)):
            if value not in (None, {}):
                text = _capped(_pretty(value))
                sections.append(f'<h2>{name}</h2><pre class="{name.lower()}">{_e(text)}</pre>')
        if job.error:
            sections.append(f'<h2>Error</h2><pre class="error">{_e(_capped(job.error))}</pre>')
        pipeline = await _pipeline(job)
        if len(pipeline) > 1:
            svg = self._pipeline_svg(request, db, job, pipeline)
            sections.append(f'<h2>Pipeline</h2><div class="scroll">{svg}</div>')
            sections.append(self._links_html(request, db, job, await _job_links(job)))
        timeline = await _timeline(self._store(request), job)
        if timeline:
            sections.insert(0, _timeline_html(timeline))
        sleeping = job.status == Status.QUEUED and any(
            step["outcome"] == "sleeping" for step in timeline
        )
        progress = max(0.0, min(float(job.progress or 0), 1.0))
        body = f"""{f'<p class="notice">{_e(notice)}</p>' if notice else ""}
<h2>Job {_e(job.key)} {_status_html(job.status, "status")}{_SLEEPING_HTML if sleeping else ""}</h2>
{self._file_html(db)}<p>{"".join(actions)}</p>
<p>Progress <progress id="progress" max="1" value="{progress:.4f}"></progress>
<span id="percent">{progress * 100:.0f}%</span></p>
<div class="facts">{tables}</div>{"".join(sections)}"""
        return self._render(request, nonce, f"Job {job.key}", body)

    def _links_html(
        self,
        request: _WebRequest,
        db: int,
        job: Job,
        links: dict[str, list[dict[str, t.Optional[str]]]],
    ) -> str:
        """The jobs ``job`` depends on and those that depend on it, as links."""
        lists = []
        queue = job.get_queue().name
        for name, linked in links.items():
            items = "".join(
                f'<li><a href="{_e(self._url(request, "/job", db=db, queue=queue, key=key))}">'
                f'{_e(key)}</a> <span class="status {_e(status)}">{_e(status)}</span></li>'
                for key, status in ((link["key"], link["status"] or "deleted") for link in linked)
            )
            lists.append(
                f'<div><h3>{_e(name.capitalize())}</h3><ul id="{name}">'
                f"{items or '<li class=muted>none</li>'}</ul></div>"
            )
        return f'<div class="facts">{"".join(lists)}</div>'

    def _pipeline_svg(
        self, request: _WebRequest, db: int, job: Job, pipeline: dict[str, _PipelineNode]
    ) -> str:
        """The jobs linked to ``job`` as a graph: a column per depth, each job a box
        (coloured by status, a link to its page), a line from each dependency to its
        dependents."""
        depth: dict[str, int] = {}

        def depth_of(key: str, seen: frozenset[str] = frozenset()) -> int:
            if key not in depth:
                before = [d for d in pipeline[key].depends_on if d in pipeline and d not in seen]
                depth[key] = 1 + max((depth_of(d, seen | {key}) for d in before), default=-1)
            return depth[key]

        columns: dict[int, list[str]] = {}
        for key in sorted(pipeline):
            columns.setdefault(depth_of(key), []).append(key)
        width, height, gap_x, gap_y = 150, 24, 60, 12
        where = {
            key: (x * (width + gap_x) + 10, y * (height + gap_y) + 10)
            for x, keys in columns.items()
            for y, key in enumerate(keys)
        }
        lines = [
            f'<line x1="{where[d][0] + width}" y1="{where[d][1] + height // 2}" '
            f'x2="{x}" y2="{y + height // 2}"/>'
            for key, (x, y) in where.items()
            for d in pipeline[key].depends_on
            if d in where
        ]
        boxes = []
        for key, (x, y) in where.items():
            status = pipeline[key].status
            classes = f"{status or 'deleted'}{' this' if key == job.key else ''}"
            url = self._url(request, "/job", db=db, queue=job.get_queue().name, key=key)
            label = key if len(key) <= 20 else key[:19] + "…"
            boxes.append(
                f'<a href="{_e(url)}"><title>{_e(key)}: {_e(status or "deleted")}</title>'
                f'<rect class="{_e(classes)}" x="{x}" y="{y}" width="{width}" '
                f'height="{height}" rx="4"/><text x="{x + 6}" y="{y + 16}">{_e(label)}</text></a>'
            )
        total_w = max(x for x, _ in where.values()) + width + 10
        total_h = max(y for _, y in where.values()) + height + 10
        more = (
            f'<p class="muted">The first {_PIPELINE_SHOWN} jobs of the pipeline.</p>'
            if len(pipeline) >= _PIPELINE_SHOWN
            else ""
        )
        return (
            f'<svg class="pipeline" id="pipeline" width="{total_w}" height="{total_h}" '
            f'viewBox="0 0 {total_w} {total_h}">{"".join(lines)}{"".join(boxes)}</svg>{more}'
        )

    async def _change(self, request: _WebRequest, nonce: str) -> _WebResponse:
        params = request.form()
        job = await self._job(request, params)
        try:
            if request.path == "/retry":
                retried = await _retry_job(job, "retried from the web page")
                done = "retried" if retried else "not-retried"
            else:
                aborted = await _abort_job(job, "aborted from the web page")
                done = "aborted" if aborted else "not-aborted"
        except _OpsError as exc:
            raise _WebError(409, str(exc)) from None
        url = self._url(
            request,
            "/job",
            db=params.get("db", "0"),
            queue=job.get_queue().name,
            key=job.key,
            done=done,
        )
        return _WebResponse(303, b"", "text/plain", [("location", url)])

    # -- live updates and health ---------------------------------------------------

    async def _events(self, request: _WebRequest, nonce: str) -> _WebResponse:
        """Server-sent events: ``change`` whenever jobs of the files change."""
        # What there is before the headers go: the browser, told the stream is open,
        # fetches the page once, and misses nothing from then on.
        marks, counts = await self._marks(), await self._counts()
        unbuffered = [("x-accel-buffering", "no")]  # a proxy (nginx) passes each event on
        stream = self._news(marks, counts)
        return _WebResponse(200, b"", "text/event-stream", unbuffered, stream)

    async def _news(
        self, marks: list[tuple[_Wakeup, str, int]], counts: list[list[t.Any]]
    ) -> t.AsyncGenerator[bytes, None]:
        """An event each time the wake-ups tell of new or changed jobs since ``marks``
        (at most one per _WEB_EVENT_GAP_S), and when the counts change without one (a
        lost datagram, a new queue): those are looked at every ``refresh_s``."""
        yield b"retry: 2000\n\n"
        quiet_since = time.monotonic()
        while True:
            waits = [wakeup.wait(kind, seen, self.refresh_s) for wakeup, kind, seen in marks]
            news = any(await _first_of(waits, self.refresh_s))
            marks = await self._marks()  # news from now on, of queues new since too
            fresh = await self._counts()
            if news or fresh != counts:
                counts = fresh
                quiet_since = time.monotonic()
                yield b"event: change\ndata: {}\n\n"
                await asyncio.sleep(_WEB_EVENT_GAP_S)
            elif time.monotonic() - quiet_since > _WEB_KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield b": still here\n\n"

    async def _marks(self) -> list[tuple[_Wakeup, str, int]]:
        """The wake-ups of every queue of the files, for new and changed jobs, each with
        its news so far."""
        marks = []
        for store in self.stores:
            for (name,) in await store.fetch(_SQL_OPS_QUEUE_NAMES):
                wakeup = store.queue(name)._wakeup
                for kind in ("jobs", "changes"):
                    await wakeup.want(kind)
                    marks.append((wakeup, kind, wakeup.generation(kind)))
        return marks

    async def _counts(self) -> list[list[t.Any]]:
        return [await store.fetch(_SQL_OPS_COUNTS) for store in self.stores]

    async def _health(self, request: _WebRequest, nonce: str) -> _WebResponse:
        """``OK`` when every file can be read (SAQ's ``/health``); else 503."""
        for store in self.stores:
            await store.fetch(_SQL_OPS_QUEUE_NAMES)
        return _WebResponse(200, b"OK", "text/plain")

    # -- flow control: pauses and limits ----------------------------------------

    def _flow_html(self, request: _WebRequest, db: int, overview: dict[str, t.Any]) -> str:
        """The pauses and limits of a file's queues, with their use; forms to pause,
        resume and limit (POST /pause, /resume, /limit)."""

        def form(action: str, fields: str, label: str) -> str:
            return (
                f'<form class="inline" method="post" action="{_e(self._url(request, action))}">'
                f'<input type="hidden" name="db" value="{db}">{self._csrf_field(request)}'
                f'{fields}<button type="submit">{_e(label)}</button></form> '
            )

        def hidden(name: str, value: t.Optional[str]) -> str:
            return (
                "" if value is None else f'<input type="hidden" name="{name}" value="{_e(value)}">'
            )

        rows = []
        for q in overview["queues"]:
            for rule in q.get("flow", ()):
                target = hidden("queue", q["name"]) + hidden("function", rule["function"])
                resume = form("/resume", target, "Resume") if rule["paused"] else ""
                rows.append(
                    f"<tr><td>{_e(q['name'])}</td><td>{_e(rule['function'] or '(whole queue)')}"
                    f"</td><td>{_e(', '.join(_flow_use(rule)))}</td><td>{resume}</td></tr>"
                )
        if not rows:
            rows.append('<tr><td colspan="4" class="muted">No pause or limit.</td></tr>')
        names = [q["name"] for q in overview["queues"]] or ["default"]
        choose = (
            '<select name="queue">'
            + "".join(f'<option value="{_e(name)}">{_e(name)}</option>' for name in names)
            + "</select>"
        )
        function = '<input name="function" placeholder="function (all)" size="12">'
        pause = form(
            "/pause",
            choose
            + function
            + '<input name="for" placeholder="for: 10m (until resumed)" size="14">',
            "Pause",
        )
        limit = form(
            "/limit",
            choose
            + function
            + '<input name="rate" placeholder="rate: 60/m" size="9">'
            + '<input name="concurrency" placeholder="concurrency" size="9">'
            + '<input name="per_group" placeholder="per group" size="8">'
            + '<label><input type="checkbox" name="clear" value="1"> clear first</label>',
            "Set limits",
        )
        return f"""<h2>Pauses and limits</h2>
<div class="scroll"><table id="flow"><tr><th>Queue</th><th>Function</th><th>In force (use)</th>
<th></th></tr>{"".join(rows)}</table></div><p>{pause}</p><p>{limit}</p>"""

    async def _flow_change(self, request: _WebRequest, nonce: str) -> _WebResponse:
        """POST /pause, /resume, /limit: as ``saqlite pause``, ``resume``, ``limit``."""
        params = request.form()
        queue = self._store(request, params).queue(params.get("queue") or "default")
        function = params.get("function") or None

        def count(name: str) -> t.Optional[int]:
            text = params.get(name, "").strip()
            if not text:
                return None
            if not text.isdigit():
                raise _WebError(400, f"{name} must be a whole number from 1, got {text!r}")
            return int(text)

        try:
            if request.path == "/pause":
                for_s = _parse_age(params["for"]) if params.get("for") else None
                await queue.pause(function, for_s=for_s)
            elif request.path == "/resume":
                await queue.resume(function)
            else:
                await queue.limit(
                    function,
                    rate=params.get("rate") or None,
                    concurrency=count("concurrency"),
                    per_group=count("per_group"),
                    clear=bool(params.get("clear")),
                )
        except (ValueError, _OpsError) as exc:
            raise _WebError(400, str(exc)) from None
        return _WebResponse(303, b"", "text/plain", [("location", self._url(request, "/"))])

    # -- JSON ---------------------------------------------------------------------

    async def _api_queues(self, request: _WebRequest, nonce: str) -> _WebResponse:
        queues, workers = [], []
        for db, store in enumerate(self.stores):
            overview = await _overview(store)
            queues += [{"db": db, "path": store.path, **q} for q in overview["queues"]]
            workers += [{"db": db, **w} for w in overview["workers"]]
        return _json_response({"queues": queues, "workers": workers})

    async def _api_queue(self, request: _WebRequest, nonce: str) -> _WebResponse:
        """SAQ's ``/api/queues/{queue}``: the queue's ``info(jobs=True)``."""
        store = self._store(request)
        name = request.query["queue"]
        if name not in [found for (found,) in await store.fetch(_SQL_OPS_QUEUE_NAMES)]:
            raise _WebError(404, f"No queue {name!r} in {store.path}.")
        info = await store.queue(name).info(jobs=True)
        return _json_response({"queue": {"db": self.stores.index(store), **info}})

    async def _metrics(self, request: _WebRequest, nonce: str) -> _WebResponse:
        text = await _metrics(self.stores)
        return _WebResponse(200, text.encode("utf-8"), _METRICS_CONTENT_TYPE)

    async def _api_jobs(self, request: _WebRequest, nonce: str) -> _WebResponse:
        where, page, limit = self._filter(request)
        store = self._store(request)
        text = request.query.get("q", "").strip()
        read = None
        try:
            if text:
                jobs, cursor, read = await _search_jobs(
                    store, where, text, limit, request.query.get("after")
                )
            else:
                jobs, cursor = await _list_jobs(
                    store, where, (page - 1) * limit, limit, request.query.get("after")
                )
        except _OpsError as exc:
            raise _WebError(400, f"Bad filter: {exc}") from None
        sleeping = await _sleeping(store, jobs)
        listed = [
            {**_job_json(job), "sleeping": (job.get_queue().name, job.key) in sleeping}
            for job in jobs
        ]
        return _json_response(
            {
                "jobs": listed,
                "page": page,
                "limit": limit,
                "more": cursor is not None,
                "next": cursor,
                "total": await _count_upto(store, where),
                **({"searched": read} if read is not None else {}),
            }
        )

    async def _api_job(self, request: _WebRequest, nonce: str) -> _WebResponse:
        job = await self._job(request, request.query)
        timeline = await _timeline(self._store(request), job)
        found = {**_job_json(job), "steps": timeline, **await _job_links(job)}
        if request.path == "/api/job":
            return _json_response(found)
        return _json_response({"job": found})  # SAQ's shape

    async def _api_change(self, request: _WebRequest, nonce: str) -> _WebResponse:
        """SAQ's POST ``.../retry`` and ``.../abort`` of one job: 200 with the job when
        done, 409 when its status does not allow it."""
        job = await self._job(request, request.query)
        action = request.segments[-1]
        try:
            if action == "retry":
                done = await _retry_job(job, "retried from the web page")
            else:
                done = await _abort_job(job, "aborted from the web page")
        except _OpsError as exc:
            raise _WebError(409, str(exc)) from None
        if not done:
            raise _WebError(
                409, _WEB_NOTICES["not-retried" if action == "retry" else "not-aborted"]
            )
        return _json_response({"job": _job_json(job)})

    async def _api_bulk(self, request: _WebRequest, nonce: str) -> _WebResponse:
        """POST ``/api/bulk?action=retry|abort|delete&queue=&status=&function=``: the
        bulk action at once (no confirmation), with how many jobs matched and changed."""
        params = {**request.query, **request.form()}
        store = self._store(request, params)
        action, where = self._bulk_filter(params)
        matched = await _count_jobs(store, where)
        done = await _bulk_action(store, where, action)
        return _json_response({"action": action, "matched": matched, "done": done})

    async def _api_csrf(self, request: _WebRequest, nonce: str) -> _WebResponse:
        """The token a JSON API POST sends in the ``X-Saqlite-Csrf`` header."""
        return _json_response({"token": self.csrf_token(request), "header": "X-Saqlite-Csrf"})


class _WebError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _status_html(status: Status, id: str = "") -> str:
    """A status as a coloured badge."""
    id_attribute = f' id="{_e(id)}"' if id else ""
    return f'<span class="status {_e(status.value)}"{id_attribute}>{_e(status.value)}</span>'


#: The marker of a queued job that sleeps (see saqlite.sleep), beside its status.
_SLEEPING_HTML = ' <span class="status sleeping">sleeping</span>'


def _timeline_html(timeline: list[dict[str, t.Any]]) -> str:
    """A job's steps and sleeps (see _timeline) as the job's page shows them."""
    rows = []
    for step in timeline:
        outcome = step["outcome"]
        if outcome == "sleeping":
            outcome += f" until {_fmt_time(step['until'])}"
        rows.append(
            f"<tr><td>{_e(step['name'])}</td><td>{_e(_fmt_time(step['started']))}</td>"
            f'<td class="n">{_e(_fmt_span(step["duration_ms"]))}</td>'
            f'<td class="outcome {_e(step["outcome"])}">{_e(outcome)}</td>'
            f'<td class="err">{_e(_cut(_error_line(step["error"]), 90))}</td></tr>'
        )
    return (
        '<h2>Steps</h2><table id="steps"><tr><th>Step</th><th>Started</th>'
        f'<th class="n">Took</th><th>Outcome</th><th>Error</th></tr>{"".join(rows)}</table>'
    )


def _capped(text: str) -> str:
    """A value as the job's page shows it: whole up to ``_WEB_VALUE_CAP`` characters."""
    if len(text) <= _WEB_VALUE_CAP:
        return text
    return (
        text[:_WEB_VALUE_CAP] + f"\n... cut: {len(text)} characters in all; "
        "saqlite job FILE KEY --json (or /api/job) gives it whole"
    )


def _json_response(value: object, status: int = 200) -> _WebResponse:
    body = json.dumps(value, default=str).encode("utf-8")
    return _WebResponse(status, body, "application/json")


def _csp(nonce: str) -> str:
    """Only this page's own style and script run, whatever a job's values hold."""
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; form-action 'self'; img-src 'self' data:; "
        "base-uri 'none'; frame-ancestors 'none'"
    )


def _is_ip_address(name: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, name)
            return True
        except (OSError, ValueError):
            pass
    return False


def _same_origin(request: _WebRequest) -> bool:
    """Whether a POST comes from this page (a cross-site form is refused)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    hosts = (request.headers.get("host"), request.headers.get("x-forwarded-host"))
    return urllib.parse.urlsplit(origin).netloc in hosts


#: The header a JSON API POST carries its CSRF token in (from GET /api/csrf).
_CSRF_HEADER = "x-saqlite-csrf"


def _csrf_refusal(request: _WebRequest) -> str:
    if request.path.startswith("/api/"):
        return (
            "This POST has no valid CSRF token: send the token of GET /api/csrf (the same "
            "user) in the X-Saqlite-Csrf header"
        )
    return (
        "This form has no valid CSRF token (the page was served before the server "
        "restarted?): reload the page and submit it again"
    )


async def _stream(
    chunks: t.AsyncGenerator[bytes, None], receive: _ASGIReceive, send: _ASGISend
) -> None:
    """Send a response's chunks as they come, until they end or the client goes."""

    async def pump() -> None:
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def client_gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(client_gone())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await chunks.aclose()
    for task in done:
        if task is tasks[1]:
            return  # the client went: nothing more to send
        task.result()  # the stream's error, to the server that logs it
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def web_app(
    sources: t.Union[str, Queue, Sequence[t.Union[str, Queue]]],
    *,
    auth_user: t.Optional[str] = None,
    auth_password: t.Optional[str] = None,
    refresh_s: float = 3.0,
    allowed_hosts: t.Optional[Sequence[str]] = None,
    csrf_secret: t.Optional[str] = None,
) -> _WebApp:
    """The monitoring page as an ASGI application, to serve or to mount in Starlette
    or FastAPI (``app.mount("/saqlite", web_app("jobs.db"))``).

    Args:
        sources: saqlite files (paths or ``sqlite:///`` URLs) or Queues; every queue
            in their files is shown (a Queue's ``dump``/``load`` are used for its name).
        auth_user: the basic-auth user (default: env ``AUTH_USER``, else ``admin``).
        auth_password: with one (default: env ``AUTH_PASSWORD``) every request needs it.
        refresh_s: seconds between looks for changes the wake-ups missed (an open page
            is told of changes at once through ``/events``; without EventSource it
            polls this often).
        allowed_hosts: host names the page answers to besides IP addresses,
            ``localhost`` and this machine's name (a defence against DNS rebinding);
            ``".example.com"`` allows its subdomains, ``"*"`` any name. None (the
            default) allows any name when ``auth_password`` is set or the app is
            mounted below a path (the app that mounts it checks hosts).
        csrf_secret: the key of the CSRF tokens every POST carries (default: env
            ``SAQLITE_CSRF_SECRET``, else random per app): give processes that serve
            one page behind a load balancer the same one.

    The app closes its connections on ASGI lifespan shutdown; where it gets none (a
    mounted app), ``await app.close()`` on shutdown.
    """
    items = [sources] if isinstance(sources, (str, Queue)) else list(sources)
    by_path: dict[str, list[Queue]] = {}
    for item in items:
        queue = item if isinstance(item, Queue) else None
        path = (
            item.path
            if isinstance(item, Queue)
            else (Queue.from_url(item).path if item.startswith("sqlite:") else item)
        )
        queues = by_path.setdefault(os.path.abspath(path), [])
        if queue is not None:
            queues.append(queue)
    stores = [_Store(path, queues) for path, queues in by_path.items()]
    return _WebApp(
        stores,
        auth_user if auth_user is not None else os.environ.get("AUTH_USER", "admin"),
        auth_password if auth_password is not None else os.environ.get("AUTH_PASSWORD"),
        refresh_s,
        allowed_hosts,
        csrf_secret=csrf_secret or os.environ.get("SAQLITE_CSRF_SECRET"),
    )


# -- serving the ASGI app with the standard library's ThreadingHTTPServer ------

#: Seconds a stopping page gives its requests and connections to close.
_PAGE_STOP_S = 10.0
#: Seconds between looks at whether a streaming response's client has gone.
_HTTP_GONE_CHECK_S = 1.0
_HTTP_DONE = object()  # the end of an app's messages, for the handler's thread
_PAGE_REQUEST_THREAD = "saqlite-page-request"


class _HTTPServer(http.server.ThreadingHTTPServer):
    """The standard library's threaded HTTP server, for one _PageServer."""

    daemon_threads = True
    block_on_close = False  # a long stream (/events) must not hold up a stop
    allow_reuse_address = sys.platform != "win32"  # on Windows it would share a busy port
    allow_reuse_port = False

    def __init__(self, page: _PageServer, host: str, port: int) -> None:
        self.page = page
        self.address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        super().__init__((host, port), _PageHandler)

    def server_bind(self) -> None:  # HTTPServer's looks the host name up (slow, and unused)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class _PageHandler(http.server.BaseHTTPRequestHandler):
    """One request, on its own thread: handed to the ASGI app on the page's event loop,
    its response written back as the app sends it (streams too)."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    timeout = _HTTP_READ_TIMEOUT_S

    def setup(self) -> None:
        # Named for thread dumps and tracebacks (Python 3.9 names them Thread-N).
        threading.current_thread().name = _PAGE_REQUEST_THREAD
        super().setup()

    def _serve(self) -> None:
        self.close_connection = True
        length = self.headers.get("content-length", "0")
        if not length.isdigit():
            self.send_error(400, "Bad Content-Length")
            return
        if int(length) > _WEB_MAX_BODY:
            self.send_error(413, f"Request body over {_WEB_MAX_BODY} bytes")
            return
        body = self.rfile.read(int(length))
        target = urllib.parse.urlsplit(self.path)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": self.command.upper(),
            "scheme": "http",
            "path": urllib.parse.unquote(target.path),
            "raw_path": target.path.encode("latin-1"),
            "query_string": target.query.encode("latin-1"),
            "root_path": "",
            "headers": [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in self.headers.items()
            ],
            "client": self.client_address[:2],
            "server": self.server.server_address[:2],
        }
        page = self.server.page
        messages: queue_module.SimpleQueue[t.Any] = queue_module.SimpleQueue()
        gone: list[asyncio.Event] = []

        async def call() -> None:
            gone.append(asyncio.Event())
            received = False

            async def receive() -> _ASGIMessage:
                nonlocal received
                if received:  # the request is whole: wait for the client to go
                    await gone[0].wait()
                    return {"type": "http.disconnect"}
                received = True
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: _ASGIMessage) -> None:
                messages.put(message)

            await page.app(scope, receive, send)

        future = asyncio.run_coroutine_threadsafe(call(), page.loop)
        future.add_done_callback(lambda _: messages.put(_HTTP_DONE))
        started = False
        try:
            while True:
                try:
                    message = messages.get(timeout=_HTTP_GONE_CHECK_S)
                except queue_module.Empty:
                    if started and self._client_gone():
                        raise ConnectionResetError("the client went away") from None
                    continue
                if message is _HTTP_DONE:
                    break
                if message["type"] == "http.response.start":
                    started = True
                    self.send_response(int(message["status"]))
                    for name, value in message.get("headers", []):
                        self.send_header(name.decode("latin-1"), value.decode("latin-1"))
                    self.send_header("connection", "close")
                    self.end_headers()
                elif message["type"] == "http.response.body":
                    self.wfile.write(message.get("body", b""))
                    self.wfile.flush()
            future.result()
        except concurrent.futures.CancelledError:
            pass  # the page is stopping
        except (ConnectionError, OSError):  # the client went away: end its request
            future.cancel()
            with contextlib.suppress(RuntimeError):  # the loop has ended
                for event in gone:
                    page.loop.call_soon_threadsafe(event.set)
        except Exception:  # an answer, not a dropped connection; the traceback to the log
            logger.exception("The page failed on %s %s", self.command, target.path)
            if not started:
                self.send_error(500, "The page failed: its log tells why.")

    def _client_gone(self) -> bool:
        """Whether the client has closed its end (a read would give nothing)."""
        try:
            ready, _, _ = select.select([self.connection], [], [], 0)
            return bool(ready) and not self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve

    def log_message(self, format: str, *args: t.Any) -> None:
        logger.debug("page: %s %s", self.address_string(), format % args)


class _PageServer:
    """The page on ``host:port``: each request on a thread of the standard library's
    ThreadingHTTPServer, run by the ASGI app on an event loop of the page's own (a
    thread with its own connections), so a heavy request never stalls a worker's loop.

    Raises:
        _OpsError: the address cannot be bound (in use, not of this machine).
    """

    def __init__(self, app: _WebApp, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.app = app
        try:
            self._httpd = _HTTPServer(self, host, port)
        except OSError as exc:
            raise _OpsError(
                f"Cannot serve the page on {host}:{port} ({exc.strerror or exc}): choose "
                "another --port, or --host an address of this machine"
            ) from None
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self.loop.run_forever, name="saqlite-page-loop", daemon=True
        )
        self._loop_thread.start()
        self._serving: t.Optional[threading.Thread] = None
        self.port = int(self._httpd.server_address[1])
        if not app.auth_password and host not in ("127.0.0.1", "localhost", "::1"):
            print(
                f"saqlite: warning: the page on {host} lets anyone retry and abort jobs; "
                "set AUTH_PASSWORD",
                file=sys.stderr,
            )
        shown = f"[{host}]" if ":" in host else host
        print(f"saqlite: serving the page at http://{shown}:{self.port}/", flush=True)

    def serve_forever(self) -> None:
        """Serve on this thread until ``stop()`` (or KeyboardInterrupt)."""
        self._httpd.serve_forever(poll_interval=0.25)

    def start(self) -> None:
        """Serve on a thread of its own."""
        self._serving = threading.Thread(
            target=self.serve_forever, name="saqlite-page", daemon=True
        )
        self._serving.start()

    def stop(self) -> None:
        """Stop serving, end the requests in progress and close the page's connections."""
        if self._serving is not None:
            self._httpd.shutdown()
            self._serving.join(_PAGE_STOP_S)
        self._httpd.server_close()

        async def close() -> None:
            current = asyncio.current_task()
            for task in asyncio.all_tasks():
                if task is not current:
                    task.cancel()
            await self.app.close()

        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(_PAGE_STOP_S)
        except concurrent.futures.TimeoutError:
            logger.warning("The page's connections did not close within %s s", _PAGE_STOP_S)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._loop_thread.join(_PAGE_STOP_S)
            if not self._loop_thread.is_alive():
                self.loop.close()


def _serve_web_with_worker(
    settings_name: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    extra_settings: Sequence[str] = (),
    verbose: int = 0,
    allowed_hosts: t.Optional[Sequence[str]] = None,
) -> int:
    """``saqlite module.settings --web``: a worker, and the page for its queue (and
    the queues of ``extra_settings``) on a thread of its own, in one process until
    SIGINT or SIGTERM."""
    _configure_logging(verbose)
    queue, settings = _load_settings(settings_name)
    extra = [_load_settings(name)[0] for name in extra_settings]
    worker = Worker(queue, **settings)
    page = _PageServer(web_app([queue, *extra], allowed_hosts=allowed_hosts), host, port)
    page.start()
    try:
        asyncio.run(worker.start())
    finally:
        page.stop()
    return 0


__all__ += ["web_app"]
_EXTRAS.append(_CommandLineExtras(_ops_main, _OPS_EPILOG, _add_web_arguments, _serve_if_asked))
