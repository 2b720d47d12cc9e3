"""The live source (live, record): attach, read the ring buffer, feed the
pipeline, and write exactly that stream (events, ticks, lost-event marks,
snapshots) to the recording, which is why replay prints what live printed.
"""
from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ipvtrace import __version__
from ipvtrace.capture import probes, refresher, ringbuf, snapshot
from ipvtrace.capture.symbols import Kallsyms, drop_reasons
from ipvtrace.lifecycle import Beside, StopFlag, announce, ktime_ns
from ipvtrace.model import layout
from ipvtrace.model.decode import field_offsets
from ipvtrace.model.evidence import KernelFacts
from ipvtrace.model.pipeline import Pipeline, Row, feed_run
from ipvtrace.output import recording

TICK_MS = 200
HOLD_MAX_BYTES = 64 << 20   # records held while a new device's namespace is read
KNOWN_MAX = 4096            # distinct plain record windows remembered (ringbuf.Known)
ENTRY_PROBES = ("xmit", "rx")
_U32 = struct.Struct("<I")


@dataclass
class LiveOptions:
    output: Path | None = None
    duration: float | None = None
    ready_file: Path | None = None
    sink: Callable[[Row], None] | None = None   # None: record only, no classification
    row_filter: Callable[[Row], bool] | None = None
    on_attached: Callable[[str, Callable[[], int]], None] | None = None   # (header, lost count)
    filter_c: str | None = None        # the in-kernel filter, as C (filterexpr)
    filter_text: str | None = None
    row_filters: dict | None = None    # record: stored for replay
    ringbuf_pages: int = 1024
    on_summary: Callable[[dict], None] | None = None
    argv: list[str] = field(default_factory=lambda: list(sys.argv))


def run_live(opts: LiveOptions) -> dict:
    """Attach, stream until a signal or the duration, detach. Returns a summary."""
    from ipvtrace.capture import loader  # bcc is imported only on this path

    loader.require_root()
    loader.import_bcc()
    if opts.output is not None:   # what writing the file needs, before anything is attached
        try:
            recording.lz4_block()
        except recording.RecordingError as exc:
            raise loader.LoadError(str(exc)) from None
    plan = probes.build()
    lay = layout.current()
    reasons = drop_reasons(plan.tracefs)
    kallsyms = Kallsyms()

    def before_tracing() -> dict:
        if opts.sink is not None:   # rows name drop locations as they go:
            kallsyms.resolve(0)     # read kallsyms now, not under the first drop
        return snapshot.take()

    # read while the program compiles; taken before the probes are armed,
    # like every start snapshot (devices that come later are read as they show)
    snap_beside = Beside(before_tracing, "ipvtrace-snapshot")
    writer: recording.Writer | None = None
    with StopFlag() as stop:
        try:
            with loader.Tracer(plan, ringbuf_pages=opts.ringbuf_pages,
                               filter_c=opts.filter_c) as tracer:
                snap0 = snap_beside.result()
                t0 = ktime_ns()
                tracer.arm()   # every event from here on is at or after t0
                header = {
                    "format": "ipvtrace-recording",
                    "format_version": lay.format_version,
                    "ipvtrace_version": __version__,
                    "kernel": os.uname().release,
                    "host": socket.gethostname(),
                    "command": opts.argv,
                    "start_ktime": t0,
                    "start_wall": time.time(),
                    "plan": plan.to_json(),
                    "filter": opts.filter_text,
                    "row_filters": opts.row_filters,
                    "cannot_show": probes.what_this_kernel_shows(plan),
                    "layout": lay.to_json(),
                    "drop_reasons": {str(k): v for k, v in reasons.items()},
                    "snapshot": snap0,
                }
                if opts.output is not None:
                    writer = recording.Writer(opts.output, header)
                src = _LiveStream(lay, writer, snap0, reasons, t0, opts.sink, opts.row_filter,
                                  kernel=KernelFacts.from_plan(header["plan"]),
                                  kallsyms=kallsyms)
                # record, on the mapped ring: records whose devices are known
                # go to the file in whole runs (no Python per record beyond a peek)
                # live --json likewise: runs of records alike get their rows at once
                runs = None
                if writer is not None and opts.sink is None:
                    runs = (src.plain, src.ring_run, src.known)
                elif src.pipe.writes_lines:
                    runs = (src.plain, src.line_run, src.known)
                tracer.on_event(src.raw, runs=runs)
                stop.install()
                announce(plan, f"tracing ({plan.probe_count} probes)"
                         + (f", writing {opts.output}" if opts.output else ""))
                if opts.on_attached is not None:
                    opts.on_attached(f"ipvtrace on {os.uname().release}: {plan.probe_count} probes",
                                     lambda: src.lost_seen)
                if opts.ready_file is not None:
                    opts.ready_file.write_text(f"{os.getpid()}\n")
                deadline = time.monotonic() + opts.duration if opts.duration else None
                kstats: dict[str, int] = {}
                read_at = 0    # when kstats was read: any loss it shows happened before
                next_stats = 0.0
                while stop.why is None:
                    if deadline is not None and time.monotonic() >= deadline:
                        stop.why = "duration"
                        break
                    # the clock is read *before* the ring is read: a tick says
                    # "every event older than this is in", which holds even when
                    # handling the batch takes long (a netlink snapshot under load)
                    now = ktime_ns()
                    tracer.poll(TICK_MS)
                    src.check()
                    # the counters (tracefs kprobe_profile, the mapped stats,
                    # the programs' skipped hits) once a tick, not after every batch: under a
                    # flood a poll returns per batch, and a loss mark per
                    # tick is all the file needs
                    if time.monotonic() >= next_stats:
                        kstats = tracer.kernel_stats(fresh=False)
                        read_at = ktime_ns()
                        next_stats = time.monotonic() + TICK_MS / 1000
                    src.tick(now, kstats, read_at)
                now = ktime_ns()
                tracer.drain()
                src.check()
                src.settle()
                kstats = tracer.kernel_stats()
                src.tick(now, kstats, ktime_ns())
                src.name_free_sites(tracer.free_sites())
            summary = src.close(ended_by=stop.why or "duration", kstats=kstats)
        except recording.WriteError as exc:
            kept = writer.keep_partial() if writer is not None else None
            raise recording.WriteError(
                exc.errno, f"{exc.strerror}: recording stopped; what was written is kept in "
                f"{kept} (ipvtrace replay reads it)") from None
        except BaseException:
            if writer is not None:   # nothing recorded is thrown away
                kept = writer.keep_partial()
                print(f"ipvtrace: what was recorded is kept in {kept}", file=sys.stderr)
            raise
    if opts.on_summary:
        opts.on_summary(summary)
    return summary


