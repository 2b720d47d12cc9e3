"""The probe plan: which kernel symbols this kernel has, resolved once at start.

Every kernel difference ipvtrace knows about is decided here and nowhere else:
symbol names (GCC clones such as ``ipvlan_rcv_frame.isra.0``), inlined helpers,
tracepoint fields that appeared in later kernels. The plan is written into each
recording, and `what_this_kernel_shows()` turns it into the sentences that tell
a user which branches cannot be told apart here.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Container

from ipvtrace.capture import btf, kcode
from ipvtrace.model.evidence import WORKER_RX_FNS

TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


@dataclass(frozen=True)
class Trampoline:
    """The fentry/fexit program a probe is where the kernel has trampolines
    for its function (trampolines()): about half a kprobe's cost, no
    return-probe instances to run out of."""

    fn: str              # vmlinux: bcc's kfunc__/kretfunc__ name, which names the function;
                         # a module's: the loader loads it with the function's BTF id
    kind: str            # fentry | fexit
    function: str        # the kernel function
    module: str = ""     # "" (vmlinux) or the module whose BTF has the function
    nargs: int = 0       # a module function's arguments as bpf/ reads them (an fexit's
                         # return comes after them): another count there, no trampoline


@dataclass(frozen=True)
class ProbeSpec:
    """One attach point: the BPF function and the kernel symbol(s) it may use."""

    name: str            # stable name used in the plan and in messages
    fn: str              # BPF C function in bpf/ipvtrace.c
    kind: str            # kprobe | kretprobe | raw_tracepoint | tracepoint
    symbol: str          # source-level kernel symbol (a raw tracepoint: its event
                         # name; a classic one: "system:event")
    required: bool       # without it ipvtrace cannot run at all
    why: str             # what is lost without it
    trampoline: Trampoline | None = None


TRACEPOINT_KINDS = ("raw_tracepoint", "tracepoint")

# the per-CPU count of kprobe programs running (and map syscalls): while it
# is above 0 the kernel keeps every kprobe program out on that CPU
PROG_ACTIVE = "bpf_prog_active"


def _vmlinux(fn: str, function: str) -> Trampoline:
    return Trampoline(fn, "fexit" if fn.startswith("kretfunc__") else "fentry", function)


SPECS: tuple[ProbeSpec, ...] = (
    ProbeSpec("xmit", "on_xmit", "kprobe", "ipvlan_queue_xmit", True, "TX entry",
              Trampoline("on_xmit", "fentry", "ipvlan_queue_xmit", "ipvlan", 2)),
    # ipvlan_queue_xmit's return, as xmit_one reports its caller's (the
    # same value): a tracepoint has no return-probe instances to run out of
    # (an fexit on ipvlan_queue_xmit where the kernel allows: it runs for
    # ipvlan's xmits only, where the tracepoint runs for every device's)
    ProbeSpec("xmit_ret", "on_xmit_done", "raw_tracepoint", "net_dev_xmit", True, "TX verdict",
              Trampoline("on_xmit_done", "fexit", "ipvlan_queue_xmit", "ipvlan", 2)),
    # (not a trampoline: its argument is a struct sk_buff **, which the
    # verifier does not let an fentry program read on 6.1/6.12: "arg0 type
    # PTR is not a struct"; and a kprobe beside a trampoline on one function
    # puts both on ftrace's slower path)
    ProbeSpec("rx", "on_rx", "kprobe", "ipvlan_handle_frame", True, "RX entry"),
    ProbeSpec("rx_ret", "on_rx_ret", "kretprobe", "ipvlan_handle_frame", True, "RX verdict"),
    ProbeSpec("rcv_frame", "on_rcv_frame", "kprobe", "ipvlan_rcv_frame", False,
              "local delivery is inferred from dev_forward_skb only"),
    ProbeSpec("lookup_ret", "on_lookup_ret", "kretprobe", "ipvlan_addr_lookup", False,
              "which slave owns the destination is not shown",
              Trampoline("on_lookup_ret", "fexit", "ipvlan_addr_lookup", "ipvlan", 4)),
    ProbeSpec("fwd", "on_fwd", "kprobe", "dev_forward_skb", True,
              "tx.l2.local / tx.l2.to_parent / mcast.deliver cannot be seen",
              _vmlinux("kfunc__dev_forward_skb", "dev_forward_skb")),
    ProbeSpec("fwd_ret", "on_fwd_ret", "kretprobe", "dev_forward_skb", False,
              "delivery delivered vs forward_failed cannot be told apart",
              _vmlinux("kretfunc__dev_forward_skb", "dev_forward_skb")),
    ProbeSpec("qxmit", "on_qxmit", "kprobe", "__dev_queue_xmit", True,
              "tx.l2.out_parent / mcast.out_parent cannot be seen",
              _vmlinux("kfunc____dev_queue_xmit", "__dev_queue_xmit")),
    ProbeSpec("local_out", "on_local_out", "kprobe", "ip_local_out", True,
              "tx.l3.routed (IPv4) cannot be seen", _vmlinux("kfunc__ip_local_out", "ip_local_out")),
    ProbeSpec("local_out6", "on_local_out6", "kprobe", "ip6_local_out", False,
              "tx.l3.routed (IPv6) cannot be seen",
              _vmlinux("kfunc__ip6_local_out", "ip6_local_out")),
    ProbeSpec("mc_enqueue", "on_mc_enqueue", "kprobe", "ipvlan_multicast_enqueue", False,
              "multicast enqueue is inferred from the destination MAC"),
    # the worker's run: a trampoline where the kernel has them. A kprobe's
    # program runs with the CPU's current_kprobe set, and the worker's task
    # runs it with softirqs enabled: an interrupt taken then (RPS's IPI) runs
    # NET_RX on its way out, and every kprobe hit there, ipvlan_handle_frame's
    # for each frame of the backlog, is missed by the kernel (re-entry;
    # tests/guest/test_rps.py: 11 of 10,000 RX lost in one CI run, 107 with
    # a busy worker on the RX CPU). A trampoline sets no current_kprobe.
    ProbeSpec("mc_work", "on_mc_work", "kprobe", "ipvlan_process_multicast", False,
              "multicast worker deliveries (mcast.*) cannot be tied to their packet",
              Trampoline("on_mc_work", "fentry", "ipvlan_process_multicast", "ipvlan", 1)),
    ProbeSpec("mc_work_ret", "on_mc_work_ret", "kretprobe", "ipvlan_process_multicast", False,
              "multicast worker deliveries (mcast.*) cannot be tied to their packet",
              Trampoline("on_mc_work_ret", "fexit", "ipvlan_process_multicast", "ipvlan", 1)),
    # (a trampoline for the same reason: a task sending a broadcast calls it
    # for the looped-back copy with softirqs enabled. Where the worker calls
    # another function (7.2: netif_receive_skb), a kprobe there)
    ProbeSpec("netif_rx", "on_netif_rx", "kprobe", "netif_rx", False,
              "mcast.deliver of frames from outside cannot be seen",
              _vmlinux("kfunc__netif_rx", "netif_rx")),
    ProbeSpec("l3_rcv", "on_l3_rcv", "kprobe", "ipvlan_l3_rcv", False,
              "L3S: rx.l3s.local cannot be told from rx.l3s.to_host"),
    ProbeSpec("nf_input", "on_nf_input", "kprobe", "ipvlan_nf_input", False,
              "L3S: the LOCAL_IN hand-over to the slave is not shown"),
    ProbeSpec("s2a", "on_s2a", "kprobe", "ipvlan_skb_to_addr", False,
              "L3S: which slave owns the destination is not shown"),
    ProbeSpec("s2a_ret", "on_s2a_ret", "kretprobe", "ipvlan_skb_to_addr", False,
              "L3S: which slave owns the destination is not shown"),
    # raw: no trace record filled for each of the node's frees (bpf/ipvtrace.c)
    ProbeSpec("kfree", "on_kfree", "raw_tracepoint", "kfree_skb", False,
              "drops (skb:kfree_skb) are not shown"),
    ProbeSpec("consume", "on_consume", "raw_tracepoint", "consume_skb", False,
              "a slave's own skb consumed (skb:consume_skb) is not shown"),
)

# the skb tracepoints whose fields (format files) say which arguments the
# raw ones have: kfree_skb's reason (5.17+), consume_skb's location (6.3+)
TRACEPOINTS = (("skb", "kfree_skb"), ("skb", "consume_skb"))
# A program the kernel skips (another BPF program, or a map syscall, holds
# the CPU's bpf_prog_active): 6.7+ counts those per program (its
# recursion_misses, kprobes and tracepoints alike); before, the tracer
# estimates them for kprobes only (the kprobe's hits minus the program's runs).
COUNTS_SKIPPED_SINCE = (6, 7)
# PREEMPT_RT kernels whose tracepoints call their probes without turning
# preemption off: Debian's 6.12 wraps the call in preempt_disable_notrace,
# 7.2 (tracepoint.h: guard(srcu_fast_notrace)) in SRCU only, so a raw
# tracepoint's BPF program runs with migration off but can be preempted;
# another task that hits the tracepoint on that CPU meanwhile is skipped
# (prog->active). Seen in the 7.2 RT guest: net_dev_xmit's program skipped,
# TX contexts left open, their packets missing or a to-parent frame's RX row
# complete without its TX. Where that would close a TX context, a kretprobe
# on ipvlan_queue_xmit does (its program runs with preemption off); the skb
# free tracepoints are classic ones there (perf's handler runs their programs
# with preemption off: trace/perf.h, guard(preempt_notrace)), reading the
# trace record at the format file's offsets (free_tp_cflags). Seen before:
# the raw consume_skb program skipped twice in one 7.2 RT run, four L3S RX
# rows incomplete. Kernels between the two are taken as 7.2
# (unverified; both ways are correct on both).
RAW_TP_PREEMPTIBLE_RT_SINCE = (6, 13)
XMIT_KRETPROBE_FLAG = "-DIPVT_KRETPROBE_XMIT_RET"
FREE_TP_FLAG = "-DIPVT_TP_FREES"
# the fields of a classic skb free tracepoint's record its program reads,
# and their sizes (bpf/: on_kfree, on_consume with IPVT_TP_FREES)
FREE_TP_FIELDS = {"skbaddr": 8, "location": 8, "reason": 4}
RAW_TP_PREEMPTIBLE_NOTE = (
    "PREEMPT_RT kernel whose raw tracepoints' programs can be preempted (another task's hit "
    "meanwhile would be skipped): TX contexts close by a return probe on ipvlan_queue_xmit, not "
    "the net_dev_xmit tracepoint, and the skb frees are classic tracepoints, whose programs run "
    "with preemption off (each skb free on the node fills a trace record first)")
# BPF trampolines (fentry/fexit) exist from 5.5 (bcc attaches them on x86-64
# only), but a trampoline keeps a program from running inside itself on one
# CPU only from 5.12 (prog->active, counted as recursion_misses): before, a
# softirq at the end of an interrupt that came while a program ran could run
# it again on that CPU, over the per-CPU context it was changing, uncounted
# (a kprobe's program is kept out by bpf_prog_active, and the estimate of
# skipped() counts it). Debian's 5.10 keeps kprobes.
TRAMPOLINES_SINCE = (5, 12)
# "0": kprobes and tracepoints even where the kernel has trampolines
# (fentry/fexit are the default there). History, because it was off twice:
# session 23 turned them off after soft lockups in Debian's 6.1 under QEMU
# (TCG, 2 vCPUs) when a tracer was SIGKILLed in a ping flood; session 24
# caught the stacks, which are the emulator's (a CPU spinning on an int3 at
# __dev_queue_xmit+0 whose bytes the kernel reads as the 5-byte NOP again; a
# kprobes-only run called address 0 in the same test). Then a real reason:
# a trampoline skips only the program already running on the CPU
# (prog->active), where a kprobe skips every kprobe program
# (bpf_prog_active). A softirq that runs at the end of an interrupt taken
# inside on_qxmit opens its own context (on_xmit is another program) but its
# __dev_queue_xmit hit is skipped: a record without it, complete as far as
# the kernel knew (Debian's 7.2: one complete `unknown` row in the tiny-ring
# spanning test). Session 25 flags such contexts in the kernel
# (keepout_cflags): a context opened while one of ipvtrace's trampoline or
# raw tracepoint programs is marked running on the CPU (its prog->active,
# set before its first instruction and cleared after its last: the
# interrupted one), or one that on_xmit's fentry opens while a kprobe's
# program runs (bpf_prog_active), is incomplete (`kept_out`). (A count each
# program kept of itself while it ran left one complete `unknown` row: the
# kernel's instructions around a program are outside it; a kprobe on the
# kernel's count of skips, bpf_prog_inc_misses_counter, is refused: notrace.)
# Session 26 ran that spanning test on 7.2 with trampolines 12 times in a
# row (1 vCPU), every run clean, and made them the default again.
TRAMPOLINES_ENV = "IPVTRACE_TRAMPOLINES"
# BPF atomic instructions that return the old value (BPF_FETCH): the verifier
# refuses them before 5.12 ("BPF_STX uses reserved fields", seen on 5.10)
ATOMIC_FETCH_SINCE = (5, 12)


def version_cflags(release: str) -> list[str]:
    """What the BPF program may use on kernel *release* (a full release
    string), where only the version tells: the compile check uses it too."""
    return ["-DIPVT_HAVE_ATOMIC_FETCH"] if kernel_version(release) >= ATOMIC_FETCH_SINCE else []


class PlanError(RuntimeError):
    """Tracing cannot start on this kernel; the message says what to do."""


@dataclass
class ProbePlan:
    kernel: str
    tracefs: str
    attach: list[dict] = field(default_factory=list)      # {name, fn, kind, symbol}
    missing: list[dict] = field(default_factory=list)     # {name, symbol, why}
    cflags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts_skipped: bool = False   # the kernel counts tracepoint programs it skipped (6.7+)
    # ipvlan_rcv_frame on RX: "probed" (ipvlan's RX path calls the probed
    # symbol), "inlined" (the compiler inlined it there: 7.2), "unknown"
    rcv_frame_rx: str = "probed"
    # the function ipvlan_process_multicast hands frames from outside to a
    # slave with, where the `netif_rx` probe goes: netif_rx (6.1, 6.12) or
    # netif_receive_skb (7.2), read from its code
    worker_rx: str = "netif_rx"
    # how the BPF program tells a softirq the multicast worker's task serves
    # from the worker itself: "preempt_count" (per CPU), "task" (PREEMPT_RT)
    # or "none" (its hits outside ipvlan are taken for the worker's)
    softirq_check: str = "none"

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def probe_count(self) -> int:
        return len(self.attach)


def find_tracefs() -> Path:
    for p in TRACEFS_CANDIDATES:
        if (p / "available_filter_functions").exists():
            return p
    raise PlanError(
        "tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing"
    )


class Available:
    """available_filter_functions: the functions a kprobe can go on. Its
    text is kept beside the names: a GCC clone (`name.isra.0`) is found by
    a substring search in C, where a test of each of the ~60k names cost
    1-2 s of a TCG guest's start-up per symbol not there as it is."""

    def __init__(self, text: str) -> None:
        self._text = "\n" + text   # every name follows a newline
        self.names = {line.partition(" ")[0] for line in text.splitlines()}

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def starting(self, prefix: str) -> list[str]:
        """The names that start with *prefix*."""
        out: list[str] = []
        text, pat = self._text, "\n" + prefix
        i = text.find(pat)
        while i >= 0:
            end = text.find("\n", i + 1)
            out.append(text[i + 1:end if end >= 0 else len(text)].partition(" ")[0])
            i = text.find(pat, i + 1)
        return out


