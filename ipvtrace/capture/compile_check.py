"""Compile bpf/ipvtrace.c (events, filtered, stats, per task) and load every
program through the verifier, no attach.

Run by scripts/compile-check against each installed kernel's headers, with
`--vmlinuz /boot/vmlinuz-RELEASE`: the struct offsets read from that image's
BTF (as `ipvtrace` reads them from /sys/kernel/btf/vmlinux when it runs) are
compiled once against the headers with static asserts (IPVT_CHECK_OFFSETS:
the build fails unless every offset equals the headers' offsetof), then
every variant is built the way it runs: from the offsets, without the
headers that define the structs. The header-only build (a kernel without
BTF) is compiled too.
"""
from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

from ipvtrace.capture import btf, loader, probes
from ipvtrace.model import filterexpr

BTF_ONLY = 3   # exit status: the BTF build is checked, the headers could not be

# compression magics a bzImage payload starts with, and the tool that reads it
_PAYLOADS = ((b"\xfd7zXZ\x00", ["xz", "-dc", "--single-stream"]),
             (b"\x28\xb5\x2f\xfd", ["zstd", "-dcq"]),
             (b"\x1f\x8b\x08", ["gzip", "-dc"]))


def elf_section(elf: bytes, name: str) -> bytes:
    """The bytes of section NAME of a little-endian ELF64 image."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise btf.BTFError("not a little-endian ELF64 vmlinux")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def sh(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        name_off, = struct.unpack_from("<I", elf, base)
        off, size = struct.unpack_from("<QQ", elf, base + 0x18)
        return name_off, off, size

    _, stroff, _ = sh(shstrndx)
    for i in range(shnum):
        name_off, off, size = sh(i)
        end = elf.find(b"\0", stroff + name_off)
        if elf[stroff + name_off:end] == name.encode():
            return elf[off:off + size]
    raise btf.BTFError(f"no {name} section")


def vmlinuz_btf(path: Path) -> bytes:
    """The BTF of a compressed kernel image (a bzImage): its payload is
    decompressed with the system's xz/zstd/gzip and .BTF read from the ELF."""
    img = path.read_bytes()
    for magic, cmd in _PAYLOADS:
        at = img.find(magic)
        if at < 0 or not shutil.which(cmd[0]):
            continue
        r = subprocess.run(cmd, input=img[at:], capture_output=True)
        if r.stdout[:4] == b"\x7fELF":   # (trailing data after the stream: a warning)
            return elf_section(r.stdout, ".BTF")
    raise btf.BTFError(f"{path}: no xz, zstd or gzip payload holding an ELF vmlinux")


def this_machines_format(system: str, event: str) -> str:
    """A tracepoint's format file on this machine (no --vmlinuz given)."""
    return open(f"/sys/kernel/tracing/events/{system}/{event}/format").read()


