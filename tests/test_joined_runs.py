"""`record` hands a flood on in RING frames of at most 256 records with a
clock tick after each poll; replay reads RING frames that follow each other
with only ticks between them as one run that holds those ticks
(Recording.frames, recording.RingRun.ticks), and takes its records together
where the ticks change nothing (Pipeline.rows_alike / count_alike, with the
ticks; Correlator.all_close_alone).

These tests pin that nothing is lost, reordered or changed on the way: the
joined frames unfold to the frames of the file, and a file's lines and
counts are the same taken in joined runs, one by one, and the whole way,
wherever ticks fall, whatever time they carry, and with a packet waiting
for its echo."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ipvtrace.model.correlate import WAIT_NS
from ipvtrace.output import recording

import synth
from test_count_alike import LAY, outcome
from test_row_reuse import local_tx, to_parent
from test_rows_alike import flood, lines

T0 = 10**12


def write(path: Path, frames: list[tuple[str, object]], tail: bytes = b"") -> Path:
    """A recording of *frames*: ("ring", [record, ...]) (or "ring+busy":
    with a BUSY record after them), ("tick", ktime),
    ("lost", count), ("event", record); *tail*: bytes after them (a bad
    frame), in place of the end marker."""
    w = recording.Writer(path, {"format": "ipvtrace-recording", "format_version": 3,
                                "start_ktime": 0, "start_wall": 0, "layout": LAY.to_json(),
                                "drop_reasons": {}, "snapshot": synth.snapshot("l2")})
    for what, arg in frames:
        if what == "ring":
            w.ring(synth.ring_span(arg), len(arg))
        elif what == "ring+busy":   # a record the producer had not committed: corrupt here
            w.ring(synth.ring_span(arg) + struct.pack("<II", 8 | 1 << 31, 0) + bytes(8),
                   len(arg) + 1)
        elif what == "tick":
            w.tick(arg)
        elif what == "lost":
            w.lost(T0, arg)
        else:
            w.event(arg)
    if tail:
        w.flush()
        w._f.write(tail)
        w.keep_partial().rename(path)
    else:
        w.close({"ended_by": "synthetic", "lost_events": 0, "symbols": {}})
    return path


def unfolded(rec: recording.Recording, runs: bool) -> list:
    """The file's frames as replay sees them, each RING run unfolded into
    its records with its ticks in their places; the error last, if any."""
    out: list = []
    try:
        for ftype, payload in rec.frames(runs=runs):
            if ftype != recording.F_RING:
                out.append((ftype, bytes(payload)))
                continue
            at = [i for i, _ in payload.ticks]
            assert at == sorted(at) and all(0 < i < payload.count for i in at)
            assert len(at) <= recording.RUN_JOIN_TICKS
            for i, raw in enumerate(payload.records()):
                out += [(recording.F_TICK, recording.TICK.pack(k)) for j, k in payload.ticks
                        if j == i]
                out.append((recording.F_EVENT, raw))
    except recording.RecordingError as exc:
        out.append(("error", str(exc)))
    return out


LENGTHS = [bytes(range(24)), bytes(range(40)), bytes(range(41))]   # 32, 48 and 56 bytes framed


frame = st.one_of(
    st.tuples(st.just("ring"), st.lists(st.sampled_from(LENGTHS), min_size=1, max_size=6)),
    st.tuples(st.just("ring+busy"), st.lists(st.sampled_from(LENGTHS), max_size=6)),
    st.tuples(st.just("tick"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("lost"), st.integers(1, 9)),
    st.tuples(st.just("event"), st.sampled_from(LENGTHS)))


@settings(max_examples=300, deadline=None, database=None)
@given(frames=st.lists(frame, max_size=40),
       tail=st.sampled_from([b"", b"\x07\x00\x00\x00\x09\x00\x00\x00" + bytes(9), b"\x02\x00"]))
def test_joined_runs_unfold_to_the_files_frames(tmp_path_factory, frames, tail):
    """Every record and tick, in the file's order, and a bad frame's error
    after the same records, whether RING frames come joined or not."""
    path = write(tmp_path_factory.mktemp("join") / "f.ipvt", frames, tail)
    rec = recording.read(path)
    joined = unfolded(rec, runs=True)
    assert joined == unfolded(rec, runs=False)


def test_a_flood_in_polls_is_one_run_with_its_ticks(tmp_path, monkeypatch):
    """Frames of 256 records and of a few, a tick after each: one run,
    until a frame of another length or a LOST frame stands between."""
    monkeypatch.setattr(recording, "RUN_JOIN_TICKS", 4)
    a, b = LENGTHS[0], LENGTHS[1]
    frames: list = [("ring", [a] * 256), ("tick", 5), ("ring", [a] * 3), ("tick", 6),
                    ("tick", 7), ("ring", [a] * 2), ("ring", [b] * 4), ("tick", 8),
                    ("lost", 1), ("ring", [b]), ("tick", 9)]
    frames += [("ring", [a]), ("tick", 10)] * 6
    rec = recording.read(write(tmp_path / "f.ipvt", frames))
    got = [(t, (p.count, p.ticks) if t == recording.F_RING else p) for t, p in rec.frames(runs=True)]
    tick = recording.TICK.pack
    assert got == [(recording.F_RING, (261, ((256, 5), (259, 6), (259, 7)))),
                   (recording.F_RING, (4, ())), (recording.F_TICK, tick(8)),
                   (recording.F_LOST, struct.pack("<QQ", T0, 1)),
                   (recording.F_RING, (1, ())), (recording.F_TICK, tick(9)),
                   # at most RUN_JOIN_TICKS (here 4) ticks a run
                   (recording.F_RING, (5, ((1, 10), (2, 10), (3, 10), (4, 10)))),
                   (recording.F_TICK, tick(10)),
                   (recording.F_RING, (1, ())), (recording.F_TICK, tick(10))]


def test_ticks_after_a_run_are_not_held_past_run_join_ticks(tmp_path, monkeypatch):
    """A run followed by many ticks comes out once RUN_JOIN_TICKS of them
    are read, not at the end of the ticks."""
    monkeypatch.setattr(recording, "RUN_JOIN_TICKS", 4)
    rec = recording.read(write(tmp_path / "f.ipvt", [("ring", [LENGTHS[0]])]
                               + [("tick", k) for k in range(1000)] + [("ring", [LENGTHS[0]])]))
    read = 0
    raw = rec.raw_frames

    def counted():
        nonlocal read
        for f in raw():
            read += 1
            yield f
    monkeypatch.setattr(rec, "raw_frames", counted)
    got = rec.frames(runs=True)
    assert next(got)[0] == recording.F_RING and read <= 1 + 4 + 1
    assert [t for t, _ in got] == [recording.F_TICK] * 1000 + [recording.F_RING]


def test_a_joined_run_is_at_most_run_join_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(recording, "RUN_JOIN_BYTES", 32 * 10)
    rec = recording.read(write(tmp_path / "f.ipvt", [("ring", [LENGTHS[0]] * 4)] * 5))
    assert [p.count for _, p in rec.frames(runs=True)] == [8, 8, 4]


def polls(recs: list[bytes], sizes: list[int], ticks: list[int]) -> list:
    """*recs* cut into RING frames of *sizes* (cycled), each followed by a
    tick at the last record's time plus ticks[i] (cycled)."""
    frames, at, i = [], 0, 0
    while at < len(recs):
        run = recs[at:at + sizes[i % len(sizes)]]
        frames += [("ring", run),
                   ("tick", max(0, struct.unpack_from("<Q", run[-1], 0)[0] + ticks[i % len(ticks)]))]
        at += len(run)
        i += 1
    return frames