def resolve_symbol(symbol: str, available: Available) -> str | None:
    """The attachable name for *symbol*: itself or a GCC clone of it."""
    if symbol in available:
        return symbol
    clone = re.compile(re.escape(symbol) + r"\.(isra|constprop|part)\.\d+")
    clones = sorted(s for s in available.starting(symbol + ".") if clone.fullmatch(s))
    return clones[0] if clones else None


def asked_function(spec: ProbeSpec, worker_rx: str) -> str:
    """The kernel function a kprobe spec is put on here: its symbol, except
    the worker's hand-off to a slave (netif_rx), which is the function this
    kernel's ipvlan_process_multicast calls (worker_rx_fn)."""
    return worker_rx if spec.name == "netif_rx" else spec.symbol


def clone_note(asked: str, sym: str) -> str | None:
    """What start-up says when the probe for *asked* sits on *sym*, a GCC
    clone of it (resolve_symbol); None when it sits on *asked* itself (a
    function the worker calls instead of netif_rx is no clone: it was asked
    for, and worker_rx_fn says so)."""
    if sym == asked:
        return None
    return (f"{asked} is the GCC clone {sym} here: a hit counts only when the skb it was "
            "handed is the packet's and its slave is the one ipvlan_addr_lookup found "
            "(otherwise the packet is incomplete)")


