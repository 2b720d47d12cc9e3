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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ipvtrace import __version__
from ipvtrace.capture import probes, snapshot
from ipvtrace.capture.symbols import Kallsyms, drop_reasons
from ipvtrace.lifecycle import StopFlag, announce, ktime_ns
from ipvtrace.model import layout
from ipvtrace.model.decode import field_offsets
from ipvtrace.model.pipeline import Pipeline, Row
from ipvtrace.output import recording

TICK_MS = 200
ENTRY_PROBES = ("xmit", "rx")


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
    plan = probes.build()
    lay = layout.current()
    reasons = drop_reasons(plan.tracefs)
    snap0 = snapshot.take()

    writer: recording.Writer | None = None
    with StopFlag() as stop:
        try:
            with loader.Tracer(plan, ringbuf_pages=opts.ringbuf_pages,
                               filter_c=opts.filter_c) as tracer:
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
                src = _LiveStream(lay, writer, snap0, reasons, t0, opts.sink, opts.row_filter)
                if opts.sink is not None:   # rows name drop locations as they go:
                    src.kallsyms.resolve(0)   # read kallsyms now, not under the first drop
                tracer.on_event(src.raw)
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
                    # fdinfo) once a tick, not after every batch: under a
                    # flood a poll returns per batch, and a loss mark per
                    # tick is all the file needs
                    if time.monotonic() >= next_stats:
                        kstats = tracer.kernel_stats()
                        next_stats = time.monotonic() + TICK_MS / 1000
                    src.tick(now, kstats)
                now = ktime_ns()
                tracer.drain()
                src.check()
                kstats = tracer.kernel_stats()
                src.tick(now, kstats)
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

    def __init__(self, lay, writer, snap0, reasons, t0, sink, row_filter=None) -> None:
        self.writer: recording.Writer | None = writer
        self.kallsyms = Kallsyms()
        self.symbols: dict[int, str] = {}
        self.error: BaseException | None = None
        self.lost_seen = 0
        self.tried: set[tuple[bool, tuple[int, int]]] = set()
        self.pipe = Pipeline(
            lay, snapshots=[snap0], drop_reasons=reasons, symbols={}, t0=t0,
            sink=sink, resolver=self._resolve, row_filter=row_filter,
        )
        self.classify = sink is not None
        # fixed offsets into struct ipvt_event / ipvt_rec / ipvt_hit, for the
        # record-only fast path
        offs = field_offsets(lay.fields, lay.fmt)
        roffs = field_offsets(lay.rec.fields, lay.rec.fmt)
        hoffs = field_offsets(lay.hit.fields, lay.hit.fmt)
        self._off_probe, self._off_netns, self._off_aux = offs["probe"], offs["netns"], offs["aux"]
        assert offs["ifindex"] == offs["netns"] + 4
        assert (roffs["probe"], roffs["netns"], roffs["ifindex"]) == (
            offs["probe"], offs["netns"], offs["ifindex"])
        self._off_kind, self._off_nhits, self._off_hdr_len = (
            roffs["kind"], roffs["nhits"], roffs["hdr_len"])
        self._rec_size = struct.calcsize(lay.rec.fmt)
        self._hit_size = struct.calcsize(lay.hit.fmt)
        self._hit_probe, self._hit_aux = hoffs["probe"], hoffs["aux"]
        self._peek_probe = struct.Struct("<H").unpack_from
        self._peek_u32 = struct.Struct("<I").unpack_from
        self._peek_dev = struct.Struct("<Ii").unpack_from
        self._peek_aux = struct.Struct("<Q").unpack_from
        ids = {v: k for k, v in lay.probes.items()}
        self._context_id = ids["context"]
        self._entry_ids = {ids[p] for p in ENTRY_PROBES}
        self._rx_id = ids["rx"]
        self._free_ids = {ids["kfree"], ids["consume"]}
        self._known: set[tuple[int, int]] = set()
        self.refreshes = 0
        self.refresh_s = 0.0
        self._pending_symbols: set[int] = set()   # record: drop locations, named at close

    def _resolve(self, addr: int) -> str | None:
        name = self.symbols.get(addr)
        if name is None:
            name = self.kallsyms.resolve(addr)
            if name:
                self.symbols[addr] = name
        return name

    def raw(self, data: bytes) -> None:
        try:
            if not self.classify:
                self._record_only(data)
                return
            evs = self.pipe.decode(data)
            for ev in evs:
                if ev.probe in ENTRY_PROBES:
                    self._check_device(ev.probe == "rx", ev.netns, ev.ifindex)
                if ev.probe in ("kfree", "consume") and ev.aux:
                    self._resolve(ev.aux)
            if self.writer is not None:
                self.writer.event(data)
            for ev in evs:
                self.pipe.event(ev)
        except BaseException as exc:  # never let an exception vanish in a C callback
            self.error = self.error or exc

    def _record_only(self, data: bytes) -> None:
        """`record`: no classification, so read only the three fields that
        matter here instead of decoding the whole event (per-event cost)."""
        probe = self._peek_probe(data, self._off_probe)[0]
        if probe == self._context_id:
            probe = self._peek_u32(data, self._off_kind)[0]
            nhits = self._peek_u32(data, self._off_nhits)[0]
            at = self._rec_size + ((self._peek_probe(data, self._off_hdr_len)[0] + 7) & ~7)
            for hit in range(at, at + nhits * self._hit_size, self._hit_size):
                if self._peek_probe(data, hit + self._hit_probe)[0] in self._free_ids:
                    aux = self._peek_aux(data, hit + self._hit_aux)[0]
                    if aux:
                        self._pending_symbols.add(aux)
        if probe in self._entry_ids:
            netns, ifindex = self._peek_dev(data, self._off_netns)
            if (netns, ifindex) not in self._known:
                self._check_device(probe == self._rx_id, netns, ifindex)
                self._known.add((netns, ifindex))
        elif probe in self._free_ids:
            aux = self._peek_aux(data, self._off_aux)[0]
            if aux:   # named at the end: loading kallsyms here stalled the
                self._pending_symbols.add(aux)   # consumer for seconds (emulated)
        if self.writer is not None:
            self.writer.event(data)
        self.pipe.events += 1

    def _check_device(self, rx: bool, netns: int, ifindex: int) -> None:
        """Before an entry event is written or classified: its device must be
        known, and a parent whose rx_handler ran must be known as a port (its
        mode decides the RX branch). A parent read before its first slave
        existed, or while that slave moved to its pod's namespace, has no
        port yet. Its slaves can be in any namespace, even one read before
        they moved in (a CNI makes the namespace first): the whole node is
        read, once per parent. (Without this, such a parent's first frames
        were named by a port of unknown mode: rx.to_host for an L3S port.)"""
        topo = self.pipe.ctx.topo
        if topo.device(netns, ifindex) is None:
            self._refresh((netns, ifindex))
        if rx and topo.port_of(netns, ifindex) is None:
            self._refresh((netns, ifindex), whole_node=True)

    def _refresh(self, key: tuple[int, int], whole_node: bool = False) -> None:
        """A device appeared after the start: read its namespace (one netlink
        dump, not the node's), once per device. Timed: `refresh_s` in the
        summary and the trailer says what pod churn cost the consumer."""
        tag = (whole_node, key)
        if tag in self.tried:
            return
        self.tried.add(tag)
        t = time.monotonic()
        topo = self.pipe.ctx.topo
        snap = snapshot.take() if whole_node else snapshot.take_netns(key[0], topo)
        if self.writer is not None:
            self.writer.snapshot(snap)
        self.pipe.snapshot(snap)
        self.refreshes += 1
        self.refresh_s += time.monotonic() - t

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def tick(self, now: int, kstats: dict[str, int]) -> None:
        # a kprobe miss, or a hit the kernel skipped (bpf_prog_active held), is
        # evidence that never existed: the same effect as a lost event
        lost = sum(v for k, v in kstats.items()
                   if k.startswith(("lost.", "kprobe_missed.", "skipped.")))
        if lost > self.lost_seen:
            delta = lost - self.lost_seen
            self.lost_seen = lost
            if self.writer is not None:
                self.writer.lost(now, delta)
            self.pipe.lost(delta)
        if self.writer is not None:
            self.writer.tick(now)
        if self.classify:
            self.pipe.tick(now)

    def close(self, ended_by: str, kstats: dict[str, int]) -> dict:
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
        for addr in self._pending_symbols:
            self._resolve(addr)
        if self.writer is not None:
            self.writer.close({
                "ended_by": ended_by,
                "end_ktime": ktime_ns(),
                "lost_events": self.lost_seen,
                "kernel_stats": kstats,
                "refreshes": self.refreshes,
                "refresh_s": round(self.refresh_s, 3),
                "symbols": {f"{a:#x}": n for a, n in self.symbols.items()},
            })
            summary["output"] = str(self.writer.path)
            summary["events"] = self.writer.events
        return summary
