"""Correlation and classification on synthetic streams (fast, no kernel)."""
from ipvtrace.model import classify
from ipvtrace.model.correlate import Correlator, correlate
from ipvtrace.model.evidence import from_packet
from ipvtrace.model.topology import Topology

from synth import BCAST, HOST, OTHER_MAC, F, ev, ipv4_icmp, parent, pod_a, pod_b, snapshot

CTX = classify.Context(topo=Topology.from_snapshots([snapshot("l2")]),
                       flags=__import__("synth").F)


def verdicts(events, ctx=CTX, wait_ns=2_000_000_000):
    return [(p, classify.classify(from_packet(p, ctx))) for p in correlate(events, wait_ns)]


def local_tx(ctx_id, ts, skb, cpu=0):
    """pod-a -> pod-b, tx.l2.local, as the kernel reports it."""
    hdr = ipv4_icmp("10.0.0.1", "10.0.0.2")
    return [
        ev("xmit", ts, ctx_id, cpu=cpu, skb=skb, head=skb + 1, hdr=hdr, **pod_a()),
        ev("lookup_ret", ts + 1, ctx_id, cpu=cpu, aux=0xA, aux2=0xB, **pod_b()),
        ev("rcv_frame", ts + 2, ctx_id, cpu=cpu, skb=skb, head=skb + 1, aux2=0xB, flags=1),
        ev("fwd", ts + 3, ctx_id, cpu=cpu, skb=skb, head=skb + 1, **pod_b()),
        ev("fwd_ret", ts + 4, ctx_id, cpu=cpu, ret=0),
        ev("xmit_ret", ts + 5, ctx_id, cpu=cpu, ret=0),
    ]


def test_local_delivery():
    [(pkt, v)] = verdicts(local_tx(1, 1000, 0x1000))
    assert (v.branch, v.delivery, v.complete) == ("tx.l2.local", "delivered", True)
    assert v.frm["netns"] == "pod-a" and v.to["netns"] == "pod-b"


def test_rcv_frame_clone_arguments_are_checked():
    """ipvlan_rcv_frame.isra.0's arguments count only when its skb is the
    packet's and its slave is the lookup's: otherwise incomplete, with why."""
    evs = local_tx(1, 1000, 0x1000)
    evs[2] = ev("rcv_frame", 1002, 1, skb=0x1000, head=0x1001, aux2=0xC, flags=1)
    [(_, v)] = verdicts(evs)
    assert v.complete is False and "not the one ipvlan_addr_lookup found" in v.why
    evs = local_tx(1, 1000, 0x1000)
    evs[2] = ev("rcv_frame", 1002, 1, skb=0x2000, head=0x1001, aux2=0xB, flags=1)
    [(_, v)] = verdicts(evs)
    assert v.complete is False and "not this packet's" in v.why


def test_nested_rx_inside_tx_same_cpu():
    """A softirq runs another packet's RX inside a TX on the same CPU: the
    context ids keep the two apart even though the events interleave."""
    tx = local_tx(1, 1000, 0x1000)
    rx_hdr = ipv4_icmp("10.0.0.9", "10.0.0.1", dmac=bytes.fromhex("020000000001"), smac=OTHER_MAC)
    nested = [
        ev("rx", 1002, 2, skb=0x2000, head=0x2001, hdr=rx_hdr, depth=2, **parent()),
        ev("lookup_ret", 1002, 2, aux=0xC, aux2=0xD, depth=2, **pod_a()),
        ev("rcv_frame", 1002, 2, skb=0x2000, head=0x2001, flags=0, depth=2),
        ev("rx_ret", 1002, 2, ret=1, depth=2),
    ]
    stream = tx[:2] + nested + tx[2:]
    out = {v.branch: (p, v) for p, v in verdicts(stream)}
    assert set(out) == {"tx.l2.local", "rx.local"}
    tx_pkt, tx_v = out["tx.l2.local"]
    assert all(e.ctx == 1 for e in tx_pkt.all_events())
    assert tx_v.to["netns"] == "pod-b"
    rx_pkt, rx_v = out["rx.local"]
    assert rx_v.to["netns"] == "pod-a" and rx_v.delivery == "delivered"