def tracepoint_exists(tracefs: Path, event: str) -> bool:
    """Is there a tracepoint *event* (any subsystem) on this kernel?"""
    return any((tracefs / "events").glob(f"*/{event}/format"))


def read_available(tracefs: Path) -> Available:
    with open(tracefs / "available_filter_functions") as f:
        return Available(f.read())


def build(tracefs: Path | None = None, kernel: str | None = None) -> ProbePlan:
    """Resolve every probe against this kernel; raise PlanError if one required is absent."""
    tracefs = tracefs or find_tracefs()
    kernel = kernel or os.uname().release
    check_kernel(tracefs, kernel)
    available = read_available(tracefs)
    plan = ProbePlan(kernel=kernel, tracefs=str(tracefs))
    try:   # once: /proc/kallsyms costs seconds to read under emulation
        ksyms: kcode.Symbols | kcode.KcodeError = kcode.module_symbols(
            "ipvlan", set(WORKER_RX_FNS) | set(PERCPU_SYMBOLS) | {PROG_ACTIVE})
    except kcode.KcodeError as exc:
        ksyms = exc
    plan.worker_rx, why = worker_rx_fn(available, ksyms)
    if why:
        plan.notes.append(why)
    kbtf: btf.BTF | None = None
    try:
        kbtf = btf.BTF(btf.read())
    except btf.BTFError as exc:
        plan.notes.append(f"struct offsets come from the kernel headers ({exc}): a slower start")
    rt = preempt_rt()   # (read once: the plan needs it four times)
    tramp, why = trampolines(kernel, kbtf, rt, lambda: module_btf("ipvlan"))
    if why:
        plan.notes.append(why)
    if raw_tp_preemptible(kernel, rt):
        plan.notes.append(RAW_TP_PREEMPTIBLE_NOTE)
    for spec in SPECS:
        spec = attach_spec(spec, kernel, rt)
        if spec.name == "xmit_ret" and spec.kind == "kretprobe":
            plan.cflags.append(XMIT_KRETPROBE_FLAG)
        if spec.kind in TRACEPOINT_KINDS:
            event = spec.symbol.rpartition(":")[2]
            sym = spec.symbol if tracepoint_exists(tracefs, event) else None
        else:
            sym = resolve_symbol(asked_function(spec, plan.worker_rx), available)
        if sym is None:
            if spec.required:
                what = "tracepoint" if spec.kind in TRACEPOINT_KINDS else "kernel symbol"
                raise PlanError(
                    f"{what} {spec.symbol} is not probe-able on {kernel} "
                    f"({spec.why}); ipvtrace needs it"
                )
            plan.missing.append({"name": spec.name, "symbol": spec.symbol, "why": spec.why})
            continue
        tr = spec.trampoline
        # (a GCC clone is not in BTF: a kprobe on it)
        if tr and tr.function in tramp and (spec.kind == "raw_tracepoint" or sym == spec.symbol):
            entry = {"name": spec.name, "fn": tr.fn, "kind": tr.kind, "symbol": tr.function}
            if tr.module:
                entry.update(module=tr.module, btf_id=tramp[tr.function])
            plan.attach.append(entry)
            plan.cflags.append(f"-DIPVT_FENTRY_{spec.name.upper()}")
            continue
        plan.attach.append({"name": spec.name, "fn": spec.fn, "kind": spec.kind, "symbol": sym})
        note = clone_note(asked_function(spec, plan.worker_rx), sym)
        if note:
            plan.notes.append(note)
    rcv = next((a["symbol"] for a in plan.attach if a["name"] == "rcv_frame"), None)
    if rcv is not None:
        plan.rcv_frame_rx, why = rcv_frame_on_rx(rcv, ksyms)
        if plan.rcv_frame_rx != "probed":
            plan.notes.append(RCV_FRAME_RX_NOTE[plan.rcv_frame_rx].format(sym=rcv, why=why))
    if kbtf is not None:
        try:
            # the few struct offsets bpf/ipvtrace.c reads: with them, bcc parses
            # no kernel header that defines struct sk_buff (a 4x faster compile)
            plan.cflags += btf.cflags(btf.offsets(kbtf))
        except btf.BTFError as exc:
            plan.notes.append(f"struct offsets come from the kernel headers ({exc}): "
                              "a slower start")
    plan.cflags += version_cflags(kernel)
    flags, plan.softirq_check, why = softirq_cflags(ksyms, kbtf, rt)
    plan.cflags += flags
    if why:
        plan.notes.append(SOFTIRQ_NOTE.format(why=why))
    flags, why = keepout_cflags(ksyms, kbtf, plan.softirq_check, available,
                                "-DIPVT_FENTRY_XMIT" in plan.cflags,
                                bool(tramp) or kernel_version(kernel) >= COUNTS_SKIPPED_SINCE,
                                sum(map(watched, plan.attach)),
                                bool(tramp) and trampolines_preemptible(kernel))
    plan.cflags += flags
    if why:
        plan.notes.append(why)
    if rt:
        # softirqs run in threads and a task can be preempted inside a probed
        # function: another task's contexts must not land on its stack
        plan.cflags.append("-DIPVT_STACK_PER_TASK")
        plan.notes.append("PREEMPT_RT kernel: contexts are kept per task, not per CPU")
        if kernel_version(kernel) < ATOMIC_FETCH_SINCE:
            plan.notes.append(
                "PREEMPT_RT before 5.12 has no atomic fetch-and-add for BPF: `stats` can count "
                "two signatures first seen at the same moment on one CPU in one slot")
    plan.counts_skipped = kernel_version(kernel) >= COUNTS_SKIPPED_SINCE
    if not plan.counts_skipped:
        plan.cflags.append("-DIPVT_COUNT_RUNS")   # the skip estimate's runs (loader.skipped)
        plan.notes.append(
            "this kernel does not count the skb free tracepoint hits it skips while another "
            "BPF program or a map syscall holds the CPU (6.7+ does): a drop seen only there "
            "may be missing unreported (skipped kprobe hits are counted)")
    classic = {a["symbol"] for a in plan.attach if a["kind"] == "tracepoint"}
    if classic:
        plan.cflags.append(FREE_TP_FLAG)
    for sys_, ev in TRACEPOINTS:
        fmt = tracefs / "events" / sys_ / ev / "format"
        if not fmt.exists():
            continue   # not attached either (plan.missing)
        text = fmt.read_text()
        if ev == "consume_skb" and "location" in text:
            plan.cflags.append("-DIPVT_HAVE_CONSUME_LOCATION")
        if ev == "kfree_skb" and " reason;" in text:
            plan.cflags.append("-DIPVT_HAVE_DROP_REASON")
        elif ev == "kfree_skb":
            plan.notes.append("skb:kfree_skb has no drop reason before 5.17: reasons are not shown")
        if f"{sys_}:{ev}" in classic:
            flags = free_tp_cflags(ev, format_offsets(text))
            if flags:
                plan.cflags += flags
                continue
            drop = next(a for a in plan.attach if a["symbol"] == f"{sys_}:{ev}")
            plan.attach.remove(drop)
            why = next(sp.why for sp in SPECS if sp.name == drop["name"])
            plan.missing.append({"name": drop["name"], "symbol": drop["symbol"],
                                 "why": f"{why} (its record has no skbaddr and location where "
                                        "ipvtrace reads them)"})
    return plan