def free_tp_flags(image_btf: bytes | None) -> list[str]:
    """The classic skb free tracepoints' record offsets (probes.free_tp_cflags)
    from the kernel's BTF, whose trace_event_raw_EVENT structs the format
    files describe; without BTF, this machine's format files."""
    out = []
    kbtf = btf.BTF(image_btf) if image_btf is not None else None
    for sys_, ev in probes.TRACEPOINTS:
        if kbtf is not None:
            offsets = btf.tracepoint_offsets(kbtf, ev, probes.FREE_TP_FIELDS)
        else:
            offsets = probes.format_offsets(this_machines_format(sys_, ev))
        flags = probes.free_tp_cflags(ev, offsets)
        if not flags:
            raise SystemExit(f"compile_check: no skbaddr and location in {ev}'s record")
        out += flags
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ipvtrace.capture.compile_check")
    ap.add_argument("--vmlinuz", type=Path, help="the kernel image whose BTF gives the offsets")
    a = ap.parse_args(argv)
    bcc = loader.import_bcc()
    plan = probes.ProbePlan(kernel="compile-check", tracefs="")
    image_btf = vmlinuz_btf(a.vmlinuz) if a.vmlinuz else None
    kver = a.vmlinuz.name.removeprefix("vmlinuz-") if a.vmlinuz else os.uname().release
    plan.cflags += probes.version_cflags(kver)
    if image_btf is not None:
        # the tracepoint fields of the kernel compiled for (5.10 has no drop
        # reason), not of this machine's
        plan.cflags += btf.tracepoint_cflags(image_btf)
    else:
        for sys_, ev in probes.TRACEPOINTS:
            text = this_machines_format(sys_, ev)
            if ev == "consume_skb" and "location" in text:
                plan.cflags.append("-DIPVT_HAVE_CONSUME_LOCATION")
            if ev == "kfree_skb" and " reason;" in text:
                plan.cflags.append("-DIPVT_HAVE_DROP_REASON")
    src = str(loader.layout.BPF_DIR / "ipvtrace.c").encode()

    # fentry/fexit programs load against this machine's kernel (its BTF
    # names the traced function): where it refuses them (the build
    # machine's kernel has no ftrace), and always for ipvlan's functions,
    # they are compiled, and verified only in the guests
    tramp_refused: list[str] = []

    def build(extra: list[str], load: bool = True) -> float:
        t0 = time.process_time()   # CPU time: the machine may be busy with guests
        b = loader.bpf_class(bcc)(src_file=src, cflags=loader.cflags(plan, 64) + extra)
        dt = time.process_time() - t0
        if load:
            for spec in probes.SPECS:
                tr = spec.trampoline
                if tr and f"-DIPVT_FENTRY_{spec.name.upper()}" in extra:
                    # (a module's function: loaded with the module's BTF,
                    # which this machine's kernel does not have)
                    if not tramp_refused and not tr.module:
                        try:
                            b.load_func(tr.fn.encode(), bcc.BPF.TRACING)
                        except Exception as exc:
                            tramp_refused.append(str(exc))
                            print(f"compile_check: this kernel does not load fentry/fexit "
                                  f"programs ({exc}): they are compiled, not verified, here")
                    continue
                # (an RT build of a kernel whose raw tracepoints can be
                # preempted, as probes.build makes it: the TX close a
                # kretprobe, the skb frees classic tracepoints)
                spec = probes.attach_spec(spec, kver, probes.XMIT_KRETPROBE_FLAG in extra)
                b.load_func(spec.fn.encode(), loader.PROG_TYPES[spec.kind](bcc))
            if any(f.startswith("-DIPVT_WATCH_ACTIVE=") for f in extra):   # (the loader's)
                b.load_func(b"on_prog_info", bcc.BPF.KPROBE)
            loader.install_tail_calls(b, bcc)
        b.cleanup()
        return dt

    # a kernel without BTF: the offsets from the headers. A bcc older than the
    # kernel may not parse its headers at all (bcc 0.26 and Linux 7.x: uapi
    # names its compat bpf.h lacks); then only the BTF build can be checked
    headers: float | None = None
    try:
        headers = build([])
    except Exception:
        if not a.vmlinuz:
            raise
        print(f"compile_check: bcc {getattr(bcc, '__version__', '?')} cannot compile against these "
              "headers (the build a kernel without BTF needs): the BTF offsets are not "
              "cross-checked with them")
    offs: list[str] = []
    if a.vmlinuz:
        offs = btf.cflags(btf.offsets(image_btf))
    if offs and headers is not None:
        build(offs + ["-DIPVT_CHECK_OFFSETS"], load=False)
        # ... and the check can fail: one offset 8 bytes off is refused
        wrong = [f"-DIPVT_OFF_SKB_LEN={int(o.split('=')[1]) + 8}" if o.startswith(
            "-DIPVT_OFF_SKB_LEN=") else o for o in offs]
        try:
            build(wrong + ["-DIPVT_CHECK_OFFSETS"], load=False)
        except Exception:
            pass
        else:
            raise SystemExit("compile_check: IPVT_CHECK_OFFSETS took a wrong offset")
        print("compile_check: an offset 8 bytes off is refused (the static assert above)")
        print(f"compile_check: {len(offs)} offsets from {a.vmlinuz.name}'s BTF equal the headers'")
    # once as shipped, once with a filter that uses every field it can test
    expr = filterexpr.parse("(icmp and host 10.0.0.1) or (udp and dst port 53) or "
                            "src host fd00::1 or not arp")
    # ... and as `ipvtrace stats` builds it
    # ... and with contexts per task, as on a PREEMPT_RT kernel
    # ... with the softirq check as probes.py makes it (the values are a
    # running kernel's; any address compiles and verifies alike), and the
    # filtered build without it, as on a kernel where it cannot be made
    softirq = ["-DIPVT_PERCPU_OFFSETS=0xffffffff82a19b60", "-DIPVT_PREEMPT_COUNT=0x1fbc0"]
    softirq_rt = ["-DIPVT_RT_SOFTIRQ_CNT_OFF=2952"]
    if probes.raw_tp_preemptible(kver, rt=True):
        softirq_rt += [probes.XMIT_KRETPROBE_FLAG, probes.FREE_TP_FLAG]
        softirq_rt += free_tp_flags(image_btf)
    # ... with fentry/fexit programs where they can be, as probes.trampolines
    # chooses by default, and with kprobes only, as IPVTRACE_TRAMPOLINES=0
    # (or a kernel without BTF, or PREEMPT_RT) builds them
    tramp = [f"-DIPVT_FENTRY_{sp.name.upper()}" for sp in probes.SPECS if sp.trampoline]
    tramp.append("-DIPVT_BPF_PROG_ACTIVE=0x2d5a0")   # (probes.keepout_cflags)
    # ... reading the programs' prog->active marks (probes.keepout_cflags),
    # at this kernel's offsets where its BTF has them
    kbtf = btf.BTF(image_btf) if a.vmlinuz else None
    marks = {n: btf.optional_offset(kbtf, st, m, size)
             for n, (st, m, size) in probes.KEEPOUT_OFFSETS.items()}
    if None not in marks.values():
        # (10: every program a mark can be read for, with trampolines)
        softirq += ["-DIPVT_WATCH_ACTIVE=10"] + [f"-D{n}={o}" for n, o in marks.items()]
    # ... read only in an interrupt where no program can be preempted (a
    # kernel that does not preempt, as Debian's 6.x by default; kprobes
    # only), and at every context open where one might (stats)
    interrupted = ["-DIPVT_KEEPOUT_INTERRUPTED_ONLY"]
    variants = {"record": softirq + tramp + interrupted,
                "filtered": [f"-DIPVT_FILTER_EXPR={expr.c()}"],
                "stats": softirq + ["-DIPVT_COUNT_ONLY"] + tramp,
                "record-kprobes": softirq + interrupted,
                "stats-kprobes": softirq + ["-DIPVT_COUNT_ONLY"] + interrupted,
                "record-rt": softirq_rt + ["-DIPVT_STACK_PER_TASK"],
                "stats-rt": softirq_rt + ["-DIPVT_STACK_PER_TASK", "-DIPVT_COUNT_ONLY"]}
    if probes.FREE_TP_FLAG in softirq_rt:
        # ... and with a free tracepoint whose record lacks the fields (not
        # attached: probes.build), which must still compile and load
        variants["record-rt-bare-frees"] = [f for f in variants["record-rt"]
                                            if not f.startswith("-DIPVT_TP_CONSUME_SKB_")]
    times = {name: build(offs + extra) for name, extra in variants.items()}
    each = ", ".join(f"{name} {t:.2f}" for name, t in times.items())
    print(f"compile_check: compile CPU s{' with offsets from BTF' if offs else ''}: {each};"
          + (f" {headers:.2f} s from the headers" if headers is not None else " not from the headers"))
    return 0 if headers is not None else BTF_ONLY


if __name__ == "__main__":
    sys.exit(main())
