"""The bpf(2) commands ipvtrace makes itself, through ctypes (bcc wraps none of them).

BPF_OBJ_GET_INFO_BY_FD reads a program's counters without the cost of
/proc/self/fdinfo (an open, a formatted text of a dozen lines and a parse
per program: 16 µs against 2.6 µs on the build machine; in an emulated
guest the fdinfo reads of a plan's two dozen programs were most of an idle
`record`'s consumer). Neither command holds bpf_prog_active (only map
element commands do), so reading never blinds a probe.
"""
from __future__ import annotations

import ctypes
import errno
import platform
import struct

BPF_PROG_LOAD = 5
BPF_PROG_TEST_RUN = 10
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_BTF_GET_FD_BY_ID = 19
BPF_BTF_GET_NEXT_ID = 23
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_FENTRY, BPF_TRACE_FEXIT = 24, 25
# the verifier gives up with EAGAIN when a signal is pending (a tracer's
# ptrace stop, py-spy's sample: every load of on_xmit_done failed under a
# 20 Hz py-spy in a 6.12 guest); as libbpf, a load is tried this often
PROG_LOAD_ATTEMPTS = 5

# __NR_bpf per machine (asm/unistd*.h); elsewhere the callers fall back
_NR_BPF = {"x86_64": 321, "aarch64": 280, "i686": 357, "i386": 357, "ppc64le": 361,
           "s390x": 351, "riscv64": 280}

# struct bpf_prog_info (uapi linux/bpf.h, unchanged from 5.12 to 6.12):
# run_time_ns @192, run_cnt @200, recursion_misses @208 (5.12+), size 232.
# The kernel copies min(info_len, its own size), so an older kernel leaves
# the tail zero rather than failing.
PROG_INFO_SIZE = 232
_RUN_STATS = struct.Struct("<QQQ")
_RUN_STATS_AT = 192


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class _EnableStatsAttr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32)]


class _TestRunAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("pad", ctypes.c_uint8 * 64)]


class _ProgLoadAttr(ctypes.Structure):
    """union bpf_attr for BPF_PROG_LOAD, up to attach_btf_obj_fd (5.11+)."""
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
                ("prog_ifindex", ctypes.c_uint32), ("expected_attach_type", ctypes.c_uint32),
                ("prog_btf_fd", ctypes.c_uint32), ("func_info_rec_size", ctypes.c_uint32),
                ("func_info", ctypes.c_uint64), ("func_info_cnt", ctypes.c_uint32),
                ("line_info_rec_size", ctypes.c_uint32), ("line_info", ctypes.c_uint64),
                ("line_info_cnt", ctypes.c_uint32), ("attach_btf_id", ctypes.c_uint32),
                ("attach_btf_obj_fd", ctypes.c_uint32), ("pad", ctypes.c_uint8 * 28)]


class _RawTpAttr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


class _IdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32),
                ("open_flags", ctypes.c_uint32)]


