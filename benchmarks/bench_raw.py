"""The limit: the job lifecycle as bare SQL, with no job objects, on stdlib sqlite3 and aiosqlite.

Per batch of B jobs (B=1 unbatched, B=100 batched), each statement its own autocommit
transaction: INSERT B rows, claim B with UPDATE .. RETURNING, mark them complete. Finished rows
are kept, as a queue with a ttl keeps them. WAL mode; synchronous NORMAL or FULL.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import uuid
from typing import Any

import aiosqlite

SCHEMA = [
    "PRAGMA journal_mode=WAL",
    """CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        queue TEXT NOT NULL,
        status INTEGER NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        scheduled INTEGER NOT NULL DEFAULT 0,
        data TEXT NOT NULL,
        result TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (queue, priority, scheduled) WHERE status = 1",
]
QUEUED, ACTIVE, COMPLETE = 1, 2, 3
CLAIM = (
    "UPDATE jobs SET status = 2 WHERE id IN (SELECT id FROM jobs WHERE queue = ? AND status = 1"
    " ORDER BY priority, scheduled LIMIT ?) RETURNING id, data"
)
PAYLOAD = json.dumps({"function": "noop", "kwargs": {}, "timeout": 10, "retries": 1, "ttl": 600})


def insert_sql(count: int) -> str:
    return "INSERT INTO jobs (key, queue, status, data) VALUES " + ", ".join(
        ["(?, 'q', 1, ?)"] * count
    )


def finish_sql(count: int) -> str:
    return "UPDATE jobs SET status = 3 WHERE id IN (" + ", ".join(["?"] * count) + ")"


def insert_params(count: int) -> list[str]:
    params: list[str] = []
    for _ in range(count):
        params += [str(uuid.uuid4()), PAYLOAD]
    return params


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for stmt in SCHEMA:
        conn.execute(stmt)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def _batches(n: int, batch: int) -> list[int]:
    return [min(batch, n - i) for i in range(0, n, batch)]


def run_sqlite3(path: str, n: int, batch: int, synchronous: str) -> float:
    """Jobs/s of the lifecycle loop on one stdlib connection."""
    conn = _connect(path, synchronous)
    try:
        start = time.perf_counter()
        for count in _batches(n, batch):
            conn.execute(insert_sql(count), insert_params(count))
            rows = conn.execute(CLAIM, ("q", count)).fetchall()
            conn.execute(finish_sql(len(rows)), [r[0] for r in rows])
        took = time.perf_counter() - start
        _check(conn, n)
        return n / took
    finally:
        conn.close()


def _check(conn: sqlite3.Connection, n: int) -> None:
    done = conn.execute("SELECT count(*) FROM jobs WHERE status = 3").fetchone()[0]
    if done != n:
        raise AssertionError(f"raw loop completed {done} of {n}")


async def _aio(path: str, n: int, batch: int, synchronous: str) -> float:
    _connect(path, synchronous).close()  # schema
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute(f"PRAGMA synchronous={synchronous}")
        start = time.perf_counter()
        for count in _batches(n, batch):
            await db.execute(insert_sql(count), insert_params(count))
            rows: list[Any] = list(await db.execute_fetchall(CLAIM, ("q", count)))
            await db.execute(finish_sql(len(rows)), [r[0] for r in rows])
        took = time.perf_counter() - start
    finally:
        await db.close()
    check = sqlite3.connect(path)
    try:
        _check(check, n)
    finally:
        check.close()
    return n / took


def run_aiosqlite(path: str, n: int, batch: int, synchronous: str) -> float:
    """Jobs/s of the same loop through aiosqlite (3 awaits per batch)."""
    return asyncio.run(_aio(path, n, batch, synchronous))


def remove_db(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
