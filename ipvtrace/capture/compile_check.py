"""Compile bpf/ipvtrace.c (events, filtered, stats) and load every program through the verifier, no attach.

Run by scripts/compile-check against each installed kernel's headers.
"""
from __future__ import annotations

import sys

from ipvtrace.capture import loader, probes
from ipvtrace.model import filterexpr


def main() -> int:
    bcc = loader.import_bcc()
    plan = probes.ProbePlan(kernel="compile-check", tracefs="")
    for sys_, ev in probes.TRACEPOINTS:
        fmt = f"/sys/kernel/tracing/events/{sys_}/{ev}/format"
        text = open(fmt).read()
        if ev == "consume_skb" and "location" in text:
            plan.cflags.append("-DIPVT_HAVE_CONSUME_LOCATION")
        if ev == "kfree_skb" and " reason;" in text:
            plan.cflags.append("-DIPVT_HAVE_DROP_REASON")
    # once as shipped, once with a filter that uses every field it can test
    expr = filterexpr.parse("(icmp and host 10.0.0.1) or (udp and dst port 53) or "
                            "src host fd00::1 or not arp")
    # ... and as `ipvtrace stats` builds it
    # ... and with contexts per task, as on a PREEMPT_RT kernel
    for extra in ([], [f"-DIPVT_FILTER_EXPR={expr.c()}"], ["-DIPVT_COUNT_ONLY"],
                  ["-DIPVT_STACK_PER_TASK"], ["-DIPVT_STACK_PER_TASK", "-DIPVT_COUNT_ONLY"]):
        b = bcc.BPF(src_file=str(loader.layout.BPF_DIR / "ipvtrace.c").encode(),
                    cflags=loader.cflags(plan, 64) + extra)
        for spec in probes.SPECS:
            b.load_func(spec.fn.encode(), bcc.BPF.KPROBE)
        b.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
