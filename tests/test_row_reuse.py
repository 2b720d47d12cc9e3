"""record() reuses a like's row for a context record (model/rowreuse.py)
when the sink writes JSON lines: these tests pin that the lines are the ones
the whole way gives, byte for byte, on every real-kernel fixture and on
floods whose times, CPUs, pointers and sequence numbers differ."""
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipvtrace import replay
from ipvtrace.model import layout
from ipvtrace.model.pipeline import Pipeline
from ipvtrace.output.jsonlines import JsonSink

import synth
from synth import context, parent, pod_a, pod_b, raw

FIX = Path(__file__).parent / "fixtures"


class PlainJson:
    """The same lines as JsonSink, without a template(): every row goes the whole way."""

    def __init__(self) -> None:
        self.out = io.StringIO()
        self._sink = JsonSink(self.out, flush=False)

    def __call__(self, row: dict) -> None:
        self._sink(row)


@pytest.mark.parametrize("name", sorted(p.name for p in FIX.glob("*.ipvt")))
def test_replay_json_is_the_same_with_reused_rows(name):
    fast = JsonSink(io.StringIO(), flush=False)
    slow = PlainJson()
    a = replay.run_replay(FIX / name, sink=fast)
    b = replay.run_replay(FIX / name, sink=slow)
    assert fast.out.getvalue() == slow.out.getvalue()
    assert a["packets"] == b["packets"] == fast.out.getvalue().count("\n")
    assert a["branches"] == b["branches"]


def feed(records, sink) -> Pipeline:
    pipe = Pipeline(layout.current(), snapshots=[synth.snapshot("l2")], drop_reasons={},
                    symbols={}, t0=500, sink=sink)
    for r in records:
        pipe.record(r)
    pipe.finish()
    return pipe


def local_tx(ctx, ts, skb, seq=1, cpu=0, rcv_skb=None, dst="10.0.0.2"):
    """pod-a -> pod-b (tx.l2.local) as one context record; *rcv_skb*: the
    skb ipvlan_rcv_frame's clone says it was handed (the entry's if None)."""
    hdr = synth.ipv4_icmp("10.0.0.1", dst, seq=seq)
    rskb = skb if rcv_skb is None else rcv_skb
    return context(raw("xmit", ts, ctx, skb=skb, head=skb + 1, hdr=hdr, cpu=cpu, **pod_a()),
                   [raw("lookup_ret", ts + 1, ctx, aux=0xA, aux2=0xB, cpu=cpu, **pod_b()),
                    raw("rcv_frame", ts + 3, ctx, skb=rskb, head=skb + 1, aux2=0xB, flags=1, cpu=cpu),
                    raw("fwd", ts + 7, ctx, skb=skb, head=skb + 1, cpu=cpu, **pod_b()),
                    raw("fwd_ret", ts + 8, ctx, ret=0, cpu=cpu)],
                   raw("xmit_ret", ts + 9 + seq % 5, ctx, ret=0, cpu=cpu))


def to_parent(ctx, ts, skb, cpu=0):
    hdr = synth.ipv4_icmp("10.0.0.1", "10.0.0.254")
    return context(raw("xmit", ts, ctx, skb=skb, head=skb + 1, hdr=hdr, cpu=cpu, **pod_a()),
                   [raw("lookup_ret", ts + 1, ctx, aux=0, cpu=cpu),
                    raw("fwd", ts + 2, ctx, skb=skb, head=skb + 1, cpu=cpu, **parent()),
                    raw("fwd_ret", ts + 3, ctx, ret=0, cpu=cpu)],
                   raw("xmit_ret", ts + 4, ctx, ret=0, cpu=cpu))


def parent_rx(ctx, ts, skb, cpu=0):
    hdr = synth.ipv4_icmp("10.0.0.1", "10.0.0.254")
    return context(raw("rx", ts, ctx, skb=skb, head=skb + 1, hdr=hdr, cpu=cpu, **parent()),
                   [raw("lookup_ret", ts + 1, ctx, aux=0, cpu=cpu)],
                   raw("rx_ret", ts + 2, ctx, ret=3, cpu=cpu))


