"""How the probe plan lets bpf/ tell a softirq the multicast worker's task
serves from the worker itself (probes.softirq_cflags): the per-CPU
preempt_count on x86-64 (found through kallsyms, and BTF where the kernel
keeps it in pcpu_hot), task_struct.softirq_disable_cnt on PREEMPT_RT. The
values were read on Debian's 6.1, 6.12 and 6.1-rt in QEMU, and the guest
suite checks the plan there; here the choices and the notes."""
from __future__ import annotations

from ipvtrace.capture import btf, kcode, probes

from test_btf import Blob


def with_members(*structs: tuple[str, str, int]) -> btf.BTF:
    """A BTF with `struct NAME { ...; int MEMBER at OFFSET; }`, the member
    inside an anonymous union as pcpu_hot has it."""
    b = Blob()
    i32 = b.int_("int", 4)
    for name, member, off in structs:
        inner = b.struct_("", 4, [(member, i32, 0)])
        un = b.struct_("", 64, [("", inner, 0), ("pad", i32, 0)], kind=btf.UNION)
        b.struct_(name, 64 + off, [("", un, off)])
    return btf.BTF(b.bytes())


def test_the_per_cpu_variable_of_6_1():
    ksyms = ({}, {"__per_cpu_offset": 0xffffffff92e1ab60, "__preempt_count": 0x1fbc0})
    flags, how, why = probes.softirq_cflags(ksyms, None, rt=False)
    assert flags == ["-DIPVT_PERCPU_OFFSETS=0xffffffff92e1ab60", "-DIPVT_PREEMPT_COUNT=0x1fbc0"]
    assert (how, why) == ("preempt_count", "")


def test_pcpu_hot_of_6_12_takes_the_member_offset_from_btf():
    ksyms = ({}, {"__per_cpu_offset": 0xffffffffa15e8e20, "pcpu_hot": 0x351c0})
    flags, how, _ = probes.softirq_cflags(ksyms, with_members(("pcpu_hot", "preempt_count", 8)),
                                          rt=False)
    assert flags[1] == f"-DIPVT_PREEMPT_COUNT={0x351c0 + 8:#x}" and how == "preempt_count"
    # without BTF the member's place is not guessed
    flags, how, why = probes.softirq_cflags(ksyms, None, rt=False)
    assert (flags, how) == ([], "none") and "preempt_count" in why


def test_hidden_addresses_or_no_kallsyms_leave_the_check_out_and_say_why():
    hidden = ({}, {"__per_cpu_offset": 0, "__preempt_count": 0})
    assert probes.softirq_cflags(hidden, None, rt=False)[:2] == ([], "none")
    err = kcode.KcodeError("cannot read /proc/kallsyms: Permission denied")
    flags, how, why = probes.softirq_cflags(err, None, rt=False)
    assert (flags, how) == ([], "none") and "Permission denied" in why
    assert "worker" in probes.SOFTIRQ_NOTE.format(why=why)


def test_preempt_rt_reads_the_task():
    kb = with_members(("task_struct", "softirq_disable_cnt", 3392))
    ksyms = ({}, {"__per_cpu_offset": 0xffffffffb1c1ab60, "__preempt_count": 0x1fbc0})
    assert probes.softirq_cflags(ksyms, kb, rt=True) == (
        ["-DIPVT_RT_SOFTIRQ_CNT_OFF=3392"], "task", "")
    flags, how, why = probes.softirq_cflags(ksyms, with_members(("task_struct", "pid", 8)), rt=True)
    assert (flags, how) == ([], "none") and "softirq_disable_cnt" in why


def test_kallsyms_names_per_cpu_and_data_symbols(tmp_path):
    """Per-CPU variables are "A" (an offset into each CPU's area) on x86-64,
    __per_cpu_offset is data; a module's symbol of the same name is not vmlinux's."""
    ks = tmp_path / "kallsyms"
    ks.write_text("000000000001fbc0 A __preempt_count\n"
                  "ffffffff92e1ab60 D __per_cpu_offset\n"
                  "ffffffffc0a01000 t pcpu_hot\t[ipvlan]\n"
                  "ffffffffc0a00000 t ipvlan_queue_xmit\t[ipvlan]\n")
    mine, other = kcode.module_symbols("ipvlan", set(probes.PERCPU_SYMBOLS), ks)
    assert other == {"__preempt_count": 0x1fbc0, "__per_cpu_offset": 0xffffffff92e1ab60}
    assert mine["ipvlan_queue_xmit"] == 0xffffffffc0a00000
