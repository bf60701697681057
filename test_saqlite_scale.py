"""Costs that stay flat as the file grows (issue 11), at small sizes: counts kept by
triggers, work on many rows in short write transactions that let other writers in,
space given back, keyset paging, and the migration of older files. The sizes that show
the costs live in ``benchmarks/run.py --scale``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import pytest

import saqlite
from saqlite import Job, Queue
from test_saqlite import async_test, make_queue, running, small_disk, wait_for, worker_for
from test_saqlite_processes import run_old_saqlite

HERE = Path(__file__).resolve().parent
__all__ = ["small_disk"]  # a fixture used here by name
CLI = "import sys, saqlite; sys.exit(saqlite.main(sys.argv[1:]))"
#: Commits of saqlite.py whose files have schema version 1 and 2.
OLD_VERSIONS = {1: "70f890b", 2: "04eef91"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a terminal command as a real process."""
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip


def counted(path: Path) -> dict[tuple[str, str], int]:
    """The counts saqlite keeps (all but running jobs), to check against the jobs."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT queue, status, n FROM saqlite_counts WHERE n != 0").fetchall()
    conn.close()
    return {(queue, status): n for queue, status, n in rows}


def actual(path: Path) -> dict[tuple[str, str], int]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT queue, status, COUNT(*) FROM saqlite_jobs"
            " WHERE status NOT IN ('active', 'aborting') GROUP BY queue, status"
        ).fetchall()
    conn.close()
    return {(queue, status): n for queue, status, n in rows}


def finished_long_ago(path: Path, expire: bool) -> int:
    """Make every waiting job complete, finished an hour ago (and expired if asked), as
    one transaction of another tool; how many."""
    with sqlite3.connect(path) as conn:
        changed = conn.execute(
            "UPDATE saqlite_jobs SET status = 'complete', completed = :ago, expire_at = :expire"
            " WHERE status = 'queued'",
            {"ago": (time.time() - 3600) * 1000, "expire": time.time() - (60 if expire else -3600)},
        ).rowcount
    conn.close()
    return changed


class OtherWriter(threading.Thread):
    """Another connection writing in a loop (its own transactions, SQLite's busy
    handler), noting for each write how many rows ``left_sql`` counted at that moment:
    a number strictly between none and all means it got in while the work was half done."""

    def __init__(self, path: Path, left_sql: str) -> None:
        super().__init__(daemon=True)
        self.path, self.left_sql = path, left_sql
        self.seen: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            while not self.stop.is_set():
                conn.execute("BEGIN IMMEDIATE")
                left = conn.execute(self.left_sql).fetchone()[0]
                conn.execute(
                    "INSERT OR REPLACE INTO saqlite_meta (name, value) VALUES ('test', ?)", (left,)
                )
                conn.execute("COMMIT")
                self.seen.append(left)
                time.sleep(0.001)
        finally:
            conn.close()


# -- counts ---------------------------------------------------------------------------


async def ok(ctx: saqlite.Context) -> str:
    return "ok"


async def fails(ctx: saqlite.Context) -> None:
    raise ValueError("no")


@async_test
async def test_counts_follow_every_change_whoever_makes_it(tmp_path: Path) -> None:
    path = tmp_path / "counts.db"
    queue = make_queue(path)
    other = make_queue(path, name="other")
    await queue.enqueue_many([Job("ok", key=f"ok{i}") for i in range(5)])
    await queue.enqueue("fails", key="bad")
    await queue.enqueue("ok", key="later", scheduled=time.time() + 3600)
    await other.enqueue("ok", key="elsewhere")
    assert counted(path) == actual(path) == {
        ("default", "queued"): 7, ("other", "queued"): 1,
    }  # fmt: skip
    info = await queue.info()
    assert (info["queued"], info["scheduled"], info["active"]) == (6, 1, 0)
    async with running(worker_for(queue, [ok, fails])):
        await wait_for(lambda: counted(path).get(("default", "complete")) == 5)
        await wait_for(lambda: counted(path).get(("default", "failed")) == 1)
    assert counted(path) == actual(path)
    # A finished key enqueued again, a retry, an abort, an update: by the same rules.
    await queue.enqueue("ok", key="ok0")
    bad = await queue.job("bad")
    assert bad is not None
    await queue.retry(bad, "again")
    later = await queue.job("later")
    assert later is not None
    await queue.abort(later, "not needed")
    assert counted(path) == actual(path)
    assert (await queue.count("queued"), await queue.count("incomplete")) == (2, 2)
    # Another tool's writes keep them right too (the triggers are in the file).
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE saqlite_jobs SET queue = 'moved' WHERE key = 'elsewhere'")
        conn.execute("DELETE FROM saqlite_jobs WHERE key IN ('ok1', 'ok2')")
    conn.close()
    assert counted(path) == actual(path)
    assert ("other", "queued") not in counted(path)
    assert await other.count("incomplete") == 0


@async_test
async def test_info_splits_many_scheduled_jobs_from_the_due_ones(tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "scheduled.db")
    later = int(time.time()) + 3600
    await queue.enqueue_many([Job("ok", scheduled=later) for _ in range(1500)])
    await queue.enqueue_many([Job("ok") for _ in range(3)])
    info = await queue.info()
    assert (info["queued"], info["scheduled"], info["active"]) == (3, 1500, 0)
    assert (await queue.count("queued"), await queue.count("incomplete")) == (3, 1503)


# Each way the split of due from later jobs can end: one side under the first probe,
# under a later one, or both sides past it (one side counted up to half, then the
# other), with the probe made small so that a few thousand jobs reach every branch.
@pytest.mark.parametrize(
    "due, later", [(3, 150), (150, 3), (30, 2000), (2000, 30), (120, 130), (130, 120), (900, 2000)]
)
@async_test
async def test_info_splits_due_from_later_jobs_exactly_whichever_side_is_bigger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, due: int, later: int
) -> None:
    monkeypatch.setattr(saqlite, "_COUNT_PROBE", 10)
    queue = make_queue(tmp_path / "split.db")
    await queue.enqueue_many([Job("ok", scheduled=int(time.time()) + 3600) for _ in range(later)])
    await queue.enqueue_many([Job("ok") for _ in range(due)])
    info = await queue.info()
    assert (info["queued"], info["scheduled"], info["active"]) == (due, later, 0)
    assert (await queue.count("queued"), await queue.count("incomplete")) == (due, due + later)


def test_terminal_info_counts_every_status(tmp_path: Path) -> None:
    path = tmp_path / "info.db"

    async def fill() -> None:
        queue = Queue(path)
        await queue.enqueue_many([Job("ok") for _ in range(4)])
        await queue.enqueue("ok", scheduled=time.time() + 3600)
        finished_long_ago(path, expire=False)
        await queue.enqueue_many([Job("ok") for _ in range(2)])
        await queue.disconnect()

    asyncio.run(fill())
    result = cli("info", str(path), "--json")
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)["queues"]
    assert entry == {"name": "default", "queued": 2, "scheduled": 0, "active": 0,
                     "complete": 5, "failed": 0, "aborted": 0, "workers": 0}  # fmt: skip


# -- short write transactions, space given back ---------------------------------------------

EXPIRED = 20_000


async def sweep_beside(queue: Queue, writer: OtherWriter) -> None:
    """Sweep (nothing stuck to report) while ``writer`` writes, from its first write on."""
    writer.start()
    try:
        await wait_for(lambda: bool(writer.seen))
        assert await queue.sweep() == []
    finally:
        writer.stop.set()
        await asyncio.get_running_loop().run_in_executor(None, writer.join)


@async_test
async def test_the_sweep_deletes_in_slices_that_let_other_writers_in(tmp_path: Path) -> None:
    path = tmp_path / "sweep.db"
    queue = make_queue(path)
    await queue.enqueue_many([Job("ok", kwargs={"pad": "x" * 200}) for _ in range(EXPIRED)])
    assert finished_long_ago(path, expire=True) == EXPIRED
    await queue.enqueue("ok", key="kept")
    filled = path.stat().st_size
    writer = OtherWriter(path, "SELECT COUNT(*) FROM saqlite_jobs WHERE status = 'complete'")
    await sweep_beside(queue, writer)
    assert any(0 < left < EXPIRED for left in writer.seen), writer.seen
    assert (await queue.job("kept")) is not None
    assert counted(path) == actual(path) == {("default", "queued"): 1}
    await queue.sweep()  # again, the other writer gone: nothing holds the -wal file
    assert path.stat().st_size < filled / 4, (filled, path.stat().st_size)


@async_test
async def test_space_comes_back_a_page_at_a_time_when_pages_are_slow_to_give_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a big fragmented file, where a page can take half a millisecond: every
    # slice is slower than the target, so slices shrink to one row and one page.
    monkeypatch.setattr(saqlite, "_SLICE_TARGET_S", 0.0)
    path = tmp_path / "slow.db"
    queue = make_queue(path)
    await queue.enqueue_many([Job("ok", kwargs={"pad": "x" * 2000}) for _ in range(600)])
    assert finished_long_ago(path, expire=True) == 600
    filled = path.stat().st_size
    writer = OtherWriter(path, "SELECT freelist_count FROM pragma_freelist_count")
    await sweep_beside(queue, writer)
    most = max(writer.seen)
    giving_back = writer.seen[writer.seen.index(most) :]
    # The other writer got in between pages given back, again and again.
    assert len({free for free in giving_back if 0 < free < most}) >= 20, writer.seen
    await queue.sweep()  # again, the other writer gone: nothing holds the -wal file
    assert path.stat().st_size < filled / 4, (filled, path.stat().st_size)
    assert counted(path) == actual(path) == {}


def test_a_purge_lets_other_writers_in_and_gives_the_space_back(tmp_path: Path) -> None:
    path = tmp_path / "purge.db"

    async def fill() -> None:
        queue = Queue(path)
        await queue.enqueue_many([Job("ok", kwargs={"pad": "x" * 200}) for _ in range(EXPIRED)])
        finished_long_ago(path, expire=False)
        await queue.enqueue("ok", key="waiting")
        await queue.disconnect()

    asyncio.run(fill())
    filled = os.path.getsize(path)
    writer = OtherWriter(path, "SELECT COUNT(*) FROM saqlite_jobs WHERE status = 'complete'")
    writer.start()
    try:
        asyncio.run(wait_for(lambda: bool(writer.seen)))
        result = cli("purge", str(path), "--older-than", "1m")
    finally:
        writer.stop.set()
        writer.join()
    assert result.returncode == 0, result.stderr
    assert f"deleted {EXPIRED} complete/failed/aborted jobs" in result.stdout
    assert any(0 < left < EXPIRED for left in writer.seen), writer.seen
    assert os.path.getsize(path) < filled / 4, (filled, os.path.getsize(path))
    assert counted(path) == actual(path) == {("default", "queued"): 1}


# -- listing --------------------------------------------------------------------------------


def listed(*args: str) -> tuple[list[str], t.Optional[str]]:
    result = cli("jobs", *args, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    return [job["key"] for job in data["jobs"]], data["next"]


def test_jobs_page_after_a_cursor_newest_first(tmp_path: Path) -> None:
    path = tmp_path / "pages.db"

    async def fill() -> None:
        queue = Queue(path)
        for i in range(25):  # one at a time: each its own enqueue time
            await queue.enqueue("ok" if i % 5 else "other", key=f"k{i:02d}")
            await asyncio.sleep(0.002)
        await queue.disconnect()

    asyncio.run(fill())
    newest_first = [f"k{i:02d}" for i in reversed(range(25))]
    keys, cursor = listed(str(path), "--limit", "10")
    pages = [keys]
    while cursor is not None:
        keys, cursor = listed(str(path), "--limit", "10", "--after", cursor)
        pages.append(keys)
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [key for page in pages for key in page] == newest_first
    # Filtered the same way as --page, which still works.
    keys, cursor = listed(str(path), "--limit", "3", "--function", "other")
    assert cursor is not None
    assert keys + listed(str(path), "--function", "other", "--after", cursor)[0] == [
        "k20", "k15", "k10", "k05", "k00",
    ]  # fmt: skip
    assert listed(str(path), "--limit", "10", "--page", "2")[0] == newest_first[10:20]
    text = cli("jobs", str(path), "--limit", "10")
    assert text.stdout.splitlines()[-1].startswith("page 1: jobs 1-10; more with --page 2 (or ")

    bad = cli("jobs", str(path), "--after", "yesterday")
    assert bad.returncode == 2
    assert "'yesterday' is not a listing's cursor: give the 'next' value of a listing" in bad.stderr
    both = cli("jobs", str(path), "--after", "1:1", "--page", "2")
    assert (both.returncode, "drop --page" in both.stderr) == (2, True)


@pytest.mark.parametrize("few", [True, False], ids=["few-sorted", "many-by-index"])
def test_a_listing_is_the_same_whichever_way_it_finds_the_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], few: bool
) -> None:
    path = tmp_path / "ways.db"

    async def fill() -> None:
        queue = Queue(path)
        other = Queue(path, name="other")
        for i in range(12):
            await (other if i % 4 == 0 else queue).enqueue("ok", key=f"k{i:02d}")
            await asyncio.sleep(0.002)
        finished_long_ago(path, expire=False)
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE saqlite_jobs SET status = 'failed' WHERE key = 'k05'")
            conn.execute("UPDATE saqlite_jobs SET status = 'aborted' WHERE key = 'k06'")
        conn.close()
        for i in range(12, 16):
            await queue.enqueue("rare" if i % 2 else "ok", key=f"k{i:02d}")
            await asyncio.sleep(0.002)
        await queue.disconnect()
        await other.disconnect()

    asyncio.run(fill())
    monkeypatch.setattr(saqlite, "_LIST_SORT_MAX", 10**6 if few else 0)

    def keys(*args: str) -> list[str]:
        assert saqlite.main(["jobs", str(path), "--json", *args]) == 0
        return [job["key"] for job in json.loads(capsys.readouterr().out)["jobs"]]

    assert keys("--status", "queued") == ["k15", "k14", "k13", "k12"]
    assert keys("--queue", "other") == ["k08", "k04", "k00"]
    assert keys("--queue", "default", "--status", "complete", "--limit", "3") == [
        "k11", "k10", "k09",
    ]  # fmt: skip
    assert keys("--status", "failed") == ["k05"]
    assert keys("--status", "failed,aborted") == ["k06", "k05"]
    assert keys("--status", "aborted", "--queue", "other") == []
    assert keys("--function", "rare") == ["k15", "k13"]
    assert keys("--function", "ok", "--queue", "default", "--status", "queued") == ["k14", "k12"]
    assert keys("--function", "ok", "--status", "failed,aborted") == ["k06", "k05"]
    assert keys("--function", "ok", "--queue", "other", "--limit", "2") == ["k08", "k04"]


# -- older files ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", sorted(OLD_VERSIONS))
def test_an_older_file_gets_counts_and_gives_space_back(tmp_path: Path, version: int) -> None:
    path = tmp_path / f"v{version}.db"
    run_old_saqlite(
        tmp_path,
        OLD_VERSIONS[version],
        f"""
        import asyncio, saqlite
        assert saqlite.SCHEMA_VERSION == {version}
        async def main():
            queue = saqlite.Queue({str(path)!r})
            await queue.enqueue_many([saqlite.Job("f", kwargs={{"pad": "x" * 200}})
                                      for _ in range(3000)])
            job = await queue.dequeue(timeout=1)
            await queue.finish(job, saqlite.Status.FAILED, error="boom")
            await queue.enqueue("f", key="later", scheduled=2e9)
            await queue.disconnect()
        asyncio.run(main())
    """,
    )
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # NONE
    conn.close()

    async def reopen() -> None:
        queue = Queue(path)
        try:
            info = await queue.info()
            assert (info["queued"], info["scheduled"], info["active"]) == (2999, 1, 0)
        finally:
            await queue.disconnect()

    asyncio.run(reopen())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
        schema = conn.execute("SELECT value FROM saqlite_meta WHERE name = 'schema_version'")
        assert int(schema.fetchone()[0]) == saqlite.SCHEMA_VERSION  # the latest
    conn.close()
    assert counted(path) == actual(path) == {
        ("default", "queued"): 3000, ("default", "failed"): 1,
    }  # fmt: skip
    filled = os.path.getsize(path)
    finished_long_ago(path, expire=False)
    result = cli("purge", str(path), "--older-than", "1m")
    assert result.returncode == 0, result.stderr
    assert "deleted 3000 complete/failed/aborted jobs" in result.stdout
    assert os.path.getsize(path) < filled / 4, (filled, os.path.getsize(path))
    assert counted(path) == actual(path) == {("default", "failed"): 1}  # failed just now


def _file_without_auto_vacuum(path: Path, jobs: int, kept: int, pad: int) -> None:
    """A file at this schema whose auto_vacuum is off, as one made before schema 3
    is: ``jobs`` enqueued, all but ``kept`` deleted, and ``pad`` more bytes of free
    pages (what a rebuild gives back)."""
    with saqlite.SyncQueue(path) as client:
        client.enqueue_many([Job("f", kwargs={"pad": "x" * 500}) for _ in range(jobs)])
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DELETE FROM saqlite_jobs WHERE rowid > ?", (kept,))
        conn.execute("PRAGMA auto_vacuum = NONE")
        conn.execute("VACUUM")  # auto_vacuum changes only through a rebuild
        conn.execute("INSERT INTO saqlite_meta VALUES ('pad', randomblob(?))", (pad,))
        conn.execute("DELETE FROM saqlite_meta WHERE name = 'pad'")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    finally:
        conn.close()


def _auto_vacuum(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])
    finally:
        conn.close()


def test_a_large_older_file_opens_as_it_is_and_saqlite_vacuum_rebuilds_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "big.db"
    _file_without_auto_vacuum(path, 100, kept=10, pad=2_000_000)
    monkeypatch.setattr(saqlite, "_REBUILD_ON_OPEN_MAX_BYTES", 1000)  # "large"
    with caplog.at_level("WARNING", logger="saqlite"), saqlite.SyncQueue(path) as client:
        assert client.count("queued") == 10  # it works as it is
    assert f"run `saqlite vacuum {path}` when a pause" in caplog.text
    assert _auto_vacuum(path) == 0  # not rebuilt on open

    size = os.path.getsize(path)
    assert saqlite.main(["vacuum", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes_before"] >= size and report["bytes_after"] < size / 2, (size, report)
    assert _auto_vacuum(path) == 2  # INCREMENTAL: space is given back from now on
    with saqlite.SyncQueue(path) as client:
        assert client.count("queued") == 10


def test_a_rebuild_that_cannot_run_never_stops_the_file_opening(
    tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    made = tmp_path / "old.db"
    _file_without_auto_vacuum(made, 40, kept=40, pad=0)
    path = small_disk / "old.db"
    path.write_bytes(made.read_bytes())
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"x" * max(0, free - 64 * 1024))  # room to open, not to rebuild
    with caplog.at_level("WARNING", logger="saqlite"), saqlite.SyncQueue(path) as client:
        assert client.count("queued") == 40
    assert f"Could not rebuild {path} so that its space can be given back" in caplog.text
    assert "saqlite tries again when it next opens it" in caplog.text
    assert _auto_vacuum(path) == 0
    filler.unlink()
    with saqlite.SyncQueue(path) as client:  # small: rebuilt as it opens, once it can
        assert client.count("queued") == 40
    assert _auto_vacuum(path) == 2


# A real process enqueues a few jobs from a generator, then many more: the peak of what
# Python holds (tracemalloc) must not grow with how many (enqueue_many holds them all).
STREAM_MEMORY = """
import asyncio, json, sys, tracemalloc
import saqlite