class _BtfInfo(ctypes.Structure):
    """struct bpf_btf_info (5.11+: name, kernel_btf)."""
    _fields_ = [("btf", ctypes.c_uint64), ("btf_size", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("name", ctypes.c_uint64), ("name_len", ctypes.c_uint32),
                ("kernel_btf", ctypes.c_uint32)]


_libc: ctypes.CDLL | None = None


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise OSError(38, f"bpf(2)'s number on {platform.machine()} is not known")
    ret = _libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        raise OSError(ctypes.get_errno(), f"bpf({cmd}) failed")
    return ret


def enable_stats() -> int:
    """Have the kernel count every program's runs and run time while the
    returned fd is open (5.8+). Unlike kernel.bpf_stats_enabled, a global
    switch that another process may turn off under us (two checks run at
    once did: one read 0 runs), each holder keeps it on."""
    return _bpf(BPF_ENABLE_STATS, _EnableStatsAttr(type=BPF_STATS_RUN_TIME))


class ProgInfo:
    """Reads one program's run counters, again and again, into one buffer."""

    def __init__(self, fd: int) -> None:
        self._buf = ctypes.create_string_buffer(PROG_INFO_SIZE)
        self._attr = _InfoAttr(bpf_fd=fd, info_len=PROG_INFO_SIZE,
                               info=ctypes.addressof(self._buf))

    def prog_id(self) -> int:
        """The program's id (struct bpf_prog_info.id)."""
        ctypes.memset(self._buf, 0, PROG_INFO_SIZE)
        self._attr.info_len = PROG_INFO_SIZE
        _bpf(BPF_OBJ_GET_INFO_BY_FD, self._attr)
        return struct.unpack_from("<I", self._buf, 4)[0]

    def run_stats(self) -> tuple[int, int, int]:
        """(run_time_ns, run_cnt, recursion_misses): the first two only while
        the kernel's run-time accounting is on (enable_stats(), or the
        kernel.bpf_stats_enabled sysctl); the last always (5.12+)."""
        # zeroed each time: the kernel writes lengths back (jited_prog_len,
        # ...) that, read as input the next time, ask it to copy to NULL
        ctypes.memset(self._buf, 0, PROG_INFO_SIZE)
        self._attr.info_len = PROG_INFO_SIZE
        _bpf(BPF_OBJ_GET_INFO_BY_FD, self._attr)
        return _RUN_STATS.unpack_from(self._buf, _RUN_STATS_AT)


def test_run(prog_fd: int, data: bytes) -> int:
    """Run a socket-filter or sched_cls program once on *data*: its return value."""
    buf = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(len(data) + 256)
    attr = _TestRunAttr(prog_fd=prog_fd, data_size_in=len(data), data_size_out=len(out),
                        data_in=ctypes.addressof(buf), data_out=ctypes.addressof(out), repeat=1)
    _bpf(BPF_PROG_TEST_RUN, attr)
    return attr.retval


def kernel_btf_fd(name: str) -> int:
    """An fd of the kernel's BTF object named *name* (a module's), which a
    program on one of its functions is loaded with (attach_btf_obj_fd).
    OSError (ENOENT) when there is none."""
    import os

    cur = 0
    while True:
        attr = _IdAttr(id=cur)
        try:
            _bpf(BPF_BTF_GET_NEXT_ID, attr)
        except OSError as exc:
            raise OSError(2, f"no kernel BTF object named {name}") from exc
        cur = attr.next_id
        try:
            fd = _bpf(BPF_BTF_GET_FD_BY_ID, _IdAttr(id=cur))
        except OSError:
            continue   # unloaded in between
        buf = ctypes.create_string_buffer(64)
        info = _BtfInfo(name=ctypes.addressof(buf), name_len=len(buf))
        try:
            _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                                   info=ctypes.addressof(info)))
        except OSError:
            os.close(fd)
            raise
        if info.kernel_btf and buf.value.decode(errors="replace") == name:
            return fd
        os.close(fd)


def load_tracing(insns: bytes, name: str, fexit: bool, btf_id: int, btf_obj_fd: int) -> int:
    """Load an fentry (or fexit) program on the function *btf_id* of the
    kernel BTF object *btf_obj_fd*: bcc 0.26 loads them on vmlinux's
    functions only. OSError with the verifier's log when it is refused."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(prog_type=BPF_PROG_TYPE_TRACING, insn_cnt=len(insns) // 8,
                         insns=ctypes.addressof(code), license=ctypes.addressof(lic),
                         prog_name=name.encode()[:15],
                         expected_attach_type=BPF_TRACE_FEXIT if fexit else BPF_TRACE_FENTRY,
                         attach_btf_id=btf_id, attach_btf_obj_fd=btf_obj_fd)
    try:
        return _prog_load(attr)
    except OSError as exc:
        log = ctypes.create_string_buffer(1 << 20)
        attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
        try:
            return _prog_load(attr)   # (refused again: now with the log)
        except OSError:
            tail = log.value.decode(errors="replace").strip().splitlines()[-3:]
            raise OSError(exc.errno, f"loading {name}: {exc.strerror or exc}: "
                          + " / ".join(tail)) from None


def _prog_load(attr: ctypes.Structure) -> int:
    """BPF_PROG_LOAD, again while the verifier was interrupted (EAGAIN)."""
    attempt = 1
    while True:
        try:
            return _bpf(BPF_PROG_LOAD, attr)
        except OSError as exc:
            if exc.errno != errno.EAGAIN or attempt >= PROG_LOAD_ATTEMPTS:
                raise
            attempt += 1


def attach_tracing(prog_fd: int) -> int:
    """Attach a loaded fentry/fexit program: the returned link fd holds it
    (closing it, or the process's exit, detaches)."""
    return _bpf(BPF_RAW_TRACEPOINT_OPEN, _RawTpAttr(name=0, prog_fd=prog_fd))
