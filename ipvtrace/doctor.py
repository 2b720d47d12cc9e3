"""`ipvtrace doctor`: what tracing needs on this machine, one line per check,
each failing line with the command that fixes it; then what this kernel can
and cannot show."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ipvtrace.capture import btf, probes
from ipvtrace.model import catalogue


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _kallsyms_has(name: str) -> bool:
    try:
        with open("/proc/kallsyms") as f:
            return any(line.rstrip().endswith(f" {name}") for line in f)
    except OSError:
        return False


def run_checks() -> tuple[list[Check], probes.ProbePlan | None]:
    release = os.uname().release
    out: list[Check] = []
    root = os.geteuid() == 0
    out.append(Check("root", root, "running as root" if root else f"uid {os.geteuid()}",
                     "run it with sudo (tracing needs CAP_BPF and CAP_PERFMON)"))
    try:
        import bcc  # type: ignore[import-not-found]

        out.append(Check("bcc", True, f"{Path(bcc.__file__).parent} (python {sys.executable})"))
    except ImportError:
        out.append(Check("bcc", False, f"not importable by {sys.executable}",
                         "apt-get install python3-bpfcc (Fedora: dnf install python3-bcc); run "
                         "ipvtrace with /usr/bin/python3 or a venv made with "
                         "--system-site-packages; never 'pip install bcc' (unrelated project)"))
    build = Path(f"/lib/modules/{release}/build")
    out.append(Check("kernel headers", build.exists(), str(build.resolve()) if build.exists()
                     else f"{build} missing", f"apt-get install linux-headers-{release}"))
    try:
        tracefs = probes.find_tracefs()
        out.append(Check("tracefs", True, str(tracefs)))
    except probes.PlanError:
        tracefs = None
        out.append(Check("tracefs", False, "not mounted",
                         "mount -t tracefs tracefs /sys/kernel/tracing"))
    kprobes = tracefs is not None and (tracefs / "kprobe_events").exists()
    out.append(Check("kprobes", kprobes, "kprobe_events present" if kprobes
                     else "this kernel has no kprobes (CONFIG_KPROBES)",
                     "use a distribution kernel, or a VM: scripts/demo"))
    ipvlan = Path("/sys/module/ipvlan").exists()
    out.append(Check("ipvlan module", ipvlan, "loaded" if ipvlan else "not loaded",
                     "modprobe ipvlan (absent on this kernel? run in a VM: scripts/demo)"))
    ringbuf = _kallsyms_has("bpf_ringbuf_output")
    out.append(Check("BPF ring buffer", ringbuf, "bpf_ringbuf_output present" if ringbuf
                     else "no BPF ring buffer (kernel older than 5.8?)",
                     "ipvtrace needs Linux 5.8 or newer"))
    try:
        offs = btf.read_offsets()
        out.append(Check("kernel BTF", True, f"{len(offs)} struct offsets from "
                         f"{btf.VMLINUX_BTF}: the BPF program compiles without parsing "
                         "struct sk_buff's headers"))
    except btf.BTFError as exc:
        out.append(Check("kernel BTF", False, str(exc), "none needed: the offsets come from the "
                         "kernel headers, and the compile at start takes ~4x longer",
                         required=False))
    mod_btf = Path("/sys/kernel/btf/ipvlan").exists()
    out.append(Check("ipvlan BTF", mod_btf, "/sys/kernel/btf/ipvlan" if mod_btf else "absent (not "
                     "needed: ipvtrace reads modes from netlink)", required=False))
    if tracefs is not None and kprobes:
        left = probes.leftover_probe_events(tracefs)
        out.append(Check("leftover probes", not left,
                         "none of a killed ipvtrace in kprobe_events" if not left else
                         f"{len(left)} left by killed tracers: "
                         + ", ".join(f"{n} (pid {p} gone)" for n, p in left),
                         "the next ipvtrace start removes them, or: "
                         + "; ".join(f"echo -:{n} >> {tracefs}/kprobe_events" for n, _ in left[:2]),
                         required=False))
    plan = None
    if tracefs is not None and kprobes and ipvlan:
        try:
            plan = probes.build(tracefs)
            out.append(Check("probe plan", True, f"{plan.probe_count} probes resolve on {release}"))
        except probes.PlanError as exc:
            out.append(Check("probe plan", False, str(exc), "see the message"))
    return out, plan


def report(write=print) -> int:
    checks, plan = run_checks()
    for c in checks:
        mark = "ok  " if c.ok else ("FAIL" if c.required else "note")
        line = f"{mark} {c.name:<16} {c.detail}"
        if not c.ok and c.fix:
            line += f"\n     fix: {c.fix}"
        write(line)
    if plan is not None:
        write("")
        write(f"on {plan.kernel}:")
        for p in plan.attach:
            write(f"  {p['kind']:<14} {p['symbol']}")
        for line in probes.what_this_kernel_shows(plan):
            write(f"  cannot/limited: {line}")
    write("")
    write("branches no kernel run has shown here (see docs/branches.md):")
    for b in catalogue.load().branches.values():
        if b.not_observed:
            write(f"  {b.id}: {b.not_observed}")
    return 0 if all(c.ok or not c.required for c in checks) else 1
