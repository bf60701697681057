"""The layout of saqlite.py: a copy cut at the operator tooling marker still works.

saqlite.py is one vendorable file whose operator tooling (terminal commands, the web
page) comes after one marker line. These tests cut the file there, as a user who wants
no page would, and check that the cut copy imports, names nothing of the tooling, runs
workers from the command line and passes the core tests.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
import shutil
import subprocess
import symtable
import sys
import typing as t
from pathlib import Path

import pytest

import saqlite
from test_saqlite import async_test

HERE = Path(__file__).resolve().parent
MARKER = "# OPERATOR TOOLING:"
#: Names the tooling defines, which a cut copy must not have.
TOOLING_NAMES = ("web_app", "_ops_main", "_WebApp", "_Store", "_cmd_export", "_OPS_EPILOG")


def cut_source() -> str:
    text = (HERE / "saqlite.py").read_text()
    assert text.count(MARKER) == 1, "the marker line must appear once in saqlite.py"
    return text[: text.index(MARKER)]


@pytest.fixture
def cut_dir(tmp_path: Path) -> Path:
    (tmp_path / "saqlite.py").write_text(cut_source())
    return tmp_path


def run(cut_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cut_dir), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cut_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_nothing_above_the_marker_uses_a_name_defined_below_it() -> None:
    """Every global name a function or class above the marker reads is defined above it
    (read statically: a name used only on a rare path would pass an import)."""
    source = cut_source()
    module = symtable.symtable(source, "saqlite.py", "exec")
    defined = set(module.get_identifiers()) | set(dir(builtins))
    missing: dict[str, set[str]] = {}

    def visit(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            name = symbol.get_name()
            if symbol.is_global() and symbol.is_referenced() and name not in defined:
                missing.setdefault(name, set()).add(table.get_name())
        for child in table.get_children():
            visit(child)

    visit(module)
    assert not missing, f"names used above the marker but defined below it: {missing}"
    assert "saqlite" not in missing


def test_the_tooling_uses_only_the_internals_the_marker_lists() -> None:
    """The tooling may use the public API and the internals listed at the marker: a
    private name of the core used below the marker must be listed there."""
    text = (HERE / "saqlite.py").read_text()
    core, tooling = text[: text.index(MARKER)], text[text.index(MARKER) :]
    listed_block = tooling[: tooling.index("\n# ####")]
    listed = set(re.findall(r"\b_[A-Za-z]\w*", listed_block))
    core_tree = ast.parse(core)
    core_names = {
        node.id
        for node in ast.walk(core_tree)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
    } | {
        node.name
        for node in ast.walk(core_tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }
    core_attributes = {
        node.name
        for cls in core_tree.body
        if isinstance(cls, ast.ClassDef) and cls.name in ("Queue", "Job", "Worker", "CronJob")
        for node in cls.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    } | {"_codec"}
    tooling_tree = ast.parse(tooling)
    core_attributes -= {  # the tooling's own methods and attributes of the same names
        node.attr if isinstance(node, ast.Attribute) else node.name
        for node in ast.walk(tooling_tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        or (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store))
    }
    used = set()
    for node in ast.walk(tooling_tree):
        if isinstance(node, ast.Name) and node.id in core_names:
            used.add(node.id)
        elif isinstance(node, ast.Attribute) and node.attr in core_attributes:
            used.add(node.attr)
    private = {name for name in used if name.startswith("_") and not name.startswith("__")}
    assert private - {"_"} <= listed, f"not listed at the marker: {private - listed - {'_'}}"


def test_cut_copy_imports_without_the_tooling_and_runs_workers_from_the_command_line(
    cut_dir: Path,
) -> None:
    names = ", ".join(repr(name) for name in TOOLING_NAMES)
    check = (
        "import saqlite\n"
        f"assert saqlite.__file__.startswith({str(cut_dir)!r}), saqlite.__file__\n"
        f"present = [name for name in ({names},) if hasattr(saqlite, name)]\n"
        "assert not present, present\n"
        "assert 'web_app' not in saqlite.__all__\n"
        "assert all(hasattr(saqlite, name) for name in saqlite.__all__)\n"
        "assert not saqlite._EXTRAS\n"
    )
    result = run(cut_dir, "-c", check)
    assert result.returncode == 0, result.stderr
    # The full file has every tooling name, so the check above means something.
    assert all(hasattr(saqlite, name) for name in TOOLING_NAMES)

    (cut_dir / "tasks.py").write_text(
        "from saqlite import Queue\n\n"
        "async def add(ctx, *, a, b):\n    return a + b\n\n"
        'settings = {"queue": Queue("jobs.db"), "functions": [add], "burst": True,\n'
        '            "dequeue_timeout": 0.5}\n'
    )
    enqueue = (
        "import asyncio, saqlite\n"
        "async def go():\n"
        "    queue = saqlite.Queue('jobs.db')\n"
        "    await queue.enqueue('add', key='sum', a=2, b=3)\n"
        "    await queue.disconnect()\n"
        "asyncio.run(go())\n"
    )
    assert run(cut_dir, "-c", enqueue).returncode == 0
    worker = run(cut_dir, "-m", "saqlite", "tasks.settings")  # a burst worker: it stops
    assert worker.returncode == 0, worker.stderr
    with saqlite.SyncQueue(cut_dir / "jobs.db") as queue:
        job = queue.job("sum")
    assert job is not None
    assert (job.status, job.result) == (saqlite.Status.COMPLETE, 5)

    usage = run(cut_dir, "-m", "saqlite", "-h")
    assert usage.returncode == 0, usage.stderr
    assert "--web" not in usage.stdout  # the page's options come with the page

    command = run(cut_dir, "-m", "saqlite", "info", "jobs.db")
    assert command.returncode == 2
    assert "this copy of saqlite has no operator commands (`saqlite info`)" in command.stderr
    assert "whole saqlite.py" in command.stderr


def test_core_tests_pass_against_the_cut_copy(cut_dir: Path) -> None:
    """test_saqlite.py (but for its tests of the page) run against the cut copy: the
    queue, worker, sync client, command-line workers and README tour, with real files
    and processes. The test file is copied beside the cut copy, so that its worker
    subprocesses import the cut copy too."""
    for name in ("test_saqlite.py", "README.md", "pyproject.toml"):
        shutil.copy(HERE / name, cut_dir / name)
    result = run(
        cut_dir,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "-k",
        "not web",
        "test_saqlite.py",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_every_public_name_is_in_all() -> None:
    """A name without a leading underscore is API: it is in ``__all__`` (but for the
    module's logger)."""
    public = {
        name
        for name, value in vars(saqlite).items()
        if not name.startswith("_") and getattr(value, "__module__", "saqlite") == "saqlite"
    }
    imported_modules = {name for name, value in vars(saqlite).items() if type(value) is type(os)}
    assert public - imported_modules - {"logger", "t"} <= set(saqlite.__all__)


def test_sync_queue_takes_queue_arguments_positionally_and_by_name(tmp_path: Path) -> None:
    """SyncQueue passes what follows path and name to its Queue twin: dump and load
    positionally as before, the options by name; an option it cannot use is refused."""

    def dump(value: dict[str, object]) -> str:
        return "x" + json.dumps(value)

    def load(text: t.Union[str, bytes]) -> t.Any:
        return json.loads(text[1:])

    path = tmp_path / "jobs.db"
    with saqlite.SyncQueue(path, "mail", dump, load, lock_timeout=2.0) as client:
        assert (client.name, client.queue.lock_timeout) == ("mail", 2.0)
        client.enqueue("send", key="k", to="a@b")
        job = client.job("k")
        assert job is not None and job.kwargs == {"to": "a@b"}
    with pytest.raises(TypeError, match="SyncQueue takes no swept_error_message"):
        saqlite.SyncQueue(path, swept_error_message="gone")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="synchronus"):
        saqlite.SyncQueue(path, synchronus="FULL")  # type: ignore[call-arg]


@async_test
async def test_a_sync_client_of_an_async_queue_shares_its_file_name_and_codec(
    tmp_path: Path,
) -> None:
    def dump(value: dict[str, object]) -> str:
        return "x" + json.dumps(value)

    def load(text: t.Union[str, bytes]) -> t.Any:
        return json.loads(text[1:])

    queue = saqlite.Queue(tmp_path / "jobs.db", "mail", dump, load, lock_timeout=2.0)
    with saqlite.SyncQueue(queue) as client:
        assert (client.queue, client.name, client.path) == (queue, "mail", queue.path)
        client.enqueue("send", key="k", to="a@b")
    job = await queue.job("k")  # written through the shared dump, read by the Queue
    assert job is not None and job.kwargs == {"to": "a@b"}
    await queue.disconnect()
    with pytest.raises(TypeError, match=r"SyncQueue\(queue\) takes nothing else"):
        saqlite.SyncQueue(queue, "other")
