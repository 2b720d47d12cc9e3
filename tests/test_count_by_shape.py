"""replay --stats counts a context record by its shape (decode.Shape) when
one like it already finished as a packet of its own: these tests pin that
the counts are the ones the rows give, on every real-kernel fixture and on
the cases where a record's like must not decide (a waiting RX echo, a
changed topology)."""
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipvtrace import replay
from ipvtrace.model import layout
from ipvtrace.model.packet import parse, rule_facts
from ipvtrace.model.pipeline import Pipeline

import synth
from synth import context, parent, pod_a, pod_b, raw

FIX = Path(__file__).parent / "fixtures"
COUNTED = ("packets", "events", "branches", "drops", "unattributed_events", "evicted")


@pytest.mark.parametrize("name", sorted(p.name for p in FIX.glob("*.ipvt")))
def test_replay_stats_counts_what_the_rows_show(name):
    rows = []
    with_rows = replay.run_replay(FIX / name, sink=rows.append)
    counted = replay.run_replay(FIX / name, sink=None)
    assert {k: counted[k] for k in COUNTED} == {k: with_rows[k] for k in COUNTED}
    assert counted["packets"] == len(rows)


def pipeline(mode="l2"):
    return Pipeline(layout.current(), snapshots=[synth.snapshot(mode)], drop_reasons={},
                    symbols={}, t0=0, sink=None)


def local_tx(ctx, ts, skb, seq=1, extra=b""):
    """pod-a -> pod-b (tx.l2.local) as one context record."""
    hdr = synth.ipv4_icmp("10.0.0.1", "10.0.0.2", seq=seq) + extra
    return context(raw("xmit", ts, ctx, skb=skb, head=skb + 1, hdr=hdr, cpu=ctx % 2, **pod_a()),
                   [raw("lookup_ret", ts + 1, ctx, aux=0xA, aux2=0xB, **pod_b()),
                    raw("rcv_frame", ts + 2, ctx, skb=skb, head=skb + 1, aux2=0xB, flags=1),
                    raw("fwd", ts + 3, ctx, skb=skb, head=skb + 1, **pod_b()),
                    raw("fwd_ret", ts + 4, ctx, ret=0)],
                   raw("xmit_ret", ts + 5, ctx, ret=0))


def test_a_flood_of_one_shape_is_decoded_once():
    """Times, pointers, CPUs, sequence numbers and lengths differ from
    packet to packet; the branch does not, and only the first is decoded."""
    pipe = pipeline()
    for i in range(50):
        pipe.count(local_tx(i + 1, 1000 + i * 10_000, 0x10000 + (i % 7) * 0x100, seq=i,
                            extra=b"\0" * (i % 5)))
    pipe.finish()
    assert pipe.summary()["branches"] == {"tx.l2.local": 50}
    assert pipe.summary()["events"] == 50 * 6
    assert pipe.decoded == 1


def test_a_different_pointer_pattern_is_another_shape():
    """ipvlan_rcv_frame handed another skb than the entry's: the clone check
    makes the packet incomplete. Its shape differs only in which pointers
    are equal, so it is decoded, not counted as the good one was."""
    pipe = pipeline()
    pipe.count(local_tx(1, 1000, 0x1000))
    odd = context(raw("xmit", 20_000, 2, skb=0x2000, head=0x2001,
                      hdr=synth.ipv4_icmp("10.0.0.1", "10.0.0.2"), **pod_a()),
                  [raw("lookup_ret", 20_001, 2, aux=0xA, aux2=0xB, **pod_b()),
                   raw("rcv_frame", 20_002, 2, skb=0x3000, head=0x2001, aux2=0xB, flags=1),
                   raw("fwd", 20_003, 2, skb=0x2000, head=0x2001, **pod_b()),
                   raw("fwd_ret", 20_004, 2, ret=0)],
                  raw("xmit_ret", 20_005, 2, ret=0))
    pipe.count(odd)
    assert pipe.decoded == 2


def to_parent(ctx, ts, skb):
    hdr = synth.ipv4_icmp("10.0.0.1", "10.0.0.254")
    return context(raw("xmit", ts, ctx, skb=skb, head=skb + 1, hdr=hdr, **pod_a()),
                   [raw("lookup_ret", ts + 1, ctx, aux=0),
                    raw("fwd", ts + 2, ctx, skb=skb, head=skb + 1, **parent()),
                    raw("fwd_ret", ts + 3, ctx, ret=0)],
                   raw("xmit_ret", ts + 4, ctx, ret=0))


def parent_rx(ctx, ts, skb):
    hdr = synth.ipv4_icmp("10.0.0.1", "10.0.0.254")
    return context(raw("rx", ts, ctx, skb=skb, head=skb + 1, hdr=hdr, **parent()),
                   [raw("lookup_ret", ts + 1, ctx, aux=0)], raw("rx_ret", ts + 2, ctx, ret=3))


def test_a_waiting_echo_is_joined_though_its_shape_was_counted_alone():
    """An RX of this shape was a packet of its own (rx.to_host); the next
    one is the echo a to_parent TX waits for, and joins it."""
    pipe = pipeline()
    pipe.count(parent_rx(1, 1000, 0x5000))          # a frame from outside
    pipe.count(to_parent(2, 10_000, 0x6000))        # waits for its echo
    pipe.count(parent_rx(3, 20_000, 0x6000))        # ... which this is
    pipe.finish()
    assert pipe.summary()["branches"] == {"rx.to_host": 1, "tx.l2.to_parent": 1}


def test_a_snapshot_forgets_the_shapes():
    """The same record on a port that became L3: another branch."""
    pipe = pipeline("l2")
    pipe.count(parent_rx(1, 1000, 0x5000))
    pipe.snapshot(synth.snapshot("l3s"))
    pipe.count(parent_rx(2, 20_000, 0x5100))
    pipe.finish()
    assert pipe.decoded == 2


FRAMES = [synth.ipv4_icmp("10.0.0.1", "10.0.0.2"),
          synth.ipv4_icmp("10.0.0.1", "10.0.0.2", dmac=synth.BCAST),
          b"\x33\x33\0\0\0\x16\x02\0\0\0\0\x02\x86\xdd",          # IPv6 multicast
          # IPv6 with a hop-by-hop header (an MLD report's): the protocol is the next one's
          b"\x33\x33\0\0\0\x16\x02\0\0\0\0\x02\x86\xdd\x60\0\0\0\0\x20\x00\x01" + bytes(32),
          b"\x02" * 12 + b"\x81\x00\x00\x01\x08\x00",                  # VLAN, then IPv4
          b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06"]                        # ARP broadcast


@settings(max_examples=400, deadline=None, database=None)
@given(start=st.sampled_from(FRAMES + [b""]), body=st.binary(max_size=100), has_mac=st.booleans())
def test_rule_facts_are_what_parse_gives(start, body, has_mac):
    """What the rules read of a frame, read without naming the rest."""
    hdr = (start + body)[:synth.LAY.hdr_max]
    info = parse(hdr, has_mac)
    assert rule_facts(hdr, has_mac) == (info.dst_multicast, info.proto)