def jobs(start, n):
    for i in range(start, start + n):
        yield saqlite.Job("noop", key=f"k{i}", kwargs={"i": i, "pad": "x" * 200})

async def main(path, few, many):
    queue = saqlite.Queue(path)
    tracemalloc.start()
    peaks = []
    for start, n in ((0, few), (few, many)):
        tracemalloc.reset_peak()
        stored = await queue.enqueue_stream(jobs(start, n), timeout=30)
        peaks.append(tracemalloc.get_traced_memory()[1])
        assert stored == n, (stored, n)
    print(json.dumps({"peaks": peaks, "incomplete": await queue.count("incomplete")}))
    await queue.disconnect()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def test_enqueue_stream_holds_one_slice_however_many_jobs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    few, many = 2_000, 20_000
    out = subprocess.run(
        [sys.executable, "-c", STREAM_MEMORY, str(tmp_path / "q.db"), str(few), str(many)],
        capture_output=True, text=True, timeout=120, env=env, check=True,
    ).stdout  # fmt: skip
    result = json.loads(out)
    assert result["incomplete"] == few + many
    few_peak, many_peak = result["peaks"]
    # Ten times the jobs: held all at once, the peak would be ten times (about 2 KB each).
    assert many_peak < 2 * few_peak, result


@async_test
async def test_enqueue_stream_reads_an_async_iterable_and_skips_keys_already_waiting(
    tmp_path: Path,
) -> None:
    queue = make_queue(tmp_path / "q.db")
    await queue.enqueue("noop", key="k3")

    async def jobs() -> t.AsyncIterator[str]:
        for _ in range(2500):
            yield "noop"

    assert await queue.enqueue_stream(jobs(), retries=2) == 2500
    keyed = (Job("noop", key=f"k{i}") for i in range(2500))
    assert await queue.enqueue_stream(keyed) == 2499  # k3 was already waiting
    assert await queue.count("queued") == 5000
    assert {job.retries for job in [j async for j in queue.iter_jobs()][1:2501]} == {2}