_FORMAT_FIELD = re.compile(r"^\s*field:[^;]*?(\w+);\s*offset:(\d+);\s*size:(\d+);", re.M)


def format_offsets(text: str) -> dict[str, int]:
    """The offsets in a tracepoint's record (its tracefs format file,
    *text*) of those FREE_TP_FIELDS it has at the size bpf/ reads: where
    a classic tracepoint's program finds them."""
    out = {}
    for name, off, size in _FORMAT_FIELD.findall(text):
        if FREE_TP_FIELDS.get(name) == int(size):
            out[name] = int(off)
    return out


def free_tp_cflags(event: str, offsets: dict[str, int]) -> list[str]:
    """-D flags giving bpf/'s classic skb free tracepoint program for
    *event* (kfree_skb, consume_skb) its record's *offsets*: from the format
    file where it runs (format_offsets), from the kernel's BTF (its
    trace_event_raw_EVENT struct) in the compile check. [] when the record
    lacks skbaddr or location: the probe cannot be attached."""
    if "skbaddr" not in offsets or "location" not in offsets:
        return []
    return [f"-DIPVT_TP_{event.upper()}_{name.upper()}={off}"
            for name, off in sorted(offsets.items())]


def module_btf(module: str) -> bytes | None:
    """A module's BTF (/sys/kernel/btf/MODULE), None when it has none."""
    try:
        return btf.read(btf.VMLINUX_BTF.parent / module)
    except btf.BTFError:
        return None