def test_skb_pointer_reused():
    """The same skb address in two packets (freed, reallocated): two records."""
    first = local_tx(1, 1000, 0x1000)
    second = local_tx(2, 5000, 0x1000)
    res = verdicts(first + second)
    assert [v.branch for _, v in res] == ["tx.l2.local", "tx.l2.local"]
    assert [len(p.all_events()) for p, _ in res] == [6, 6]


def to_parent_tx(ctx_id, ts, skb):
    hdr = ipv4_icmp("10.0.0.1", "10.0.0.254")
    return [
        ev("xmit", ts, ctx_id, skb=skb, head=skb + 1, hdr=hdr, **pod_a()),
        ev("lookup_ret", ts + 1, ctx_id, aux=0),
        ev("fwd", ts + 2, ctx_id, skb=skb, head=skb + 1, **parent()),
        ev("fwd_ret", ts + 3, ctx_id, ret=0),
        ev("xmit_ret", ts + 4, ctx_id, ret=0),
    ]


def test_to_parent_joins_its_rx_echo():
    hdr = ipv4_icmp("10.0.0.1", "10.0.0.254")
    rx = [ev("rx", 2000, 7, skb=0x3000, head=0x3001, hdr=hdr, **parent()),
          ev("lookup_ret", 2001, 7, aux=0),
          ev("rx_ret", 2002, 7, ret=3)]
    [(pkt, v)] = verdicts(to_parent_tx(1, 1000, 0x3000) + rx)
    assert (v.branch, v.delivery, v.complete) == ("tx.l2.to_parent", "delivered", True)
    assert pkt.cont_ret.ret == 3
    assert "PASS" in v.why


def flagged_verdicts(events, wait_ns=2_000_000_000):
    """As the pipeline correlates a recording whose layout has IPVT_F_ECHO."""
    out = []
    c = Correlator(out.append, wait_ns, lost_flag=F["lost"], echo_flag=F["echo"])
    for item in events:
        c.tick(item) if isinstance(item, int) else c.feed(item)
    c.flush()
    return [(p, classify.classify(from_packet(p, CTX))) for p in out]


def echo_rx(ts, ctx_id, skb, flags=F["echo"], lost=0):
    hdr = ipv4_icmp("10.0.0.1", "10.0.0.254")
    return [ev("rx", ts, ctx_id, skb=skb, head=skb + 1, hdr=hdr, flags=flags, **parent()),
            ev("lookup_ret", ts + 1, ctx_id, aux=0),
            ev("rx_ret", ts + 2, ctx_id, ret=3, flags=lost)]


def test_a_to_parent_frames_rx_that_closes_before_its_tx_waits_for_it():
    """PREEMPT_RT 7.2: another task ran the parent's RX of the frame while
    the sender was preempted inside ipvlan_queue_xmit, so the RX record
    comes first. The kernel flags it (IPVT_F_ECHO): it is the TX packet's
    second half, never an rx.to_host packet of its own (seen: a complete
    rx.to_host row for a to-parent ping in the 7.2 RT guest)."""
    tx = to_parent_tx(1, 1000, 0x3000)
    [(pkt, v)] = flagged_verdicts(echo_rx(1004, 7, 0x3000) + tx)
    assert (v.branch, v.delivery, v.complete) == ("tx.l2.to_parent", "delivered", True)
    assert pkt.cont_ret.ret == 3 and pkt.cont[0].probe == "rx"
    # in the usual order, the same packet
    [(_, v2)] = flagged_verdicts(tx + echo_rx(2000, 7, 0x3000))
    assert (v2.branch, v2.complete) == (v.branch, True)
    # unflagged (a frame from outside that reuses the memory), it is its own
    res = flagged_verdicts(echo_rx(1004, 7, 0x3000, flags=0) + tx + [10_000_000_000])
    assert sorted((v.branch, v.complete) for _, v in res) == [
        ("rx.to_host", True), ("tx.l2.to_parent", False)]


