"""Collecting records, checking the targets and rendering the markdown report."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench_common import Failure, Record, fmt_num

SYSTEM_ORDER = ["saqlite", "saq", "huey", "raw-aiosqlite", "raw-sqlite3"]
# SAQ config that a saqlite config is compared with (durable against durable).
SAQ_REF = {"sqlite-normal": "redis-mem", "sqlite-full": "redis-aof", "redis-mem": "redis-mem"}
RAW_REF_WORKLOAD = "raw lifecycle B=100"
# (key, metric, higher_is_better) per result field of a run.
Metrics = dict[str, tuple[str, str, bool]]


@dataclass
class Collector:
    """All records and failures of one benchmark run."""

    records: list[Record] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def find(self, system: str, config: str, workload: str, metric: str) -> Record | None:
        for rec in self.records:
            if (rec.system, rec.config, rec.workload, rec.metric) == (system, config, workload, metric):
                return rec
        return None

    def measure(
        self,
        system: str,
        config: str,
        runs: int,
        once: Callable[[int], dict[str, Any]],
        metrics: Metrics,
        label: str,
    ) -> bool:
        """Repeat ``once`` and file each field named in ``metrics``; keep a failure, don't raise."""
        results: list[dict[str, Any]] = []
        try:
            for i in range(runs):
                results.append(once(i))
        except Exception:  # noqa: BLE001 - reported in the table, the run goes on
            tb = traceback.format_exc()
            self.failures.append(Failure(system, config, label, tb))
            print(f"  FAILED {system}/{config} {label}:\n{tb}", file=sys.stderr)
            return False
        for fld, (workload, metric, higher) in metrics.items():
            rec = Record(system, config, workload, metric, higher_is_better=higher)
            rec.values = [float(r[fld]) for r in results]
            rec.extra = {"runs": [{k: v for k, v in r.items()} for r in results]}
            self.records.append(rec)
            print(f"  {system:8} {config:14} {workload:28} {metric:10} {fmt_num(rec.median):>10}"
                  f"  [{fmt_num(rec.low)}-{fmt_num(rec.high)}]", file=sys.stderr)
        return True

    def saq_ref(self, rec: Record) -> Record | None:
        if rec.system == "saq" and rec.config == "redis-mem":
            return None
        return self.find("saq", SAQ_REF.get(rec.config, "redis-mem"), rec.workload, rec.metric)

    def raw_ref(self, rec: Record) -> Record | None:
        if rec.metric != "jobs/s":
            return None
        config = rec.config if rec.config in ("sqlite-normal", "sqlite-full") else "sqlite-normal"
        return self.find("raw-aiosqlite", config, RAW_REF_WORKLOAD, "jobs/s")


# --------------------------------------------------------------------------- targets


@dataclass
class TargetResult:
    system: str
    config: str
    workload: str
    metric: str
    text: str
    met: bool | None  # None: could not be evaluated
    detail: str


def _target(col: Collector, workload: str, metric: str, text: str, config: str,
            check: Callable[[float], tuple[bool | None, str]]) -> TargetResult:
    rec = col.find("saqlite", config, workload, metric)
    if rec is None:
        return TargetResult("saqlite", config, workload, metric, text, None, "no figure")
    met, detail = check(rec.median)
    return TargetResult("saqlite", config, workload, metric, text, met, detail)


def _vs(ref: Record | None, factor: float, higher: bool = True) -> Callable[[float], tuple[bool | None, str]]:
    def check(value: float) -> tuple[bool | None, str]:
        if ref is None:
            return None, "no reference figure"
        ratio = value / ref.median
        ok = value >= factor * ref.median if higher else value <= factor * ref.median
        return ok, f"{fmt_num(value)} = {ratio:.2f}x {ref.system}/{ref.config} {fmt_num(ref.median)}"
    return check


def _abs(limit: float, higher: bool) -> Callable[[float], tuple[bool | None, str]]:
    def check(value: float) -> tuple[bool | None, str]:
        ok = value >= limit if higher else value <= limit
        return ok, f"{fmt_num(value)} vs {fmt_num(limit)}"
    return check


