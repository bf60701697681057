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
        wanted = (system, config, workload, metric)
        for rec in self.records:
            if (rec.system, rec.config, rec.workload, rec.metric) == wanted:
                return rec
        return None

    def measure(
        self,
        system: str,
        config: str,
        once: Callable[[int], dict[str, Any]],
        *,
        runs: int,
        metrics: Metrics,
        label: str,
    ) -> bool:
        """Repeat ``once`` and file each field named in ``metrics``; keep a failure, don't raise."""
        results: list[dict[str, Any]] = []
        try:
            for i in range(runs):
                results.append(once(i))
        except Exception:
            tb = traceback.format_exc()
            self.failures.append(Failure(system, config, label, tb))
            print(f"  FAILED {system}/{config} {label}:\n{tb}", file=sys.stderr)
            return False
        for fld, (workload, metric, higher) in metrics.items():
            rec = Record(system, config, workload, metric, higher_is_better=higher)
            rec.values = [float(r[fld]) for r in results]
            rec.extra = {"runs": [{k: v for k, v in r.items()} for r in results]}
            self.records.append(rec)
            print(
                f"  {system:8} {config:14} {workload:28} {metric:10} {fmt_num(rec.median):>10}"
                f"  [{fmt_num(rec.low)}-{fmt_num(rec.high)}]",
                file=sys.stderr,
            )
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


Check = Callable[[float], "tuple[bool | None, str]"]


@dataclass
class TargetSpec:
    """A goal for one saqlite figure."""

    workload: str
    metric: str
    text: str
    check: Check
    config: str = "sqlite-normal"

    def evaluate(self, col: Collector) -> TargetResult:
        rec = col.find("saqlite", self.config, self.workload, self.metric)
        met, detail = (None, "no figure") if rec is None else self.check(rec.median)
        return TargetResult(
            "saqlite", self.config, self.workload, self.metric, self.text, met, detail
        )


def _vs(ref: Record | None, factor: float) -> Check:
    """At least ``factor`` times the reference figure."""

    def check(value: float) -> tuple[bool | None, str]:
        if ref is None:
            return None, "no reference figure"
        ratio = value / ref.median
        where = f"{ref.system}/{ref.config} {fmt_num(ref.median)}"
        return value >= factor * ref.median, f"{fmt_num(value)} = {ratio:.2f}x {where}"

    return check


def _at_least(limit: float) -> Check:
    return lambda value: (value >= limit, f"{fmt_num(value)} vs {fmt_num(limit)}")


def _at_most(limit: float) -> Check:
    return lambda value: (value <= limit, f"{fmt_num(value)} vs {fmt_num(limit)}")


def target_specs(
    col: Collector, noop_sizes: list[int], durable_n: int, procs_noop: str, procs_cpu: str
) -> list[TargetSpec]:
    """The goals saqlite was given; references come from the same run."""

    def saq(workload: str, config: str = "sqlite-normal") -> Record | None:
        return col.saq_ref(Record("saqlite", config, workload, "jobs/s"))

    raw = col.raw_ref(Record("saqlite", "sqlite-normal", "", "jobs/s"))
    specs: list[TargetSpec] = []
    for n in noop_sizes:
        noop, enq = f"noop c10 N={n}", f"enqueue gather N={n}"
        specs += [
            TargetSpec(noop, "jobs/s", ">= 4x SAQ-on-Redis", _vs(saq(noop), 4)),
            TargetSpec(noop, "jobs/s", ">= 25% raw aiosqlite batched", _vs(raw, 0.25)),
            TargetSpec(enq, "jobs/s", ">= 2x SAQ", _vs(saq(enq), 2)),
        ]
    one = col.find("saqlite", "sqlite-normal", procs_noop.format(p=1), "jobs/s")
    one_cpu = col.find("saqlite", "sqlite-normal", procs_cpu.format(p=1), "jobs/s")
    durable = f"noop c10 N={durable_n}"
    pickup = "pickup worker-process"
    specs += [
        TargetSpec("bulk enqueue_many N=10000", "jobs/s", ">= 50,000 jobs/s", _at_least(50_000)),
        TargetSpec("sleeper c10 N=1000", "x floor", "within 5% of floor", _at_most(1.05)),
        TargetSpec(pickup, "p50 ms", "<= 1 ms", _at_most(1.0)),
        TargetSpec(pickup, "p99 ms", "<= 2 ms", _at_most(2.0)),
        TargetSpec(pickup, "idle CPU %", "< 2% of a core", _at_most(2.0)),
        TargetSpec(procs_noop.format(p=4), "jobs/s", ">= 1 process", _vs(one, 1.0)),
        TargetSpec(procs_cpu.format(p=2), "jobs/s", ">= 1.7x 1 process", _vs(one_cpu, 1.7)),
        TargetSpec(
            durable,
            "jobs/s",
            ">= 2x SAQ redis-aof",
            _vs(saq(durable, "sqlite-full"), 2),
            config="sqlite-full",
        ),
    ]
    return specs


def check_targets(
    col: Collector, noop_sizes: list[int], durable_n: int, procs_noop: str, procs_cpu: str
) -> list[TargetResult]:
    """The targets evaluated on the medians of this run."""
    specs = target_specs(col, noop_sizes, durable_n, procs_noop, procs_cpu)
    return [spec.evaluate(col) for spec in specs]


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
            f"{t.text}: {_mark(t.met)}"
        )
    lines = [
        "| workload | metric | system | config | median | min-max | vs SAQ-redis "
        "| vs raw aio B=100 | target |",
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
                f"| {wl} | {rec.metric}{arrow} | {rec.system} | {rec.config} "
                f"| {fmt_num(rec.median)} | "
                f"{fmt_num(rec.low)}-{fmt_num(rec.high)} | {_ratio(rec, col.saq_ref(rec))} | "
                f"{_ratio(rec, col.raw_ref(rec))} | {target} |"
            )
    return "\n".join(lines)


def render_targets(targets: list[TargetResult]) -> str:
    lines = ["| target | saqlite figure | result |", "|---|---|---|"]
    for t in targets:
        lines.append(
            f"| {t.workload} {t.metric} ({t.config}) {t.text} | {t.detail} | {_mark(t.met)} |"
        )
    return "\n".join(lines)


def render_failures(col: Collector) -> str:
    if not col.failures:
        return ""
    parts = ["## Failures", ""]
    for f in col.failures:
        parts += [
            f"### {f.system} / {f.config}: {f.workload}",
            "",
            "```",
            f.error.rstrip(),
            "```",
            "",
        ]
    return "\n".join(parts)
