"""replay --stats counts the records of a RING frame together when all are
like the first (model/alike.py, Pipeline.count_alike). These tests pin
that this gives exactly what counting them one by one gives, and what the
rows give, whatever one record of a run changes: a key field, a pointer,
a time, a frame byte the rules read or one they do not."""
from __future__ import annotations

import copy
import struct
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ipvtrace import replay
from ipvtrace.model import alike, layout
from ipvtrace.model.correlate import Correlator, Packet
from ipvtrace.model.decode import field_offsets
from ipvtrace.model.packet import rule_fact_bytes, rule_facts
from ipvtrace.model.pipeline import Pipeline
from ipvtrace.output import recording

import synth
from test_count_by_shape import FRAMES, local_tx, parent_rx, pipeline, to_parent

LAY = layout.current()
REC = field_offsets(LAY.rec.fields, LAY.rec.fmt)
HIT = field_offsets(LAY.hit.fields, LAY.hit.fmt)
COUNTED = ("packets", "events", "branches", "drops", "unattributed_events", "evicted")


def flood(n: int, first_ctx: int = 1, ts0: int = 10**12, gap: int = 10_000) -> list[bytes]:
    """pod-a -> pod-b packets: times, context ids, pointers (reused), CPUs
    and sequence numbers differ from one to the next."""
    return [local_tx(first_ctx + i, ts0 + i * gap, 0x10000 + (i % 7) * 0x100, seq=i)
            for i in range(n)]


def test_a_run_alike_is_counted_at_once():
    recs = flood(100)
    span = synth.ring_span(recs)
    run = recording._ring_run(span, 0, len(span))
    assert run is not None and run.count == 100
    assert [bytes(r) for r in run.records()] == recs
    pipe = pipeline()
    assert pipe.count_alike(run.blob, 8, run.length, run.step, run.count) == 100
    pipe.finish()
    assert pipe.summary()["branches"] == {"tx.l2.local": 100}
    assert pipe.summary()["events"] == 100 * 6
    assert pipe.decoded == 1   # the first, whose shape was new; the 99 others at once


def test_a_ring_frame_of_mixed_lengths_comes_record_by_record():
    recs = flood(3)
    recs[1] = local_tx(50, 10**12 + 5, 0x9000, extra=b"\0" * 8)   # a longer frame
    span = synth.ring_span(recs)
    assert recording._ring_run(span, 0, len(span)) is None
    assert [p for _, p in recording._ring_records(span, 0, len(span))] == recs


def rec_at(name: str) -> int:
    return REC[name]


def hit_at(rec: bytes, i: int, name: str) -> int:
    hdr_len = struct.unpack_from("<H", rec, REC["hdr_len"])[0]
    return struct.calcsize(LAY.rec.fmt) + ((hdr_len + 7) & ~7) + i * struct.calcsize(LAY.hit.fmt) \
        + HIT[name]


def put(rec: bytearray, at: int, fmt: str, value: int) -> None:
    struct.pack_into(fmt, rec, at, value)


def frame_at(i: int) -> int:
    return struct.calcsize(LAY.rec.fmt) + i


# what one record of a run may differ in; local_tx's hits are lookup_ret,
# rcv_frame, fwd, fwd_ret
MUTATIONS = {
    "entry ten seconds older": lambda r: put(r, rec_at("ts"), "<Q",
                                             struct.unpack_from("<Q", r, 0)[0] - 10**10),
    "the previous record's context id": lambda r: put(
        r, rec_at("ctx"), "<Q", struct.unpack_from("<Q", r, rec_at("ctx"))[0] - 1),
    "rcv_frame handed another skb": lambda r: put(r, hit_at(r, 1, "skb"), "<Q", 0x77777000),
    "lookup_ret with the entry's skb": lambda r: put(
        r, hit_at(r, 0, "skb"), "<Q", struct.unpack_from("<Q", r, rec_at("skb"))[0]),
    "entry skb zero": lambda r: put(r, rec_at("skb"), "<Q", 0),
    "head equal to skb": lambda r: put(
        r, rec_at("head"), "<Q", struct.unpack_from("<Q", r, rec_at("skb"))[0]),
    "a hit after the return": lambda r: put(r, hit_at(r, 2, "dt"), "<I", 10**6),
    "one frame byte fewer": lambda r: put(
        r, rec_at("hdr_len"), "<H", struct.unpack_from("<H", r, rec_at("hdr_len"))[0] - 1),
    "UDP, not ICMP": lambda r: r.__setitem__(frame_at(23), 17),
    "multicast dst MAC": lambda r: r.__setitem__(frame_at(0), 0x03),
    "another dst IP (not read by the rules)": lambda r: r.__setitem__(frame_at(33), 9),
    "fwd on another ifindex": lambda r: put(r, hit_at(r, 2, "ifindex"), "<i", 9),
    "xmit returned NET_XMIT_DROP": lambda r: put(r, rec_at("ret"), "<q", 1),
    "lost flag": lambda r: r.__setitem__(rec_at("flags"), r[rec_at("flags")] | LAY.flags["lost"]),
    "fwd in another netns": lambda r: put(r, hit_at(r, 2, "netns"), "<I", 99),
    "no head at all": lambda r: [put(r, a, "<Q", 0) for a in
                                 [rec_at("head")] + [hit_at(r, i, "head") for i in range(4)]],
    "another CPU and skb len (volatile)": lambda r: (put(r, rec_at("cpu"), "<I", 1),
                                                     put(r, rec_at("len"), "<I", 1500)),
}