def check_targets(col: Collector, noop_sizes: list[int], durable_n: int, procs_noop: str,
                  procs_cpu: str) -> list[TargetResult]:
    """The goals saqlite was given, evaluated on the medians of this run."""
    out: list[TargetResult] = []
    normal = "sqlite-normal"
    for n in noop_sizes:
        wl = f"noop c10 N={n}"
        probe = Record("saqlite", normal, wl, "jobs/s")
        out.append(_target(col, wl, "jobs/s", ">= 4x SAQ-on-Redis", normal, _vs(col.saq_ref(probe), 4)))
        out.append(_target(col, wl, "jobs/s", ">= 25% raw aiosqlite batched", normal,
                           _vs(col.raw_ref(probe), 0.25)))
        ewl = f"enqueue gather N={n}"
        eprobe = Record("saqlite", normal, ewl, "jobs/s")
        out.append(_target(col, ewl, "jobs/s", ">= 2x SAQ", normal, _vs(col.saq_ref(eprobe), 2)))
    out.append(_target(col, "bulk enqueue_many N=10000", "jobs/s", ">= 50,000 jobs/s", normal,
                       _abs(50_000, True)))
    out.append(_target(col, "sleeper c10 N=1000", "x floor", "within 5% of floor", normal, _abs(1.05, False)))
    out.append(_target(col, "pickup worker-process", "p50 ms", "<= 1 ms", normal, _abs(1.0, False)))
    out.append(_target(col, "pickup worker-process", "p99 ms", "<= 2 ms", normal, _abs(2.0, False)))
    out.append(_target(col, "pickup worker-process", "idle CPU %", "< 2% of a core", normal, _abs(2.0, False)))
    one = col.find("saqlite", normal, procs_noop.format(p=1), "jobs/s")
    out.append(_target(col, procs_noop.format(p=4), "jobs/s", ">= 1 process", normal, _vs(one, 1.0)))
    one_cpu = col.find("saqlite", normal, procs_cpu.format(p=1), "jobs/s")
    out.append(_target(col, procs_cpu.format(p=2), "jobs/s", ">= 1.7x 1 process", normal, _vs(one_cpu, 1.7)))
    dwl = f"noop c10 N={durable_n}"
    dprobe = Record("saqlite", "sqlite-full", dwl, "jobs/s")
    out.append(_target(col, dwl, "jobs/s", ">= 2x SAQ redis-aof", "sqlite-full", _vs(col.saq_ref(dprobe), 2)))
    return out


# --------------------------------------------------------------------------- rendering


def _mark(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "n/a"}[met]


def _ratio(rec: Record, ref: Record | None) -> str:
    if ref is None or ref is rec or not ref.median:
        return ""
    return f"{rec.median / ref.median:.2f}x"


def render_table(col: Collector, targets: list[TargetResult]) -> str:
    by_row: dict[tuple[str, str, str, str], list[str]] = {}
    for t in targets:
        by_row.setdefault((t.system, t.config, t.workload, t.metric), []).append(
            f"{t.text}: {_mark(t.met)}")
    lines = [
        "| workload | metric | system | config | median | min-max | vs SAQ-redis | vs raw aio B=100 | target |",
        "|---|---|---|---|---:|---|---:|---:|---|",
    ]
    workloads: list[str] = []
    for rec in col.records:
        if rec.workload not in workloads:
            workloads.append(rec.workload)
    for wl in workloads:
        recs = [r for r in col.records if r.workload == wl]
        recs.sort(key=lambda r: SYSTEM_ORDER.index(r.system) if r.system in SYSTEM_ORDER else 99)
        for rec in recs:
            arrow = "" if rec.higher_is_better else " (lower better)"
            target = "; ".join(by_row.get((rec.system, rec.config, rec.workload, rec.metric), []))
            lines.append(
                f"| {wl} | {rec.metric}{arrow} | {rec.system} | {rec.config} | {fmt_num(rec.median)} | "
                f"{fmt_num(rec.low)}-{fmt_num(rec.high)} | {_ratio(rec, col.saq_ref(rec))} | "
                f"{_ratio(rec, col.raw_ref(rec))} | {target} |")
    return "\n".join(lines)


def render_targets(targets: list[TargetResult]) -> str:
    lines = ["| target | saqlite figure | result |", "|---|---|---|"]
    for t in targets:
        lines.append(f"| {t.workload} {t.metric} ({t.config}) {t.text} | {t.detail} | {_mark(t.met)} |")
    return "\n".join(lines)


def render_failures(col: Collector) -> str:
    if not col.failures:
        return ""
    parts = ["## Failures", ""]
    for f in col.failures:
        parts += [f"### {f.system} / {f.config}: {f.workload}", "", "```", f.error.rstrip(), "```", ""]
    return "\n".join(parts)
