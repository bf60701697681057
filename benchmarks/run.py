"""Benchmarks for saqlite, side by side with SAQ 0.26 on Redis, huey on SQLite and raw SQLite.

Run from the repository root (or anywhere; paths are resolved from this file):

    python benchmarks/run.py                 # full suite, 3 runs each, about 10 min on 2 cores
    python benchmarks/run.py --quick         # smaller N, 1 run, about 1.5 min
    python benchmarks/run.py --runs 5 --json out.json --md out.md
    python benchmarks/run.py --smoke         # saqlite only, tiny N, a few seconds; for CI
    python benchmarks/run.py --only pipeline # a fan-out/fan-in graph of 10,000 jobs
    python benchmarks/run.py --only noop     # saqlite's noop c10 alone (A/B of a change)
    python benchmarks/run.py --only flow     # pauses and limits: cost, exactness, delays
    python benchmarks/run.py --scale         # files of 10k, 1M and 10M jobs (see bench_scale.py)
    python benchmarks/run.py --scale --scale-sizes 10000,1000000

It prints a markdown table (median of the runs, min-max, ratio to SAQ-on-Redis and to the
batched aiosqlite raw loop of the same run, and the targets met or not) and writes JSON.
``--smoke`` never checks timings: it exits 0 when every workload ran, 1 otherwise.

Optional peers: ``pip install 'saq[redis]>=0.26,<0.27' huey`` and ``apt-get install
redis-server``; when missing they are skipped with a message. Everything is created in a temp
dir that is removed at the end; the only network use is a private redis-server on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bench_flow
import bench_huey
import bench_queue
import bench_raw
import bench_redis
import bench_scale
import bench_steps
from bench_common import Failure, ensure_project_on_path
from bench_jobs import calibrate_burn
from bench_queue import Backend
from bench_report import (
    Collector,
    Metrics,
    check_targets,
    render_failures,
    render_table,
    render_targets,
)

# saqlite's durable setting; see Queue.from_url in saqlite.py.
SAQLITE_DURABLE_KWARGS: dict[str, Any] = {"synchronous": "FULL"}


@dataclass
class Plan:
    """Sizes and repetitions of one benchmark run."""

    runs: int = 3
    noop_sizes: list[int] = field(default_factory=lambda: [1000, 10000])
    sleeper_sizes: list[int] = field(default_factory=lambda: [1000])
    bulk_n: int = 10000
    pipeline_n: int = 10000
    pickup_count: int = 200
    pickup_interval: float = 0.02
    pickup_idle_s: float = 1.5
    idle_cpu_s: float = 5.0
    procs: list[int] = field(default_factory=lambda: [1, 2, 4])
    procs_noop_n: int = 10000
    procs_cpu_n: int = 2000
    durable_n: int = 10000
    memory_n: int = 100000
    memory_runs: int = 1
    raw_unbatched_n: int = 5000
    raw_batched_n: int = 20000
    steps_k: int = 2000
    flow_rate_n: int = 1000
    flow_slot_n: int = 300
    peers: bool = True
    raw: bool = True


def make_plan(args: argparse.Namespace) -> Plan:
    if args.smoke:
        return Plan(
            runs=1,
            noop_sizes=[200],
            sleeper_sizes=[200],
            bulk_n=200,
            pipeline_n=200,
            pickup_count=20,
            pickup_idle_s=0.3,
            idle_cpu_s=0.5,
            procs=[1, 2],
            procs_noop_n=200,
            procs_cpu_n=50,
            durable_n=200,
            memory_n=500,
            steps_k=20,
            flow_rate_n=150,
            flow_slot_n=20,
            peers=False,
            raw=False,
        )
    if args.quick:
        return Plan(
            runs=args.runs or 1,
            noop_sizes=[1000, 10000],
            bulk_n=10000,
            pickup_count=100,
            pickup_idle_s=1.0,
            idle_cpu_s=2.0,
            procs_noop_n=4000,
            procs_cpu_n=1000,
            memory_n=20000,
            raw_unbatched_n=2000,
            raw_batched_n=10000,
            steps_k=500,
            flow_rate_n=400,
            flow_slot_n=100,
        )
    return Plan(runs=args.runs or 3)


def procs_noop_wl(plan: Plan) -> str:
    return f"noop {{p}} procs N={plan.procs_noop_n}"


def procs_cpu_wl(plan: Plan) -> str:
    return f"cpu-2ms {{p}} procs N={plan.procs_cpu_n}"


# --------------------------------------------------------------------------- suites


def partial_run(fn: Callable[..., dict[str, Any]], *args: Any) -> Callable[[int], dict[str, Any]]:
    """``fn(*args)`` as a one-run callable (the run index is ignored)."""
    return lambda i: fn(*args)


def measure(
    col: Collector, b: Backend, once: Callable[[int], dict[str, Any]], metrics: Metrics, runs: int
) -> None:
    """Repeat one workload on one backend; the label is the first workload name."""
    label = next(iter(metrics.values()))[0]
    col.measure(b.system, b.config, once, runs=runs, metrics=metrics, label=label)


def throughput_suite(col: Collector, b: Backend, plan: Plan, sizes: list[int]) -> None:
    for n in sizes:
        metrics = {
            "jobs_s": (f"noop c10 N={n}", "jobs/s", True),
            "enqueue_jobs_s": (f"enqueue gather N={n}", "jobs/s", True),
        }
        measure(col, b, partial_run(bench_queue.run_noop, b, n), metrics, plan.runs)


def sleeper_suite(col: Collector, b: Backend, plan: Plan) -> None:
    for n in plan.sleeper_sizes:
        wl = f"sleeper c10 N={n}"
        metrics = {
            "drain_s": (wl, "s", False),
            "floor_s": (wl, "floor s", False),
            "x_floor": (wl, "x floor", False),
        }
        measure(col, b, partial_run(bench_queue.run_sleeper, b, n), metrics, plan.runs)


def bulk_suite(col: Collector, b: Backend, plan: Plan) -> None:
    if b.system == "saq":
        return  # SAQ 0.26 has no enqueue_many
    metrics = {"jobs_s": (f"bulk enqueue_many N={plan.bulk_n}", "jobs/s", True)}
    measure(col, b, lambda i: bench_queue.run_bulk(b, plan.bulk_n), metrics, plan.runs)


def pipeline_suite(col: Collector, plan: Plan, tmp: str) -> None:
    """saqlite only (SAQ has no dependencies): a fan-out/fan-in graph of N jobs."""
    n = plan.pipeline_n
    metrics = {
        "jobs_s": (f"fan-out/fan-in N={n} run", "jobs/s", True),
        "enqueue_jobs_s": (f"fan-out/fan-in N={n} enqueue_many", "jobs/s", True),
        "fan_in_ms": (f"fan-out/fan-in N={n}: last of the N to end of the fan-in", "ms", False),
    }
    backend = Backend("saqlite", "sqlite-normal", tmp)
    measure(col, backend, lambda i: bench_queue.run_pipeline(backend, n), metrics, plan.runs)


def latency_metrics(wl: str) -> Metrics:
    return {f"{p}_ms": (wl, f"{p} ms", False) for p in ("p50", "p90", "p99", "max")}


def pickup_suite(col: Collector, b: Backend, plan: Plan) -> None:
    count, interval, idle = plan.pickup_count, plan.pickup_interval, plan.pickup_idle_s

    def inproc(i: int) -> dict[str, Any]:
        return bench_queue.run_pickup_inproc(b, count, interval, idle)

    def subproc(i: int) -> dict[str, Any]:
        return bench_queue.run_pickup_subproc(b, count, interval, idle, plan.idle_cpu_s)

    measure(col, b, inproc, latency_metrics("pickup in-process"), plan.runs)
    metrics = latency_metrics("pickup worker-process")
    metrics["idle_cpu_pct"] = ("pickup worker-process", "idle CPU %", False)
    measure(col, b, subproc, metrics, plan.runs)


def procs_metrics(wl: str, b: Backend) -> Metrics:
    metrics: Metrics = {
        "jobs_s": (wl, "jobs/s", True),
        "not_complete": (wl, "jobs not complete", False),
    }
    if b.system == "saqlite":  # the longest any worker process waited for the write lock
        metrics["worst_lock_wait_ms"] = (wl, "worst lock wait ms", False)
    return metrics


def processes_suite(col: Collector, b: Backend, plan: Plan, iters: int) -> None:
    def noop(procs: int) -> Callable[[int], dict[str, Any]]:
        return lambda i: bench_queue.run_processes(b, procs, plan.procs_noop_n, "noop_mp")

    def cpu(procs: int) -> Callable[[int], dict[str, Any]]:
        return lambda i: bench_queue.run_processes(b, procs, plan.procs_cpu_n, "cpu", iters)

    for p in plan.procs:
        measure(col, b, noop(p), procs_metrics(procs_noop_wl(plan).format(p=p), b), plan.runs)
    for p in plan.procs:
        measure(col, b, cpu(p), procs_metrics(procs_cpu_wl(plan).format(p=p), b), plan.runs)


def memory_suite(col: Collector, b: Backend, plan: Plan) -> None:
    def once(i: int) -> dict[str, Any]:
        res = bench_queue.run_memory(b, plan.memory_n)
        res["rss_mib"] = res["maxrss_kb"] / 1024
        res["storage_mib"] = res["storage_bytes"] / 2**20
        return res

    wl = f"memory N={plan.memory_n}"
    storage = "db+wal MiB" if b.system == "saqlite" else "redis used_memory MiB"
    metrics = {
        "rss_mib": (wl, "worker peak RSS MiB", False),
        "storage_mib": (wl, storage, False),
    }
    measure(col, b, once, metrics, plan.memory_runs)


def steps_suite(col: Collector, b: Backend, plan: Plan) -> None:
    """saqlite's durable steps against plain calls (bench_steps.py)."""
    wl = f"step vs call c1 K={plan.steps_k}"
    metrics = {
        "plain_us": (wl, "call us", False),
        "step_us": (wl, "step us", False),
        "replay_us": (wl, "replay us", False),
        "overhead_us": (wl, "overhead us", False),
    }
    measure(col, b, partial_run(bench_steps.run_steps, b, plan.steps_k), metrics, plan.runs)