def trampolines(kernel: str, kbtf: "btf.BTF | None", rt: bool,
                ipvlan_btf: Callable[[], bytes | None] = lambda: None,
                ) -> tuple[dict[str, int], str]:
    """The functions this kernel can attach by fentry/fexit instead of a
    kprobe or tracepoint (ProbeSpec.trampoline): each one's BTF id in its module's BTF (0
    for vmlinux's, which bcc looks up), and a note when it can attach none
    ("" when that is not news). Not when TRAMPOLINES_ENV is "0". A
    trampoline costs about half a kprobe
    (bench/mechanism.py); __dev_queue_xmit and ip_local_out run for every
    packet of the node. ipvlan's own functions need the module's BTF, with
    the arguments bpf/ expects (an fexit reads the return after them)."""
    if os.environ.get(TRAMPOLINES_ENV) == "0":
        return {}, ""   # asked for: not news (the plan names each probe's kind)
    if rt:
        # a trampoline's program runs with migration off but preemptible
        # there: another task's programs could run in between on this CPU,
        # and what the kernel keeps out then is not read on PREEMPT_RT
        # (bpf/: opened_kept_out); a kprobe's runs with preemption off
        return {}, ("PREEMPT_RT kernel: kprobes, not fentry/fexit (a trampoline's BPF program "
                    "can be preempted there)")
    if os.uname().machine != "x86_64" or kernel_version(kernel) < TRAMPOLINES_SINCE:
        return {}, ""
    if kbtf is None:
        return {}, ("no vmlinux BTF: kprobes, not fentry/fexit (a higher cost for every packet "
                    "of the node)")
    tramps = [sp.trampoline for sp in SPECS if sp.trampoline]
    out = {name: 0 for name in kbtf.funcs({t.function for t in tramps if not t.module})}
    mod = ipvlan_btf()   # (read only here: the module's BTF is a file read and a parse)
    if mod is None:
        return out, ("the ipvlan module has no BTF here: its functions are kprobes, not "
                     "fentry/fexit")
    want = {t.function: t.nargs for t in tramps if t.module == "ipvlan"}
    try:
        found = btf.module_funcs(kbtf, mod, set(want))
    except btf.BTFError as exc:
        return out, f"the ipvlan module's BTF could not be read ({exc}): its functions are kprobes"
    out.update({name: tid for name, (tid, nargs) in found.items() if nargs == want[name]})
    return out, ""