DEC = synth.DEC


@settings(max_examples=300, deadline=None, database=None)
@given(what=st.sampled_from(sorted(MUTATIONS) + ["any byte"]), at=st.integers(0, 11),
       where=st.integers(0, 10_000), value=st.integers(0, 255))
# the first frame's IP header length byte zeroed: no fact bytes (a test error ~1 run in 20)
@example(what="any byte", at=0, where=588, value=0)
def test_check_finds_a_run_alike_only_when_each_record_keys_as_the_first(what, at, where, value):
    """alike.check's contract, record by record: when it says alike, every
    record has a shape, the first's Shape key, rule facts and frame length,
    and its times and context id are the ones it reports."""
    recs = flood(12)
    recs[at] = mutated(recs[at], what, where, value)
    if len(set(map(len, recs))) > 1:
        return   # another length: not one run
    span = synth.ring_span(recs)
    run = recording._ring_run(span, 0, len(span))
    first = DEC.shape(recs[0])
    if first is None:
        return   # the first has no shape: count_alike counts nothing at once
    plan = DEC.alike_plan(recs[0])
    assert plan is not None
    facts = rule_fact_bytes(first.frame, first.has_mac)
    if facts is None:
        return   # a first frame its fact bytes cannot name: count_alike takes nothing at once
    found = alike.check(run.blob, 8, run.step, run.count, plan, first.key[3:], facts)
    shapes = [DEC.shape(r) for r in recs]
    hdr_len = [struct.unpack_from("<H", r, REC["hdr_len"])[0] for r in recs]
    if found is None:
        # the mutations that change what a record keys on are all found
        assert what == "any byte" or what in NOT_KEYED or any(
            s is None or s.key != first.key or hdr_len[i] != hdr_len[0]
            or rule_facts(s.frame, s.has_mac) != rule_facts(first.frame, first.has_mac)
            for i, s in enumerate(shapes)), what
        return
    for i, s in enumerate(shapes):
        assert s is not None, (what, i)
        assert (s.key, s.runt, rule_facts(s.frame, s.has_mac)) == \
            (first.key, first.runt, rule_facts(first.frame, first.has_mac)), (what, i)
        assert hdr_len[i] == hdr_len[0]
    assert found.min_ts == min(s.ts for s in shapes)
    assert found.max_end == max(s.end for s in shapes)
    assert list(found.ctxs) == [s.ctx for s in shapes]


# mutations of fields Shape does not key on: a run with them is alike
NOT_KEYED = ("entry ten seconds older", "the previous record's context id",
             "another dst IP (not read by the rules)", "another CPU and skb len (volatile)")


def mutated(rec: bytes, what: str, where: int, value: int) -> bytes:
    """*rec* with one of MUTATIONS, or with its byte at *where* set to *value*."""
    odd = bytearray(rec)
    if what == "any byte":
        odd[where % len(odd)] = value
    else:
        MUTATIONS[what](odd)
    return bytes(odd)


def write(path: Path, runs: list[list[bytes]], tick_every: int = 0) -> None:
    w = recording.Writer(path, {"format": "ipvtrace-recording", "format_version": 3,
                                "start_ktime": 0, "start_wall": 0, "layout": LAY.to_json(),
                                "drop_reasons": {}, "snapshot": synth.snapshot("l2")})
    for i, run in enumerate(runs):
        w.ring(synth.ring_span(run), len(run))
        if tick_every and i % tick_every == 0:
            w.tick(struct.unpack_from("<Q", run[-1], 0)[0])
    w.close({"ended_by": "synthetic", "lost_events": 0, "symbols": {}})