def flow_suite(col: Collector, b: Backend, plan: Plan) -> None:
    """saqlite's pauses and limits (bench_flow.py): their cost on the noop workload,
    how exactly a rate holds across 4 worker processes, and how soon a freed token or
    slot is used."""
    n = max(plan.noop_sizes)
    for limit in bench_flow.IDLE_LIMITS:
        metrics = {"jobs_s": (f"noop c10 N={n}, a limit on {limit}", "jobs/s", True)}
        measure(col, b, partial_run(bench_flow.run_noop_under, b, n, limit), metrics, plan.runs)
    wl = f"rate 100/s, 4 procs N={plan.flow_rate_n}"
    metrics = {
        "starts_s": (wl, "starts/s after the first 100", False),
        "worst_window": (wl, "most starts in any 1 s", False),
        **{
            f"token_{p}_ms": (wl, f"token free to start {p} ms", False)
            for p in ("p50", "p99", "max")
        },
    }
    run = partial_run(bench_flow.run_rate_procs, b, 4, plan.flow_rate_n, 100)
    measure(col, b, run, metrics, plan.runs)
    wl = f"concurrency 1, 4 procs, 5 ms jobs N={plan.flow_slot_n}"
    metrics = {
        **{
            f"slot_{p}_ms": (wl, f"slot free to start {p} ms", False) for p in ("p50", "p99", "max")
        },
    }
    run = partial_run(bench_flow.run_slot_procs, b, 4, plan.flow_slot_n)
    measure(col, b, run, metrics, plan.runs)