# RX callers of ipvlan_rcv_frame: ipvlan_handle_mode_l3 (a symbol on Debian's
# 6.1, 6.12 and 7.2), or ipvlan_handle_frame itself where that is inlined too
RCV_FRAME_RX_CALLERS = ["ipvlan_handle_mode_l3", "ipvlan_handle_frame"]
RCV_FRAME_RX_NOTE = {
    "inlined": "ipvlan_rcv_frame is inlined into ipvlan's RX path here ({sym} is called on TX "
               "only): a frame from outside delivered to a slave (rx.local) is shown by the slave "
               "ipvlan_addr_lookup found and RX_HANDLER_ANOTHER, without a probe hit of its own",
    "unknown": "whether ipvlan_rcv_frame is inlined into ipvlan's RX path could not be read "
               "({why}): rx.local is also named from the slave ipvlan_addr_lookup found and "
               "RX_HANDLER_ANOTHER when no {sym} hit is seen",
}


def rcv_frame_on_rx(symbol: str, ksyms: "kcode.Symbols | kcode.KcodeError") -> tuple[str, str]:
    """("probed", "") when ipvlan's RX path calls *symbol* (the probe sees RX
    deliveries), ("inlined", "") when it does not, ("unknown", why) when the
    code cannot be read. Asked of the kernel's code, not of its version."""
    try:
        if isinstance(ksyms, kcode.KcodeError):
            raise ksyms
        called = kcode.still_called("ipvlan", symbol, RCV_FRAME_RX_CALLERS, symbols=ksyms)
    except kcode.KcodeError as exc:
        return "unknown", str(exc)
    return ("inlined" if called is False else "probed"), ""


# where a CPU's preempt_count is (x86-64): the per-CPU areas' offsets, and
# the per-CPU variable itself, or (6.2 to 6.14) the struct that holds it
PERCPU_SYMBOLS = ("__per_cpu_offset", "__preempt_count", "pcpu_hot")
SOFTIRQ_NOTE = ("hits in a softirq that the multicast worker's task runs (at its local_bh_enable) "
                "cannot be told from the worker's own here ({why}): they are reported as the "
                "worker's, and only those that name a queued frame join its packet")


def softirq_cflags(ksyms: "kcode.Symbols | kcode.KcodeError", kbtf: "btf.BTF | None",
                   rt: bool) -> tuple[list[str], str, str]:
    """-D flags for bpf/'s serving_softirq(), how it tells (ProbePlan.softirq_check),
    and why it cannot ("" when it can). PREEMPT_RT keeps the softirq state
    in the task, others in the per-CPU preempt_count."""
    if rt:
        off = btf.optional_offset(kbtf, "task_struct", "softirq_disable_cnt", 4)
        if off is None:
            return [], "none", "no task_struct.softirq_disable_cnt in this kernel's BTF"
        return [f"-DIPVT_RT_SOFTIRQ_CNT_OFF={off}"], "task", ""
    if isinstance(ksyms, kcode.KcodeError):
        return [], "none", str(ksyms)
    other = ksyms[1]
    base = other.get("__per_cpu_offset", 0)
    count = other.get("__preempt_count")
    if count is None and "pcpu_hot" in other:
        inner = btf.optional_offset(kbtf, "pcpu_hot", "preempt_count", 4)
        count = None if inner is None else other["pcpu_hot"] + inner
    if not base or count is None:
        return [], "none", ("/proc/kallsyms names no __per_cpu_offset and per-CPU preempt_count "
                            "(or hides their addresses)")
    flags = [f"-DIPVT_PERCPU_OFFSETS={base:#x}", f"-DIPVT_PREEMPT_COUNT={count:#x}"]
    return flags, "preempt_count", ""


# the function whose kprobe tells the loader each program's prog->active
PROG_INFO_FN = "bpf_prog_get_info_by_fd"
# struct offsets on_prog_info reads (BTF)
KEEPOUT_OFFSETS = {"IPVT_OFF_PROG_AUX": ("bpf_prog", "aux", 8),
                   "IPVT_OFF_PROG_ACTIVE": ("bpf_prog", "active", 8),
                   "IPVT_OFF_AUX_ID": ("bpf_prog_aux", "id", 4)}
KEEPOUT_NOTE = ("a context opened while the kernel keeps some of its hits out (a softirq "
                "inside another BPF program's run) cannot be flagged here ({why}): such a "
                "packet may show as complete without them")


# the programs whose prog->active the kernel sets while they run
MARKED_KINDS = ("fentry", "fexit", "raw_tracepoint")
# programs whose hits count only in the multicast worker's run (a work
# item's task): its entry and return, and netif_rx, whose hits outside a
# worker's run are not reported (bpf/: report_skb_dev's worker_only). No
# context opened while one of them is marked (in an interrupt that came
# during its run, or in a task that preempted it) can hold a hit of theirs,
# so none loses one: not watched. (Where a trampoline's program can be
# preempted, a worker run on that CPU meanwhile has its hit of that program
# skipped: counted, `skipped.<probe>`, as a kprobe's miss is.)
WORKER_ONLY = frozenset(("mc_work", "mc_work_ret", "netif_rx"))