def outcome(path: Path, how: str):
    """The counts (or the one error) replay gives: 'runs' as replay --stats
    counts, 'each' with no run counted at once, 'rows' with rows built."""
    with pytest.MonkeyPatch.context() as m:
        if how == "each":
            m.setattr(Pipeline, "count_alike", lambda self, *a: 0)
        rows: list = []
        try:
            got = replay.run_replay(path, sink=rows.append if how == "rows" else None)
        except recording.RecordingError as exc:
            return "error", str(exc)
    return {k: got[k] for k in COUNTED}


# one record of runs of 40 changed: which, the byte and value for "any byte",
# the time between packets (40 ms: a sweep every 25) and how many runs
ONE_CHANGED = dict(at=st.integers(0, 39), where=st.integers(0, 10_000), value=st.integers(0, 255),
                   gap=st.sampled_from([10_000, 40_000_000]), runs=st.integers(1, 3))


def one_changed(factory, change: Callable[[bytes], bytes], at: int, gap: int, runs: int,
                flood_of: Callable[..., list[bytes]] = flood) -> Path:
    """A file of *runs* RING frames of a flood with record *at* changed, ticks between."""
    recs = flood_of(40 * runs, gap=gap)
    recs[at] = change(recs[at])
    path = factory.mktemp("alike") / "run.ipvt"
    write(path, [recs[i:i + 40] for i in range(0, len(recs), 40)], tick_every=2)
    return path


@settings(max_examples=150, deadline=None, database=None)
@given(what=st.sampled_from(sorted(MUTATIONS) + ["any byte"]), **ONE_CHANGED)
def test_a_run_counts_as_its_records_one_by_one(tmp_path_factory, what, at, where,
                                                value, gap, runs):
    path = one_changed(tmp_path_factory, lambda r: mutated(r, what, where, value), at, gap, runs)
    counted = outcome(path, "runs")
    assert counted == outcome(path, "each")
    assert counted == outcome(path, "rows")


def test_a_flood_in_runs_counts_as_its_rows(tmp_path):
    """Runs of a flood, ticks between them, an ARP-like stranger in one run
    (another length: that frame goes record by record)."""
    recs = flood(1000, gap=3_000_000)   # three seconds in all: the sweeps fall inside runs
    runs = [recs[i:i + 250] for i in range(0, 1000, 250)]
    runs[2].insert(100, local_tx(5000, struct.unpack_from("<Q", runs[2][99], 0)[0] + 1, 0x9000,
                                 extra=b"\0" * 8))
    write(tmp_path / "f.ipvt", runs, tick_every=1)
    counted = outcome(tmp_path / "f.ipvt", "runs")
    assert counted["branches"] == {"tx.l2.local": 1001}
    assert counted == outcome(tmp_path / "f.ipvt", "rows")


@settings(max_examples=400, deadline=None, database=None)
@given(start=st.sampled_from(FRAMES), body=st.binary(min_size=60, max_size=100),
       other=st.binary(min_size=128, max_size=128), has_mac=st.booleans())
def test_rule_fact_bytes_are_all_rule_facts_reads(start, body, other, has_mac):
    """Another frame of the same length with the same bytes at those offsets
    (any others) has the same rule facts and the same offsets."""
    a = (start + body)[:synth.LAY.hdr_max]
    at = rule_fact_bytes(a, has_mac)
    if at is None:
        return
    b = bytearray(other[:len(a)])
    for i in at:
        b[i] = a[i]
    assert rule_facts(bytes(b), has_mac) == rule_facts(a, has_mac)
    assert rule_fact_bytes(bytes(b), has_mac) == at


@pytest.mark.parametrize("frame", FRAMES[:4])
def test_floods_have_rule_fact_bytes(frame):
    """The frames of floods (untagged IPv4, IPv6 with and without a
    hop-by-hop header, whole) are checked by a few bytes, not decoded."""
    whole = (frame + bytes(80))[:100]
    assert rule_fact_bytes(whole) is not None


@settings(max_examples=400, deadline=None, database=None)
@given(now=st.integers(0, 10**10), sweep_in=st.integers(-10**9, 2 * 10**9),
       open_ctx=st.sets(st.integers(0, 300), max_size=3), waiting=st.booleans(), rx=st.booleans(),
       recs=st.lists(st.tuples(st.integers(-7 * 10**9, 10**9) | st.integers(-2 * 10**6, 10**6),
                               st.integers(0, 10**6), st.integers(0, 300)),
                     min_size=2, max_size=12),
       deadline_in=st.none() | st.integers(-10**6, 2 * 10**6),
       ticks=st.lists(st.tuples(st.integers(1, 11), st.integers(-10**6, 3 * 10**6)), max_size=3))