def queue_suite(col: Collector, b: Backend, plan: Plan, iters: int) -> None:
    """Every SAQ-API workload on one backend."""
    throughput_suite(col, b, plan, plan.noop_sizes)
    sleeper_suite(col, b, plan)
    bulk_suite(col, b, plan)
    pickup_suite(col, b, plan)
    processes_suite(col, b, plan, iters)
    memory_suite(col, b, plan)


@dataclass
class RawCase:
    """One raw-loop measurement: a fresh db file per run, removed afterwards."""

    loop: Callable[[str, int, int, str], float]
    path: str
    n: int
    batch: int
    sync: str

    def __call__(self, i: int) -> dict[str, float]:
        try:
            return {"jobs_s": self.loop(self.path, self.n, self.batch, self.sync)}
        finally:
            bench_raw.remove_db(self.path)


def raw_suite(col: Collector, plan: Plan, tmp: str) -> None:
    loops = [("raw-sqlite3", bench_raw.run_sqlite3), ("raw-aiosqlite", bench_raw.run_aiosqlite)]
    for sync in ("NORMAL", "FULL"):
        for system, loop in loops:
            for batch in (1, 100):
                n = plan.raw_batched_n if batch > 1 else plan.raw_unbatched_n
                if sync == "FULL" and batch == 1:
                    n = max(200, n // 5)  # ~1,000-2,000 jobs/s: keep it short
                path = os.path.join(tmp, f"{system}-{sync}-{batch}.db")
                wl = f"raw lifecycle B={batch}"
                col.measure(
                    system,
                    f"sqlite-{sync.lower()}",
                    RawCase(loop, path, n, batch, sync),
                    runs=plan.runs,
                    metrics={"jobs_s": (wl, "jobs/s", True)},
                    label=wl,
                )


def saqlite_suite(col: Collector, plan: Plan, tmp: str, iters: int) -> None:
    try:
        importlib.import_module("saqlite")
    except Exception as exc:
        col.failures.append(Failure("saqlite", "-", "import saqlite", f"{exc!r}"))
        return
    normal = Backend("saqlite", "sqlite-normal", tmp)
    queue_suite(col, normal, plan, iters)
    steps_suite(col, normal, plan)
    durable = Backend("saqlite", "sqlite-full", tmp, dict(SAQLITE_DURABLE_KWARGS))
    throughput_suite(col, durable, plan, [plan.durable_n])
    steps_suite(col, durable, plan)


def saq_suite(col: Collector, plan: Plan, tmp: str, iters: int) -> None:
    reason = bench_redis.redis_available()
    if reason:
        print(f"SKIPPED SAQ on Redis: {reason}", file=sys.stderr)
        return
    for config in ("redis-mem", "redis-aof", "redis-aof-always"):
        workdir = tempfile.mkdtemp(prefix=config, dir=tmp)
        with bench_redis.redis_server(config, workdir) as url:
            backend = Backend("saq", config, url)
            if config == "redis-mem":
                queue_suite(col, backend, plan, iters)
            else:
                throughput_suite(col, backend, plan, [plan.durable_n])


def huey_suite(col: Collector, plan: Plan, tmp: str) -> None:
    reason = bench_huey.available()
    if reason:
        print(f"SKIPPED huey: {reason}", file=sys.stderr)
        return
    db = os.path.join(tmp, "huey.db")
    for n in plan.noop_sizes:
        metrics = {  # huey's enqueue is synchronous: one call after another
            "jobs_s": (f"noop c10 N={n}", "jobs/s", True),
            "enqueue_jobs_s": (f"enqueue gather N={n}", "jobs/s", True),
        }
        col.measure(
            "huey",
            "sqlite-w10",
            partial_run(bench_huey.run_huey, db, n),
            runs=plan.runs,
            metrics=metrics,
            label=f"huey noop N={n}",
        )


# --------------------------------------------------------------------------- main


def versions() -> dict[str, str]:
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }
    for mod in ("saqlite", "saq", "huey", "aiosqlite", "redis"):
        try:
            m = importlib.import_module(mod)
            info[mod] = str(getattr(m, "__version__", "?"))
        except Exception:
            info[mod] = "not installed"
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        info["redis-server"] = out.stdout.split()[2].replace("v=", "")
    except (OSError, IndexError, subprocess.SubprocessError):
        info["redis-server"] = "not installed"
    return info


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="saqlite benchmarks (see module docstring)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller N, 1 run unless --runs")
    mode.add_argument("--smoke", action="store_true", help="saqlite only, tiny N; for CI")
    mode.add_argument(
        "--scale", action="store_true", help="how costs grow with the file (bench_scale.py)"
    )
    parser.add_argument(
        "--scale-sizes",
        default="10000,1000000,10000000",
        help="--scale: comma list of file sizes in jobs (default 10000,1000000,10000000)",
    )
    parser.add_argument("--runs", type=int, default=0, help="repetitions per figure (default 3)")
    parser.add_argument(
        "--json",
        default=None,
        help="write results here (default "
        "benchmark-results.json; '' for none; none by default with --smoke)",
    )
    parser.add_argument("--md", default="", help="also write the markdown report here")
    parser.add_argument(
        "--only",
        default="",
        help="comma list of: raw,saqlite,steps,pipeline,noop,flow,saq,huey (steps: in saqlite)",
    )
    return parser.parse_args(argv)


