"""decode -> correlate -> classify -> rows: the stages live and replay share.

A source (the live tracer or a recording) only calls `record`, `tick`,
`lost` and `snapshot`, in stream order; everything after that is here, so a
replay prints exactly what live printed.
"""
from __future__ import annotations

import operator
from collections import Counter
from typing import Callable, Sequence

from ipvtrace.model import alike
from ipvtrace.model import classify as cls
from ipvtrace.model import evidence
from ipvtrace.model.correlate import Correlator, Packet
from ipvtrace.model.decode import Decoder, Event, Shape
from ipvtrace.model.evidence import KernelFacts
from ipvtrace.model.layout import Layout
from ipvtrace.model.packet import FrameNames, rule_fact_bytes, rule_facts
from ipvtrace.model.rowreuse import Like, like_of
from ipvtrace.model.topology import Topology

Row = dict
_SHAPES_MAX = 4096   # shapes count() remembers: a flood has a few, a stranger's file any number
_ALIKE_MIN = 8       # shorter runs are counted one by one: checking them at once costs more


class Pipeline:
    def __init__(
        self,
        lay: Layout,
        *,
        snapshots: list[dict],
        drop_reasons: dict[int, str],
        symbols: dict[int, str],
        t0: int,
        sink: Callable[[Row], None] | None,
        resolver: Callable[[int], str | None] | None = None,
        row_filter: Callable[[Row], bool] | None = None,
        packet_sink: Callable[[Row, Packet], None] | None = None,
        kernel: KernelFacts | None = None,
    ) -> None:
        self.decoder = Decoder(lay)
        self.ctx = cls.Context(
            topo=Topology.from_snapshots(snapshots), drop_reasons=drop_reasons,
            symbols=dict(symbols), flags=lay.flags,
            kernel=kernel or KernelFacts(),
        )
        self.t0 = t0
        self.sink = sink
        self.resolver = resolver
        self.row_filter = row_filter
        self.packet_sink = packet_sink
        self.filtered_out = 0
        self.resolved: dict[int, str] = {}
        self.correlator = Correlator(self._packet, is_l3s=self._is_l3s,
                                     lost_flag=lay.flags.get("lost", 0),
                                     echo_flag=lay.flags.get("echo", 0))
        self.branches: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.lost_total = 0
        self.events = 0
        self.packets = 0
        # count(): what a record of each shape added to the counts
        self._shapes: dict[tuple, tuple[str, tuple[str, ...], str | None]] = {}
        self.decoded = 0                       # records count() decoded (not counted by shape)
        self._watch: Event | None = None       # the entry whose packet count() / record() waits for
        self._seen: tuple | None = None        # ... what that packet added and its row
        # record(): rows reused for records like a packet's before (rowreuse.py)
        self._lines = sink if (row_filter is None and packet_sink is None
                               and callable(getattr(sink, "template", None))) else None
        self._likes: dict[tuple, Like] = {}
        self._names = FrameNames()             # ... keyed by what their rows show of the frame
        self.reused = 0                        # rows record() wrote from a like's

    # -- source side -------------------------------------------------------
    @property
    def writes_lines(self) -> bool:
        """Rows go to a sink of JSON lines alone: record() reuses rows and
        rows_alike() writes runs of them."""
        return self._lines is not None

    def knows_device(self, ev: Event) -> bool:
        return self.ctx.topo.device(ev.netns, ev.ifindex) is not None

    def record(self, raw: bytes) -> list[Event]:
        """One ring record, decoded and fed: a closed context's events go in
        together (Correlator.feed_context), an event alone. Returns them.

        When rows go to a sink that writes lines (JSON) and nothing else
        wants them, a context record whose like closed as a packet of its
        own before, and would again here, gets its like's row with its own
        times, CPU, pointers and summary (model/rowreuse.py) and is not
        decoded: [] is returned for it."""
        shape = self.decoder.shape(raw) if self._lines is not None else None
        if shape is None:
            evs = self.decoder.events(raw)
            self.events += len(evs)
            if len(evs) > 1:
                self.correlator.feed_context(evs)
            else:
                self.correlator.feed(evs[0])
            return evs
        ikey, summary = self._names.of(shape.frame, shape.has_mac)
        key = (shape.key, shape.runt, ikey)
        like = self._likes.get(key)
        if like is not None:
            vals = like.holes.values(shape.vol, summary)
            if vals is not None and self.correlator.closes_alone(
                    shape.rx, shape.ts, shape.end, shape.ctx, shape.skb, shape.head):
                self.events += shape.events
                self._add(*like.counted)
                self.reused += 1
                self._lines.write(like.fill(vals))
                return []
        evs = self.decoder.events(raw)
        self.events += len(evs)
        self._watch, self._seen = evs[0], None
        short = self.correlator.feed_context(evs)
        self._watch = None
        if short and self._seen is not None:
            counted, row = self._seen
            like = like_of(row, evs, shape, summary, counted, self._lines, self.t0)
            if like is not None:
                if len(self._likes) >= _SHAPES_MAX:
                    self._likes.clear()
                self._likes[key] = like
        return evs

    def count(self, raw: bytes) -> None:
        """One ring record, when only the counts are wanted (replay --stats:
        no rows, no resolver). A context record whose like (same
        decode.Shape key) finished at once as a packet of its own, and
        would again here (Correlator.closes_alone), is counted as that one
        was without decoding or classifying it: floods are a few shapes
        repeated. Anything else goes through record()."""
        shape = self.decoder.shape(raw) if self.resolver is None else None
        if shape is None:
            self.decoded += 1
            self.record(raw)
            return
        key = (shape.key, shape.runt, rule_facts(shape.frame, shape.has_mac))
        got = self._shapes.get(key)
        if got is not None and self.correlator.closes_alone(
                shape.rx, shape.ts, shape.end, shape.ctx, shape.skb, shape.head):
            self.events += shape.events
            self._add(*got)
            return
        self.decoded += 1
        evs = self.decoder.events(raw)
        self.events += len(evs)
        self._watch, self._seen = evs[0], None
        short = self.correlator.feed_context(evs)
        if short and self._seen is not None:
            if len(self._shapes) >= _SHAPES_MAX:
                self._shapes.clear()
            self._shapes[key] = self._seen[0]
        self._watch = None

    def count_alike(self, blob: bytes, at: int, length: int, step: int, count: int,
                    ticks: Sequence[tuple[int, int]] = ()) -> int:
        """*count* records of *length* bytes at blob[at + i*step] (a ring run:
        replay --stats), the clock *ticks* (i, ktime) of the file before
        record i among them. When all are like the first (model/alike.py) and
        the first's like already finished alone, they are counted as that one
        was, with a few operations per field, not a step per record. Returns
        how many it took, from the first (the first alone when its shape was
        new); the caller counts the rest one by one (count())."""
        if count < _ALIKE_MIN or self.resolver is not None:
            return 0
        first = blob[at:at + length]
        shape = self.decoder.shape(first)
        if shape is None:
            return 0
        key = (shape.key, shape.runt, rule_facts(shape.frame, shape.has_mac))
        done = _first_like(key, self._shapes, self.count, first)
        if done is None:
            return 1
        plan = self.decoder.alike_plan(first)
        frame_bytes = rule_fact_bytes(shape.frame, shape.has_mac)
        if plan is None or frame_bytes is None or shape.runt:
            return done
        # all are checked against the first, the rest are counted
        got = self._alike_run(shape, plan, blob, at, step, count, frame_bytes, ticks)
        if got is None:
            return done
        count, found, ticked = got
        ctxs = found.ctxs[done:]
        if not self.correlator.all_close_alone(shape.rx, found.min_ts, found.max_end, ctxs,
                                               ticked):
            return done
        n = count - done
        self.events += shape.events * n
        self._add(*self._shapes[key], times=n)
        return count

    def rows_alike(self, blob: bytes, at: int, length: int, step: int, count: int,
                   ticks: Sequence[tuple[int, int]] = ()) -> int:
        """*count* records of *length* bytes at blob[at + i*step] (a ring run:
        replay --json), with *ticks* as count_alike takes them. When all
        are like the first (model/alike.py) and show the same flow, and the
        first's like (record()) would be reused
        for each, their rows are its row with their own values, written
        together: read a field at a time, formatted in C. Returns how many
        it took, from the first (the first alone when it had no like yet);
        the caller feeds the rest to record()."""
        if self._lines is None or count < _ALIKE_MIN:
            return 0
        first = blob[at:at + length]
        shape = self.decoder.shape(first)
        if shape is None or shape.runt:
            return 0
        flow = self._names.of_run(shape.frame, shape.has_mac)
        if flow is None:
            return 0
        ikey, offsets, base, seq_at = flow
        key = (shape.key, shape.runt, ikey)
        done = _first_like(key, self._likes, self.record, first)
        if done is None:
            return 1
        like = self._likes[key]
        plan = self.decoder.alike_plan(first)
        facts = rule_fact_bytes(shape.frame, shape.has_mac)
        if plan is None or facts is None:
            return done
        got = self._alike_run(shape, plan, blob, at, step, count,
                              tuple(sorted({*offsets, *facts})), ticks)
        if got is None or got[1].min_ts == 0:
            return done
        count, found, ticked = got
        n = count - done
        start = at + done * step
        summary: str | list[str] = base
        if seq_at:
            seq = start + plan.frame + seq_at
            summary = [f"{base} seq {hi << 8 | lo}" for hi, lo in
                       zip(blob[seq:seq + (n - 1) * step + 1:step],
                           blob[seq + 1:seq + (n - 1) * step + 2:step])]
        text = like.holes.text(like.fill, plan, shape.key[3:], blob, start, step, n, summary)
        if text is None or not self.correlator.all_close_alone(
                shape.rx, found.min_ts, found.max_end, found.ctxs[done:], ticked):
            return done
        self._lines.write_text(text)
        self.events += shape.events * n
        self._add(*like.counted, times=n)
        self.reused += n
        return count

    def _alike_run(self, shape: Shape, plan: alike.Plan, blob: bytes, at: int, step: int, count: int,
                   frame_bytes: tuple[int, ...], ticks: Sequence[tuple[int, int]]
                   ) -> tuple[int, alike.Alike, int] | None:
        """How many of the records at blob[at + i*step], from the first, can
        be taken together (those before the correlator acts: _until_due),
        what alike.check found of them, and the latest of the *ticks* among
        them (0 for none); None when fewer than _ALIKE_MIN, or when they are
        not all like the first, *shape*, and its *frame_bytes*."""
        count = self._until_due(plan, blob, at, step, count, ticks)
        if count < _ALIKE_MIN:
            return None
        found = alike.check(blob, at, step, count, plan, shape.key[3:], frame_bytes)
        ticked = max((k for i, k in ticks if i < count), default=0)
        return None if found is None else (count, found, ticked)

    def _until_due(self, plan: alike.Plan, blob: bytes, at: int, step: int, count: int,
                   ticks: Sequence[tuple[int, int]] = ()) -> int:
        """How many of the records at blob[at + i*step], from the first,
        return before the correlator next acts on its own (a sweep, a
        waiting packet's deadline: Correlator.next_due), and come before any
        of the clock *ticks* (i, ktime) among them that reaches it. What the
        correlator does then depends on the time of each event, so the
        record (or tick) that reaches it goes the whole way, and the records
        after it can be taken at once again (all_close_alone says no to a
        run that reaches it). 0 when the records are not laid out as
        alike.check reads them."""
        last = at + (count - 1) * step
        if step % 8 or at % 8 or len(blob) % 8 or count < 1 or last + plan.length > len(blob):
            return 0
        due = self.correlator.next_due
        count = min((i for i, k in ticks if k >= due), default=count)
        if count < 1:
            return 0
        ends = list(map(operator.add, alike.column(blob, at, step, count, plan.vol("ts")),
                        alike.column(blob, at, step, count, plan.vol("ret_dt"))))
        if max(ends) < due:
            return count
        return next(i for i, end in enumerate(ends) if end >= due)

    def tick(self, ktime: int) -> None:
        self.correlator.tick(ktime)

    def lost(self, count: int) -> None:
        self.lost_total += count
        self.correlator.mark_lost()

    def snapshot(self, snap: dict) -> None:
        self.ctx.topo.add(snap)
        self._shapes.clear()   # a shape's branch depends on the ports' modes
        self._likes.clear()

    def finish(self) -> None:
        self.correlator.flush()

    def _is_l3s(self, ev: Event) -> bool:
        port = self.ctx.topo.port_of(ev.netns, ev.ifindex)
        return bool(port and port.get("mode") == "l3s")

    # -- packet side --------------------------------------------------------
    def _packet(self, pkt: Packet) -> None:
        if self.resolver is not None:
            for e in pkt.all_events():
                if e.probe in ("kfree", "consume") and e.aux and e.aux not in self.ctx.symbols:
                    name = self.resolver(e.aux)
                    if name:
                        self.ctx.symbols[e.aux] = name
                        self.resolved[e.aux] = name
        v = cls.classify(evidence.from_packet(pkt, self.ctx))
        row: Row | None = None
        # counting alone (replay --stats) needs no row: skip building one
        if self.sink is not None or self.row_filter is not None or self.packet_sink is not None:
            row = to_row(pkt, v, self.ctx, self.t0)
        if self.row_filter is not None and not self.row_filter(row):
            self.filtered_out += 1
            return
        added = (v.branch, tuple(m["branch"] for m in v.mcast),
                 f"{v.branch}: {v.reason or v.delivery}"
                 if v.delivery in ("dropped", "slave_down", "forward_failed") else None)
        self._add(*added)
        if pkt.entry is self._watch and pkt.waiting_for is None:
            self._seen = (added, row)
        if self.sink is not None:
            self.sink(row)
        if self.packet_sink is not None:
            self.packet_sink(row, pkt)

    def _add(self, branch: str, mcast: tuple[str, ...], drop: str | None, times: int = 1) -> None:
        self.packets += times
        self.branches[branch] += times
        for m in mcast:
            self.branches[m] += times
        if drop is not None:
            self.drops[drop] += times

    def summary(self) -> dict:
        return {
            "packets": self.packets, "events": self.events,
            "branches": dict(sorted(self.branches.items())),
            "drops": dict(sorted(self.drops.items())),
            "lost_events": self.lost_total,
            "unattributed_events": self.correlator.unattributed,
            "evicted": self.correlator.evicted,
            "filtered_out": self.filtered_out,
        }


