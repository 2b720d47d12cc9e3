"""`ipvtrace stats`: counters in the kernel, read every interval.

No per-packet events reach user space: the BPF program (built with
IPVT_COUNT_ONLY) counts one signature per packet in a map; every interval
this reads the map, names each new signature once (counting.Tally, i.e. the
shared classifier), and hands a report to the sinks (table, JSON lines,
Prometheus). Signals only set a flag; the probes are detached on the way out.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ipvtrace.model import classify as cls
from ipvtrace.model import counting, layout
from ipvtrace.capture import probes, snapshot
from ipvtrace.lifecycle import Beside, StopFlag, announce
from ipvtrace.capture.symbols import drop_reasons
from ipvtrace.model.evidence import KernelFacts
from ipvtrace.model.topology import Topology

Report = dict
MCAST_PREFIX = "mcast."   # per delivery, not per packet


@dataclass
class StatsOptions:
    interval: float = 1.0
    duration: float | None = None
    ready_file: Path | None = None
    sinks: list[Callable[[Report], None]] = field(default_factory=list)


def build_report(rows: Counter, kstats: dict[str, int], misses: dict[str, dict[str, int]],
                 elapsed: float, kernel: str, probe_count: int,
                 previous: Report | None = None, raw: dict[bytes, int] | None = None) -> Report:
    """One reading of the counters, as every sink gets it."""
    before = {}
    if previous is not None:
        before = {_row_key(r): r["packets"] for r in previous["rows"]}
    dt = elapsed - previous["elapsed_s"] if previous is not None else elapsed
    out_rows = []
    for o, n in sorted(rows.items(), key=lambda kv: (kv[0].branch, -kv[1])):
        r = {"branch": o.branch, "delivery": o.delivery, "from": o.frm, "to": o.to,
             "reason": o.reason, "packets": n}
        r["per_s"] = round((n - before.get(_row_key(r), 0)) / dt, 1) if dt > 0 else None
        out_rows.append(r)
    branches: Counter[str] = Counter()
    for r in out_rows:
        branches[r["branch"]] += r["packets"]
    return {
        "elapsed_s": round(elapsed, 3), "kernel": kernel, "probes": probe_count,
        "packets": sum(n for b, n in branches.items() if not b.startswith(MCAST_PREFIX)),
        "branches": dict(sorted(branches.items())),
        "rows": out_rows,
        "kernel_stats": kstats,
        "kprobe_misses": {k: v["misses"] for k, v in sorted(misses.items())},
        "kprobe_misses_total": sum(v["misses"] for v in misses.values()),
        # the kernel's counters as read (struct ipvt_sig bytes, hex): what the
        # rows were named from, kept so a reading can be named again later
        "signatures": {k.hex(): n for k, n in sorted((raw or {}).items())},
    }


def _row_key(r: dict) -> tuple:
    return (r["branch"], r["delivery"], r["from"], r["to"], r["reason"])


def run_stats(opts: StatsOptions) -> Report:
    """Attach in counting mode, report every interval until a signal or the duration."""
    from ipvtrace.capture import loader  # bcc is imported only on this path

    loader.require_root()
    loader.import_bcc()
    plan = probes.build()
    # read while the program compiles (lifecycle.Beside)
    snap_beside = Beside(snapshot.take, "ipvtrace-snapshot")
    sl = layout.sig_layout()
    report: Report | None = None
    with StopFlag() as stop, loader.Tracer(plan, count_only=True) as tracer:
        ctx = cls.Context(topo=Topology.from_snapshots([snap_beside.result()]),
                          drop_reasons=drop_reasons(plan.tracefs), symbols={},
                          flags=layout.current().flags,
                          kernel=KernelFacts.from_plan(plan.to_json()))
        tally = counting.Tally(ctx)
        stop.install()
        t0 = time.monotonic()
        tracer.arm()
        announce(plan, f"counting in the kernel ({plan.probe_count} probes, no events)")
        if opts.ready_file is not None:
            opts.ready_file.write_text(f"{os.getpid()}\n")
        tried: set = set()

        def read() -> Report:
            sigs: Counter = Counter()
            raw_counts = tracer.counts()
            for raw, n in raw_counts.items():
                sigs[counting.decode(raw, sl)] += n
            now = time.monotonic()
            new = tally.unknown_devices(sigs) - tried
            if new:   # a device appeared: read netlink again (once per device)
                tried.update(new)
                for netns in {ns for ns, _ in new}:
                    ctx.topo.add(snapshot.take_netns(netns, ctx.topo.devices))
                tally.forget_names()
            portless = {("port", k) for k in tally.portless_parents(sigs)} - tried
            if portless:   # its slaves may be in any namespace: the node again
                tried.update(portless)
                ctx.topo.add(snapshot.take())
                tally.forget_names()
            misses = tracer.kprobe_misses()
            return build_report(tally.rows(sigs), tracer.kernel_stats(misses), misses,
                                now - t0, plan.kernel, plan.probe_count, report, raw_counts)

        next_at = t0 + opts.interval
        while stop.why is None:
            now = time.monotonic()
            if opts.duration is not None and now - t0 >= opts.duration:
                stop.why = "duration"
                break
            if now < next_at:
                time.sleep(min(0.1, next_at - now))
                continue
            next_at += opts.interval
            report = read()
            for sink in opts.sinks:
                sink(report)
        report = read()   # the last reading, taken before the probes go
        report["ended_by"] = stop.why
    return report