def run_all(plan: Plan, only: list[str]) -> tuple[Collector, dict[str, str], int]:
    col = Collector()
    iters = calibrate_burn(0.002)

    def want(suite: str) -> bool:
        return not only or suite in only

    with tempfile.TemporaryDirectory(prefix="saqlite-bench-") as tmp:
        if plan.raw and want("raw"):
            raw_suite(col, plan, tmp)
        if want("saqlite"):
            saqlite_suite(col, plan, tmp, iters)
        elif want("steps"):
            steps_suite(col, Backend("saqlite", "sqlite-normal", tmp), plan)
            durable = Backend("saqlite", "sqlite-full", tmp, dict(SAQLITE_DURABLE_KWARGS))
            steps_suite(col, durable, plan)
        if want("pipeline"):
            pipeline_suite(col, plan, tmp)
        if only and ("noop" in only or "flow" in only):
            throughput_suite(
                col, Backend("saqlite", "sqlite-normal", tmp), plan, [max(plan.noop_sizes)]
            )
        if only and "flow" in only:
            flow_suite(col, Backend("saqlite", "sqlite-normal", tmp), plan)
        if plan.peers and want("saq"):
            saq_suite(col, plan, tmp, iters)
        if plan.peers and want("huey"):
            huey_suite(col, plan, tmp)
    return col, versions(), iters


