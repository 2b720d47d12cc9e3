"""Which vmlinux helpers the probe plan attaches by fentry/fexit
(probes.trampolines): only functions the kernel's BTF names as functions
(BTF FUNC; a member or parameter of the same name is not one), none on
PREEMPT_RT (a trampoline's program can be preempted there, with a note
saying so), none without BTF (noted), none when the user asks for kprobes.
The guest suite runs the chosen plan on Debian's 6.1 and 6.12 (fentry) and
their PREEMPT_RT builds (kprobes)."""
from __future__ import annotations

import pytest

from ipvtrace.capture import btf, probes

from test_btf import Blob


def kernel_btf(funcs: list[str], members: list[str] = ()) -> btf.BTF:
    b = Blob()
    i32 = b.int_("int", 4)
    proto = b.add("", btf.FUNC_PROTO, 0, i32)
    for name in funcs:
        b.add(name, btf.FUNC, 0, proto)
    b.struct_("holder", 4 * len(members), [(m, i32, 4 * i) for i, m in enumerate(members)])
    return btf.BTF(b.bytes())


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(probes.KPROBES_ONLY_ENV, raising=False)


def test_the_helpers_btf_names_as_functions():
    kb = kernel_btf(["__dev_queue_xmit", "dev_forward_skb", "ipvlan_queue_xmit"],
                    members=["ip_local_out"])   # a struct member of that name: no function
    got, why = probes.trampolines("6.12.117+deb12-amd64", kb, rt=False)
    assert got == {"__dev_queue_xmit", "dev_forward_skb"} and why == ""


def test_every_helper_with_a_trampoline_variant_is_a_vmlinux_function():
    # ipvlan's own functions are in the module's BTF, which bcc 0.26 does not attach to
    assert {sp.symbol for sp in probes.SPECS if sp.trampoline} == {
        "__dev_queue_xmit", "ip_local_out", "ip6_local_out", "dev_forward_skb"}
    for sp in probes.SPECS:
        if sp.trampoline:
            prefix = "kretfunc__" if sp.kind == "kretprobe" else "kfunc__"
            assert sp.trampoline == prefix + sp.symbol


def test_preempt_rt_keeps_kprobes_and_says_why():
    got, why = probes.trampolines("6.12.117+deb12-rt-amd64", kernel_btf(["__dev_queue_xmit"]),
                                  rt=True)
    assert got == set() and "PREEMPT_RT" in why and "kprobes" in why


def test_no_btf_keeps_kprobes_and_says_so():
    got, why = probes.trampolines("6.1.0-57-amd64", None, rt=False)
    assert got == set() and "BTF" in why


def test_kernels_before_trampolines_and_the_users_choice(monkeypatch):
    kb = kernel_btf(["__dev_queue_xmit"])
    assert probes.trampolines("5.4.0-1-amd64", kb, rt=False) == (set(), "")
    monkeypatch.setenv(probes.KPROBES_ONLY_ENV, "1")
    assert probes.trampolines("6.12.117+deb12-amd64", kb, rt=False) == (set(), "")
