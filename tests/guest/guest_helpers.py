"""Helpers of the in-guest suite."""
import os
import subprocess
import time
from pathlib import Path

import pytest

import article_checks
from ipvtrace.capture import probes
from ipvtrace.lab.netlab import Lab


def probed_or_said(plan: probes.ProbePlan, check):
    """*check*, or where a probe it needs is missing here, what it checks
    instead (article_checks.requires: what ipvtrace says it cannot show);
    skipped with the reason when it has nothing for the probes missing."""
    run = article_checks.as_shown(check, {m["name"] for m in plan.missing})
    if run is not None:
        return run
    pytest.skip("; ".join(f"{m['symbol']} is not probe-able on {plan.kernel}: {m['why']}"
                          for m in plan.missing if m["name"] in check.needs))


def trampolines_expected() -> bool:
    """Whether this kernel gets fentry/fexit programs by default (not with
    IPVTRACE_TRAMPOLINES=0): x86-64,
    5.12+ (a program kept from running inside itself), vmlinux's and ipvlan's
    BTF, not PREEMPT_RT (probes.trampolines), read from the guest itself."""
    return (os.uname().machine == "x86_64" and not probes.preempt_rt()
            and probes.kernel_version(os.uname().release) >= (5, 12)
            and Path("/sys/kernel/btf/vmlinux").exists() and Path("/sys/kernel/btf/ipvlan").exists())


def two_pods(ns: list[str], subnet: str):
    """A parent (veth ens10 in ns[0]) and two L2 pods ns[1], ns[2] holding
    SUBNET.1 and SUBNET.2 (/24): a context manager yielding the Lab."""
    lab = Lab(namespaces=ns)
    with lab:
        lab.veth(ns[0], "ens10", ns[0], "peer0")
        for pod, ip in ((ns[1], f"{subnet}.1/24"), (ns[2], f"{subnet}.2/24")):
            lab.ipvlan(ns[0], "ens10", "ipvl0", "l2", into=pod, rename="eth0")
            lab.addr(pod, "eth0", ip)
        yield lab


def wait_ready(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Until ipvtrace's --ready-file exists (the probes are attached)."""
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        assert time.monotonic() < end, f"not ready after {timeout:.0f} s"
        time.sleep(0.2)


def assert_stats_equal_record(final: dict, replayed: dict) -> None:
    """`stats`'s last reading counts, branch by branch, the packets a
    `record` of the same traffic shows (replayed: run_replay's summary)."""
    rks = replayed["trailer"]["kernel_stats"]
    # a full ring buffer would void the comparison; hits the kernel missed or
    # skipped are allowed below, as many as it reported
    assert not any(k.startswith("lost.") for k in rks), ("record lost events", rks)
    # a kprobe miss (a probe hit inside another probe's handler, e.g. an
    # interrupt's softirq) drops one packet's evidence in each tool: the only
    # difference allowed, and only as many as the kernel reported
    missed = final["kprobe_misses_total"] + sum(
        v for k, v in rks.items() if k.startswith("kprobe_missed."))
    # ... and hits the kernel skipped because a BPF program or a map syscall
    # held the CPU (counted per kprobe on every kernel, tracepoints from 6.7)
    missed += sum(v for ks in (final["kernel_stats"], rks) for k, v in ks.items()
                  if k.startswith("skipped."))
    # ... and a context the kernel found left open (stack_stale: its return
    # never ran a program; seen on 6.1-rt with both tools at once, the
    # packet's helpers and return all skipped; most likely while `stats`
    # read its counters with map syscalls, which holds the CPU's
    # bpf_prog_active, and the kernel runs no BPF program on that CPU
    # meanwhile): stats drops it,
    # record shows it incomplete. Both tools see the same one.
    missed += max(final["kernel_stats"].get("stack_stale", 0),
                  replayed["trailer"]["kernel_stats"].get("stack_stale", 0))
    # what each tool's kernel side reported (repairs of its context stack,
    # misses) and what the correlator could not place: printed on a
    # difference, so a failure names its cause
    diag = {"stats": final["kernel_stats"], "record": replayed["trailer"]["kernel_stats"],
            "record_unattributed": replayed.get("unattributed_events"),
            "record_evicted": replayed.get("evicted")}
    # stats minus record, the branches that differ
    diff = {b: final["branches"].get(b, 0) - replayed["branches"].get(b, 0)
            for b in sorted(set(final["branches"]) | set(replayed["branches"]))}
    diff = {b: d for b, d in diff.items() if d}
    if missed == 0:
        assert not diff, (diff, diag)
        assert final["packets"] == replayed["packets"], diag
    else:
        assert sum(abs(d) for d in diff.values()) <= 2 * missed, (missed, diff, diag)