def test_an_rx_echo_whose_tx_never_comes_is_incomplete():
    """Its TX record was lost (or its context never closed): the RX alone
    is half a packet, incomplete when its wait ends, and at once when the
    kernel knew the TX was lost (echo_lost: IPVT_F_LOST)."""
    [(pkt, v)] = flagged_verdicts(echo_rx(1000, 7, 0x3000) + [10_000_000_000])
    assert v.complete is False and pkt.waiting_for == "tx"
    out = []
    c = Correlator(out.append, 1000, lost_flag=F["lost"], echo_flag=F["echo"])
    for e in echo_rx(1000, 7, 0x3000, lost=F["lost"]):
        c.feed(e)
    [pkt] = out   # not held
    assert classify.classify(from_packet(pkt, CTX)).complete is False


def test_rx_on_other_device_is_not_the_echo():
    """Same skb pointer, but it arrives on another device: a packet of its own."""
    hdr = ipv4_icmp("10.0.0.1", "10.0.0.254")
    rx = [ev("rx", 2000, 7, skb=0x3000, head=0x3001, hdr=hdr, netns=HOST, ifindex=9, ifname="ens11"),
          ev("rx_ret", 2002, 7, ret=3)]
    res = verdicts(to_parent_tx(1, 1000, 0x3000) + rx + [10_000_000_000])
    assert sorted(v.branch for _, v in res) == ["rx.to_host", "tx.l2.to_parent"]
    tp = next(v for _, v in res if v.branch == "tx.l2.to_parent")
    assert tp.complete is False  # its echo never came


def test_pending_packet_expires_on_ticks():
    out = []
    c = Correlator(out.append, wait_ns=1000)
    for e in to_parent_tx(1, 1000, 0x3000):
        c.feed(e)
    assert out == []            # waiting for the parent's RX
    c.tick(1500)
    assert out == []
    c.tick(2100)
    assert len(out) == 1


def test_multicast_worker_on_other_cpu():
    hdr = BCAST + bytes.fromhex("020000000001") + b"\x08\x06" + bytes(28)
    tx = [ev("xmit", 1000, 1, cpu=0, skb=0x5000, head=0x5001, hdr=hdr, **pod_a()),
          ev("mc_enqueue", 1001, 1, cpu=0, skb=0x5000, head=0x5001, flags=1, **pod_a()),
          ev("xmit_ret", 1002, 1, cpu=0, ret=0)]
    worker = [ev("mc_work", 3000, 99, cpu=1, flags=2),
              ev("fwd", 3001, 99, cpu=1, skb=0x6000, head=0x5001, flags=2, **pod_b()),
              ev("fwd_ret", 3002, 99, cpu=1, ret=0),
              # a nested softirq in the worker's task: another packet, ignored
              ev("qxmit", 3003, 99, cpu=1, skb=0x7000, head=0x7001, flags=2, **pod_b()),
              ev("qxmit", 3004, 99, cpu=1, skb=0x5000, head=0x5001, flags=2, **parent()),
              ev("mc_work_ret", 3005, 99, cpu=1, flags=2)]
    [(pkt, v)] = verdicts(tx + worker)
    assert (v.branch, v.delivery, v.complete) == ("tx.l2.multicast", "queued", True)
    assert [(m["branch"], m["to"]["netns"]) for m in v.mcast] == [
        ("mcast.deliver", "pod-b"), ("mcast.out_parent", "host")]


def test_lost_events_mark_incomplete():
    out = []
    c = Correlator(out.append)
    evs = local_tx(1, 1000, 0x1000)
    c.feed(evs[0])
    c.mark_lost()
    for e in evs[1:]:
        c.feed(e)
    v = classify.classify(from_packet(out[0], CTX))
    assert v.branch == "tx.l2.local" and v.complete is False


def test_missing_entry_is_unknown():
    [(pkt, v)] = verdicts([ev("fwd", 10, 5, **pod_b()), ev("xmit_ret", 11, 5, ret=0)])
    assert (v.branch, v.complete) == ("unknown", False)


def test_no_evidence_is_unknown_not_forced():
    hdr = ipv4_icmp("10.0.0.1", "10.0.0.2")
    [(pkt, v)] = verdicts([ev("xmit", 10, 5, skb=1, head=2, hdr=hdr, **pod_a()),
                           ev("xmit_ret", 11, 5, ret=0)])
    assert v.branch == "unknown"
    assert "no branch fits" in v.why


