"""Group events into one record per packet.

Keys, from the strongest to the weakest:
- the *context id* the BPF program gives every entry (ipvlan_queue_xmit,
  ipvlan_handle_frame, ipvlan_process_multicast) and copies into every helper
  event seen while that context is the innermost one on its CPU (or the
  worker's task). Nesting (a softirq running another packet's RX inside a TX
  on the same CPU) therefore never mixes two packets, and a reused skb
  pointer starts a new context, hence a new packet.
- a frame that ipvlan forwarded to the parent (dev_forward_skb(parent)) comes
  back through the parent's rx_handler later: that RX is the same packet when
  skb pointer, skb->head and device all match, within a time window. The
  kernel flags such an RX context (IPVT_F_ECHO): its record may come before
  the TX's (another task ran the parent's RX while the sender was preempted
  inside ipvlan_queue_xmit, as PREEMPT_RT 7.2 lets it), and then waits for
  it; one whose TX never comes is incomplete, never a packet of its own.
- the multicast worker handles an enqueued skb later, maybe on another CPU:
  its clones share the enqueued skb's data (skb->head), which ties them back.
- on an L3S port the rx_handler only passes the frame; ipvlan's l3mdev hook
  (ipvlan_l3_rcv) and LOCAL_IN hook (ipvlan_nf_input) see the same skb later:
  joined like the to-parent echo, by skb pointer and skb->head.

Time only moves with the event stream (event timestamps and recorded clock
ticks), never the wall clock, so replay groups exactly as live did.

Loss is exact where the kernel can tell (format 2): an event that could not
be reserved in the ring flags its context, and the context's closing event
(an entry's return, the worker's return) carries IPVT_F_LOST, so exactly the
packets that lost evidence are incomplete. An L3S continuation has no
closing event: a lost-events mark makes the packets still waiting for one
incomplete. Version-1 recordings have no such flag: a mark there makes every
open packet incomplete.

From format 3 an entry's context arrives as one record when it closes, so a
multicast worker run on another CPU can end before the record of the context
that queued its frame arrives (the run starts as soon as the frame is queued;
the queuing context returns a moment later). A worker run's share that no
waiting packet claims is parked for WAIT_NS and handed to the packet whose
enqueue of that frame (same skb->head, or the same skb for a free that names
only the pointer) came before it, when that packet's record arrives.

Memory stays bounded however long it runs: a context whose return never
comes (a missed kretprobe, lost events), a worker run that never ends, or a
packet whose RX echo never returns is evicted after a few WAIT_NS, finished
as incomplete, and counted (`evicted`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from ipvtrace.model.decode import Event

_NONE: tuple = ()        # helpers() of a probe the packet never saw
WAIT_NS = 2_000_000_000  # how long a packet waits for its RX echo / worker
_ENTRIES, _RETURNS = ("xmit", "rx"), ("xmit_ret", "rx_ret")
_NOT_HELPERS = frozenset(("xmit", "rx", "xmit_ret", "rx_ret", "mc_work", "mc_work_ret", "l3_rcv"))
RX_HANDLER_PASS = 3


@dataclass(eq=False)   # identity: a packet is never "equal" to another one
class Packet:
    """Everything seen about one packet inside ipvlan."""

    entry: Event | None
    events: list[Event] = field(default_factory=list)
    ret: Event | None = None
    cont: list[Event] = field(default_factory=list)        # parent RX of a to_parent frame
    cont_ret: Event | None = None
    worker: list[Event] = field(default_factory=list)      # multicast worker, this packet's share
    worker_done: bool = False
    waiting_for: str | None = None                         # "rx" | "worker" | "l3s" | "tx" | None
    deadline: int = 0
    lost_overlap: bool = False                             # events were lost while it was open
    evicted: bool = False                                  # its return never came: evicted
    waits: list = field(default_factory=list)              # (table, key) it is registered under
    _by_probe: dict | None = field(default=None, repr=False)   # helpers(): events by probe
    _grouped: int = field(default=0, repr=False)               # ... of this many events

    @property
    def direction(self) -> str:
        if self.entry is None:
            return "?"
        return "tx" if self.entry.probe == "xmit" else "rx"

    @property
    def first_ts(self) -> int:
        if self.entry is not None:
            return self.entry.ts
        return self.events[0].ts if self.events else 0

    def by_probe(self) -> dict[str, tuple[Event, ...]]:
        """This packet's events grouped by probe, in order. Grouped once and
        kept while no event is added (the classifier asks for a dozen probes
        of every packet); tuples, so no caller can change what the next one
        reads."""
        by = self._by_probe
        if by is None or self._grouped != len(self.events):
            groups: dict[str, list[Event]] = {}
            for e in self.events:
                groups.setdefault(e.probe, []).append(e)
            by = {k: tuple(v) for k, v in groups.items()}
            self._by_probe, self._grouped = by, len(self.events)
        return by

    def helpers(self, probe: str) -> tuple[Event, ...]:
        """This packet's events of one probe, in order."""
        return self.by_probe().get(probe, _NONE)

    def all_events(self) -> list[Event]:
        out = list(self.events)
        if self.ret is not None:
            out.append(self.ret)
        out.extend(self.cont)
        if self.cont_ret is not None:
            out.append(self.cont_ret)
        out.extend(self.worker)
        return out