def test_a_bad_item_stops_the_stream_naming_it_and_a_rerun_goes_on(tmp_path: Path) -> None:
    def jobs(bad: bool) -> t.Iterator[Job]:
        for i in range(2500):
            yield Job("noop", key=f"k{i}", timeout=-1 if bad and i == 1500 else 10)

    with saqlite.SyncQueue(tmp_path / "q.db") as queue:
        with pytest.raises(saqlite.EnqueueStreamError) as raised:
            queue.enqueue_stream(jobs(bad=True))
        error = raised.value
        assert (error.stored, error.done) == (1000, 1000)
        message = str(error)
        assert "stopped at item 1500" in message and "key: k1500" in message
        assert "timeout" in message and "1000 job(s) were stored" in message
        assert "from item 1000" in message
        assert queue.count("queued") == 1000  # the slice with the bad item: none of it
        assert queue.enqueue_stream(jobs(bad=False)) == 1500  # the first 1000 are waiting
        assert queue.count("queued") == 2500

    async def insert_fails() -> None:
        queue = make_queue(tmp_path / "q.db")
        unserialisable = (Job("noop", kwargs={"x": object() if i == 10 else i}) for i in range(20))
        with pytest.raises(saqlite.EnqueueStreamError, match="the slice of items 0 to 19") as exc:
            await queue.enqueue_stream(unserialisable)
        assert exc.value.stored == 0 and "JSON-encodable" in str(exc.value)

    async_test(insert_fails)()