def watched(entry: dict) -> bool:
    """Whether bpf/'s opened_kept_out reads the mark of this plan entry's
    program: a trampoline or raw tracepoint program whose hits a context
    opened during its run could need."""
    return entry["kind"] in MARKED_KINDS and entry["name"] not in WORKER_ONLY


def keepout_cflags(ksyms: "kcode.Symbols | kcode.KcodeError", kbtf: "btf.BTF | None",
                   softirq_check: str, available: Container[str], fentry_xmit: bool,
                   keeps_out_one: bool, marked: int = 0,
                   preemptible: bool = True) -> tuple[list[str], str]:
    """-D flags for bpf/'s opened_kept_out(), and a note when it cannot
    tell. A context opened while one of ipvtrace's trampoline or raw
    tracepoint programs is marked running on the CPU (its prog->active: the
    interrupted one) loses that program's hits (*keeps_out_one*: trampolines
    in the plan, or 6.7+ raw tracepoints); one ipvlan_queue_xmit's fentry
    opens while a kprobe's program runs (bpf_prog_active) loses its kprobe
    hits. Both read per-CPU data, at the per-CPU areas' offsets that
    softirq_cflags found (not on PREEMPT_RT). *marked*: how many of the
    plan's programs have such a mark and are watched (watched()), each read once.
    *preemptible*: another task may run on a CPU while one of the plan's
    programs is marked there (trampolines_preemptible); where it cannot, the
    marks are read only in an interrupt (a softirq, hardirq or NMI in
    preempt_count), the only place one can be set under a context then:
    a task's TX context pays one read, not one per program."""
    other = {} if isinstance(ksyms, kcode.KcodeError) else ksyms[1]
    if softirq_check != "preempt_count":
        why = "the per-CPU areas' address is unknown"
        return [], (KEEPOUT_NOTE.format(why=why) if keeps_out_one else "")
    flags: list[str] = [] if preemptible else ["-DIPVT_KEEPOUT_INTERRUPTED_ONLY"]
    why = ""
    if fentry_xmit:
        if other.get(PROG_ACTIVE):
            flags.append(f"-DIPVT_BPF_PROG_ACTIVE={other[PROG_ACTIVE]:#x}")
        else:
            why = "/proc/kallsyms gives no address of bpf_prog_active"
    offs = {name: btf.optional_offset(kbtf, s, m, size)
            for name, (s, m, size) in KEEPOUT_OFFSETS.items()}
    if marked and PROG_INFO_FN not in available:
        why = why or f"{PROG_INFO_FN} cannot be probed"
    elif marked and None in offs.values():
        why = why or "no BTF for struct bpf_prog"
    elif marked:
        flags.append(f"-DIPVT_WATCH_ACTIVE={marked}")
        flags += [f"-D{name}={off}" for name, off in offs.items()]
    return flags, (KEEPOUT_NOTE.format(why=why) if why and keeps_out_one else "")


def worker_rx_fn(available: Container[str], ksyms: "kcode.Symbols | kcode.KcodeError") -> tuple[str, str]:
    """The function ipvlan_process_multicast calls for a frame from outside
    (WORKER_RX_FNS), and a note when it is not netif_rx or cannot be read."""
    try:
        if isinstance(ksyms, kcode.KcodeError):
            raise ksyms
        for fn in WORKER_RX_FNS:
            if fn in available and kcode.still_called("ipvlan", fn, ["ipvlan_process_multicast"],
                                                      symbols=ksyms):
                if fn == WORKER_RX_FNS[0]:
                    return fn, ""
                return fn, (f"ipvlan's multicast worker hands frames from outside to a slave by {fn} "
                            f"here (not {WORKER_RX_FNS[0]}): the probe is on {fn}")
    except kcode.KcodeError as exc:
        return WORKER_RX_FNS[0], (f"which function ipvlan's multicast worker hands frames from outside "
                                  f"to a slave with could not be read ({exc}): {WORKER_RX_FNS[0]} is "
                                  "probed; if it is another, mcast.deliver of such frames is not seen")
    return WORKER_RX_FNS[0], (f"ipvlan_process_multicast calls none of {', '.join(WORKER_RX_FNS)} "
                              "here: mcast.deliver of frames from outside is not seen")


_BCC_EVENT = re.compile(r"^[pr]\d*:((?:\S+/)?([pr]_(\S+)_bcc_(\d+)))\s")


def leftover_probe_events(tracefs: Path) -> list[tuple[str, int]]:
    """(event name, pid) of ipvtrace's probes in tracefs `kprobe_events` whose
    process is gone. bcc makes its return probes there (for `maxactive`) and
    only its own cleanup removes them: a tracer killed by SIGKILL (OOM
    killer, a node drain) leaves them behind, each still costing a kprobe
    hit. Ours are bcc's `p_/r_<symbol>_bcc_<pid>` on the symbols of SPECS."""
    ours = tuple(sorted({sp.symbol for sp in SPECS} | set(WORKER_RX_FNS), key=len, reverse=True))
    out = []
    try:
        text = (tracefs / "kprobe_events").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        m = _BCC_EVENT.match(line + " ")
        if not m or not m.group(3).startswith(ours):
            continue
        pid = int(m.group(4))
        if not Path(f"/proc/{pid}").exists():
            out.append((m.group(1), pid))   # GROUP/EVENT, as `-:` wants it
    return out


