"""replay --json writes the rows of a RING frame together when all its
records are like the first and show its flow (Pipeline.rows_alike): their
rows are the first's like's row with each record's own times, CPU,
pointers and sequence number, formatted a column at a time. These tests pin
that the lines are byte for byte the ones record() writes one by one and
the ones the whole way writes, whatever one record of a run changes."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ipvtrace import replay
from ipvtrace.model import pipeline
from ipvtrace.model.correlate import Correlator
from ipvtrace.model.packet import FrameNames, _flow_bytes, flow_byte_offsets
from ipvtrace.model.pipeline import Pipeline
from ipvtrace.model.rowreuse import times
from ipvtrace.output import recording
from ipvtrace.output.jsonlines import JsonSink

import synth
from test_count_alike import (MUTATIONS, ONE_CHANGED, echo_in_a_run, frame_at, mutated,
                              one_changed, write)
from test_row_reuse import PlainJson, local_tx, to_parent


def flood(n: int, first_ctx: int = 1, ts0: int = 10**12, gap: int = 10_000,
          cpus: int = 2) -> list[bytes]:
    """pod-a -> pod-b pings: times, context ids, pointers (reused), CPUs and
    sequence numbers differ from one to the next."""
    return [local_tx(first_ctx + i, ts0 + i * gap, 0x10000 + (i % 7) * 0x100, seq=i,
                     cpu=i % cpus) for i in range(n)]


def lines(path: Path, how: str) -> tuple[str, int]:
    """The JSON lines replay writes (and its error, if it ends in one), and
    how many of them rows_alike wrote at once: 'runs' as replay --json writes them, 'each' with every record
    through record() (rows reused one by one), 'whole' with every row built."""
    at_once = [0]
    real = JsonSink.write_text

    def spy(self, text: str) -> None:
        at_once[0] += text.count("\n")
        real(self, text)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(JsonSink, "write_text", spy)
        if how != "runs":
            m.setattr(Pipeline, "rows_alike", lambda self, *a: 0)
        sink = PlainJson() if how == "whole" else JsonSink(io.StringIO(), flush=False)
        try:
            replay.run_replay(path, sink=sink)
        except recording.RecordingError as exc:   # a record changed past decoding: its one line
            return sink.out.getvalue() + f"error: {exc}\n", at_once[0]
    return sink.out.getvalue(), at_once[0]


def same_three_ways(path: Path) -> int:
    runs, taken = lines(path, "runs")
    assert runs == lines(path, "each")[0]
    assert runs == lines(path, "whole")[0]
    return taken


def test_a_ping_flood_in_runs_is_written_a_run_at_a_time(tmp_path):
    recs = flood(600)
    write(tmp_path / "f.ipvt", [recs[i:i + 200] for i in range(0, 600, 200)], tick_every=1)
    taken = same_three_ways(tmp_path / "f.ipvt")
    # the first record of the file goes the whole way (its like is new); the rest at once
    assert taken == 599
    rows = lines(tmp_path / "f.ipvt", "runs")[0].splitlines()
    assert len(rows) == 600 and '"summary":"ICMP 10.0.0.1 > 10.0.0.2 echo-request seq 599"' \
        in rows[-1]


def test_a_run_that_shows_two_flows_goes_one_by_one(tmp_path):
    recs = flood(40)
    recs[17] = local_tx(18, 10**12 + 17 * 10_000, 0x10000, seq=17, dst="10.0.0.9")
    write(tmp_path / "f.ipvt", [recs])
    assert same_three_ways(tmp_path / "f.ipvt") == 0


def test_an_echo_in_a_run_joins_its_packet(tmp_path):
    same_three_ways(echo_in_a_run(tmp_path / "echo.ipvt"))


# what one record may differ in, beyond test_count_alike's: what the row shows of the frame
ROW_MUTATIONS = {
    **MUTATIONS,
    "another src MAC": lambda r: r.__setitem__(frame_at(7), 0x99),
    "another ICMP id": lambda r: r.__setitem__(frame_at(38), 0x42),
    "another sequence number": lambda r: r.__setitem__(frame_at(41), 0x42),
    "time zero": lambda r: r.__setitem__(slice(0, 8), bytes(8)),
    "a tie at the microsecond": lambda r: struct.pack_into(
        "<Q", r, 0, struct.unpack_from("<Q", r, 0)[0] // 1000 * 1000 + 500),
    "a day later": lambda r: struct.pack_into("<Q", r, 0, struct.unpack_from("<Q", r, 0)[0]
                                              + 86_400 * 10**9),
}


def changed(rec: bytes, what: str, where: int, value: int) -> bytes:
    if what in MUTATIONS or what == "any byte":
        return mutated(rec, what, where, value)
    odd = bytearray(rec)
    ROW_MUTATIONS[what](odd)
    return bytes(odd)


@settings(max_examples=150, deadline=None, database=None)
@given(what=st.sampled_from(sorted(ROW_MUTATIONS) + ["any byte"]), **ONE_CHANGED)
# the first record past decoding (its kind, its hit count): the same error each way
@example(what="any byte", at=0, where=36, value=0, gap=10_000, runs=1)
@example(what="any byte", at=0, where=32, value=0, gap=10_000, runs=1)
def test_a_run_writes_the_lines_of_its_records_one_by_one(tmp_path_factory, what, at, where,
                                                          value, gap, runs):
    same_three_ways(one_changed(tmp_path_factory, lambda r: changed(r, what, where, value),
                                at, gap, runs, flood_of=flood))


def test_the_runs_are_taken_when_nothing_differs_but_the_volatile(tmp_path):
    """A flood of 3 runs with the sweep far off: all but the first record at once."""
    recs = flood(120, cpus=3)
    write(tmp_path / "f.ipvt", [recs[i:i + 40] for i in range(0, 120, 40)])
    assert same_three_ways(tmp_path / "f.ipvt") == 119


@settings(max_examples=500, deadline=None, database=None)
@given(ds=st.lists(st.one_of(st.integers(-10**15, 10**15), st.integers(0, 10**12),
                             st.integers(0, 10**9).map(lambda k: k * 1000 + 500),
                             st.integers(0, 200_000)), min_size=1, max_size=30),
       t0=st.integers(0, 10**13))
def test_times_are_the_rows_times(ds, t0):
    """Each as to_row writes it, ties at half a microsecond, tiny and huge
    times included."""
    ts = [t0 + d for d in ds]
    got = list(times(ts, t0))
    assert [repr(x) for x in got] == [repr(round((t - t0) / 1e9, 6)) for t in ts]


def _frame(ethertype: bytes, proto: int, l4_type: int, ihl: int, body: bytes) -> bytes:
    b = bytearray(body)
    b[12:14] = ethertype
    if ethertype == b"\x08\x00":
        b[14] = ihl
        b[23] = proto
        l4 = 14 + (ihl & 0x0F) * 4
    else:
        b[20] = proto
        l4 = 54
    if l4 < len(b):
        b[l4] = l4_type
    return bytes(b)


@settings(max_examples=600, deadline=None, database=None)
@given(ethertype=st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x08\x06"]),
       proto=st.sampled_from([1, 6, 17, 58, 0, 47]), l4_type=st.sampled_from([0, 8, 3, 128, 129, 135]),
       ihl=st.sampled_from([0x45, 0x46, 0x4f, 0x40]), body=st.binary(min_size=34, max_size=120),
       other=st.binary(min_size=120, max_size=120), has_mac=st.booleans())
def test_flow_byte_offsets_are_all_the_flow_key_reads(ethertype, proto, l4_type, ihl, body,
                                                      other, has_mac):
    """Another frame of the same length with the same bytes at those
    offsets has the same flow key, offsets and sequence number's place; its
    names are the first's and its summary the first's with its own number."""
    a = _frame(ethertype, proto, l4_type, ihl, body)[:synth.LAY.hdr_max]
    at = flow_byte_offsets(a, has_mac)
    if at is None:
        assert _flow_bytes(a, has_mac)[0] is None
        return
    b = bytearray(other[:len(a)])
    for i in at:
        b[i] = a[i]
    b = bytes(b)
    assert flow_byte_offsets(b, has_mac) == at
    assert _flow_bytes(b, has_mac) == _flow_bytes(a, has_mac)[:1] + _flow_bytes(b, has_mac)[1:]
    assert _flow_bytes(b, has_mac)[1] == _flow_bytes(a, has_mac)[1]
    names = FrameNames()
    run = names.of_run(a, has_mac)
    if run is None:
        return
    ikey, offsets, base, seq_at = run
    assert offsets == at
    want = FrameNames().of(b, has_mac)
    assert want[0] == ikey
    assert want[1] == (f"{base} seq {b[seq_at] << 8 | b[seq_at + 1]}" if seq_at else base)


def test_short_runs_and_other_sinks_take_nothing_at_once(tmp_path):
    recs = flood(pipeline._ALIKE_MIN - 1)
    write(tmp_path / "f.ipvt", [recs])
    assert same_three_ways(tmp_path / "f.ipvt") == 0
    got: list = []
    replay.run_replay(tmp_path / "f.ipvt", sink=got.append)   # rows as dicts: no lines to write
    assert len(got) == len(recs)


def test_a_record_timed_zero_keeps_its_row_without_a_time(tmp_path):
    """Early in a recording (within the correlator's wait of time 0) a
    record of time 0 may close alone; its row has no time, unlike its like's."""
    recs = flood(20, ts0=1_000, gap=10)
    odd = bytearray(recs[9])
    odd[0:8] = bytes(8)
    recs[9] = bytes(odd)
    write(tmp_path / "f.ipvt", [recs])
    same_three_ways(tmp_path / "f.ipvt")
    assert '"time":null' in lines(tmp_path / "f.ipvt", "runs")[0].splitlines()[9]


def live_json(out: Path, monkeypatch, runs: bool) -> tuple[str, int]:
    """live --json -o *out* over pod-c's churn and then a ping flood, on the
    mapped ring (runs) or record by record: its lines, and how many of
    them were written a run at once."""
    from ipvtrace.capture import ringbuf
    from test_live_refresh import live_stream, pod_c_snapshot
    from test_ring_runs import PAGE, records_of_churn, ring_of

    text = io.StringIO()
    sink = JsonSink(text, flush=False)
    at_once = [0]
    real = sink.write_text

    def spy(t: str) -> None:
        at_once[0] += t.count("\n")
        real(t)
    sink.write_text = spy   # type: ignore[method-assign]
    _, src = live_stream(out, monkeypatch, lambda inum, known: pod_c_snapshot(), sink)
    assert src.pipe.writes_lines
    # (records behind pod-c's wait for the read of its namespace: the flood
    # comes once that is in, as it would a while later)
    for recs in (records_of_churn(), flood(300, first_ctx=1000, ts0=100_000)):
        if runs:
            size = 1 << 18
            mem, prod = ring_of([(r, 0) for r in recs], size, 0)
            ringbuf.walk(memoryview(mem), PAGE, size - 1, 0, prod, src.plain, src.line_run,
                         src.raw, lambda pos: None, src.known)
        else:
            for r in recs:
                src.raw(r)
        src.settle()
    src.tick(10**9, {}, 10**9)
    src.check()
    src.close("SIGINT", {})
    return text.getvalue(), at_once[0]


def test_live_json_writes_runs_as_it_writes_records(tmp_path, monkeypatch):
    """live --json on the mapped ring: the lines of records one by one, and
    the lines its own recording replays to."""
    by_run, at_once = live_json(tmp_path / "runs.ipvt", monkeypatch, runs=True)
    by_one, none = live_json(tmp_path / "one.ipvt", monkeypatch, runs=False)
    assert by_run == by_one and none == 0
    assert at_once >= 250, at_once   # the flood, but the first of each ring run
    assert by_run.count("\n") == 311
    replayed = JsonSink(io.StringIO(), flush=False)
    replay.run_replay(tmp_path / "runs.ipvt", sink=replayed)
    assert replayed.out.getvalue() == by_run


def test_a_run_that_reaches_the_sweep_goes_on_at_once_after_it(tmp_path):
    """Sweeps fall inside runs (a packet every 3 ms): the record that
    reaches one goes the whole way, the records before and after it at once."""
    recs = flood(1000, gap=3_000_000)
    write(tmp_path / "f.ipvt", [recs[i:i + 250] for i in range(0, 1000, 250)])
    taken = same_three_ways(tmp_path / "f.ipvt")
    # the first record sweeps (none before it) and makes the like; then one
    # sweep each half wait (1 s), reached by a record 3 ms after it is due
    sweeps = 999 * 3_000_000 // (Correlator(lambda pkt: None).wait_ns // 2)
    assert sweeps == 2 and taken == 1000 - 1 - sweeps


def test_a_template_keeps_percent_signs_and_fills_each_way_alike():
    """A device may be named with '%': the line is the encoder's, filled one
    row at a time or many at once."""
    sink = JsonSink(io.StringIO(), flush=False)
    row = {"time": 0.5, "ts": 7, "from": {"dev": "eth%d%%s"}, "summary": "a % b",
           "events": [{"cpu": 1, "skb": "0x10"}]}
    holes = [("time",), ("ts",), ("summary",), ("events", 0, "cpu"), ("events", 0, "skb")]
    fill = sink.template(row, holes)
    assert fill is not None and fill([0.5, 7, "a % b", 1, "0x10"]) == sink.encode(row)
    rows = [dict(row, time=t / 10, ts=t, summary=f"s%{t}",
                 events=[{"cpu": t % 2, "skb": f"{t * 256:#x}"}]) for t in range(1, 6)]
    text = fill.text(5, [[r["time"] for r in rows], [r["ts"] for r in rows],
                      [r["summary"] for r in rows], [r["events"][0]["cpu"] for r in rows],
                      [t * 256 for t in range(1, 6)]], frozenset({4}))
    assert text == "".join(sink.encode(r) + "\n" for r in rows)
    assert fill.text(1, [[0.5], [7], ["ignored"], [1], [16]], frozenset({4}), {2: "a % b"}) \
        == sink.encode(row) + "\n"
    with pytest.raises(ValueError):   # a column short of a row: no line is dropped
        fill.text(2, [[0.5, 0.6], [7, 8], ["a", "b"], [1], [16, 17]], frozenset({4}))
    with pytest.raises(ValueError):   # a hole without its column
        fill.text(1, [[0.5], [7], ["a"], [1]], frozenset())


def test_a_packet_that_expires_inside_a_run_keeps_its_place(tmp_path):
    """A TX to the parent waits 2 s for its echo, which never comes; a
    flood run crosses that deadline between two sweeps (a sweep at 1.5 s
    puts the next at 2.5 s). One by one, the waiting packet's row comes
    out where the stream passed its deadline: the run must not write the
    rows after it first."""
    t0 = 10**12
    lone = [to_parent(1, t0, 0x6000)]
    late = [local_tx(2, t0 + 1_500_000_000, 0x10000, seq=0)]   # its like (and the sweep)
    run = [local_tx(3 + i, t0 + 1_600_000_000 + i * 10_000_000, 0x10000 + (i % 7) * 0x100,
                    seq=i + 1) for i in range(80)]             # 1.6 s to 2.39 s
    write(tmp_path / "f.ipvt", [lone, late, run])
    same_three_ways(tmp_path / "f.ipvt")
    rows = lines(tmp_path / "f.ipvt", "runs")[0].splitlines()
    at = [i for i, r in enumerate(rows) if '"10.0.0.254"' in r]
    # time moves to a record's return before its row is written: the waiting
    # packet's row comes just before that of the record at 2.0 s (run[40])
    assert len(rows) == 82 and at == [1 + 40], at
