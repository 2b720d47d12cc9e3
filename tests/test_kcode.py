"""kcode.py reads a caller's code from /proc/kcore and finds its direct calls:
checked here on a core file and a kallsyms written by the test (the real
kernels' answers are checked in the guests against objdump of the module)."""
import struct

import pytest

from ipvtrace.capture import kcode

BASE = 0xFFFFFFFFC0A00000


def core(tmp_path, code: bytes, vaddr: int = BASE):
    """An ELF64 core file with one PT_LOAD holding *code* at *vaddr*."""
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", ehdr, 0x20, 64)            # e_phoff
    struct.pack_into("<HH", ehdr, 0x36, 56, 1)        # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 64 + 56, vaddr, 0, len(code), len(code), 0x1000)
    p = tmp_path / "kcore"
    p.write_bytes(bytes(ehdr) + phdr + code)
    return p


def kallsyms(tmp_path, syms: dict[str, int], module="ipvlan"):
    p = tmp_path / "kallsyms"
    p.write_text("".join(f"{a:016x} t {n}\t[{module}]\n" for n, a in syms.items())
                 + "ffffffff81000000 T _stext\n")
    return p


def jump(at: int, target: int, op: int = 0xE9) -> bytes:
    return bytes([op]) + struct.pack("<i", target - (at + 5))


def test_a_tail_jump_and_a_call_are_found_and_inlining_is_told(tmp_path):
    rcv, l3, xmit = BASE + 0x40, BASE + 0x100, BASE + 0x200
    code = bytearray(b"\x90" * 0x300)
    code[0x100 + 0x10:0x100 + 0x15] = jump(l3 + 0x10, rcv)          # handle_mode_l3: jmp
    code[0x200 + 0x20:0x200 + 0x25] = jump(xmit + 0x20, rcv, 0xE8)  # queue_xmit: call
    syms = {"ipvlan_rcv_frame.isra.0": rcv, "ipvlan_handle_mode_l3": l3, "ipvlan_queue_xmit": xmit}
    kc, ks = core(tmp_path, bytes(code)), kallsyms(tmp_path, syms)
    assert kcode.still_called("ipvlan", "ipvlan_rcv_frame.isra.0", ["ipvlan_handle_mode_l3"],
                              ks, kc) is True
    # the same caller with the call gone (inlined): False, not an error
    code[0x100 + 0x10:0x100 + 0x15] = b"\x90" * 5
    kc = core(tmp_path, bytes(code))
    assert kcode.still_called("ipvlan", "ipvlan_rcv_frame.isra.0", ["ipvlan_handle_mode_l3"],
                              ks, kc) is False
    # a jump past the callee's start is not a call of it
    code[0x100 + 0x10:0x100 + 0x15] = jump(l3 + 0x10, rcv + 4)
    kc = core(tmp_path, bytes(code))
    assert kcode.still_called("ipvlan", "ipvlan_rcv_frame.isra.0", ["ipvlan_handle_mode_l3"],
                              ks, kc) is False
    # a call into the padding before it (a call thunk) is
    code[0x100 + 0x10:0x100 + 0x15] = jump(l3 + 0x10, rcv - 16, 0xE8)
    kc = core(tmp_path, bytes(code))
    assert kcode.still_called("ipvlan", "ipvlan_rcv_frame.isra.0", ["ipvlan_handle_mode_l3"],
                              ks, kc) is True
    # no such caller on this kernel: the question does not apply
    assert kcode.still_called("ipvlan", "ipvlan_rcv_frame.isra.0", ["nope"], ks, kc) is None


def test_a_callee_in_vmlinux(tmp_path):
    """ipvlan_process_multicast calls netif_rx (6.1, 6.12) or netif_receive_skb
    (7.2): vmlinux functions, named in kallsyms without a module."""
    work, rx, recv = BASE, 0xFFFFFFFF81A00000, 0xFFFFFFFF81B00000
    code = b"\x90" * 8 + jump(work + 8, recv, 0xE8) + b"\x90" * 0x40
    ks = tmp_path / "kallsyms"
    ks.write_text(f"{work:016x} t ipvlan_process_multicast\t[ipvlan]\n"
                  f"{work + 0x80:016x} t ipvlan_other\t[ipvlan]\n"
                  f"{rx:016x} T netif_rx\n{recv:016x} T netif_receive_skb\n")
    kc = core(tmp_path, code + b"\x90" * 0x80)
    callers = ["ipvlan_process_multicast"]
    assert kcode.still_called("ipvlan", "netif_receive_skb", callers, ks, kc) is True
    assert kcode.still_called("ipvlan", "netif_rx", callers, ks, kc) is False
    assert kcode.still_called("ipvlan", "netif_rx_nope", callers, ks, kc) is None


def test_unreadable_code_is_an_error_that_says_why(tmp_path):
    syms = {"ipvlan_rcv_frame.isra.0": BASE, "ipvlan_handle_mode_l3": BASE + 0x100}
    ks = kallsyms(tmp_path, syms)
    with pytest.raises(kcode.KcodeError, match="cannot open"):
        kcode.still_called("ipvlan", "ipvlan_rcv_frame.isra.0", ["ipvlan_handle_mode_l3"],
                           ks, tmp_path / "missing")
    hidden = kallsyms(tmp_path, {n: 0 for n in syms})
    with pytest.raises(kcode.KcodeError, match="kptr_restrict"):
        kcode.still_called("ipvlan", "ipvlan_rcv_frame.isra.0", ["ipvlan_handle_mode_l3"],
                           hidden, core(tmp_path, b"\x90" * 16))
    bad = tmp_path / "bad"
    bad.write_bytes(b"not an elf" * 10)
    with pytest.raises(kcode.KcodeError, match="ELF64"):
        kcode.read_kernel(BASE, 4, bad)
    with pytest.raises(kcode.KcodeError, match="in no segment"):
        kcode.read_kernel(BASE + 0x10_0000, 4, core(tmp_path, b"\x90" * 16))