# where a tick's time falls: behind the records, just after them, past the
# next sweep, past a waiting packet's deadline, or so far on that the
# records after it are stale
TICK_AT = st.sampled_from([-10**9, -5_000, 1, 7_000, WAIT_NS // 2, WAIT_NS, 3 * WAIT_NS + 1])


@settings(max_examples=40, deadline=None, database=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=5),
       ticks=st.lists(TICK_AT, min_size=1, max_size=5),
       gap=st.sampled_from([10_000, 3_000_000, 40_000_000]),
       waiting=st.booleans())
# a record whose return reaches the waiting packet's deadline: its row comes first
@example(sizes=[1], ticks=[-10**9], gap=40_000_000, waiting=True)
def test_ticks_among_a_run_change_no_line_and_no_count(tmp_path_factory, sizes, ticks, gap,
                                                        waiting):
    """A flood in polls, ticks between them at any time, a TX to the
    parent waiting for an echo that never comes (or not): the same lines
    and counts as one by one and the whole way."""
    recs = flood(120, gap=gap)   # (40 ms apart: past the waiting packet's deadline)
    if waiting:
        recs.insert(5, to_parent(900, struct.unpack_from("<Q", recs[4], 0)[0] + 1, 0x6000))
    path = write(tmp_path_factory.mktemp("ticks") / "f.ipvt", polls(recs, sizes, ticks))
    runs = lines(path, "runs")[0]
    assert runs == lines(path, "each")[0]
    assert runs == lines(path, "whole")[0]
    counted = outcome(path, "runs")
    assert counted == outcome(path, "each") and counted == outcome(path, "rows")
    assert counted["packets"] == 120 + waiting


def test_a_flood_in_small_polls_is_written_at_once_across_its_ticks(tmp_path):
    """Polls of 5 records (each under the 8 a run needs alone), a tick
    after each just past its records: all but the first record at once."""
    recs = flood(400)
    path = write(tmp_path / "f.ipvt", polls(recs, [5], [1]))
    runs, taken = lines(path, "runs")
    assert taken == 399 and runs == lines(path, "each")[0]


def test_a_tick_past_the_sweep_cuts_the_run_there(tmp_path):
    """A tick that reaches the sweep is given where the file had it: the
    records before it at once, the one after it the whole way."""
    recs = flood(200)
    frames = polls(recs[:100], [50], [1]) + polls(recs[100:], [50], [1])
    sweep_tick = struct.unpack_from("<Q", recs[99], 0)[0] + WAIT_NS
    frames[3] = ("tick", sweep_tick)   # after the second poll: past the sweep
    path = write(tmp_path / "f.ipvt", frames)
    runs, taken = lines(path, "runs")
    assert runs == lines(path, "each")[0] == lines(path, "whole")[0]
    # the first record makes the like and sweeps; the one after the late tick
    # goes the whole way (the tick swept, so its like holds again after it)
    assert taken == 200 - 2, taken


def test_a_waiting_packet_comes_out_where_a_tick_passed_its_deadline(tmp_path):
    """One by one, a tick past a waiting packet's deadline prints its row
    there: a run across that tick, all of its records before the deadline,
    must not be written before it."""
    tx = [to_parent(1, T0, 0x6000)]
    recs = flood(100, ts0=T0 + WAIT_NS - 2_000_000, gap=10_000)   # ends 1 ms before the deadline
    frames = [("ring", tx), ("tick", T0 + 1)] + polls(recs[:20], [20], [1]) \
        + [("tick", T0 + WAIT_NS + 1_000_000)] + polls(recs[20:], [40], [1])
    path = write(tmp_path / "f.ipvt", frames)
    runs, taken = lines(path, "runs")
    assert runs == lines(path, "each")[0] == lines(path, "whole")[0]
    at = [i for i, r in enumerate(runs.splitlines()) if '"10.0.0.254"' in r]
    assert at == [20], at   # after the 20 records before the tick, before those after it
    # the first makes the like; the records up to the tick are taken at once,
    # the tick that reaches the deadline is given, the record after it goes
    # alone, and the rest at once again
    assert taken == 100 - 2, taken


@pytest.mark.parametrize("runs", [False, True])
def test_ticks_alone_and_runs_alone_pass_as_they_are(tmp_path, runs):
    rec = recording.read(write(tmp_path / "f.ipvt", [("tick", 1), ("tick", 2)]))
    assert [t for t, _ in rec.frames(runs=runs)] == [recording.F_TICK, recording.F_TICK]