# a tick after the last return moves the clock; one past a waiting packet's deadline lets it out
@example(now=10**9, sweep_in=10**9, open_ctx=set(), waiting=False, rx=False,
         recs=[(0, 10, 1), (100, 10, 2)], deadline_in=None, ticks=[(1, 5_000)])
@example(now=10**9, sweep_in=10**9, open_ctx=set(), waiting=False, rx=False,
         recs=[(0, 10, 1), (100, 10, 2)], deadline_in=1_000, ticks=[(1, 2_000)])
def test_all_close_alone_only_when_each_would_in_turn(now, sweep_in, open_ctx, waiting, rx, recs,
                                                       deadline_in, ticks):
    """Correlator.all_close_alone says yes only when closes_alone would,
    record after record, with the clock *ticks* (before record i, at now +
    a time) given between them, no packet coming out on the way (a waiting
    one whose deadline is *deadline_in* from now); and leaves the clock
    where they would."""
    out: list = []
    c = Correlator(out.append)
    c.now, c._next_sweep = now, now + sweep_in
    for ctx in open_ctx:
        c.open[ctx] = Packet(entry=synth.ev("xmit", now, ctx), events=[])
    if waiting:
        c.await_rx[(0x6000, 0x6001)] = Packet(entry=synth.ev("xmit", now, 99), events=[])
    if deadline_in is not None:
        c.pending.append(Packet(entry=synth.ev("xmit", now, 98), events=[],
                                deadline=now + deadline_in))
    rows = [(now + dts, now + dts + dur, ctx) for dts, dur, ctx in recs]
    ticks = sorted((i, now + k) for i, k in ticks if i < len(rows))
    one = copy.deepcopy(c)
    one.emit = out.append
    ok = c.all_close_alone(rx, min(ts for ts, _, _ in rows), max(end for _, end, _ in rows),
                           [ctx for _, _, ctx in rows], max((k for _, k in ticks), default=0))
    if ok:
        # an RX record's pointers are its own; these are none of the waiting echo's
        for i, (ts, end, ctx) in enumerate(rows):
            for _ in range(sum(1 for at, _ in ticks if at == i)):
                one.tick(ticks.pop(0)[1])
            assert one.closes_alone(rx, ts, end, ctx, 0x1000, 0x1001)
        assert c.now == one.now and not out
        assert [p.entry.ctx for p in one.pending] == [p.entry.ctx for p in c.pending]
    else:
        assert c.now == now


def echo_in_a_run(path: Path) -> Path:
    """Runs of RX frames from the parent (rx.to_host, alike), the second's
    tenth the echo a to_parent TX between them waits for."""
    ts = 10**12
    first = [parent_rx(i + 1, ts + i * 10_000, 0x5000 + i * 0x100) for i in range(20)]
    tx = [to_parent(100, ts + 300_000, 0x6000)]
    then = [parent_rx(200 + i, ts + 400_000 + i * 10_000,
                      0x6000 if i == 9 else 0x7000 + i * 0x100) for i in range(20)]
    write(path, [first, tx, then])
    return path


def test_an_echo_in_a_run_joins_its_packet(tmp_path):
    """The echo joins its packet, as one by one."""
    echo_in_a_run(tmp_path / "echo.ipvt")
    counted = outcome(tmp_path / "echo.ipvt", "runs")
    assert counted["branches"] == {"rx.to_host": 39, "tx.l2.to_parent": 1}
    assert counted == outcome(tmp_path / "echo.ipvt", "rows")


def test_a_run_that_reaches_the_sweep_is_counted_at_once_around_it(tmp_path, monkeypatch):
    """Sweeps inside runs (a packet every 3 ms, a sweep each second): only
    the first record (its shape new) and the two that reach a sweep are
    counted one by one."""
    recs = flood(1000, gap=3_000_000)
    write(tmp_path / "f.ipvt", [recs[i:i + 250] for i in range(0, 1000, 250)])
    one_by_one = []
    real = Pipeline.count
    monkeypatch.setattr(Pipeline, "count", lambda self, raw: (one_by_one.append(raw),
                                                                real(self, raw))[1])
    got = replay.run_replay(tmp_path / "f.ipvt", sink=None)
    assert got["branches"] == {"tx.l2.local": 1000}
    assert len(one_by_one) == 3
    monkeypatch.undo()
    assert {k: got[k] for k in COUNTED} == outcome(tmp_path / "f.ipvt", "each")