def report(col: Collector, plan: Plan, info: dict[str, str]) -> tuple[str, list[Any]]:
    targets = (
        check_targets(col, plan.noop_sizes, plan.durable_n, procs_noop_wl(plan), procs_cpu_wl(plan))
        if plan.peers or plan.raw
        else []
    )
    head = [
        f"# saqlite benchmarks, {info['date']}",
        "",
        ", ".join(f"{k} {v}" for k, v in info.items() if k != "date"),
        "",
        (
            f"Median of {plan.runs} run(s) [min-max]; ratios are median/median of the same run. "
            "SAQ-redis = SAQ on redis-mem (durable rows: redis-aof, appendfsync everysec); "
            "raw = raw aiosqlite lifecycle, 100 jobs per statement, same synchronous setting."
        ),
        "",
    ]
    body = [render_table(col, targets)]
    if targets:
        body += ["", "## Targets", "", render_targets(targets)]
    body += ["", render_failures(col)]
    return "\n".join(head + body), targets


def scale_main(args: argparse.Namespace) -> int:
    """``--scale``: fill files of each size, print the figures side by side."""
    sizes = [int(size) for size in args.scale_sizes.split(",") if size]
    only = [s for s in args.only.split(",") if s]
    info = versions()
    with tempfile.TemporaryDirectory(prefix="saqlite-scale-") as tmp:
        table, results = bench_scale.run_scale(sizes, tmp, saq=not only or "saq" in only)
    text = "\n".join([
        f"# saqlite at scale, {info['date']}", "",
        ", ".join(f"{k} {v}" for k, v in info.items() if k != "date"), "",
        bench_scale.__doc__.split("\n\n")[1].replace("\n", " "), "", table,
    ])  # fmt: skip
    print(text)
    json_path = args.json if args.json is not None else "benchmark-scale.json"
    if json_path:
        with open(json_path, "w") as fh:
            json.dump({"meta": info, "sizes": sizes, "results": results}, fh, indent=2)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(text + "\n")
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    ensure_project_on_path()  # saqlite.py sits one level up
    logging.getLogger("saq").setLevel(logging.ERROR)  # its shutdown warnings are noise here
    if args.scale:
        return scale_main(args)
    plan = make_plan(args)
    only = [s for s in args.only.split(",") if s]
    col, info, iters = run_all(plan, only)
    info["cpu job iters (2 ms)"] = str(iters)
    text, targets = report(col, plan, info)
    print(text)
    json_path = (
        args.json if args.json is not None else ("" if args.smoke else "benchmark-results.json")
    )
    if json_path:
        data = {
            "meta": info,
            "plan": plan.__dict__,
            "records": [r.to_json() for r in col.records],
            "targets": [t.__dict__ for t in targets],
            "failures": [f.__dict__ for f in col.failures],
        }
        with open(json_path, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(text + "\n")
    return 1 if col.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
