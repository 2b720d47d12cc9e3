"""Does a kernel function still call another, or did the compiler inline it?

A symbol's presence says nothing about its callers: Linux 7.2 (Debian sid)
keeps ``ipvlan_rcv_frame.isra.0`` for ipvlan_queue_xmit but inlines it into
ipvlan_handle_mode_l3, so on RX a probe on it never fires, while on 6.1 and
6.12 ipvlan_handle_mode_l3 ends in a jump to it. This module reads a
caller's machine code from /proc/kcore (addresses from /proc/kallsyms, both
root-only, as tracing is) and looks for a direct call or jump (x86-64
``e8``/``e9`` rel32) to the callee. Read once at start, before any probe is
attached; the answer goes into the probe plan (probes.py).
"""
from __future__ import annotations

import os
import platform
import struct
from pathlib import Path

KCORE = Path("/proc/kcore")
KALLSYMS = Path("/proc/kallsyms")
PADDING = 16               # x86-64 function padding (the __pfx_ symbols)
MAX_FN_BYTES = 64 * 1024   # a caller longer than this is not read (none is close)


class KcodeError(OSError):
    """The code could not be read; the message says why."""


Symbols = tuple[dict[str, int], dict[str, int]]


def module_symbols(module: str, wanted: set[str], kallsyms: Path = KALLSYMS) -> Symbols:
    """Text symbols of *module* and their addresses (0 when hidden:
    kptr_restrict), and the addresses of the *wanted* names outside it (a
    module's callee can be in vmlinux; a variable the BPF program reads).
    One read of the file, searched with str.find, not split line by line:
    /proc/kallsyms has 100k+ lines, and under emulation every second of
    start-up counts. Read it once per start and hand the result to each
    still_called() and to probes.softirq_cflags()."""
    try:
        text = Path(kallsyms).read_text()
    except OSError as exc:
        raise KcodeError(f"cannot read {kallsyms}: {exc.strerror}") from None
    mine: dict[str, int] = {}
    other: dict[str, int] = {}
    tag = f"\t[{module}]\n"      # "ADDR t NAME\t[MODULE]"
    at = text.find(tag)
    while at != -1:
        parts = text[text.rfind("\n", 0, at) + 1:at].split()
        if len(parts) == 3 and parts[1] in ("t", "T"):
            mine[parts[2]] = int(parts[0], 16)
        at = text.find(tag, at + len(tag))
    for name in wanted:   # "ADDR T NAME" (vmlinux: no module); data too, and per-CPU
        at = text.find(f" {name}\n")   # variables ("A": an offset into each CPU's area, x86-64)
        while at != -1:
            parts = text[text.rfind("\n", 0, at) + 1:at].split()
            if len(parts) == 2 and parts[1] in _KINDS:
                other[name] = int(parts[0], 16)
                break
            at = text.find(f" {name}\n", at + 1)
    return mine, other


_KINDS = frozenset("TtDdBbA")


def _segments(fd: int) -> list[tuple[int, int, int]]:
    """(vaddr, memsz, file offset) of each PT_LOAD of an ELF64 core file."""
    ehdr = os.pread(fd, 64, 0)
    if len(ehdr) < 64 or ehdr[:4] != b"\x7fELF" or ehdr[4] != 2 or ehdr[5] != 1:
        raise KcodeError("/proc/kcore is not a little-endian ELF64 core")
    phoff, = struct.unpack_from("<Q", ehdr, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", ehdr, 0x36)
    if phnum > 4096 or phentsize < 56:
        raise KcodeError("/proc/kcore: implausible program headers")
    table = os.pread(fd, phentsize * phnum, phoff)
    segs = []
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, _filesz, p_memsz = struct.unpack_from(
            "<IIQQQQQ", table, i * phentsize)
        if p_type == 1:
            segs.append((p_vaddr, p_memsz, p_offset))
    return segs


def read_kernel(addr: int, size: int, kcore: Path = KCORE) -> bytes:
    """*size* bytes of kernel memory at *addr*, through /proc/kcore."""
    try:
        fd = os.open(kcore, os.O_RDONLY)
    except OSError as exc:
        raise KcodeError(f"cannot open {kcore}: {exc.strerror}") from None
    try:
        for vaddr, memsz, off in _segments(fd):
            if vaddr <= addr and addr + size <= vaddr + memsz:
                data = os.pread(fd, size, off + addr - vaddr)
                if len(data) != size:
                    raise KcodeError(f"{kcore}: short read at {addr:#x}")
                return data
    except OSError as exc:
        if isinstance(exc, KcodeError):
            raise
        raise KcodeError(f"cannot read {kcore}: {exc.strerror}") from None
    finally:
        os.close(fd)
    raise KcodeError(f"{addr:#x} is in no segment of {kcore}")


def calls(code: bytes, start: int, target: int) -> bool:
    """Does *code* (at kernel address *start*) hold a call or jmp rel32 to
    *target*, or into the 16 bytes of padding before it (where a kernel with
    call depth tracking puts the call thunk its callers are patched to)?
    A byte scan, not a disassembly: a false match needs four bytes equal to
    one of 17 displacements right after an e8/e9 byte (17 in 2**32 a place)."""
    for i in range(len(code) - 4):
        if code[i] in (0xE8, 0xE9):
            rel, = struct.unpack_from("<i", code, i + 1)
            if target - PADDING <= start + i + 5 + rel <= target:
                return True
    return False


def still_called(module: str, callee: str, callers: list[str],
                 kallsyms: Path = KALLSYMS, kcore: Path = KCORE,
                 symbols: Symbols | None = None) -> bool | None:
    """True when one of *callers* (functions of *module*, those this kernel
    has) calls *callee* (of the module or of vmlinux) directly, False when
    none does (inlined into them, or another function called instead), None
    when the question does not apply (no such caller or callee here).
    *symbols*: module_symbols() already read (else *kallsyms* is read).
    Raises KcodeError when the code cannot be read."""
    if platform.machine() != "x86_64":
        raise KcodeError(f"reading call sites is implemented for x86-64, not {platform.machine()}")
    syms, other = symbols if symbols is not None else module_symbols(module, {callee}, kallsyms)
    if not syms or not any(syms.values()):
        raise KcodeError(f"{module}'s addresses are hidden in {kallsyms} (kptr_restrict)")
    target = syms.get(callee) or other.get(callee)
    if not target:
        return None
    ordered = sorted(set(syms.values()))
    present = [c for c in callers if c in syms]
    if not present:
        return None
    for name in present:
        start = syms[name]
        nxt = [a for a in ordered if a > start]
        size = min((nxt[0] - start) if nxt else MAX_FN_BYTES, MAX_FN_BYTES)
        if calls(read_kernel(start, size, kcore), start, target):
            return True
    return False
