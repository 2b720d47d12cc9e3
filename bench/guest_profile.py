"""Where a traced packet's extra guest time goes, by kernel symbol: the
benchmark's UDP flood between two ipvlan namespaces, untraced and under
`ipvtrace ARGS` (default `stats`), each with `perf record -e cpu-clock -a`
over the whole guest. Under emulation the cpu-clock timer samples the
guest's wall time where it is spent, so the time of a symbol divided by
the packets of the flood is what a packet costs there; the difference
between the two floods, symbol by symbol, is what tracing adds (the
attach mechanism's entries and exits, the programs, the helpers they
call). Runs as root on a kernel with ipvlan, e.g. in the VM:

  .venv/bin/python -m ipvtrace.lab.vm --kernel 6.12 --cpus 2 --work build/bench/prof -- \\
      python bench/guest_profile.py [stats --json --interval 2]

Prints the table, and one JSON object on its last line. Not part of
bench/run: it needs perf (linux-perf) and sampling slows both floods
alike, so its rates are not the benchmark's."""
from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datapath as dp  # noqa: E402
from ipvtrace.lab.netlab import Lab  # noqa: E402

HZ = 1000          # samples a second a CPU
WINDOW = 5         # seconds sampled, inside the 8 s flood
TOP = 30           # symbols shown

# what a kernel symbol is part of (the first match); the rest is "kernel"
KINDS = (
    ("the programs (JIT-ed BPF)", ("bpf_prog_",)),
    ("helpers the programs call", ("bpf_probe_read", "copy_from_kernel_nofault", "bpf_ktime_get",
                                   "ktime_get_mono_fast_ns", "read_tsc", "bpf_get_current",
                                   "bpf_get_smp", "htab_", "bpf_ringbuf", "__bpf_ringbuf",
                                   "bpf_map_", "array_map", "percpu_array", "bpf_lru",
                                   "__htab", "pcpu_", "bpf_jiffies")),
    ("attach mechanism (trampolines, kprobes, tracepoints)",
     ("bpf_trampoline_", "__bpf_prog_enter", "__bpf_prog_exit", "__bpf_tramp_",
      "migrate_disable", "migrate_enable", "kprobe_", "ftrace_trampoline", "get_kprobe",
      "trace_call_bpf", "bpf_trace_run", "__bpf_trace_", "update_prog_stats",
      "arch_ftrace_ops_list_func", "ftrace_ops_")),
    ("idle", ("pv_native_safe_halt", "default_idle", "do_idle", "cpu_startup_entry",
              "tick_nohz_idle", "schedule_idle", "nohz_run_idle_balance")),
)


def kind_of(name: str) -> str:
    """The part of the guest a row of the profile belongs to."""
    if name.startswith("user: "):
        return name
    sym = name.removeprefix("[k] ")
    for kind, prefixes in KINDS:
        if sym.startswith(prefixes):
            return kind
    return "kernel (the packet's own path, scheduler, syscalls)"


def sched_counts() -> dict[str, int]:
    """Context switches (/proc/stat) and the interrupts one CPU sends
    another to wake a task there (rescheduling, function call: RES and CAL
    in /proc/interrupts), all CPUs, since boot."""
    out = {"context switches": 0, "wake-up IPIs (RES+CAL)": 0}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("ctxt "):
            out["context switches"] = int(line.split()[1])
    for line in Path("/proc/interrupts").read_text().splitlines():
        f = line.split()
        if f and f[0] in ("RES:", "CAL:"):
            out["wake-up IPIs (RES+CAL)"] += sum(int(x) for x in f[1:] if x.isdigit())
    return out


