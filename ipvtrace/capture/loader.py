"""Compile bpf/ipvtrace.c with bcc, attach the probe plan, poll the ring buffer.

The only module that imports bcc. bcc's Python bindings come from the
distribution (python3-bpfcc), never from PyPI, and live in the system Python.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import struct
import sys
import time
from pathlib import Path
from typing import Callable

from ipvtrace.model import layout
from ipvtrace.capture import bpfsys, probes
from ipvtrace.capture.probes import ProbePlan
from ipvtrace.capture.ringbuf import Known, Plain, Run

KRETPROBE_MAXACTIVE = 64
# a prog->active that could not be learnt: with any CPU's area added, a
# non-canonical address, whose read fails (bpf/ reads 0 there)
NO_MARK = 1 << 63
DEFAULT_RINGBUF_PAGES = 1024  # 4 MiB


def _pages(n: int) -> int:
    return max(mmap.PAGESIZE, -(-n // mmap.PAGESIZE) * mmap.PAGESIZE)


def fdinfo_misses(fd: int) -> int:
    """A BPF program's recursion_misses from /proc/self/fdinfo/FD (0 when
    the kernel does not say): where bpf(2)'s number is not known."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("recursion_misses:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class LoadError(RuntimeError):
    """Tracing could not start; the message says what to do."""


def import_bcc():
    try:
        import bcc  # type: ignore[import-not-found]
    except ImportError as exc:
        raise LoadError(
            "bcc's Python bindings are missing: apt-get install python3-bpfcc, and run "
            "ipvtrace with the system python3 (or a venv made with --system-site-packages); "
            "the PyPI package named 'bcc' is unrelated"
        ) from exc
    return bcc


def require_root() -> None:
    if os.geteuid() != 0:
        raise LoadError("tracing needs root (CAP_BPF and CAP_PERFMON): run it with sudo")


SLOTS_PER_CPU = 512   # IPVT_SLOTS_PER_CPU in bpf/ipvtrace.c


def possible_cpus() -> int:
    """How many CPU ids the kernel may hand a BPF program (0..N-1)."""
    try:
        text = open("/sys/devices/system/cpu/possible").read().strip()
        return max(int(part.split("-")[-1]) for part in text.split(",")) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


# how often live's ticks read the counters behind files and syscalls: every
# program's skipped hits (6.7+) and tracefs kprobe_profile. Five times a
# second, read from fdinfo, the skipped hits alone were 38% of `record`'s
# consumer under a flood and 78% with a filter matching nothing,
# kprobe_profile most of the rest (py-spy, 6.12 in TCG); they are now read
# by bpf(2) (bpfsys). A count read a second late delays only its loss mark.
COUNTERS_EVERY_S = 1.0

TAIL_PROGRAMS = (("worker_tail", "on_worker_hit"),)   # (BPF_PROG_ARRAY, its program)


# the BPF program type of each attach kind (ProbeSpec.kind): bcc's constants
PROG_TYPES = {
    "kprobe": lambda bcc: bcc.BPF.KPROBE,
    "kretprobe": lambda bcc: bcc.BPF.KPROBE,
    "raw_tracepoint": lambda bcc: bcc.BPF.RAW_TRACEPOINT,
    "tracepoint": lambda bcc: bcc.BPF.TRACEPOINT,
    "fentry": lambda bcc: bcc.BPF.TRACING,
    "fexit": lambda bcc: bcc.BPF.TRACING,
}


def bpf_class(bcc):
    """bcc.BPF without its autoload: bcc attaches every kfunc__/kretfunc__
    program while it compiles, before the plan's order, its error handling
    and the compile check's load without attach; attach() does it here."""

    class BPF(bcc.BPF):
        def _trace_autoload(self) -> None:
            pass

    return BPF