def test_mode_unknown_keeps_local_unknown():
    """Evidence of a local delivery, but no snapshot says L2 or L3: not guessed."""
    ctx = classify.Context(topo=Topology.from_snapshots([]), flags=CTX.flags)
    [(pkt, v)] = verdicts(local_tx(1, 1000, 0x1000), ctx=ctx)
    assert v.branch == "unknown" and "mode is unknown" in v.why


def test_backlog_drop_is_tied_to_its_packet():
    """ipvlan_multicast_enqueue frees the skb when the backlog is full: the
    packet does not wait for a worker that will never see it."""
    hdr = BCAST + bytes.fromhex("020000000099") + b"\x08\x06" + bytes(28)
    evs = [ev("rx", 1000, 1, skb=0x8000, head=0x8001, hdr=hdr, **parent()),
           ev("mc_enqueue", 1001, 1, skb=0x9000, head=0x8001, flags=0, **parent()),
           ev("kfree", 1002, 1, skb=0x9000, reason=2),
           ev("rx_ret", 1003, 1, ret=3)]
    [(pkt, v)] = verdicts(evs)
    assert (v.branch, v.delivery, v.complete) == ("rx.l2.multicast", "dropped", True)
    assert [m["branch"] for m in v.mcast] == ["mcast.backlog_drop"]


def test_context_whose_return_never_comes_is_evicted_and_counted():
    """A missed kretprobe leaves an open context: after a few WAIT_NS it is
    finished as incomplete (memory stays bounded) and counted."""
    out = []
    c = Correlator(out.append, wait_ns=1000)
    c.feed(local_tx(1, 100, 0x1000)[0])          # the entry only
    for ts in range(200, 2000, 100):
        c.tick(ts)
    assert out == []                               # not before 3 x WAIT_NS
    c.tick(5000)
    [pkt] = out
    assert pkt.evicted and c.evicted == 1 and not c.open
    v = classify.classify(from_packet(pkt, CTX))
    assert not v.complete and v.branch == "unknown"
    for e in local_tx(2, 6000, 0x2000):           # later packets are unaffected
        c.feed(e)
    assert classify.classify(from_packet(out[-1], CTX)).branch == "tx.l2.local" and c.evicted == 1


def test_clone_queued_during_the_worker_run_does_not_take_its_events():
    """A broadcast the worker sends out of the parent is reflected back (tc
    mirred) and its clone queued again while the worker still runs: same
    skb->head. The run's events belong to the packet queued before it began."""
    W = F["worker"]
    bc = ipv4_icmp("10.0.0.1", "10.0.0.255", dmac=BCAST)
    H, S1, S2 = 0x9000, 0xE400, 0xE200
    events = [
        ev("xmit", 100, 1, skb=S1, head=H, hdr=bc, **pod_a()),
        ev("mc_enqueue", 101, 1, skb=S1, head=H, flags=1, **pod_a()),
        ev("xmit_ret", 102, 1, ret=0),
        ev("mc_work", 110, 50, flags=W, depth=0),
        ev("qxmit", 111, 50, skb=S1, head=H, flags=W, depth=0, **parent()),
        ev("rx", 112, 2, skb=S2, head=H, hdr=bc, **parent()),           # the reflection
        ev("mc_enqueue", 113, 2, skb=S2, head=H, **parent()),
        ev("rx_ret", 114, 2, ret=3),
        ev("mc_work_ret", 115, 50, flags=W, depth=0),
        ev("mc_work", 120, 51, flags=W, depth=0),
        ev("kfree", 121, 51, skb=S2, flags=W, depth=0),
        ev("mc_work_ret", 122, 51, flags=W, depth=0),
    ]
    got = {p.direction: (p, classify.classify(from_packet(p, CTX))) for p in correlate(events, 10_000)}
    tx_pkt, tx = got["tx"]
    assert tx.branch == "tx.l2.multicast" and tx.complete
    assert [m["branch"] for m in tx.mcast] == ["mcast.out_parent"]
    rx_pkt, rx = got["rx"]
    assert rx_pkt.worker_done and [e.probe for e in rx_pkt.worker] == ["kfree"]