def _first_like(key: tuple, likes: dict, feed: Callable[[bytes], object], first: bytes) -> int | None:
    """Of a run whose first record keys as *key*: 0 when *likes* holds its
    like already, 1 when feeding the first (one by one) made it, None when
    that did not (then the rest goes one by one too)."""
    if key in likes:
        return 0
    feed(first)
    return 1 if key in likes else None


def feed_run(at_once: Callable[..., int], one: Callable[[bytes], None],
             blob: bytes, at: int, length: int, step: int, count: int,
             ticks: Sequence[tuple[int, int]] = (),
             tick: Callable[[int], None] | None = None) -> None:
    """A run of *count* records of *length* bytes at blob[at + i*step]:
    those *at_once* (Pipeline.count_alike or rows_alike) takes together,
    each other through *one*, in order. A run *at_once* cut short where it
    reached the time the correlator acts on its own (Pipeline._until_due)
    goes on after the record that reached it; one it did not take at least
    _ALIKE_MIN of goes one by one.

    *ticks* are the clock ticks (i, ktime) the file had before record i,
    0 < i < count, in order (recording.RingRun): each goes to *tick* before
    record i is fed one by one, and *at_once* is told of those among the
    records it is offered (it takes them only when the ticks change nothing
    there: Correlator.all_close_alone). A tick among records taken at once
    is still given to *tick*, after them: the clock it sets is passed."""
    i = t = 0

    def ticks_upto(rec: int) -> None:
        nonlocal t
        while t < len(ticks) and ticks[t][0] <= rec:
            tick(ticks[t][1])
            t += 1

    while i < count:
        ticks_upto(i)
        took = at_once(blob, at + i * step, length, step, count - i,
                       [(p - i, k) for p, k in ticks[t:]])
        i += took
        if i < count:
            ticks_upto(i)
            one(blob[at + i * step:at + i * step + length])
            i += 1
        if took < _ALIKE_MIN:
            for rec in range(i, count):
                ticks_upto(rec)
                one(blob[at + rec * step:at + rec * step + length])
            ticks_upto(count)
            return
    ticks_upto(count)


def to_row(pkt: Packet, v: cls.Verdict, ctx: cls.Context, t0: int) -> Row:
    info = v.info
    row: Row = {
        "time": round((pkt.first_ts - t0) / 1e9, 6) if pkt.first_ts else None,
        "ts": pkt.first_ts,
        "direction": pkt.direction,
        "branch": v.branch,
        "mode": v.mode,
        "flags": v.flags,
        "delivery": v.delivery,
        "proto": info.proto,
        "kind": info.kind,
        "src": info.src,
        "dst": info.dst,
        "sport": info.sport,
        "dport": info.dport,
        "eth_src": info.eth_src,
        "eth_dst": info.eth_dst,
        "summary": info.summary(),
        "from": v.frm,
        "to": v.to,
        "complete": v.complete,
        "why": v.why,
    }
    if v.reason or v.location:
        row["reason"] = v.reason
        row["location"] = v.location
    if v.mcast:
        row["mcast"] = v.mcast
    row["events"] = [cls.event_json(e, ctx) for e in pkt.all_events()]
    return row