def install_tail_calls(bpf, bcc) -> None:
    """Load the programs that kprobes tail-call and put them in their arrays
    (bpf/ipvtrace.c: on_worker_hit). Before arming: an empty slot makes the
    call fail, and the worker's hit is counted lost."""
    import ctypes as ct

    for table, fn in TAIL_PROGRAMS:
        bpf[table][ct.c_int(0)] = ct.c_int(bpf.load_func(fn.encode(), bcc.BPF.KPROBE).fd)


# bcc optimises the module itself (its own -O3 pass pipeline) after clang has
# run its -O2 one on it: clang at -O0, its functions left optimisable, hands
# that pipeline the program once (the always_inline helpers inlined, no other
# pass). Measured with callgrind, native, 6.12 headers: 15-17% fewer
# instructions for the whole compile; the BPF code 0.7% shorter. (Without
# __OPTIMIZE__ the kernel headers' compile-time asserts are no-ops: only the
# build from headers, on a kernel without BTF, includes them.)
OPT_ONCE = ["-O0", "-Xclang", "-disable-O0-optnone"]


def cflags(plan: ProbePlan, ringbuf_pages: int) -> list[str]:
    return ["-w", *OPT_ONCE, f"-I{layout.BPF_DIR}", f"-DIPVT_RINGBUF_PAGES={ringbuf_pages}",
            f"-DIPVT_NR_CPUS={possible_cpus()}", *plan.cflags]


