"""Feasibility of fentry/fexit on the ipvlan module's functions, which bcc
0.26 attaches only on vmlinux's (KFUNC_PROBE): bcc compiles the program,
this loads its bytecode by hand (BPF_PROG_LOAD as BPF_PROG_TYPE_TRACING with
attach_btf_id from /sys/kernel/btf/ipvlan and attach_btf_obj_fd of the
module's BTF object) and attaches it (BPF_RAW_TRACEPOINT_OPEN). An fentry on
ipvlan_queue_xmit reads its skb argument, an fexit on ipvlan_addr_lookup its
return value; a ping and a UDP flood through the bench's ipvlan pair count
them. Not a part of ipvtrace yet: bench/mechanism.py measured fentry/fexit
at about half the attach cost of kprobes/kretprobes (README), and this is
the step it needs. Run as root on a kernel with ipvlan, e.g.

  .venv/bin/python -m ipvtrace.lab.vm --kernel 6.12 --work build/fentry -- \
      python bench/fentry_module.py

Seen on 6.12 (2026-12-02): 10 hits of each for 5 pings (request and reply),
every skb argument and every return value non-zero."""
import ctypes as ct
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bcc import BPF  # noqa: E402

from ipvtrace.capture import btf as ibtf  # noqa: E402

libc = ct.CDLL(None, use_errno=True)
NR_BPF = 321
BPF_PROG_LOAD, BPF_OBJ_GET_INFO_BY_FD, BPF_BTF_GET_FD_BY_ID, BPF_BTF_GET_NEXT_ID = 5, 15, 19, 23
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY, BPF_TRACE_FEXIT = 26, 24, 25


def bpf(cmd, attr: bytearray) -> int:
    buf = (ct.c_char * len(attr)).from_buffer(attr)
    r = libc.syscall(NR_BPF, cmd, buf, len(attr))
    if r < 0:
        raise OSError(ct.get_errno(), f"bpf cmd {cmd}: {os.strerror(ct.get_errno())}")
    return r


def module_btf_fd(name: str) -> int:
    cur = 0
    while True:
        a = bytearray(128)
        struct.pack_into("<I", a, 0, cur)
        try:
            bpf(BPF_BTF_GET_NEXT_ID, a)
        except OSError:
            raise SystemExit(f"no BTF object named {name}")
        cur = struct.unpack_from("<I", a, 4)[0]   # next_id
        a = bytearray(128)
        struct.pack_into("<I", a, 0, cur)
        fd = bpf(BPF_BTF_GET_FD_BY_ID, a)
        namebuf = ct.create_string_buffer(64)
        info = bytearray(48)   # struct bpf_btf_info: btf, btf_size, id, name, name_len, kernel_btf
        struct.pack_into("<QIIQII", info, 0, 0, 0, 0, ct.addressof(namebuf), 64, 0)
        ibuf = (ct.c_char * len(info)).from_buffer(info)
        a = bytearray(128)
        struct.pack_into("<IIQ", a, 0, fd, len(info), ct.addressof(ibuf))
        bpf(BPF_OBJ_GET_INFO_BY_FD, a)
        if namebuf.value.decode() == name:
            return fd
        os.close(fd)


def func_id(module: str, fn: str) -> int:
    base = open("/sys/kernel/btf/vmlinux", "rb").read()
    vm = ibtf.BTF(base)
    nvm = len(vm._starts)
    vm_strlen = len(vm._strs)
    data = open(f"/sys/kernel/btf/{module}", "rb").read()
    hdr_len = struct.unpack_from("<I", data, 4)[0]
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    t0, s0 = hdr_len + type_off, hdr_len + str_off
    strs = data[s0:s0 + str_len]
    starts = ibtf.BTF._index(memoryview(data)[t0:t0 + type_len], t0)
    for k in range(1, len(starts)):
        name_off, info = struct.unpack_from("<II", data, starts[k])
        kind = (info >> 24) & 0x1F
        if kind != 12:   # BTF_KIND_FUNC
            continue
        if name_off >= vm_strlen:
            o = name_off - vm_strlen
            name = strs[o:strs.index(b"\0", o)].decode()
        else:
            name = vm.name(name_off)
        if name == fn:
            return nvm + k - 1
    raise SystemExit(f"{fn} not in {module}'s BTF")


SRC = r"""
BPF_ARRAY(hits, u64, 4);
static __always_inline void bump(int k) { u64 *v = hits.lookup(&k); if (v) __sync_fetch_and_add(v, 1); }
int fentry_qx(unsigned long long *ctx) { bump(0); if (ctx[0]) bump(1); return 0; }
int fexit_lookup(unsigned long long *ctx) { bump(2); if (ctx[4]) bump(3); return 0; }
"""


def load(b: BPF, fn: str, attach_type: int, btf_id: int, btf_fd: int) -> int:
    insns = b.dump_func(fn.encode())
    ibuf = ct.create_string_buffer(insns, len(insns))
    lic = ct.create_string_buffer(b"GPL")
    log = ct.create_string_buffer(1 << 20)
    a = bytearray(144)
    struct.pack_into("<IIQQIIQ", a, 0, BPF_PROG_TYPE_TRACING, len(insns) // 8, ct.addressof(ibuf),
                     ct.addressof(lic), 1, len(log), ct.addressof(log))
    # kern_version @40, prog_flags @44, prog_name[16] @48, prog_ifindex @64,
    # expected_attach_type @68, prog_btf_fd @72, func_info_rec_size @76, func_info @80,
    # func_info_cnt @88, line_info_rec_size @92, line_info @96, line_info_cnt @104,
    # attach_btf_id @108, attach_btf_obj_fd @112
    struct.pack_into("<16s", a, 48, fn.encode()[:15])
    struct.pack_into("<I", a, 68, attach_type)
    struct.pack_into("<I", a, 108, btf_id)
    struct.pack_into("<I", a, 112, btf_fd)
    try:
        return bpf(BPF_PROG_LOAD, a)
    except OSError as exc:
        print(log.value.decode(errors="replace")[-2000:])
        raise


def main() -> int:
    subprocess.run(["modprobe", "ipvlan"], check=True)
    import datapath as dp
    from ipvtrace.lab.netlab import Lab
    with Lab(namespaces=dp.LAB_NAMESPACES) as lab:
        dp.build(lab)
        btf_fd = module_btf_fd("ipvlan")
        print("module BTF fd", btf_fd)
        qx, lk = func_id("ipvlan", "ipvlan_queue_xmit"), func_id("ipvlan", "ipvlan_addr_lookup")
        print("btf ids", qx, lk)
        t = time.process_time()
        b = BPF(text=SRC)
        print("compiled", round(time.process_time() - t, 2), "s")
        p1 = load(b, "fentry_qx", BPF_TRACE_FENTRY, qx, btf_fd)
        p2 = load(b, "fexit_lookup", BPF_TRACE_FEXIT, lk, btf_fd)
        links = []
        for p in (p1, p2):
            a = bytearray(16)
            struct.pack_into("<QI", a, 0, 0, p)
            links.append(bpf(BPF_RAW_TRACEPOINT_OPEN, a))
        print("attached", links)
        lab.ping(dp.NS[1], "10.99.0.2", 5)
        print("hits", [b["hits"][ct.c_int(i)].value for i in range(4)])
        r = dp.udp_rate(lab, seconds=5)
        print("udp pps with 2 fentry/fexit", round(r["pps"]), "hits", [b["hits"][ct.c_int(i)].value for i in range(4)])
        for fd in links + [p1, p2, btf_fd]:
            os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