@dataclass
class _Parked:
    """A worker run's events for one frame no packet was waiting for (yet)."""
    events: list[Event]
    lossy: bool
    deadline: int


@dataclass
class _Worker:
    events: list[Event] = field(default_factory=list)
    start: int = 0                                         # mc_work's timestamp
    lossy: bool = False                                    # events lost, or the run never returned


class Correlator:
    """Feed events and ticks in stream order; packets come out when finished."""

    def __init__(self, emit: Callable[[Packet], None], wait_ns: int = WAIT_NS,
                 is_l3s: Callable[[Event], bool] | None = None, lost_flag: int = 0,
                 echo_flag: int = 0) -> None:
        self.emit = emit
        self.lost_flag = lost_flag   # IPVT_F_LOST, 0 for recordings without it
        self.echo_flag = echo_flag   # IPVT_F_ECHO, 0 for recordings without it
        self.wait_ns = wait_ns
        self.is_l3s = is_l3s or (lambda ev: False)
        self.open: dict[int, Packet] = {}
        self.cont_of: dict[int, Packet] = {}       # ctx id of a parent RX -> TX packet
        self.workers: dict[int, _Worker] = {}
        self.await_rx: dict[tuple[int, int], Packet] = {}   # (skb, head) -> packet
        # head -> packets waiting for the worker, oldest first: a clone queued
        # while the worker runs (a reflected frame) shares its original's head
        self.await_mc: dict[int, list[Packet]] = {}
        self.await_l3s: dict[tuple[int, int], Packet] = {}  # (skb, head) -> packet
        # (skb, head) -> an RX echo (IPVT_F_ECHO) that closed before its TX
        self.await_tx: dict[tuple[int, int], Packet] = {}
        self.pending: list[Packet] = []
        self.now = 0
        self.unattributed = 0
        self.evicted = 0
        self._next_sweep = 0
        self._worker_seen: dict[int, int] = {}   # worker ctx id -> its first timestamp
        # ("head", skb->head) or ("skb", pointer) -> parked worker shares
        self.parked: dict[tuple[str, int], list[_Parked]] = {}

    # -- input ----------------------------------------------------------
    def feed(self, ev: Event) -> None:
        if ev.ts > self.now:
            self.now = ev.ts
        p = ev.probe
        if p == "xmit" or p == "rx":
            self._entry(ev)
        elif p == "xmit_ret" or p == "rx_ret":
            self._ret(ev)
        elif p == "mc_work":
            self.workers[ev.ctx] = _Worker(start=ev.ts)
            self._worker_seen[ev.ctx] = ev.ts
        elif p == "mc_work_ret":
            w = self.workers.pop(ev.ctx, None)
            self._worker_seen.pop(ev.ctx, None)
            if w is not None:
                w.lossy = bool(ev.flags & self.lost_flag)
                self._worker_done(w)
        else:
            self._helper(ev)
        self._expire()

    def feed_context(self, evs: list[Event]) -> bool:
        """A closed context's events (entry, its hits, its return: one ring
        record), exactly as feed() would take them one by one, without
        registering the context as open between its entry and its return.
        The record's entry starting a packet of its own is the usual case;
        one that continues another packet (an RX echo, hits that are
        entries) or that the sweep would evict on the way takes feed().
        True when it took the short way."""
        entry, ret = evs[0], evs[-1]
        if (entry.probe not in _ENTRIES or ret.probe not in _RETURNS or ret.ts < entry.ts
                or entry.ts < max(self.now, ret.ts) - 3 * self.wait_ns
                or ret.ctx != entry.ctx or entry.ctx in self.open
                or (entry.probe == "rx" and (entry.skb, entry.head) in self.await_rx)
                or any(e.probe in _NOT_HELPERS or e.ts < entry.ts or e.ts > ret.ts
                       for e in evs[1:-1])):
            for ev in evs:
                self.feed(ev)
            return False
        for ev in evs[:-1]:
            if ev.ts > self.now:
                self.now = ev.ts
            self._expire()
        pkt = Packet(entry=entry, events=evs[:-1], ret=ret)
        if ret.ts > self.now:
            self.now = ret.ts
        if ret.flags & self.lost_flag:
            pkt.lost_overlap = True   # the kernel could not keep all of its evidence
        self._closed(pkt)
        self._expire()
        return True

    def closes_alone(self, rx: bool, ts: int, end: int, ctx: int, skb: int, head: int) -> bool:
        """For a closed context's record whose like (decode.Shape) finished
        at once as a packet of its own: would feed_context take the short
        way with it now, with no sweep on the way? Then time moves to its
        return, as feed_context moves it, and True: the caller counts the
        packet as its like was counted (replay --stats). What a sweep does
        depends on the time of each event, so a record that reaches the
        next sweep goes the whole way; so does one that reaches a waiting
        packet's deadline (whether that packet's row comes out before or
        after this one's depends on the time of each of its events)."""
        now = end if end > self.now else self.now
        if (ts < now - 3 * self.wait_ns or now >= self.next_due or ctx in self.open
                or (rx and (skb, head) in self.await_rx)):
            return False
        self.now = now
        self._expire()
        return True

    @property
    def next_due(self) -> int:
        """When the correlator next acts on its own (stream time): the next
        sweep of unfinished packets, or the first waiting packet's deadline."""
        if self.pending and self.pending[0].deadline < self._next_sweep:
            return self.pending[0].deadline
        return self._next_sweep

    def all_close_alone(self, rx: bool, min_ts: int, max_end: int, ctxs, ticked: int = 0) -> bool:
        """closes_alone for a run of records alike (model/alike.py) at once:
        True when each would take the short way in turn (time moves to the
        last return, as it would one by one). *ctxs* are their context ids;
        *ticked* the latest clock tick among them (0: none), which moves
        time as a return does.
        Stricter than one by one: an RX run while any echo waits goes the
        long way, and the oldest entry is held against the newest return.
        A run that reaches a waiting packet's deadline goes the long way
        too, as closes_alone's record does: that packet's row comes out
        where the stream passes it, not after the run (pending is in
        deadline order)."""
        now = max(max_end, self.now, ticked)
        if (min_ts < now - 3 * self.wait_ns or now >= self.next_due
                or (self.open and not self.open.keys().isdisjoint(ctxs))
                or (rx and self.await_rx)):
            return False
        self.now = now
        self._expire()
        return True

    def tick(self, ktime: int) -> None:
        if ktime > self.now:
            self.now = ktime
        self._expire()

    def mark_lost(self) -> None:
        """Events were lost. With the kernel's per-context flag only the L3S
        continuations (which have no closing event) may be the ones; without
        it (version-1 files), every packet open now may have holes."""
        if self.lost_flag:
            for pkt in self.pending:
                if pkt.waiting_for == "l3s":
                    pkt.lost_overlap = True
            return
        for pkt in self.open.values():
            pkt.lost_overlap = True
        for pkt in self.pending:
            pkt.lost_overlap = True

    def flush(self) -> None:
        """End of stream: finish everything, incomplete where it is."""
        for ctx in list(self.open):
            self._finish(self.open.pop(ctx))
        for w in list(self.workers.values()):
            w.lossy = True   # the run never returned: what it delivered after is unknown
            self._worker_done(w)
        self.workers.clear()
        self._worker_seen.clear()
        for pkt in sorted(self.pending, key=lambda p: p.first_ts):
            self._finish(pkt)
        self.pending.clear()
        self.unattributed += sum(len(p.events) for ps in self.parked.values() for p in ps)
        self.parked.clear()
        self.await_rx.clear()
        self.await_mc.clear()
        self.await_l3s.clear()
        self.await_tx.clear()

    # -- stages -----------------------------------------------------------
    def _entry(self, ev: Event) -> None:
        if ev.probe == "rx":
            waiting = self.await_rx.pop((ev.skb, ev.head), None)
            if waiting is not None and self._is_fwd_target(waiting, ev):
                waiting.cont.append(ev)
                self._wait(self.cont_of, ev.ctx, waiting)
                return
            if waiting is not None:  # not ours after all: put it back
                self._wait(self.await_rx, (ev.skb, ev.head), waiting)
        self.open[ev.ctx] = Packet(entry=ev, events=[ev])

    def _ret(self, ev: Event) -> None:
        owner = self.cont_of.pop(ev.ctx, None)
        if owner is not None:
            owner.cont_ret = ev
            if ev.flags & self.lost_flag:
                owner.lost_overlap = True
            if owner.waiting_for == "rx":
                self._release(owner)
            return
        pkt = self.open.pop(ev.ctx, None)
        if pkt is None:
            pkt = Packet(entry=None)  # its entry was lost or came before we started
        pkt.ret = ev
        if ev.flags & self.lost_flag:
            pkt.lost_overlap = True   # the kernel could not keep all of its evidence
        self._closed(pkt)

    def _helper(self, ev: Event) -> None:
        if ev.probe == "l3_rcv":
            waiting = self.await_l3s.pop((ev.skb, ev.head), None)
            if waiting is not None:
                waiting.cont.append(ev)
                self._wait(self.cont_of, ev.ctx, waiting)
            else:
                self.unattributed += 1
            return
        pkt = self.open.get(ev.ctx)
        if pkt is not None:
            pkt.events.append(ev)
            return
        owner = self.cont_of.get(ev.ctx)
        if owner is not None:
            owner.cont.append(ev)
            if (owner.waiting_for == "l3s" and ev.probe == "s2a_ret"
                    and any(e.probe == "nf_input" for e in owner.cont)):
                self._release(owner)   # LOCAL_IN's lookup: the story is complete
            return
        w = self.workers.get(ev.ctx)
        if w is not None:
            w.events.append(ev)
            return
        self.unattributed += 1

    def _closed(self, pkt: Packet) -> None:
        """The entry returned: finish now, or wait for the RX echo / worker."""
        fwd_parent = [e for e in pkt.helpers("fwd") if not pkt.helpers("rcv_frame")]
        enq = pkt.helpers("mc_enqueue")
        enq_freed = {e.skb for e in pkt.helpers("kfree")} & {e.skb for e in enq}
        if enq and not enq_freed:
            pkt.waiting_for = "worker"
            head = enq[-1].head
            self.await_mc.setdefault(head, []).append(pkt)
            pkt.waits.append((self.await_mc, head))
        elif fwd_parent and pkt.direction == "tx":
            f = fwd_parent[-1]
            echo = self.await_tx.get((f.skb, f.head))
            if echo is not None and self._is_fwd_target(pkt, echo.entry):
                self._release_echo(pkt, echo)   # its RX closed first
                return
            pkt.waiting_for = "rx"
            self._wait(self.await_rx, (f.skb, f.head), pkt)
        elif (pkt.direction == "rx" and pkt.entry is not None and pkt.entry.flags & self.echo_flag
              and not pkt.lost_overlap):
            # the parent's RX of a to-parent frame whose TX has not closed
            # yet: the TX's record joins it (a lost one leaves it incomplete)
            pkt.waiting_for = "tx"
            self._wait(self.await_tx, (pkt.entry.skb, pkt.entry.head), pkt)
        elif (pkt.direction == "rx" and pkt.entry is not None and pkt.ret is not None
              and pkt.ret.ret == RX_HANDLER_PASS and self.is_l3s(pkt.entry)):
            pkt.waiting_for = "l3s"
            self._wait(self.await_l3s, (pkt.entry.skb, pkt.entry.head), pkt)
        else:
            self._finish(pkt)
            return
        pkt.deadline = self.now + self.wait_ns
        self.pending.append(pkt)
        if pkt.waiting_for == "worker" and self.parked:
            self._unpark(pkt, enq[-1])

    def _unpark(self, pkt: Packet, enq: Event) -> None:
        """The worker already handled this packet's frame: its parked share."""
        take = []
        for key in (("head", enq.head), ("skb", enq.skb)):
            shares = self.parked.get(key)
            if not shares:
                continue
            mine = [p for p in shares if p.events[0].ts >= enq.ts]
            take += mine
            rest = [p for p in shares if p.events[0].ts < enq.ts]
            if rest:
                self.parked[key] = rest
            else:
                del self.parked[key]
        if not take:
            return
        for p in take:
            pkt.worker.extend(p.events)
            pkt.lost_overlap = pkt.lost_overlap or p.lossy
        pkt.worker.sort(key=lambda e: e.ts)
        pkt.worker_done = True
        self._release(pkt)

    def _is_fwd_target(self, pkt: Packet, rx: Event) -> bool:
        for f in pkt.helpers("fwd"):
            if f.skb == rx.skb and f.netns == rx.netns and f.ifindex == rx.ifindex:
                return True
        return False

    def _worker_done(self, w: _Worker) -> None:
        """Split one worker run by enqueued skb (head) and hand each share back."""
        by_head: dict[int, list[Event]] = {}
        # the enqueued skb itself may show up only in kfree/consume (no head):
        # its head is known from the enqueue event of the waiting packet. An
        # skb pointer is reused at once (seen on 6.12: the worker freed a
        # queued skb and its very next clone, of another frame, got the same
        # address), so what a pointer means is followed in time order: the
        # latest enqueue before the event, then the run's own events so far
        enqs = sorted((e for ps in self.await_mc.values() for p in ps
                       for e in p.helpers("mc_enqueue")), key=lambda e: e.ts)
        skb_head: dict[int, int] = {}
        i = 0
        last = 0
        for ev in w.events:
            while i < len(enqs) and enqs[i].ts <= ev.ts:
                skb_head[enqs[i].skb] = enqs[i].head
                i += 1
            if ev.head:
                skb_head[ev.skb] = ev.head
            # fwd_ret carries no skb: it belongs with the dev_forward_skb before it
            head = ev.head or skb_head.get(ev.skb, 0) or (last if ev.probe == "fwd_ret" else 0)
            last = head
            by_head.setdefault(head, []).append(ev)
        for head, evs in by_head.items():
            # queued before this run first touched it: the worker takes its
            # backlog a moment after its entry probe fires, so a frame queued
            # in between is this run's too
            pkt = self._queued_before(head, evs[0].ts) if head else None
            if pkt is None:
                self._park(head, evs, w.lossy)
                continue
            pkt.worker.extend(evs)
            pkt.worker_done = True
            if w.lossy:
                pkt.lost_overlap = True
            self._release(pkt)

    def _park(self, head: int, evs: list[Event], lossy: bool) -> None:
        """Keep a share until the record of the context that queued it comes
        (or WAIT_NS passes: then it is unattributed). Events that name only
        an skb pointer are parked per pointer."""
        deadline = self.now + self.wait_ns
        if head:
            self.parked.setdefault(("head", head), []).append(_Parked(evs, lossy, deadline))
            return
        by_skb: dict[int, list[Event]] = {}
        for ev in evs:
            by_skb.setdefault(ev.skb, []).append(ev)
        for skb, group in by_skb.items():
            self.parked.setdefault(("skb", skb), []).append(_Parked(group, lossy, deadline))

    def _queued_before(self, head: int, start: int) -> Packet | None:
        """The packet this worker run handled for *head*: the oldest queued
        before the run's first event for that head (a clone queued later,
        such as a frame a slave reflects while the run delivers its
        original, shares the head and waits for the next run)."""
        for p in self.await_mc.get(head, ()):
            enq = p.helpers("mc_enqueue")
            if enq and enq[-1].ts <= start:
                self._forget(p)
                return p
        return None

    def _release_echo(self, pkt: Packet, echo: Packet) -> None:
        """TX packet *pkt* and the RX of its frame on the parent, which closed
        before it (*echo*, waiting for it): one packet, finished."""
        if echo in self.pending:
            self.pending.remove(echo)
        self._forget(echo)
        pkt.waiting_for = "rx"   # as a TX whose echo came after it: complete with its cont
        pkt.cont = echo.events
        pkt.cont_ret = echo.ret
        pkt.lost_overlap = pkt.lost_overlap or echo.lost_overlap
        self._finish(pkt)

    def _release(self, pkt: Packet) -> None:
        if pkt in self.pending:
            self.pending.remove(pkt)
        self._forget(pkt)
        self._finish(pkt)

    @staticmethod
    def _wait(table: dict, key, pkt: Packet) -> None:
        """Register *pkt* under *key*, remembering where, so forgetting it is cheap."""
        table[key] = pkt
        pkt.waits.append((table, key))

    def _forget(self, pkt: Packet) -> None:
        for table, key in pkt.waits:
            held = table.get(key)
            if held is pkt:
                del table[key]
            elif isinstance(held, list) and pkt in held:
                held.remove(pkt)
                if not held:
                    del table[key]
        pkt.waits.clear()

    def _expire(self) -> None:
        if self.now >= self._next_sweep:
            self._sweep()
        if not self.pending or self.pending[0].deadline > self.now:
            return
        keep = []
        for pkt in self.pending:
            if pkt.deadline <= self.now and (not self._cont_open(pkt)
                                             or pkt.deadline + 2 * self.wait_ns <= self.now):
                self._forget(pkt)
                self._finish(pkt)
            else:
                keep.append(pkt)
        self.pending = keep

    def _sweep(self) -> None:
        """Evict what can no longer finish: open contexts and worker runs far
        older than any packet takes (their return probe was missed or lost)."""
        self._next_sweep = self.now + self.wait_ns // 2
        for key, shares in list(self.parked.items()):
            keep = [p for p in shares if p.deadline > self.now]
            self.unattributed += sum(len(p.events) for p in shares if p.deadline <= self.now)
            if keep:
                self.parked[key] = keep
            else:
                del self.parked[key]
        limit = self.now - 3 * self.wait_ns
        for ctx, pkt in list(self.open.items()):
            if pkt.first_ts < limit:
                del self.open[ctx]
                pkt.evicted = True
                self.evicted += 1
                self._finish(pkt)
        for ctx, first in list(self._worker_seen.items()):
            if first < limit:
                del self._worker_seen[ctx]
                w = self.workers.pop(ctx, None)
                self.evicted += 1
                if w is not None:
                    w.lossy = True   # its return never came: its deliveries may be missing
                    self._worker_done(w)

    def _cont_open(self, pkt: Packet) -> bool:
        return pkt.waiting_for == "rx" and bool(pkt.cont) and pkt.cont_ret is None

    def _finish(self, pkt: Packet) -> None:
        self.emit(pkt)


def correlate(events: Iterable[Event | int], wait_ns: int = WAIT_NS) -> Iterator[Packet]:
    """Convenience for tests: events (and int ticks) in, packets out, in order."""
    out: list[Packet] = []
    c = Correlator(out.append, wait_ns)
    for item in events:
        if isinstance(item, int):
            c.tick(item)
        else:
            c.feed(item)
        yield from out
        out.clear()
    c.flush()
    yield from out