class Tracer:
    """Attached probes; use as a context manager so Ctrl-C always detaches."""

    def __init__(self, plan: ProbePlan, ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
                 filter_c: str | None = None, count_only: bool = False) -> None:
        self.plan = plan
        self.ringbuf_pages = ringbuf_pages
        self.filter_c = filter_c
        self.count_only = count_only   # `stats`: counters in the kernel, no events
        self.bpf = None
        self._cb: Callable | None = None
        self._ring = None            # ringbuf.MappedRing, when this CPU allows it
        self._handle: Callable[[bytes], None] | None = None
        self._runs_to: tuple[Plain, Run, Known | None] | None = None   # record: whole runs of the ring
        self._stats_map: mmap.mmap | None = None   # the `stats` counters, mapped
        self._skipped: dict[str, int] = {}         # the most skipped hits seen, per kprobe
        self._base_runs: dict[str, int] = {}       # runs and kprobe hits when armed
        self._base_hits: dict[str, int] = {}
        self._base_prog_misses: dict[str, int] = {}   # 6.7+: recursion_misses when armed
        self._prog_infos: list[tuple[str, int, bpfsys.ProgInfo]] | None = None
        self._reads: dict[str, tuple[float, dict]] = {}   # _read(): when and what, per counter
        self._slots: mmap.mmap | None = None       # stats mode: counted signatures, mapped
        self._next: mmap.mmap | None = None
        self._slot_size = 0
        self._ncpu = 0
        self._stats_n = 0
        self.removed_leftovers: list[str] = []
        # fentry/fexit on the module's functions, loaded here: program and
        # link fds (closed in close(), or by the kernel when the process dies)
        self._module_btf_fd: int | None = None
        self._own_fds: list[int] = []
        self._own_progs: dict[str, int] = {}
        self.watched = (0, 0)   # programs whose prog->active bpf/ reads, of those it should

    def __enter__(self) -> "Tracer":
        require_root()
        bcc = import_bcc()
        from ipvtrace.capture.probes import remove_leftover_probe_events

        # a killed ipvtrace's return probes stay in kprobe_events: take them out
        self.removed_leftovers = remove_leftover_probe_events(Path(self.plan.tracefs))
        if self.removed_leftovers:
            print(f"ipvtrace: removed {len(self.removed_leftovers)} probe(s) a killed ipvtrace "
                  f"left in kprobe_events", file=sys.stderr)
        src = layout.BPF_DIR / "ipvtrace.c"
        try:
            extra = [f"-DIPVT_FILTER_EXPR={self.filter_c}"] if self.filter_c else []
            if self.count_only:
                extra.append("-DIPVT_COUNT_ONLY")
            self.bpf = bpf_class(bcc)(src_file=str(src).encode(),
                                      cflags=cflags(self.plan, self.ringbuf_pages) + extra)
        except Exception as exc:  # bcc raises plain Exception on compile errors
            raise LoadError(
                f"compiling {src.name} failed ({exc}); are the kernel headers installed? "
                f"apt-get install linux-headers-{os.uname().release}"
            ) from exc
        try:
            install_tail_calls(self.bpf, bcc)
        except Exception as exc:
            self.close()
            raise LoadError(f"cannot load the multicast worker's tail-called program: {exc}") \
                from exc
        try:
            for p in self.plan.attach:
                if p["kind"] == "kprobe":
                    self.bpf.attach_kprobe(event=p["symbol"].encode(), fn_name=p["fn"].encode())
                elif p["kind"] == "raw_tracepoint":
                    self.bpf.attach_raw_tracepoint(tp=p["symbol"].encode(),
                                                   fn_name=p["fn"].encode())
                elif p["kind"] == "tracepoint":   # ("system:event")
                    self.bpf.attach_tracepoint(tp=p["symbol"].encode(), fn_name=p["fn"].encode())
                elif p["kind"] in ("fentry", "fexit") and p.get("module"):
                    self._attach_module_tracing(p)
                elif p["kind"] == "fentry":
                    self.bpf.attach_kfunc(fn_name=p["fn"].encode())
                elif p["kind"] == "fexit":
                    self.bpf.attach_kretfunc(fn_name=p["fn"].encode())
                else:
                    self.bpf.attach_kretprobe(event=p["symbol"].encode(), fn_name=p["fn"].encode(),
                                              maxactive=KRETPROBE_MAXACTIVE)
        except Exception as exc:
            self.close()
            raise LoadError(f"cannot attach {p['kind']} to {p['symbol']}: {exc}") from exc
        return self

    def _attach_module_tracing(self, p: dict) -> None:
        """An fentry/fexit program on a module's function (plan entry *p*):
        bcc compiled it; its code is loaded here with the function's id in
        the module's BTF (bcc 0.26 loads only vmlinux's), and attached."""
        if self._module_btf_fd is None:
            self._module_btf_fd = bpfsys.kernel_btf_fd(p["module"])
        insns = self.bpf.dump_func(p["fn"].encode())
        fd = bpfsys.load_tracing(insns, p["fn"], p["kind"] == "fexit", p["btf_id"],
                                 self._module_btf_fd)
        self._own_fds.append(fd)
        self._own_progs[p["fn"]] = fd
        self._own_fds.append(bpfsys.attach_tracing(fd))

    def _prog_fds(self) -> dict[str, int]:
        """Each loaded program's fd by its function name: bcc's, and the
        module's fentry/fexit programs loaded here (not by bcc)."""
        fds = {(fn.decode() if isinstance(fn, bytes) else fn): f.fd
               for fn, f in self.bpf.funcs.items()}
        fds.update(self._own_progs)
        return fds

    def _watch_programs(self) -> None:
        """Tell bpf/ where each of its trampoline and raw tracepoint programs'
        prog->active mark is (opened_kept_out): a kprobe on
        bpf_prog_get_info_by_fd notes it while each program's info is read,
        then goes. Before arming: no context is open yet."""
        import ctypes as ct

        if not any(f.startswith("-DIPVT_WATCH_ACTIVE=") for f in self.plan.cflags):
            return
        fds = self._prog_fds()
        watch = [fds[p["fn"]] for p in self.plan.attach if probes.watched(p) and p["fn"] in fds]
        event = probes.PROG_INFO_FN.encode()
        self.bpf.attach_kprobe(event=event, fn_name=b"on_prog_info")
        try:
            ids = [bpfsys.ProgInfo(fd).prog_id() for fd in watch]   # (each: on_prog_info)
        finally:
            self.bpf.detach_kprobe(event=event)
        found = self.bpf["prog_actives"]
        actives = []
        for i in ids:
            v = found.get(ct.c_uint32(i))
            if v is not None:
                actives.append(v.value)
        table = self.bpf["watched"]
        leaf = table.Leaf()
        for n in range(len(leaf.active)):   # (the plan's count: probes.keepout_cflags)
            leaf.active[n] = actives[n] if n < len(actives) else NO_MARK
        table[ct.c_int(0)] = leaf
        self.watched = (min(len(actives), len(leaf.active)), len(watch))
        if self.watched[0] < len(watch):
            print(f"ipvtrace: {self.watched[0]} of {len(watch)} trampoline and tracepoint programs "
                  "are watched: a context opened inside another's run may show as complete "
                  "without that program's hits", file=sys.stderr)

    def arm(self) -> None:
        """Let the probes open contexts. Until now every probe was attached
        but none opened one: a packet already inside ipvlan while the probes
        were being attached would have holes in its evidence (seen: an ICMPv6
        router solicitation classified `unknown` at -0.09 s)."""
        import ctypes as ct

        self._watch_programs()
        self.bpf["armed"][ct.c_int(0)] = ct.c_uint32(1)
        # skipped hits count from here: a kprobe hit while bcc attached the
        # programs one by one (and while the syscall above held this CPU) ran
        # no program and is no evidence lost. Runs first, then hits: the
        # estimate's baseline (before 6.7), like every reading, may
        # undercount, never overcount; from 6.7 each program's own count.
        self._base_runs = self._runs(self._stats_values())
        self._base_hits = {k: v["hits"] for k, v in self.kprobe_misses().items()}
        self._base_prog_misses = self._prog_misses()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def on_event(self, callback: Callable[[bytes], None],
                 runs: tuple[Plain, Run, Known | None] | None = None) -> None:
        """Call *callback* with each raw event (bytes) as it is polled: read
        from the mapped ring buffer pages where the CPU allows it (no ctypes
        call per event), through bcc's callback otherwise. With *runs*
        (plain, run) and the mapped pages, records that plain() accepts go
        to run() in whole runs, ring headers included (ringbuf.walk)."""
        from ipvtrace.capture import ringbuf

        if ringbuf.usable() and os.environ.get("IPVTRACE_RINGBUF") != "bcc":
            self._ring = ringbuf.MappedRing(self.bpf["events"].map_fd,
                                            self.ringbuf_pages * mmap.PAGESIZE)
            self._handle = callback
            self._runs_to = runs
            return

        def _cb(_ctx, data, size):
            callback(ctypes.string_at(data, size))

        self._cb = _cb
        self.bpf["events"].open_ring_buffer(_cb)

    def poll(self, timeout_ms: int) -> None:
        if self._ring is not None:
            self._ring.wait(timeout_ms)
            self._consume()
        else:
            self.bpf.ring_buffer_poll(timeout_ms)

    def drain(self) -> None:
        if self._ring is not None:
            self._consume()
        else:
            self.bpf.ring_buffer_consume()

    def _consume(self) -> None:
        if self._runs_to is not None:
            plain, run, known = self._runs_to
            self._ring.consume_runs(plain, run, self._handle, known)
        else:
            self._ring.consume(self._handle)

    def free_sites(self) -> list[int]:
        """Every distinct address an skb of a kept hit was freed at (the
        trace build's free_sites): `record` names them at its end."""
        if self.count_only:
            return []
        return [k.value for k in self.bpf["free_sites"].keys()]

    def kernel_stats(self, misses: dict[str, dict[str, int]] | None = None,
                     fresh: bool = True) -> dict[str, int]:
        """Counters kept in the kernel: records lost per probe, context-stack
        repairs, kprobe misses (`kprobe_missed.<probe>`) and hits the kernel
        skipped a program for (`skipped.<probe>`). Pass *misses* when they
        were just read: the hits in them must be read before the runs.
        Not *fresh* (live's ticks): kprobe_profile and the programs' own
        skip counts may be up to COUNTERS_EVERY_S old (_read())."""
        lay = layout.current()
        misses = self._read("kprobe_profile", self.kprobe_misses, fresh) if misses is None \
            else misses
        values = self._stats_values()   # after the hits: see skipped()
        runs_base = lay.runs_base if lay.runs_base is not None else len(values)
        out: dict[str, int] = {}
        for i, total in enumerate(values[:runs_base]):
            if total == 0:
                continue
            if i in (lay.stats or {}):
                out[lay.stats[i]] = total
            else:   # IPVT_S_LOST_BASE + probe id
                out[f"lost.{lay.probes.get(i, i)}"] = total
        for name, hm in misses.items():
            if hm["misses"]:
                out[f"kprobe_missed.{name}"] = hm["misses"]
        runs = {k: v - self._base_runs.get(k, 0) for k, v in self._runs(values).items()}
        since = {k: dict(v, hits=v["hits"] - self._base_hits.get(k, 0)) for k, v in misses.items()}
        for name, n in self.skipped(since, runs, fresh).items():
            if n:
                out[f"skipped.{name}"] = n
        return out

    def _runs(self, values: tuple[int, ...]) -> dict[str, int]:
        """Each probe's program runs, from the mapped stats counters."""
        lay = layout.current()
        if lay.runs_base is None:
            return {}
        return {name: values[lay.runs_base + i] for i, name in lay.probes.items()
                if lay.runs_base + i < len(values)}

    def skipped(self, misses: dict[str, dict[str, int]], runs: dict[str, int],
                fresh: bool = True) -> dict[str, int]:
        """Hits the kernel did not run a program for, because a BPF program
        or a map syscall held that CPU's bpf_prog_active (a softirq that came
        while one of ours ran; another tool's program): evidence lost unseen.

        From 6.7 (plan.counts_skipped) the kernel counts them per program
        (recursion_misses, read by BPF_OBJ_GET_INFO_BY_FD, which holds no bpf_prog_active), for
        the kprobes and the tracepoints alike: exact, since arm().
        Before 6.7, kprobes only, estimated: the kprobe's hits (tracefs
        kprobe_profile, in *misses*) minus the runs the program counted
        (*runs*, read after the hits). A hit between the two readings may
        have run already, so a reading undercounts while packets pass; the
        most seen so far is reported. Tracepoints' skips are not known there;
        fentry/fexit programs' are, exact, as from 6.7."""
        if self.plan.counts_skipped:
            now = self._read("skipped", self._prog_misses, fresh)
            return {k: v - self._base_prog_misses.get(k, 0) for k, v in now.items()}
        for name, hm in misses.items():
            if name in runs:
                est = hm["hits"] - runs[name]
                if est > self._skipped.get(name, 0):
                    self._skipped[name] = est
        out = dict(self._skipped)
        # fentry/fexit programs count their own (5.12+): a trampoline skips
        # a program only while that program runs on the CPU already
        tramp = [p["name"] for p in self.plan.attach if p["kind"] in ("fentry", "fexit")]
        if tramp:
            now = self._read("skipped", self._prog_misses, fresh)
            out.update({k: now.get(k, 0) - self._base_prog_misses.get(k, 0) for k in tramp})
        return out

    def _read(self, what: str, read: Callable[[], dict], fresh: bool) -> dict:
        """*read*()'s counters, read again when *fresh* or older than
        COUNTERS_EVERY_S (a stale kprobe hit count makes the pre-6.7 skip
        estimate undercount, never overcount: see skipped())."""
        t = time.monotonic()
        got = self._reads.get(what)
        if fresh or got is None or t - got[0] >= COUNTERS_EVERY_S:
            got = self._reads[what] = (t, read())
        return got[1]

    def _prog_misses(self) -> dict[str, int]:
        """recursion_misses per probe name, each program's read by
        BPF_OBJ_GET_INFO_BY_FD (bpfsys: 2.6 µs a program on the build
        machine, where reading its fdinfo took 16 µs)."""
        if self.bpf is None:
            return {}
        if self._prog_infos is None:
            names = {p["fn"]: p["name"] for p in self.plan.attach}
            self._prog_infos = []
            for fn, fd in self._prog_fds().items():
                if fn in names:
                    self._prog_infos.append((names[fn], fd, bpfsys.ProgInfo(fd)))
        out: dict[str, int] = {}
        for name, fd, info in self._prog_infos:
            try:
                n = info.run_stats()[2]
            except OSError:
                n = fdinfo_misses(fd)
            out[name] = out.get(name, 0) + n
        return out

    def _stats_values(self) -> tuple[int, ...]:
        """The kernel's counters, read from the map's mapped pages: a map
        syscall would blind every probe on this CPU while it copies (the
        kernel skips BPF programs while bpf_prog_active is held)."""
        if self._stats_map is None:
            table = self.bpf["stats"]
            self._stats_n = len(table)
            self._stats_map = mmap.mmap(table.map_fd, max(mmap.PAGESIZE, 8 * self._stats_n),
                                        mmap.MAP_SHARED, mmap.PROT_READ)
        return struct.unpack_from(f"<{self._stats_n}Q", self._stats_map, 0)

    def counts(self) -> dict[bytes, int]:
        """Stats mode: the kernel's counter per signature (raw bytes), summed
        over CPUs; read from the mapped `slots` and `slot_next`, no syscall."""
        if self._slots is None:
            slots, nxt = self.bpf["slots"], self.bpf["slot_next"]
            self._slot_size = ctypes.sizeof(slots.Leaf)
            self._ncpu = len(nxt)
            self._slots = mmap.mmap(slots.map_fd, _pages(self._slot_size * len(slots)),
                                    mmap.MAP_SHARED, mmap.PROT_READ)
            self._next = mmap.mmap(nxt.map_fd, _pages(8 * self._ncpu),
                                   mmap.MAP_SHARED, mmap.PROT_READ)
        sig = self._slot_size - 8
        out: dict[bytes, int] = {}
        used = struct.unpack_from(f"<{self._ncpu}Q", self._next, 0)
        for cpu, n in enumerate(used):
            base = cpu * SLOTS_PER_CPU
            for i in range(base, base + min(n, SLOTS_PER_CPU)):
                off = i * self._slot_size
                key = self._slots[off:off + sig]
                count = struct.unpack_from("<Q", self._slots, off + sig)[0]
                if count:
                    out[key] = out.get(key, 0) + count
        return out

    def kprobe_misses(self) -> dict[str, dict[str, int]]:
        """Hits and misses of this tracer's kprobes, from tracefs kprobe_profile.

        A miss is a probe hit the kernel did not run (re-entry, or a
        kretprobe with no free instance): evidence that never existed, not a
        full buffer. bcc names legacy (tracefs) probe events
        `p_/r_<symbol>_bcc_<pid>`; probes it attached through the perf PMU
        are not listed there, so they are absent here."""
        path = os.path.join(self.plan.tracefs, "kprobe_profile")
        suffix = f"_bcc_{os.getpid()}"
        names = {f"{'p' if p['kind'] == 'kprobe' else 'r'}_"
                 + p["symbol"].replace(".", "_").replace("+", "_"): p["name"]
                 for p in self.plan.attach if p["kind"] in ("kprobe", "kretprobe")}
        out: dict[str, dict[str, int]] = {}
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) != 3 or not parts[0].endswith(suffix):
                        continue
                    name = names.get(parts[0][: -len(suffix)])
                    if name:
                        out[name] = {"hits": int(parts[1]), "misses": int(parts[2])}
        except OSError:
            pass
        return out

    def close(self) -> None:
        for m in (self._stats_map, self._slots, self._next):
            if m is not None:
                m.close()
        self._stats_map = self._slots = self._next = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        for fd in reversed(self._own_fds):   # the links first, then their programs
            os.close(fd)
        self._own_fds, self._own_progs = [], {}
        if self._module_btf_fd is not None:
            os.close(self._module_btf_fd)
            self._module_btf_fd = None
        if self.bpf is not None:
            try:
                self.bpf.cleanup()
            finally:
                self.bpf = None
