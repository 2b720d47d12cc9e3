"""Which functions the probe plan attaches by fentry/fexit instead of a
kprobe (probes.trampolines): vmlinux's helpers that the kernel's BTF names
as functions (BTF FUNC; a member of the same name is not one), ipvlan's own
from the module's split BTF, by their type id there and only with the
arguments bpf/ reads (an fexit reads the return value after them); none on
PREEMPT_RT (a trampoline's program can be preempted there, with a note
saying so), none without BTF (noted), none before 5.12, none when the
user turns them off (IPVTRACE_TRAMPOLINES=0; on by default, see
probes.TRAMPOLINES_ENV).
The guest suite runs the chosen plan on Debian's 6.1 and 6.12 (fentry) and
their PREEMPT_RT builds (kprobes)."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipvtrace.capture import btf, kcode, probes

from test_btf import Blob


def kernel_btf(funcs: list[str], members: tuple[str, ...] = ()) -> tuple[Blob, btf.BTF]:
    b = Blob()
    i32 = b.int_("int", 4)
    b.add("", btf.FUNC_PROTO, 1, i32, struct.pack("<II", 0, i32))   # int (int)
    for name in funcs:
        b.add(name, btf.FUNC, 0, 2)
    b.struct_("holder", 4 * len(members), [(m, i32, 4 * i) for i, m in enumerate(members)])
    return b, btf.BTF(b.bytes())


def module_btf(base: Blob, funcs: dict[str, int]) -> bytes:
    """A module's split BTF: its type ids follow the base's, its string
    offsets follow the base's string section; each function gets a
    prototype of its own with *nargs* int arguments (the base's int: id 1)."""
    strs, types, n = b"", b"", base.n
    for name, nargs in funcs.items():
        types += struct.pack("<III", 0, btf.FUNC_PROTO << 24 | nargs, 1)
        types += b"".join(struct.pack("<II", 0, 1) for _ in range(nargs))
        n += 1
        types += struct.pack("<III", len(base.strs) + len(strs), btf.FUNC << 24, n)
        n += 1
        strs += name.encode() + b"\0"
    hdr = struct.pack("<HBBIIIII", btf.BTF_MAGIC, 1, 0, 24, 0, len(types), len(types), len(strs))
    return hdr + types + strs


@pytest.fixture(autouse=True)
def _default(monkeypatch):
    monkeypatch.delenv(probes.TRAMPOLINES_ENV, raising=False)   # (on: the default)


def test_the_helpers_btf_names_as_functions():
    _, kb = kernel_btf(["__dev_queue_xmit", "dev_forward_skb", "netif_receive_skb"],
                       members=("ip_local_out",))   # a struct member of that name: no function
    got, why = probes.trampolines("6.12.117+deb12-amd64", kb, rt=False, ipvlan_btf=lambda: None)
    assert got == {"__dev_queue_xmit": 0, "dev_forward_skb": 0}
    assert "ipvlan module has no BTF" in why


def test_ipvlans_functions_by_their_id_in_the_modules_btf_and_their_arguments():
    base, kb = kernel_btf(["__dev_queue_xmit"])
    # ipvlan_queue_xmit with 3 arguments is not the one bpf/ reads: kprobe
    mod = module_btf(base, {"ipvlan_handle_frame": 1, "ipvlan_queue_xmit": 3,
                            "ipvlan_addr_lookup": 4, "ipvlan_other": 1})
    got, why = probes.trampolines("6.12.117+deb12-amd64", kb, rt=False, ipvlan_btf=lambda: mod)
    first = base.n + 1   # ids: proto, func, proto, func, ...
    assert got == {"__dev_queue_xmit": 0, "ipvlan_addr_lookup": first + 5} and why == ""
    mod = module_btf(base, {"ipvlan_queue_xmit": 2})
    got, _ = probes.trampolines("6.12.117+deb12-amd64", kb, rt=False, ipvlan_btf=lambda: mod)
    assert got["ipvlan_queue_xmit"] == first + 1


def test_a_damaged_module_btf_keeps_kprobes_for_it():
    base, kb = kernel_btf(["__dev_queue_xmit"])
    mod = bytearray(module_btf(base, {"ipvlan_queue_xmit": 2}))
    struct.pack_into("<I", mod, 16, 10_000)   # str_off past the end
    got, why = probes.trampolines("6.12.117+deb12-amd64", kb, rt=False,
                                  ipvlan_btf=lambda: bytes(mod))
    assert got == {"__dev_queue_xmit": 0} and "could not be read" in why


def test_the_specs_with_a_trampoline():
    tramps = {sp.name: sp.trampoline for sp in probes.SPECS if sp.trampoline}
    vmlinux = {t.function for t in tramps.values() if not t.module}
    assert vmlinux == {"__dev_queue_xmit", "ip_local_out", "ip6_local_out", "dev_forward_skb",
                       "netif_rx"}
    # (ipvlan_handle_frame's struct sk_buff ** cannot be read by an fentry
    # program); the TX context closes on ipvlan_queue_xmit's own return there
    assert {n: (t.kind, t.function, t.nargs) for n, t in tramps.items() if t.module} == {
        "xmit": ("fentry", "ipvlan_queue_xmit", 2), "xmit_ret": ("fexit", "ipvlan_queue_xmit", 2),
        "lookup_ret": ("fexit", "ipvlan_addr_lookup", 4),
        # the worker's run: a kprobe's program there left the CPU's
        # current_kprobe set while softirqs could run (every kprobe hit in
        # them missed: tests/guest/test_rps.py)
        "mc_work": ("fentry", "ipvlan_process_multicast", 1),
        "mc_work_ret": ("fexit", "ipvlan_process_multicast", 1)}
    for sp in probes.SPECS:
        t = sp.trampoline
        if t and not t.module:   # bcc's names, which name the function
            assert t.fn == ("kretfunc__" if t.kind == "fexit" else "kfunc__") + t.function
            assert (t.kind == "fexit") == (sp.kind == "kretprobe")
        elif t:                  # the same program name, loaded by the loader
            assert t.fn == sp.fn


def test_preempt_rt_keeps_kprobes_and_says_why():
    _, kb = kernel_btf(["__dev_queue_xmit"])
    got, why = probes.trampolines("6.12.117+deb12-rt-amd64", kb, rt=True)
    assert got == {} and "PREEMPT_RT" in why and "kprobes" in why


def test_where_a_raw_tracepoints_program_can_be_preempted_no_raw_tracepoint_is_attached():
    """PREEMPT_RT 7.2 calls tracepoint probes under SRCU only (6.12: with
    preemption off): a raw tracepoint's program can be preempted there, and
    another task's hit meanwhile is skipped (seen in the 7.2 RT guest: TX
    contexts left open by a skipped net_dev_xmit; L3S RX rows incomplete by a
    skipped consume_skb). There the TX close is a kretprobe on
    ipvlan_queue_xmit, the same program built for it, and the skb frees are
    the classic tracepoints of the same events (perf's handler runs their
    programs with preemption off); nothing else changes, and nowhere else."""
    raw = {s.name: s for s in probes.SPECS if s.kind == "raw_tracepoint"}
    assert {n: s.symbol for n, s in raw.items()} == {
        "xmit_ret": "net_dev_xmit", "kfree": "kfree_skb", "consume": "consume_skb"}
    for kernel, rt, preemptible in [("7.2.13+deb14-rt-amd64", True, True),
                                    ("6.13.0-1-rt-amd64", True, True),
                                    ("6.12.118+deb12-rt-amd64", True, False),
                                    ("6.1.0-57-rt-amd64", True, False),
                                    ("7.2.13+deb14-amd64", False, False)]:
        assert probes.raw_tp_preemptible(kernel, rt) == preemptible, kernel
        got = {n: probes.attach_spec(s, kernel, rt) for n, s in raw.items()}
        if not preemptible:
            assert all(got[n] is s for n, s in raw.items()), kernel
            continue
        assert (got["xmit_ret"].kind, got["xmit_ret"].symbol, got["xmit_ret"].trampoline) == \
            ("kretprobe", "ipvlan_queue_xmit", None)
        assert {n: (g.kind, g.symbol) for n, g in got.items() if n != "xmit_ret"} == {
            "kfree": ("tracepoint", "skb:kfree_skb"), "consume": ("tracepoint", "skb:consume_skb")}
        assert all(g.fn == raw[n].fn for n, g in got.items())
    assert all(probes.attach_spec(s, "7.2.13+deb14-rt-amd64", True) is s
               for s in probes.SPECS if s.name not in raw)


# skb:kfree_skb's format file as Debian 12's 6.12 writes it (rx_sk before
# protocol and reason), cut after the fields
KFREE_FORMAT_6_12 = """name: kfree_skb
ID: 1442
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;

print fmt: "skbaddr=%p rx_sk=%p protocol=%u location=%pS reason: %s", REC->skbaddr
"""


def test_a_classic_free_tracepoint_reads_its_record_where_the_format_file_says():
    assert probes.format_offsets(KFREE_FORMAT_6_12) == {"skbaddr": 8, "location": 16, "reason": 36}
    assert probes.free_tp_cflags("kfree_skb", probes.format_offsets(KFREE_FORMAT_6_12)) == [
        "-DIPVT_TP_KFREE_SKB_LOCATION=16", "-DIPVT_TP_KFREE_SKB_REASON=36",
        "-DIPVT_TP_KFREE_SKB_SKBADDR=8"]
    # a field at a size bpf/ does not read is as good as absent; without
    # skbaddr or location there is nothing to attach
    odd = KFREE_FORMAT_6_12.replace("reason;\toffset:36;\tsize:4", "reason;\toffset:36;\tsize:2")
    assert probes.format_offsets(odd) == {"skbaddr": 8, "location": 16}
    assert probes.free_tp_cflags("kfree_skb", {"skbaddr": 8}) == []


def test_the_format_files_offsets_are_the_btf_ones_the_compile_check_uses():
    """The running kernel's format files (what `ipvtrace` reads) and its
    BTF's trace_event_raw_* structs (what the compile check reads for
    another kernel) give the same offsets: two sources, one record."""
    tracefs = probes.TRACEFS_CANDIDATES[0] / "events"
    try:
        kb = btf.BTF(btf.read())
        texts = {ev: (tracefs / sys_ / ev / "format").read_text() for sys_, ev in probes.TRACEPOINTS}
    except (btf.BTFError, OSError) as exc:
        pytest.skip(f"this machine's kernel does not show both: {exc}")
    for ev, text in texts.items():
        assert probes.format_offsets(text) == btf.tracepoint_offsets(kb, ev, probes.FREE_TP_FIELDS)
        assert {"skbaddr", "location"} <= set(probes.format_offsets(text)), ev


def test_no_btf_keeps_kprobes_and_says_so():
    got, why = probes.trampolines("6.1.0-57-amd64", None, rt=False)
    assert got == {} and "BTF" in why


def test_kernels_before_trampolines_and_the_users_choice(monkeypatch):
    _, kb = kernel_btf(["__dev_queue_xmit"])
    assert probes.trampolines("5.4.0-1-amd64", kb, rt=False) == ({}, "")
    # 5.10 has trampolines, but nothing keeps a program from running inside
    # itself on one CPU there (5.12: prog->active): kprobes
    assert probes.trampolines("5.10.0-32-amd64", kb, rt=False) == ({}, "")
    assert probes.trampolines("5.12.0-1-amd64", kb, rt=False)[0] == {"__dev_queue_xmit": 0}
    for value in ("1", "yes", ""):   # anything but "0" keeps the default
        monkeypatch.setenv(probes.TRAMPOLINES_ENV, value)
        assert probes.trampolines("6.12.117+deb12-amd64", kb, rt=False)[0] == {"__dev_queue_xmit": 0}
    monkeypatch.setenv(probes.TRAMPOLINES_ENV, "0")   # turned off: no note, it was asked for
    read = []
    assert probes.trampolines("6.12.117+deb12-amd64", kb, rt=False,
                              ipvlan_btf=lambda: read.append(1)) == ({}, "")
    assert read == []   # nor is the module's BTF read


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_damaged_module_btf_gives_btferror_only(data):
    base, kb = kernel_btf(["__dev_queue_xmit"])
    blob = bytearray(module_btf(base, {"ipvlan_queue_xmit": 2, "ipvlan_addr_lookup": 4}))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        got = btf.module_funcs(kb, bytes(blob[:cut]), {"ipvlan_queue_xmit", "ipvlan_addr_lookup"})
    except btf.BTFError:
        return
    assert set(got) <= {"ipvlan_queue_xmit", "ipvlan_addr_lookup"}



def bpf_prog_btf() -> btf.BTF:
    """struct bpf_prog { ...; int *active at 40; struct bpf_prog_aux *aux at
    56 } and struct bpf_prog_aux { ...; u32 id at 32 }, as Debian's 6.1 has them."""
    b = Blob()
    i32 = b.int_("int", 4)
    ptr = b.add("", btf.PTR, 0, i32)
    b.struct_("bpf_prog_aux", 64, [("id", i32, 32)])
    b.struct_("bpf_prog", 72, [("active", ptr, 40), ("aux", ptr, 56)])
    return btf.BTF(b.bytes())


def test_a_context_opened_inside_another_programs_run_reads_the_kernels_marks():
    """A context opened while one of ipvtrace's trampoline or raw tracepoint
    programs is marked running on the CPU (prog->active), or one
    ipvlan_queue_xmit's fentry opens while a kprobe's program runs
    (bpf_prog_active), is flagged in the kernel: the plan gives bpf/ the
    marks' offsets (BTF) and bpf_prog_active's address (kallsyms), which
    need the per-CPU areas' offsets (softirq_cflags: preempt_count)."""
    ksyms = ({}, {"__per_cpu_offset": 0xffffffff92e1ab60, probes.PROG_ACTIVE: 0x2d5a0})
    avail = {probes.PROG_INFO_FN}
    flags, why = probes.keepout_cflags(ksyms, bpf_prog_btf(), "preempt_count", avail, True, True,
                                       10)
    assert flags == ["-DIPVT_BPF_PROG_ACTIVE=0x2d5a0", "-DIPVT_WATCH_ACTIVE=10",
                     "-DIPVT_OFF_PROG_AUX=56", "-DIPVT_OFF_PROG_ACTIVE=40",
                     "-DIPVT_OFF_AUX_ID=32"] and why == ""
    # kprobes only: no bpf_prog_active read (a kprobe's context never runs under one)
    flags, _ = probes.keepout_cflags(ksyms, bpf_prog_btf(), "preempt_count", avail, False, True, 3)
    assert not any("BPF_PROG_ACTIVE" in f for f in flags) and "-DIPVT_WATCH_ACTIVE=3" in flags
    # what cannot be read is said, where the kernel keeps programs out one by one
    cases = [(ksyms, bpf_prog_btf(), "none", avail, "per-CPU"),            # PREEMPT_RT, hidden
             (ksyms, None, "preempt_count", avail, "BTF"),
             (ksyms, bpf_prog_btf(), "preempt_count", set(), probes.PROG_INFO_FN),
             (({}, {probes.PROG_ACTIVE: 0}), bpf_prog_btf(), "preempt_count", avail,
              "bpf_prog_active")]
    for ks, kb, how, av, said in cases:
        flags, why = probes.keepout_cflags(ks, kb, how, av, True, True, 10)
        assert "-DIPVT_WATCH_ACTIVE=10" not in flags or "bpf_prog_active" in why
        assert said in why and "complete" in why, why
    # ... and not where nothing is kept out one by one (kprobes before 6.7)
    assert probes.keepout_cflags(ksyms, None, "none", avail, False, False) == ([], "")


def test_the_worker_runs_trampolines_are_not_watched():
    """ipvlan_process_multicast runs only as a work item, and netif_rx's
    hits count only in its run: no context opened during their programs'
    run (an interrupt's softirq, a task that preempted it) can hold a hit
    of theirs, so reading their marks would flag contexts that lost
    nothing. Every other trampoline and raw tracepoint program is watched;
    kprobes never are (bpf_prog_active keeps them out)."""
    entries = [{"name": sp.name, "kind": sp.trampoline.kind if sp.trampoline else sp.kind}
               for sp in probes.SPECS]
    assert {e["name"] for e in entries if probes.watched(e)} == {
        "xmit", "xmit_ret", "lookup_ret", "fwd", "fwd_ret", "qxmit", "local_out", "local_out6",
        "kfree", "consume"}
    assert not probes.watched({"name": "mc_work", "kind": "fentry"})
    assert probes.watched({"name": "qxmit", "kind": "fentry"})
    assert not probes.watched({"name": "qxmit", "kind": "kprobe"})


def test_the_marks_are_read_only_in_an_interrupt_where_no_program_can_be_preempted():
    """Where no program of the plan can be preempted by another task (kprobes
    and raw tracepoints run with preemption off, a trampoline's program with
    migration off only), a mark can be set under a context only when the
    context interrupted that program: bpf/ reads the marks only in an
    interrupt (IPVT_KEEPOUT_INTERRUPTED_ONLY)."""
    ksyms = ({}, {"__per_cpu_offset": 0xffffffff92e1ab60, probes.PROG_ACTIVE: 0x2d5a0})
    avail = {probes.PROG_INFO_FN}
    flags, _ = probes.keepout_cflags(ksyms, bpf_prog_btf(), "preempt_count", avail, True, True,
                                     10, preemptible=False)
    assert "-DIPVT_KEEPOUT_INTERRUPTED_ONLY" in flags and "-DIPVT_WATCH_ACTIVE=10" in flags
    flags, _ = probes.keepout_cflags(ksyms, bpf_prog_btf(), "preempt_count", avail, True, True, 10)
    assert "-DIPVT_KEEPOUT_INTERRUPTED_ONLY" not in flags   # (the default: it might be)


def _kernel_files(root, config=None, cmdline="", debugfs=None):
    (root / "boot").mkdir(exist_ok=True)
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/cmdline").write_text(cmdline + "\n")
    if config is not None:
        (root / "boot/config-6.12.117+deb12-amd64").write_bytes(
            config if isinstance(config, bytes) else config.encode())
    if debugfs is not None:
        (root / "sys/kernel/debug/sched").mkdir(parents=True, exist_ok=True)
        (root / "sys/kernel/debug/sched/preempt").write_bytes(
            debugfs if isinstance(debugfs, bytes) else debugfs.encode() + b"\n")


def test_the_preemption_model_in_use(tmp_path, monkeypatch):
    """debugfs names the mode in use; else preempt= where the kernel obeys it
    (PREEMPT_DYNAMIC); else the config's choice; else nothing is known, and
    a trampoline's program is taken as preemptible."""
    monkeypatch.setattr(probes, "preempt_rt", lambda: False)
    rel = "6.12.117+deb12-amd64"
    debian = "CONFIG_PREEMPT_BUILD=y\nCONFIG_PREEMPT_VOLUNTARY=y\n# CONFIG_PREEMPT is not set\n" \
             "CONFIG_PREEMPT_COUNT=y\nCONFIG_PREEMPT_DYNAMIC=y\n"
    cases = [(dict(config=debian), "voluntary"),
             (dict(config=debian, cmdline="root=/dev/vda preempt=full quiet"), "full"),
             (dict(config=debian.replace("CONFIG_PREEMPT_DYNAMIC=y",
                                         "# CONFIG_PREEMPT_DYNAMIC is not set"),
                   cmdline="preempt=full"), "voluntary"),   # not obeyed without it
             (dict(config=debian, cmdline="preempt=full", debugfs="none voluntary (lazy) full"),
              "lazy"),
             (dict(config="CONFIG_PREEMPT=y\nCONFIG_PREEMPT_COUNT=y\n"), "full"),
             (dict(config="CONFIG_PREEMPT_NONE=y\n"), "none"),
             (dict(), ""),
             (dict(config=b"\xffCONFIG_PREEMPT=y\n", debugfs=b"\xff(full)"), "")]   # not text
    for i, (files, model) in enumerate(cases):
        root = tmp_path / str(i)
        root.mkdir()
        _kernel_files(root, **files)
        assert probes.preempt_model(rel, root) == model, (files, model)
        assert probes.trampolines_preemptible(rel, root) == (model not in ("none", "voluntary"))
    monkeypatch.setattr(probes, "preempt_rt", lambda: True)
    assert probes.preempt_model(rel, tmp_path / "0") == "rt"
    assert probes.trampolines_preemptible(rel, tmp_path / "0")


def test_a_symbol_resolves_to_itself_or_its_first_gcc_clone():
    """What a kprobe goes on: the symbol, else its lowest-sorted .isra /
    .constprop / .part clone; never a longer name it is a prefix of, nor a
    .cold part."""
    avail = {"ipvlan_queue_xmit", "ipvlan_rcv_frame.isra.1", "ipvlan_rcv_frame.isra.0",
             "ipvlan_rcv_frame_x.isra.0", "dev_forward_skb.cold", "netif_rx_internal.part.0",
             "ipvlan_rcv.constprop.0"}
    avail = probes.Available("\n".join(sorted(avail)[::-1]) + "\n")   # a file's text, any order
    r = probes.resolve_symbol
    assert r("ipvlan_queue_xmit", avail) == "ipvlan_queue_xmit"
    assert r("ipvlan_rcv_frame", avail) == "ipvlan_rcv_frame.isra.0"
    assert r("netif_rx_internal", avail) == "netif_rx_internal.part.0"
    assert r("ipvlan_rcv", avail) == "ipvlan_rcv.constprop.0"
    assert r("dev_forward_skb", avail) is None
    assert r("ipvlan_rcv_fram", avail) is None
    assert r("ipvlan_rcv_frame.isra", avail) is None


def test_start_up_calls_a_probe_a_gcc_clone_only_when_it_sits_on_one():
    """What the probe for a spec is asked of and the note about it. 7.2's
    multicast worker hands frames to slaves by netif_receive_skb: the probe
    asked of the worker's netif_rx goes there, and that is no GCC clone of
    netif_rx (start-up said it was, in the 7.2 guest; worker_rx_fn's own
    note says which function it is). Debian builds ipvlan_rcv_frame only as
    .isra.0: that one is."""
    spec = {s.name: s for s in probes.SPECS}
    avail = probes.Available("netif_rx\nnetif_receive_skb\nipvlan_rcv_frame.isra.0 [ipvlan]\n")
    for worker_rx in probes.WORKER_RX_FNS:
        asked = probes.asked_function(spec["netif_rx"], worker_rx)
        assert asked == worker_rx
        assert probes.clone_note(asked, probes.resolve_symbol(asked, avail)) is None
    asked = probes.asked_function(spec["rcv_frame"], "netif_receive_skb")
    note = probes.clone_note(asked, probes.resolve_symbol(asked, avail))
    assert note.startswith("ipvlan_rcv_frame is the GCC clone ipvlan_rcv_frame.isra.0 here")


def test_what_the_kernel_shows_says_each_thing_once():
    """An entry and its return missing for one reason (5.10 inlines
    ipvlan_skb_to_addr: s2a and s2a_ret) are one sentence in the header and
    doctor, not two."""
    plan = probes.ProbePlan(kernel="5.10.0-32-amd64", tracefs="/sys/kernel/tracing")
    why = "L3S: which slave owns the destination is not shown"
    plan.missing += [{"name": n, "symbol": "ipvlan_skb_to_addr", "why": why} for n in ("s2a", "s2a_ret")]
    plan.notes.append("a note")
    assert probes.what_this_kernel_shows(plan) == [f"ipvlan_skb_to_addr not probe-able: {why}", "a note"]


def test_available_filter_functions_as_the_kernel_writes_them(tmp_path):
    """A module's functions carry ` [module]`; the first line and a last
    line without its newline are names like the others."""
    (tmp_path / "available_filter_functions").write_text(
        "ipvlan_rcv_frame.isra.0 [ipvlan]\n__dev_queue_xmit\nipvlan_queue_xmit [ipvlan]\n"
        "ipvlan_l3_rcv.constprop.0 [ipvlan]")
    avail = probes.read_available(tmp_path)
    assert avail.names == {"ipvlan_rcv_frame.isra.0", "__dev_queue_xmit", "ipvlan_queue_xmit",
                           "ipvlan_l3_rcv.constprop.0"}
    r = probes.resolve_symbol
    assert r("ipvlan_rcv_frame", avail) == "ipvlan_rcv_frame.isra.0"
    assert r("ipvlan_l3_rcv", avail) == "ipvlan_l3_rcv.constprop.0"
    assert r("ipvlan_queue_xmit", avail) == "ipvlan_queue_xmit"
    assert "__dev_queue_xmit" in avail and "dev_queue_xmit" not in avail
