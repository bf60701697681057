"""Resumable jobs (issue 12, part 2): durable steps and sleeps.

``saqlite.step(ctx, name, fn, ...)`` runs ``fn`` once for a job and records its
result in the file; a later run of the job (a retry, a worker killed or stopped, a
resume after ``saqlite.sleep``) gets the recorded result back without calling it.
The tests run real workers on real files; the crash test SIGKILLs a worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest

import saqlite
from saqlite import Context, Queue, Status
from test_saqlite import (
    HERE,
    async_test,
    has_status,
    is_finished,
    make_queue,
    readme_python_blocks,
    run_cli,
    run_python,
    running,
    stored,
    wait_for,
    worker_for,
)

if t.TYPE_CHECKING:
    from collections.abc import Iterator

#: No sweeps during a test unless it asks (a sweep could retry a paused job).
NO_SWEEP: saqlite.TimersDict = {"sweep": 1000, "abort": 0.1, "schedule": 0.1, "worker_info": 0.5}


def step_rows(path: Path, key: str) -> dict[str, tuple[str, t.Optional[str]]]:
    """name -> (outcome, error) of a job's record, read from the file itself."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT name, outcome, error FROM saqlite_steps WHERE key = ?", (key,)
        ).fetchall()
    return {name: (outcome, error) for name, outcome, error in rows}


# =============================================================================
# Steps replay from the record
# =============================================================================


@async_test
async def test_a_retried_job_gets_its_finished_steps_from_the_record(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    calls: list[str] = []

    async def fetch(page: int) -> dict[str, t.Any]:
        calls.append(f"fetch {page}")
        return {"page": page, "rows": (1, 2)}

    def parse(data: dict[str, t.Any]) -> int:  # a plain function: run in a thread
        calls.append("parse")
        return sum(data["rows"])

    async def job(ctx: Context, *, page: int) -> list[t.Any]:
        data = await saqlite.step(ctx, "fetch", fetch, page)
        total = await saqlite.step(ctx, "parse", parse, data)
        if ctx["job"].attempts == 1:
            raise RuntimeError("flaky upload")
        return [data, total]

    async with running(worker_for(queue, [("job", job)], timers=NO_SWEEP)):
        enqueued = await queue.enqueue("job", page=7, retries=2)
        assert enqueued is not None
        await enqueued.refresh(until_complete=10)
    assert enqueued.status == Status.COMPLETE, enqueued.error
    assert enqueued.attempts == 2
    # The tuple is a list on both runs: a step returns what its record gives back.
    assert enqueued.result == [{"page": 7, "rows": [1, 2]}, 3]
    assert calls == ["fetch 7", "parse"]  # once each, though the job ran twice
    assert step_rows(tmp_path / "jobs.db", enqueued.key) == {
        "fetch": ("done", None),
        "parse": ("done", None),
    }


@async_test
async def test_a_failed_step_is_recorded_and_runs_again_on_the_retry(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    tries: list[int] = []

    async def upload() -> str:
        tries.append(len(tries))
        if len(tries) == 1:
            raise ConnectionError("reset by peer")
        return "uploaded"

    async def job(ctx: Context) -> str:
        return t.cast(str, await saqlite.step(ctx, "upload", upload))

    seen: list[dict[str, tuple[str, t.Optional[str]]]] = []

    async def after(ctx: Context) -> None:
        seen.append(step_rows(tmp_path / "jobs.db", ctx["job"].key))

    worker = worker_for(queue, [("job", job)], timers=NO_SWEEP, after_process=after)
    async with running(worker):
        enqueued = await queue.enqueue("job", retries=2)
        assert enqueued is not None
        await enqueued.refresh(until_complete=10)
    assert (enqueued.status, enqueued.result, tries) == (Status.COMPLETE, "uploaded", [0, 1])
    assert seen == [
        {"upload": ("failed", "ConnectionError: reset by peer")},
        {"upload": ("done", None)},
    ]


# =============================================================================
# Sleeps give back the slot
# =============================================================================


@async_test
async def test_a_sleeping_job_gives_back_its_slot_and_resumes_after_its_sleep(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "jobs.db")
    calls: list[str] = []

    async def prepare() -> str:
        calls.append("prepare")
        return "prepared"

    async def cool(ctx: Context) -> list[t.Any]:
        before = await saqlite.step(ctx, "prepare", prepare)
        await saqlite.sleep(ctx, "cool-down", 1.0)
        calls.append("after the sleep")
        return [before, ctx["job"].attempts]

    async def quick(ctx: Context) -> str:
        calls.append("quick")
        return "quick"

    # One slot: the quick job runs only if the sleeper gave its slot back.
    worker = worker_for(queue, [("cool", cool), ("quick", quick)], concurrency=1)
    async with running(worker):
        sleeper = await queue.enqueue("cool", timeout=5)
        assert sleeper is not None
        slept_at = time.time()
        await wait_for(lambda: "prepare" in calls)
        other = await queue.enqueue("quick")
        assert other is not None
        await other.refresh(until_complete=10)
        asleep = await stored(queue, sleeper.key)
        if asleep.status == Status.QUEUED:  # (unless it woke meanwhile, on a slow machine)
            assert asleep.scheduled >= slept_at + 1
            assert asleep.attempts == 0  # the sleep used no retry
            info = await queue.info(jobs=True)
            assert info["scheduled"] == 1
        await sleeper.refresh(until_complete=10)
    assert sleeper.status == Status.COMPLETE, sleeper.error
    assert sleeper.result == ["prepared", 1]  # one attempt, retries=1: none used
    assert calls.index("quick") < calls.index("after the sleep")
    assert calls.count("prepare") == 1
    assert step_rows(tmp_path / "jobs.db", sleeper.key)["cool-down"] == ("done", None)