class _LiveStream:
    """Turns polled raw events into pipeline calls and recording frames."""

    def __init__(self, lay, writer, snap0, reasons, t0, sink, row_filter=None,
                 kernel: KernelFacts | None = None, kallsyms: Kallsyms | None = None) -> None:
        self.writer: recording.Writer | None = writer
        self.kallsyms = kallsyms or Kallsyms()
        self.symbols: dict[int, str] = {}
        self.error: BaseException | None = None
        self.lost_seen = 0
        self.pipe = Pipeline(
            lay, snapshots=[snap0], drop_reasons=reasons, symbols={}, t0=t0,
            sink=sink, resolver=self._resolve, row_filter=row_filter,
            kernel=kernel,
        )
        self.classify = sink is not None
        # an entry's kind, device and probe, read without decoding (struct
        # ipvt_rec; an event has probe, netns and ifindex at the same offsets)
        offs = field_offsets(lay.fields, lay.fmt)
        roffs = field_offsets(lay.rec.fields, lay.rec.fmt)
        assert all(roffs[f] == offs[f] for f in ("probe", "netns", "ifindex"))
        assert roffs["kind"] < roffs["netns"] and roffs["ifindex"] == roffs["netns"] + 4 < roffs["probe"]
        self._win = struct.Struct(
            f"<{roffs['kind']}xI{roffs['netns'] - roffs['kind'] - 4}xIi"
            f"{roffs['probe'] - roffs['netns'] - 8}xH")
        self._peek = self._win.unpack_from
        # windows plain() accepted since the last hold: ringbuf.walk passes
        # those records on without calling it
        self.known = ringbuf.Known(self._peek, self._win.size, set(), tuple(
            [*range(roffs["kind"], roffs["kind"] + 4), *range(roffs["netns"], roffs["netns"] + 8),
             roffs["probe"], roffs["probe"] + 1]))
        ids = {v: k for k, v in lay.probes.items()}
        self._context_id = ids["context"]
        self._entry_ids = {ids[p] for p in ENTRY_PROBES}
        self._rx_id = ids["rx"]
        # devices that appeared while tracing: read by another thread while
        # the records that name them wait here, in order (refresher.py)
        self.refresher = refresher.Refresher()
        self._asked: set[refresher.Tag] = set()
        self._reading: set[refresher.Tag] = set()
        self._settled: set[tuple[int, int, int]] = set()   # entry keys: see _entry
        self._held: deque[tuple] = deque()
        self._held_bytes = 0
        self.held_max = 0      # the most items that waited at once
        self.hold_waits = 0    # times the consumer waited for a read (hold full)
        self.refreshes = 0
        self.refresh_s = 0.0

    def _resolve(self, addr: int) -> str | None:
        name = self.symbols.get(addr)
        if name is None:
            name = self.kallsyms.resolve(addr)
            if name:
                self.symbols[addr] = name
        return name

    def raw(self, data: bytes) -> None:
        try:
            self._collect(block=False)
            if self._held:
                self._hold(("data", data))
                self._prefetch(data)
            elif self._waits(data):
                self._hold(("data", data))
            else:
                self._emit(data)
        except BaseException as exc:  # never let an exception vanish in a C callback
            self.error = self.error or exc

    def _emit(self, data: bytes) -> None:
        """Write and classify one ring record whose devices are known."""
        if not self.classify:
            self._record_only(data)
            return
        if self.writer is not None:
            self.writer.event(data)
        self._classify(data)

    def _classify(self, data: bytes) -> None:
        for ev in self.pipe.record(data):
            # named for the trailer even when no row shows the free (the
            # rows themselves are named as their packet closes: Pipeline)
            if ev.probe in ("kfree", "consume") and ev.aux:
                self._resolve(ev.aux)

    def _record_only(self, data: bytes) -> None:
        """`record`: no classification, so nothing is decoded (the free
        locations it names at its end come from the kernel: free_sites)."""
        if self.writer is not None:
            self.writer.event(data)
        self.pipe.events += 1

    def plain(self, data, off: int, length: int) -> bool:
        """`record` on the mapped ring: may the record at data[off:] go to
        the file in a run, untouched? Not while records wait for a netlink
        read (stream order), nor an entry whose device is not settled
        (_waits decides, record by record)."""
        if self._held or length < self._win.size:
            return False
        win = self._peek(data, off)
        key = self._key(win)
        if key is None or key in self._settled:
            if len(self.known.keys) >= KNOWN_MAX:
                self.known.keys.clear()
            self.known.keys.add(win)
            return True
        return False

    def ring_run(self, span: bytes, records: int) -> None:
        """Records plain() accepted, framed as the ring framed them."""
        self.writer.ring(span, records)
        self.pipe.events += records

    def line_run(self, span, records: int) -> None:
        """live --json (and -o), on the mapped ring: records plain()
        accepted, framed as the ring framed them (a view of it, valid
        during the call). Each stretch of one length goes to
        Pipeline.rows_alike, which writes the rows of records alike at once;
        the others are classified one by one, in stream order."""
        if self.writer is not None:
            self.writer.ring(span, records)
        blob = bytes(span)   # (alike.check reads strided slices: of bytes, not a view)
        u32, hdr, at, end = _U32.unpack_from, ringbuf.HDR, 0, len(blob)
        while at < end:
            length = u32(blob, at)[0]
            step = (length + hdr + 7) & ~7
            stop, count = at + step, 1
            while stop < end and u32(blob, stop)[0] == length:
                stop += step
                count += 1
            feed_run(self.pipe.rows_alike, self._classify, blob, at + hdr, length, step, count)
            at = stop

    def name_free_sites(self, addrs: list[int]) -> None:
        """Where the kernel saw kept hits' skbs freed: named for the trailer
        (loading kallsyms under the flood stalled the consumer for seconds,
        emulated), as rows name them when they classify."""
        for addr in addrs:
            self._resolve(addr)

    def _entry(self, data, off: int = 0) -> tuple[int, int, int] | None:
        """The entry a ring record names, as (entry probe, netns, ifindex),
        or None: read from the bytes, so that a held record is only bytes
        (decoded, a record takes ten times the memory). A context record's
        hits are helpers: a nested entry sends its own record."""
        return self._key(self._peek(data, off))

    def _key(self, win: tuple[int, int, int, int]) -> tuple[int, int, int] | None:
        kind, netns, ifindex, probe = win
        if probe == self._context_id:
            probe = kind
        return (probe, netns, ifindex) if probe in self._entry_ids else None

    def _waits(self, data: bytes) -> bool:
        """Must this record wait for a netlink read? Its entry device must be
        known before it is written or classified, and a parent whose
        rx_handler ran must be known as a port (its mode decides the RX
        branch). A parent read before its first slave existed, or while that
        slave moved to its pod's namespace, has no port yet; its slaves can
        be in any namespace, even one read before they moved in (a CNI makes
        the namespace first): the whole node is read, once per parent.
        (Without this, such a parent's first frames were named by a port of
        unknown mode: rx.to_host for an L3S port.) Asks for the read if
        nobody has yet; a device still unknown after its read is let go."""
        entry = self._entry(data)
        if entry is None or entry in self._settled:
            return False
        key = entry[1:]
        topo = self.pipe.ctx.topo
        if topo.device(*key) is None and self._ask((False, key)):
            return True
        if entry[0] == self._rx_id and topo.port_of(*key) is None and self._ask((True, key)):
            return True
        self._settled.add(entry)
        return False

    def _prefetch(self, data: bytes) -> None:
        """A record that arrives behind held ones waits its turn, but the read
        of its unknown namespace can start now."""
        entry = self._entry(data)
        if entry is not None and self.pipe.ctx.topo.device(*entry[1:]) is None:
            self._ask((False, entry[1:]))

    def _ask(self, tag: refresher.Tag) -> bool:
        """True while the read *tag* names is under way (asked now or before)."""
        if tag in self._asked:
            return tag in self._reading
        self._asked.add(tag)
        self._reading.add(tag)
        self.refresher.request(tag, list(self.pipe.ctx.topo.devices.values()))
        return True

    def _hold(self, item: tuple) -> None:
        """Keep *item* (a record, a loss mark, a tick) in stream order until
        the reads before it are in. Bounded: past HOLD_MAX_BYTES the consumer
        waits for the reader, as it did when reads ran inline."""
        self._held.append(item)
        self.known.keys.clear()   # plain() says no to all while anything is held
        if item[0] == "data":
            self._held_bytes += len(item[1])
        self.held_max = max(self.held_max, len(self._held))
        while self._held_bytes > HOLD_MAX_BYTES and self._reading:
            self.hold_waits += 1
            self._collect(block=True)

    def _collect(self, block: bool) -> None:
        """Apply the reads that finished (snapshot frame, then the model) and
        release what waited for them, in order. Also called from the main
        loop, so a read that ends while the ring is quiet is not kept."""
        if not self._reading and not self._held:
            return
        for done in self.refresher.done(block=block):
            self._reading.discard(done.tag)
            self.refresh_s += done.seconds
            if done.error is not None:
                raise done.error
            if self.writer is not None:
                self.writer.snapshot(done.snap)
            self.pipe.snapshot(done.snap)
            self.refreshes += 1
        while self._held:
            item = self._held[0]
            if item[0] == "data":
                if self._waits(item[1]):
                    return
                self._held_bytes -= len(item[1])
                self._emit(item[1])
            elif item[0] == "lost":
                self._lost(item[1], item[2])
            else:
                self._tick(item[1])
            self._held.popleft()

    def settle(self) -> None:
        """At the end: every read done, every held record out."""
        while self._held or self._reading:
            self._collect(block=True)
        self.refresher.close()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def tick(self, now: int, kstats: dict[str, int], read_at: int) -> None:
        """Every event before *now* is in; *kstats* were read at *read_at*
        (after the ring was). A loss they show is marked at *read_at*: it
        happened at or before then, after the previous reading. (Recorders
        before 2026-12-03 marked it at *now*, read before the tick's poll,
        up to a tick earlier than the loss: crossnode.MARK_EARLY_NS.)"""
        # a kprobe miss, or a hit the kernel skipped (bpf_prog_active held), is
        # evidence that never existed: the same effect as a lost event
        self._collect(block=False)
        lost = sum(v for k, v in kstats.items()
                   if k.startswith(("lost.", "kprobe_missed.", "skipped.")))
        delta = lost - self.lost_seen
        if delta > 0:
            self.lost_seen = lost
        if self._held:   # behind records that wait for a read: in order
            if delta > 0:
                self._hold(("lost", read_at, delta))
            self._hold(("tick", now))
            return
        if delta > 0:
            self._lost(read_at, delta)
        self._tick(now)

    def _lost(self, now: int, delta: int) -> None:
        if self.writer is not None:
            self.writer.lost(now, delta)
        self.pipe.lost(delta)

    def _tick(self, now: int) -> None:
        if self.writer is not None:
            self.writer.tick(now)
        if self.classify:
            self.pipe.tick(now)

    def close(self, ended_by: str, kstats: dict[str, int]) -> dict:
        self.settle()
        snap = snapshot.take()
        if self.writer is not None:
            self.writer.snapshot(snap)
        self.pipe.snapshot(snap)
        if self.classify:
            self.pipe.finish()
        summary = self.pipe.summary()
        summary["lost_events"] = self.lost_seen
        summary["kernel_stats"] = kstats
        summary["refreshes"] = self.refreshes
        summary["refresh_s"] = round(self.refresh_s, 3)
        summary["refresh_held_max"] = self.held_max
        summary["refresh_hold_waits"] = self.hold_waits
        if self.writer is not None:
            self.writer.close({
                "ended_by": ended_by,
                "end_ktime": ktime_ns(),
                "lost_events": self.lost_seen,
                "kernel_stats": kstats,
                "refreshes": self.refreshes,
                "refresh_s": round(self.refresh_s, 3),
                "refresh_held_max": self.held_max,
                "refresh_hold_waits": self.hold_waits,
                "symbols": {f"{a:#x}": n for a, n in self.symbols.items()},
            })
            summary["output"] = str(self.writer.path)
            summary["events"] = self.writer.events
        return summary