def test_loss_is_exact_per_context():
    """format 2: the kernel flags the context that lost an event on its
    return; only that packet is incomplete, the one beside it is not. A
    version-1 stream (no flag) marks every open packet at a loss mark."""
    lost = F["lost"]
    a = local_tx(1, 1000, 0x1000)
    b = local_tx(2, 2000, 0x2000)
    b[-1] = ev("xmit_ret", 2005, 2, ret=0, flags=lost)   # one of b's helpers was lost
    out = []
    c = Correlator(out.append, lost_flag=lost)
    for e in a[:3] + b + a[3:]:
        c.feed(e)
    c.mark_lost()   # the tick's loss mark: no L3S packet waits, nothing else changes
    c.flush()
    got = {p.entry.ctx: classify.classify(from_packet(p, CTX)).complete for p in out}
    assert got == {1: True, 2: False}
    out.clear()
    c = Correlator(out.append, lost_flag=0)   # a version-1 recording
    for e in a[:3]:
        c.feed(e)
    c.mark_lost()
    for e in a[3:]:
        c.feed(e)
    c.flush()
    assert [classify.classify(from_packet(p, CTX)).complete for p in out] == [False]


def test_an_skb_pointer_reused_inside_a_worker_run_keeps_each_frame_its_events():
    """Seen on 6.12 (the stats == record comparison): the worker frees one
    queued skb and its next clone, of another queued frame, gets the same
    address. The free belongs to the first frame (its head, from its
    enqueue), the delivery to the second (its own head): a pointer means
    what it meant at that moment, not what it meant last."""
    W = F["worker"]
    H1, H2, S, C = 0x0800, 0x2840, 0xEF400, 0xEFF00
    bc = ipv4_icmp("10.0.0.9", "10.0.0.255", dmac=BCAST)
    events = [
        ev("rx", 100, 6, skb=0xEF000, head=H1, hdr=bc, **parent()),
        ev("mc_enqueue", 101, 6, skb=S, head=H1, **parent()),          # frame 1 queued as S
        ev("rx_ret", 102, 6, ret=3),
        ev("rx", 103, 7, skb=0xEF000, head=H2, hdr=bc, **parent()),
        ev("mc_enqueue", 104, 7, skb=C, head=H2, **parent()),          # frame 2 queued as C
        ev("rx_ret", 105, 7, ret=3),
        ev("mc_work", 110, 8, flags=W, depth=0),
        ev("kfree", 111, 8, skb=S, flags=W, depth=0),                  # frame 1 freed
        ev("netif_rx", 112, 8, skb=S, head=H2, flags=W, depth=0, **pod_b()),   # S reused: frame 2's clone
        ev("consume", 113, 8, skb=C, flags=W, depth=0),
        ev("mc_work_ret", 114, 8, flags=W, depth=0),
    ]
    got = {p.entry.ctx: p for p in correlate(events, 10_000)}
    assert got[6].worker_done and [e.probe for e in got[6].worker] == ["kfree"]
    assert got[7].worker_done and [e.probe for e in got[7].worker] == ["netif_rx", "consume"]
    v = classify.classify(from_packet(got[7], CTX))
    assert v.complete and [(m["branch"], m["to"]["netns"]) for m in v.mcast] == [("mcast.deliver", "pod-b")]


def _rows_of(path, one_by_one: bool, monkeypatch) -> list[dict]:
    from ipvtrace import replay
    from ipvtrace.model.correlate import Correlator as C

    if one_by_one:
        def feed_each(self, evs):
            for e in evs:
                self.feed(e)
        monkeypatch.setattr(C, "feed_context", feed_each)
    rows: list[dict] = []
    summary = replay.run_replay(path, rows.append)
    monkeypatch.undo()
    return rows + [summary]


def test_a_context_record_fed_whole_groups_as_its_events_one_by_one(monkeypatch):
    """Correlator.feed_context (a closed context's record in one call, its
    usual case without registering the context as open) gives every real
    kernel's recording the same packets, rows and counts as feeding the
    record's events one at a time."""
    from pathlib import Path

    fixtures = sorted(Path(__file__).parent.joinpath("fixtures").glob("*.ipvt"))
    assert len(fixtures) >= 10
    for path in fixtures:
        whole = _rows_of(path, False, monkeypatch)
        each = _rows_of(path, True, monkeypatch)
        assert len(whole) > 1 and whole == each, path.name