def profiled_flood(lab: Lab, out: Path) -> tuple[dict, dict[str, float]]:
    """The flood's rate, and the seconds of guest time each symbol took
    during WINDOW seconds of it (all CPUs), from its second second on:
    perf samples with CLOCK_MONOTONIC times (-k mono), which is the clock
    of time.monotonic(), and the report keeps that window."""
    perf = subprocess.Popen(["perf", "record", "-q", "-k", "mono", "-e", "cpu-clock",
                             "-F", str(HZ), "-a", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(5)   # perf's start under emulation
        began: list[float] = []
        c0 = sched_counts()
        res = dp.udp_rate(lab, during=lambda _cli: began.append(time.monotonic()))
        c1 = sched_counts()
    finally:   # perf stopped, the flood done or not
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=300)
    packets = res["pps"] * dp.SECONDS
    res["per_packet"] = {k: (c1[k] - c0[k]) / packets if packets else 0.0 for k in c0}
    t0 = began[0] + 2
    rep = subprocess.run(["perf", "report", "-i", str(out), "--stdio", "-q", "--sort", "dso,sym",
                          "-F", "sample,dso,sym", "--percent-limit", "0",
                          "--time", f"{t0:.6f},{t0 + WINDOW:.6f}"],
                         capture_output=True, text=True)
    secs: dict[str, float] = collections.Counter()
    for line in rep.stdout.splitlines():
        f = line.split(None, 2)
        if len(f) != 3 or not f[0].isdigit():
            continue
        dso, name = f[1], f[2].strip()
        if name.startswith("[k] bpf_prog_"):
            name = "[k] bpf_prog_* (the programs)"
        elif name.startswith("[k] bpf_trampoline_"):
            name = "[k] bpf_trampoline_* (their entries and exits)"
        elif not name.startswith("[k]"):
            name = f"user: {dso}"   # the tools and iperf3, by binary
        secs[name] += int(f[0]) / HZ
    if not secs:
        raise RuntimeError(f"perf recorded no samples in the flood: {rep.stderr[-600:]}")
    return res, dict(secs)


def main(argv: list[str]) -> int:
    args = argv or ["stats", "--json", "--interval", "2"]
    if shutil.which("perf") is None:
        print("guest_profile: perf not found (apt-get install linux-perf; in the VM, on the "
              "machine whose root it mounts)", file=sys.stderr)
        return 2
    for m in ("ipvlan", "veth"):
        subprocess.run(["modprobe", m])
    # JIT-ed programs by name; no lowering of the sample rate when a sample
    # takes long (it does under emulation); each put back as it was at the end
    saved = {}
    for key, value in (("net.core.bpf_jit_kallsyms", "1"),
                       ("kernel.perf_cpu_time_max_percent", "0"), ("kernel.kptr_restrict", "0")):
        path = Path("/proc/sys") / key.replace(".", "/")
        try:
            saved[path] = path.read_text()
            path.write_text(value)
        except OSError as e:
            print(f"guest_profile: cannot set {key}: {e}", file=sys.stderr)
    # perf's binary and the kernel's symbols read once before the first flood
    subprocess.run(["perf", "record", "-q", "-a", "-o", "/dev/null", "--", "true"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scratch = Path(tempfile.mkdtemp(prefix="ipvt-prof-"))
    try:
        return _profile(args, scratch)
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        print(f"guest_profile: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        for path, old in saved.items():
            path.write_text(old)


def _profile(args: list[str], scratch: Path) -> int:
    ready = scratch / "ready"
    with Lab(namespaces=dp.LAB_NAMESPACES) as lab:
        dp.build(lab)
        base, base_s = profiled_flood(lab, scratch / "untraced.data")
        # its output to a file in the guest's tmpfs, as bench/run does
        out_f = open(scratch / "tool.out", "w")
        proc = subprocess.Popen([sys.executable, "-m", "ipvtrace", *args, "--ready-file",
                                 str(ready)], stdout=out_f, stderr=subprocess.PIPE)
        try:
            try:
                dp.wait_file(ready, proc)
            except RuntimeError as e:   # the tool's own words, not only its exit code
                err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise RuntimeError(f"ipvtrace {' '.join(args)}: {e}: {err[-1:]}") from None
            traced, traced_s = profiled_flood(lab, scratch / "traced.data")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=900)
            out_f.close()
    n0 = base["pps"] * WINDOW
    n1 = traced["pps"] * WINDOW
    us0 = {k: v / n0 * 1e6 for k, v in base_s.items()}
    us1 = {k: v / n1 * 1e6 for k, v in traced_s.items()}
    ncpu = os.cpu_count() or 1
    diff = {k: us1.get(k, 0.0) - us0.get(k, 0.0) for k in set(us0) | set(us1)}
    print(f"untraced {base['pps']:,.0f} packets/s, {' '.join(args)} {traced['pps']:,.0f} "
          f"({traced['pps'] / base['pps']:.2f}); guest time a packet, sampled (of the "
          f"CPUs' time, idle included): {sum(us0.values()):.1f} us untraced (of "
          f"{ncpu * 1e6 / base['pps']:.1f}), {sum(us1.values()):.1f} traced "
          f"(of {ncpu * 1e6 / traced['pps']:.1f})")
    for k in base["per_packet"]:
        print(f"{k} a packet: {base['per_packet'][k]:.3f} untraced, "
              f"{traced['per_packet'][k]:.3f} traced")
    by_kind: dict[str, list[float]] = {}
    for k in diff:
        row = by_kind.setdefault(kind_of(k), [0.0, 0.0])
        row[0] += us0.get(k, 0.0)
        row[1] += us1.get(k, 0.0)
    print(f"{'part of the guest':60} {'untraced':>9} {'traced':>9} {'added':>9}  (us a packet)")
    for k, (a, b) in sorted(by_kind.items(), key=lambda kv: -(kv[1][1] - kv[1][0])):
        print(f"{k[:60]:60} {a:9.2f} {b:9.2f} {b - a:+9.2f}")
    print()
    print(f"{'symbol':60} {'untraced':>9} {'traced':>9} {'added':>9}  (us a packet)")
    for k in sorted(diff, key=lambda k: -abs(diff[k]))[:TOP]:
        print(f"{k[:60]:60} {us0.get(k, 0):9.2f} {us1.get(k, 0):9.2f} {diff[k]:+9.2f}")
    print(json.dumps({"kernel": os.uname().release, "args": args, "untraced_pps": base["pps"],
                      "traced_pps": traced["pps"], "hz": HZ,
                      "per_packet": {"untraced": base["per_packet"],
                                     "traced": traced["per_packet"]},
                      "us_per_packet": {"untraced": us0, "traced": us1}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