def lines(records) -> tuple[str, Pipeline]:
    fast = JsonSink(io.StringIO(), flush=False)
    pipe = feed(records, fast)
    slow = PlainJson()
    feed(records, slow)
    assert fast.out.getvalue() == slow.out.getvalue()
    return fast.out.getvalue(), pipe


def test_a_flood_reuses_the_first_row_with_each_packets_own_values():
    """Each row still shows its own time, CPU, skb and sequence number."""
    recs = [local_tx(i + 1, 10_000 + i * 50_000, 0xffff0000 + (i % 7) * 0x100, seq=i, cpu=i % 2)
            for i in range(40)]
    text, pipe = lines(recs)
    rows = [json.loads(line) for line in text.splitlines()]
    assert pipe.reused == 39        # only the first went the whole way: the CPU is a hole
    assert [r["summary"] for r in rows] == [
        f"ICMP 10.0.0.1 > 10.0.0.2 echo-request seq {i}" for i in range(40)]
    assert {r["branch"] for r in rows} == {"tx.l2.local"} and all(r["complete"] for r in rows)
    last = rows[-1]
    assert last["ts"] == 10_000 + 39 * 50_000 and last["time"] == round((last["ts"] - 500) / 1e9, 6)
    assert [e["cpu"] for e in last["events"]] == [1] * 6
    assert last["events"][-1]["ts"] == last["ts"] + 9 + 39 % 5
    assert last["events"][0]["skb"] == f"{0xffff0000 + (39 % 7) * 0x100:#x}"


def test_an_incomplete_row_is_never_reused():
    """The clone check names both skbs in `why`: each such row is its own."""
    recs = [local_tx(i + 1, 10_000 + i * 50_000, 0x1000 + i * 0x100, seq=i,
                     rcv_skb=0x9000 + i * 0x100) for i in range(5)]
    text, pipe = lines(recs)
    whys = [json.loads(line)["why"] for line in text.splitlines()]
    assert pipe.reused == 0
    assert all(f"{0x9000 + i * 0x100:#x}" in w for i, w in enumerate(whys))


def test_another_destination_is_another_like():
    recs = [local_tx(i + 1, 10_000 + i * 50_000, 0x1000, seq=i, dst="10.0.0.2" if i % 2 else "10.0.0.9")
            for i in range(10)]
    text, pipe = lines(recs)
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["dst"] for r in rows] == ["10.0.0.9", "10.0.0.2"] * 5
    assert {r["branch"] for r in rows[1::2]} == {"tx.l2.local"}
    assert pipe.reused == 8


def test_a_waiting_echo_is_joined_though_its_like_was_a_packet_alone():
    recs = [parent_rx(1, 1000, 0x5000), parent_rx(2, 60_000, 0x5100),
            to_parent(3, 100_000, 0x6000), parent_rx(4, 120_000, 0x6000)]
    text, pipe = lines(recs)
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["branch"] for r in rows] == ["rx.to_host", "rx.to_host", "tx.l2.to_parent"]
    assert pipe.reused == 1


KINDS = ("local", "mismatch", "other_dst", "to_parent", "parent_rx")


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 3), st.integers(1, 3_000_000_000),
                          st.integers(0, 65535), st.integers(0, 1)), min_size=1, max_size=30))
def test_any_mix_gives_the_lines_of_the_whole_way(steps):
    """Interleavings of likes and unlikes, echoes, gaps that reach the
    correlator's sweep: the same lines either way."""
    recs, ts = [], 1_000
    for i, (kind, ptr, gap, seq, cpu) in enumerate(steps):
        ts += gap
        skb, ctx = 0x10000 + ptr * 0x100, i + 1
        if kind == "local":
            recs.append(local_tx(ctx, ts, skb, seq=seq, cpu=cpu))
        elif kind == "mismatch":
            recs.append(local_tx(ctx, ts, skb, seq=seq, cpu=cpu, rcv_skb=skb + 0x40))
        elif kind == "other_dst":
            recs.append(local_tx(ctx, ts, skb, seq=seq, cpu=cpu, dst="10.0.0.7"))
        elif kind == "to_parent":
            recs.append(to_parent(ctx, ts, skb, cpu=cpu))
        else:
            recs.append(parent_rx(ctx, ts, skb, cpu=cpu))
    lines(recs)