def remove_leftover_probe_events(tracefs: Path) -> list[str]:
    """Remove what leftover_probe_events() finds; returns the names removed."""
    removed = []
    for name, _pid in leftover_probe_events(tracefs):
        try:
            # unbuffered: the kernel's answer (EBUSY, ENOENT) comes from this write
            fd = os.open(tracefs / "kprobe_events", os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, f"-:{name}\n".encode())
            finally:
                os.close(fd)
            removed.append(name)
        except OSError as exc:   # still enabled somewhere: doctor names it
            import sys

            print(f"ipvtrace: cannot remove {name} from kprobe_events: {exc.strerror}",
                  file=sys.stderr)
    return removed


def preempt_rt() -> bool:
    """A PREEMPT_RT kernel says so in /sys/kernel/realtime (and in uname -v)."""
    try:
        return Path("/sys/kernel/realtime").read_text().strip() == "1"
    except OSError:
        return "PREEMPT_RT" in os.uname().version


# CONFIG_ choice of the preemption model -> its name (the default mode where
# CONFIG_PREEMPT_DYNAMIC lets preempt= or debugfs change it), lazy first: an
# RT kernel's config sets it too
_PREEMPT_CONFIG = (("CONFIG_PREEMPT_LAZY", "lazy"), ("CONFIG_PREEMPT", "full"),
                   ("CONFIG_PREEMPT_VOLUNTARY", "voluntary"), ("CONFIG_PREEMPT_NONE", "none"))
# models where a task runs until it gives up the CPU (a BPF program never does)
NOT_PREEMPTIVE = ("none", "voluntary")


def preempt_model(release: str, root: Path = Path("/")) -> str:
    """This kernel's preemption model now: "none", "voluntary", "full",
    "lazy" or "rt"; "" when nothing says. debugfs names the mode in use
    (sched/preempt, in parentheses); else preempt= on the command line,
    which a PREEMPT_DYNAMIC kernel obeys; else the config's choice
    (/boot/config-RELEASE)."""
    if preempt_rt():
        return "rt"
    try:
        m = re.search(r"\((\w+)\)", (root / "sys/kernel/debug/sched/preempt").read_text())
        if m:
            return m.group(1)
    except (OSError, UnicodeDecodeError):   # (a file not text: nothing said)
        pass
    try:
        config = (root / f"boot/config-{release}").read_text()
    except (OSError, UnicodeDecodeError):
        return ""
    on = set(re.findall(r"^(CONFIG_PREEMPT\w*)=y$", config, re.M))
    if "CONFIG_PREEMPT_DYNAMIC" in on:
        try:
            m = re.search(r"(?:^|\s)preempt=(\w+)", (root / "proc/cmdline").read_text())
            if m and m.group(1) in NOT_PREEMPTIVE + ("full", "lazy"):
                return m.group(1)
        except (OSError, UnicodeDecodeError):
            pass
    return next((name for opt, name in _PREEMPT_CONFIG if opt in on), "")


def raw_tp_preemptible(kernel: str, rt: bool) -> bool:
    """A PREEMPT_RT kernel whose raw tracepoints' programs can be preempted
    (RAW_TP_PREEMPTIBLE_RT_SINCE): no raw tracepoint there (attach_spec)."""
    return rt and kernel_version(kernel) >= RAW_TP_PREEMPTIBLE_RT_SINCE


def attach_spec(spec: ProbeSpec, kernel: str, rt: bool) -> ProbeSpec:
    """*spec* as this kernel attaches it: where raw_tp_preemptible, the TX
    close (xmit_ret) a kretprobe on ipvlan_queue_xmit (XMIT_KRETPROBE_FLAG)
    and the skb frees classic tracepoints (FREE_TP_FLAG); else *spec* itself."""
    if spec.kind != "raw_tracepoint" or not raw_tp_preemptible(kernel, rt):
        return spec
    if spec.name == "xmit_ret":
        return replace(spec, kind="kretprobe", symbol="ipvlan_queue_xmit", trampoline=None)
    system = next(sys_ for sys_, ev in TRACEPOINTS if ev == spec.symbol)
    return replace(spec, kind="tracepoint", symbol=f"{system}:{spec.symbol}")


def trampolines_preemptible(release: str, root: Path = Path("/")) -> bool:
    """Whether another task may run on a CPU while a trampoline's program is
    running there: the kernel enters it with migration off, not preemption
    (a kprobe's and a raw tracepoint's run with preemption off). True unless
    the model is known not to preempt (NOT_PREEMPTIVE)."""
    return preempt_model(release, root) not in NOT_PREEMPTIVE


def check_kernel(tracefs: Path, kernel: str) -> None:
    """The kernel-side prerequisites, each with the command that fixes it."""
    if not (tracefs / "kprobe_events").exists():
        raise PlanError(f"this kernel ({kernel}) has no kprobes (CONFIG_KPROBES): ipvtrace "
                        "needs a kernel with kprobes, such as a distribution kernel")
    if Path("/sys/module/ipvlan").exists():
        return
    dry = subprocess.run(["modprobe", "-n", "ipvlan"], capture_output=True)
    if dry.returncode == 0:
        raise PlanError("the ipvlan module is not loaded: modprobe ipvlan "
                        "(creating an ipvlan device loads it too)")
    raise PlanError(f"this kernel ({kernel}) has no ipvlan driver: run ipvtrace where ipvlan "
                    "is used, or try it in a VM with scripts/demo")


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a release string such as 6.12.117+deb12-amd64."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def what_this_kernel_shows(plan: ProbePlan) -> list[str]:
    """Sentences for `doctor` and the recording header."""
    lines = [f"{m['symbol']} not probe-able: {m['why']}" for m in plan.missing]
    # once each: an entry and its return missing for one reason say it twice
    return list(dict.fromkeys(lines + list(plan.notes)))
