"""A real kernel where the ipvlan module is not loaded: a one-line error that
says what to do, before anything is compiled or attached."""
import re
import subprocess
import sys
from pathlib import Path


def test_ipvlan_module_not_loaded(tmp_path):
    r = subprocess.run(["rmmod", "ipvlan"], capture_output=True, text=True)
    assert r.returncode == 0 and not Path("/sys/module/ipvlan").exists(), r.stderr
    try:
        out = tmp_path / "x.ipvt"
        r = subprocess.run([sys.executable, "-m", "ipvtrace", "record", "-o", str(out)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1
        assert r.stderr.strip().splitlines() == [
            "ipvtrace: error: the ipvlan module is not loaded: modprobe ipvlan "
            "(creating an ipvlan device loads it too)"]
        assert not out.exists() and not Path(str(out) + ".partial").exists()
    finally:
        subprocess.run(["modprobe", "ipvlan"], check=True)


def test_struct_offsets_come_from_this_kernels_btf():
    """The running kernel's /sys/kernel/btf/vmlinux gives the struct offsets
    the probe plan compiles with, and they are the ones its image's BTF holds
    (the compile check proves those equal the headers' offsetof)."""
    import os

    from ipvtrace.capture import btf, compile_check, probes

    plan = probes.build()
    got = {f.split("=")[0][2:]: int(f.split("=")[1]) for f in plan.cflags
           if f.startswith("-DIPVT_OFF_")}
    image_btf = btf.BTF(compile_check.vmlinuz_btf(Path(f"/boot/vmlinuz-{os.uname().release}")))
    image = btf.offsets(image_btf)
    # ... and those of struct bpf_prog that a context's kept-out check reads
    # (probes.keepout_cflags: not on PREEMPT_RT, nor before 5.12, whose
    # struct bpf_prog has no `active`: 5.10's trampolines and raw
    # tracepoints keep nothing out by it, and ipvtrace uses no trampoline there)
    keep = {n: btf.optional_offset(image_btf, st, m, size)
            for n, (st, m, size) in probes.KEEPOUT_OFFSETS.items()}
    marks = keep["IPVT_OFF_PROG_ACTIVE"] is not None
    assert marks == (probes.kernel_version(os.uname().release) >= (5, 12))
    offs = {k: v for k, v in got.items() if k not in keep}
    assert offs == image and set(offs) == set(btf.FIELDS), (offs, image)
    assert {k: v for k, v in got.items() if k in keep} == (keep if marks and not probes.preempt_rt()
                                                           else {})
    assert not [n for n in plan.notes if "struct offsets" in n or "struct bpf_prog" in n], plan.notes


def test_call_sites_are_read_from_the_running_code():
    """Whether ipvlan's RX path calls the probed ipvlan_rcv_frame clone, and
    which function its multicast worker hands frames from outside with, are
    read from the live kernel's code (/proc/kcore) at start, and agree with
    the module file on disk, disassembled by objdump: on 6.1 and 6.12
    ipvlan_handle_mode_l3 jumps to the clone and the worker calls netif_rx;
    on 7.2 the clone is inlined there and the worker calls
    netif_receive_skb, and the plan says so."""
    import lzma
    import os
    import re
    import subprocess

    from ipvtrace.capture import probes
    from ipvtrace.model.evidence import WORKER_RX_FNS

    plan = probes.build()
    rcv = next(a["symbol"] for a in plan.attach if a["name"] == "rcv_frame")
    assert plan.rcv_frame_rx in ("probed", "inlined"), plan.notes
    ko = Path(subprocess.run(["modinfo", "-n", "ipvlan"], capture_output=True, text=True,
                             check=True).stdout.strip())
    raw = ko.read_bytes()
    elf = Path("/tmp/ipvlan-objdump.ko")
    elf.write_bytes(lzma.decompress(raw) if ko.suffix == ".xz" else raw)
    dis = subprocess.run(["objdump", "-dr", "--no-show-raw-insn", str(elf)], capture_output=True,
                         text=True, check=True).stdout
    callers, fn = set(), None
    external: dict[str, set[str]] = {}   # function -> the vmlinux functions it calls
    for line in dis.splitlines():
        m = re.match(r"^[0-9a-f]+ <(\S+)>:$", line)
        if m:
            fn = m.group(1)
        elif re.search(rf"\s(call|jmp)\s+[0-9a-f]+ <{re.escape(rcv)}>$", line):
            callers.add(fn)
        elif (m := re.search(r"R_X86_64_PLT32\s+(\w+)-0x4$", line)):
            external.setdefault(fn, set()).add(m.group(1))
    on_rx = bool(callers & set(probes.RCV_FRAME_RX_CALLERS))
    assert "ipvlan_queue_xmit" in callers, callers   # TX calls it on every kernel seen
    assert plan.rcv_frame_rx == ("probed" if on_rx else "inlined"), (callers, plan.notes)
    inlined_note = [n for n in plan.notes if "inlined into ipvlan's RX path" in n]
    assert bool(inlined_note) == (not on_rx), plan.notes
    worker = external.get("ipvlan_process_multicast", set()) & set(WORKER_RX_FNS)
    assert len(worker) == 1 and plan.worker_rx in worker, (worker, plan.worker_rx)
    attached = {a["name"]: a["symbol"] for a in plan.attach}
    assert attached["netif_rx"] == plan.worker_rx, attached
    print(f"{os.uname().release}: {rcv} called from {sorted(callers)}: {plan.rcv_frame_rx} on RX; "
          f"the worker's RX copies by {plan.worker_rx}")


def test_softirqs_the_worker_serves_are_told_apart():
    """The BPF program can tell a softirq the multicast worker's kworker
    runs from the worker itself: through the per-CPU preempt_count
    (kallsyms; BTF for pcpu_hot on 6.2-6.14), on PREEMPT_RT through the
    task. Every Debian kernel tried has what it takes; the plan says how."""
    import os

    from ipvtrace.capture import probes

    plan = probes.build()
    want = "task" if probes.preempt_rt() else "preempt_count"
    assert plan.softirq_check == want, plan.notes
    assert not [n for n in plan.notes if "local_bh_enable" in n], plan.notes
    flags = [f for f in plan.cflags if "SOFTIRQ" in f or "PERCPU" in f or "PREEMPT_COUNT" in f]
    print(f"{os.uname().release}: softirq check by {plan.softirq_check}: {flags}")


def test_each_gcc_clone_start_up_names_is_one_on_this_kernel(plan):
    """Start-up (and the recording header) says where a probe sits on a GCC
    clone instead of the function: true of each, read from this kernel's
    available_filter_functions, and said once. (7.2 said so of
    netif_receive_skb, which its multicast worker calls instead of netif_rx:
    no clone.)"""
    from ipvtrace.capture import probes

    said = probes.what_this_kernel_shows(plan)
    assert len(said) == len(set(said)), said
    avail = probes.read_available(Path(plan.tracefs))
    clones = [re.match(r"(\S+) is the GCC clone (\S+) here", n) for n in said]
    for fn, clone in (m.groups() for m in clones if m):
        assert re.fullmatch(re.escape(fn) + r"\.(isra|constprop|part)\.\d+", clone), (fn, clone)
        assert clone in avail and fn not in avail, (fn, clone)
        assert any(a["symbol"] == clone for a in plan.attach), (clone, plan.attach)
