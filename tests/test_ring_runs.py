"""`record` on the mapped ring hands whole runs of records to the file.

ringbuf.walk is checked on a ring laid out as the kernel lays it out (the
data pages twice in a row, records wrapping at the end, a BUSY record where
a producer is still writing, DISCARD records), the RING frame it feeds is
read back record for record, and a file of runs replays exactly like the
file the per-record path writes from the same records, a new pod's read
(refresher) included.
"""
from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipvtrace import replay
from ipvtrace.capture import ringbuf
from ipvtrace.model.decode import field_offsets
from ipvtrace.model.layout import current
from ipvtrace.output import recording

import article_checks
import synth
from synth import POD_A, pod_a, pod_b
from test_live_refresh import POD_C, POD_C_DEV, live_stream, packet, pod_c_snapshot

PAGE = 4096
NETNS = field_offsets(current().rec.fields, current().rec.fmt)["netns"]
HDR = struct.Struct("<II")


def ring_of(records: list[tuple[bytes, int]], size: int, start: int) -> tuple[bytearray, int]:
    """The mapped pages of a ring of *size* data bytes whose consumer is at
    *start*, holding *records* (payload, header flags); returns the pages
    and the producer position."""
    data = bytearray(size)
    pos = start
    for payload, flags in records:
        blob = HDR.pack(len(payload) | flags, 7) + payload
        blob += bytes(-len(blob) % 8)
        for i, b in enumerate(blob):
            data[(pos + i) % size] = b
        pos += len(blob)
    assert pos - start <= size
    return bytearray(PAGE) + data + data, pos   # the data pages, mapped twice


def walk_all(mem, size, start, prod, plain):
    got: list[tuple[str, bytes]] = []
    gave: list[int] = []

    def run(span: bytes, n: int) -> None:
        recs = [p for _, p in recording._ring_records(span, 0, len(span))]
        assert len(recs) == n
        got.extend(("run", p) for p in recs)

    n = ringbuf.walk(memoryview(mem), PAGE, size - 1, start, prod, plain, run,
                     lambda p: got.append(("one", bytes(p))), gave.append)
    return n, got, gave


@settings(max_examples=200, deadline=None)
@given(lens=st.lists(st.integers(1, 300), min_size=1, max_size=40),
       plain_bits=st.integers(0, 2**40), discard_bits=st.integers(0, 2**40),
       busy_at=st.integers(0, 45), start=st.integers(0, 4095))
def test_walk_hands_on_every_committed_record_once_in_order(lens, plain_bits, discard_bits,
                                                            busy_at, start):
    size = 1 << 14
    recs = []
    for i, n in enumerate(lens):
        flags = ringbuf.DISCARD if discard_bits >> i & 1 else 0
        if i == busy_at:
            flags = ringbuf.BUSY
        recs.append((bytes([i]) * n, flags))
    start = start * 8 + (size - 2048 if start & 1 else 0)   # often across the wrap
    mem, prod = ring_of(recs, size, start)

    def plain(data, off, length):
        return bool(plain_bits >> data[off] & 1)

    n, got, gave = walk_all(mem, size, start, prod, plain)
    upto = recs[:busy_at] if busy_at < len(recs) else recs
    want = [p for p, f in upto if not f & ringbuf.DISCARD]
    assert [p for _, p in got] == want
    assert n == len(want)
    assert [how for how, _ in got] == ["run" if plain_bits >> p[0] & 1 else "one" for p in want]
    # the space given back ends at the BUSY record (a producer still writes it)
    stop = start + sum((len(p) + 8 + 7) & ~7 for p, _ in upto)
    assert gave[-1] == stop and gave == sorted(gave) and all(g <= stop for g in gave)


@settings(max_examples=300, deadline=None)
@given(groups=st.lists(st.tuples(st.integers(0, 3), st.sampled_from([8, 20, 40]),
                                 st.integers(1, 40)), min_size=1, max_size=12),
       plain_bits=st.integers(0, 15), discard_at=st.integers(0, 300),
       busy_at=st.integers(0, 300), start=st.integers(0, 4095))
def test_records_known_alike_are_walked_as_one_by_one(groups, plain_bits, discard_at, busy_at,
                                                      start):
    """With Known's offsets, stretches of records alike behind a known one
    are taken at once (_alike_behind): the records handed on, how (run or
    alone), and the space given back are those of a walk without it."""
    size = 1 << 15
    recs = []
    for value, n, repeat in groups:
        for _ in range(repeat):
            flags = 0
            if len(recs) == discard_at:
                flags = ringbuf.DISCARD
            if len(recs) == busy_at:
                flags = ringbuf.BUSY
            recs.append((bytes([value]) + bytes([len(recs) % 251]) * (n - 1), flags))
    start = start * 8 + (size - 2048 if start & 1 else 0)
    # behind the producer: a lap's stale records, alike the last (never read)
    mem, _ = ring_of(recs + [(recs[-1][0], 0)] * 20, size, start)
    prod = start + sum((len(p) + 8 + 7) & ~7 for p, _ in recs)

    def walked(at):
        keys: set = set()
        known = ringbuf.Known(lambda data, off: (data[off],), 1, keys, at)
        asked = []

        def plain(data, off, length):
            asked.append(off)
            if plain_bits >> data[off] & 1:
                keys.add((data[off],))
                return True
            return False

        got, gave, runs = [], [], []

        def run(span, n):
            recs = [p for _, p in recording._ring_records(span, 0, len(span))]
            assert len(recs) == n
            runs.append(n)
            got.extend(("run", p) for p in recs)

        n = ringbuf.walk(memoryview(mem), PAGE, size - 1, start, prod, plain, run,
                         lambda p: got.append(("one", bytes(p))), gave.append, known)
        return n, got, gave, asked, runs

    n, got, gave, asked, runs = walked((0,))
    n1, got1, gave1, _, _ = walked(())
    assert (n, got, gave[-1]) == (n1, got1, gave1[-1])
    assert all(r <= ringbuf.RUN_MAX_RECORDS for r in runs)
    # give-backs stay behind what was handed on, and in order
    assert gave == sorted(gave)


def test_a_flood_of_alike_records_is_walked_in_stretches():
    """256 records alike, their key known: walked with a handful of Python
    steps, not 256 (peek is asked once a stretch)."""
    size = 1 << 19
    recs = [(bytes([1]) + bytes([i % 200]) * 500, 0) for i in range(600)]
    mem, prod = ring_of(recs, size, 0)
    peeks = []

    def peek(data, off):
        peeks.append(off)
        return (data[off],)

    runs = []
    n = ringbuf.walk(memoryview(mem), PAGE, size - 1, 0, prod, lambda *a: False,
                     lambda span, k: runs.append(k), lambda p: None, lambda pos: None,
                     ringbuf.Known(peek, 1, {(1,)}, (0,)))
    assert n == 600 and sum(runs) == 600 and max(runs) == ringbuf.RUN_MAX_RECORDS
    assert len(peeks) <= 2 * 3   # two peeks (known? then alike?) for each of three stretches


def test_an_error_while_a_run_is_written_leaves_the_ring_closable():
    """A run is a view of the ring; the writer failing on it (a full disk)
    keeps it in the traceback while the tracer closes and detaches:
    closing the ring must not fail then."""
    import mmap
    import select

    size = 1 << 16
    mem, prod = ring_of([(bytes([1]) * 40, 0)] * 20, size, 0)
    ring = ringbuf.MappedRing.__new__(ringbuf.MappedRing)
    ring._cons = mmap.mmap(-1, PAGE)
    ring._prod = mmap.mmap(-1, len(mem))
    ring._prod[:] = bytes(mem)
    ring._page, ring._mask, ring._ep = PAGE, size - 1, select.epoll()
    struct.pack_into("<Q", ring._prod, 0, prod)   # the producer page's position

    def full(span, n):
        raise OSError(28, "No space left on device")

    try:
        ring.consume_runs(lambda *a: True, full, lambda p: None)
    except OSError as exc:
        held = exc   # its traceback holds the run, a view of the ring
        ring.close()
        assert held.__traceback__ is not None
    else:
        raise AssertionError("the writer's error was not raised")


def test_a_run_is_handed_on_before_its_space_is_given_back():
    """The producer may reuse given-back space at once: every record behind
    a given-back position must already be copied out."""
    size = 1 << 16
    recs = [(bytes([i % 256]) * 40, 0) for i in range(ringbuf.RUN_MAX_RECORDS * 2 + 10)]
    mem, prod = ring_of(recs, size, 0)
    handed = 0
    order: list[tuple[str, int]] = []

    def run(span, n):
        nonlocal handed
        handed += len(span)
        order.append(("run", handed))

    ringbuf.walk(memoryview(mem), PAGE, size - 1, 0, prod, lambda *a: True, run,
                 lambda p: None, lambda pos: order.append(("give", pos)))
    for i, (what, pos) in enumerate(order):
        if what == "give":
            assert pos <= max([h for w, h in order[:i] if w == "run"] + [0])


@pytest.mark.parametrize("bad, why", [
    (HDR.pack(8 | ringbuf.BUSY, 0) + bytes(8), "bad ring record"),
    (HDR.pack(8 | ringbuf.DISCARD, 0) + bytes(8), "bad ring record"),
    (HDR.pack(64, 0) + bytes(8), "bad ring record"),
    (HDR.pack(8, 0) + bytes(8) + b"\0\0\0", "header cut"),
])
@pytest.mark.parametrize("runs", [False, True], ids=["record-by-record", "as-runs"])
def test_a_bad_ring_frame_is_one_error(tmp_path, bad, why, runs):
    path = tmp_path / "bad.ipvt"
    w = recording.Writer(path, {"format": "ipvtrace-recording", "format_version": 3,
                                "start_ktime": 0, "layout": current().to_json(),
                                "drop_reasons": {}, "snapshot": synth.snapshot()})
    w.ring(bad, 1)
    w.close({})
    with pytest.raises(recording.RecordingError, match=why):
        list(recording.read(path).frames(runs=runs))


def records_of_churn() -> list[bytes]:
    """Known pods' packets, then pod-c's (its namespace read while tracing),
    then known pods' again."""
    out: list[bytes] = []
    for i in range(5):
        out += packet(1_000 + i * 100, 1 + i, pod_a(), pod_b(), "10.0.0.1", "10.0.0.2", 0x10 + i)
    out += packet(20_000, 50, POD_C_DEV, pod_b(), "10.0.0.3", "10.0.0.2", 0x500)
    for i in range(5):
        out += packet(30_000 + i * 100, 60 + i, pod_a(), pod_b(), "10.0.0.1", "10.0.0.2",
                      0x600 + i)
    return out


def record_file(out: Path, monkeypatch, runs: bool, known: bool = True) -> recording.Recording:
    _, src = live_stream(out, monkeypatch, lambda inum, known: pod_c_snapshot(), None)
    recs = records_of_churn()
    if runs:
        size = 1 << 16
        mem, prod = ring_of([(r, 0) for r in recs], size, 0)
        asked = []

        def plain(data, off: int, length: int) -> bool:
            asked.append(off)
            return src.plain(data, off, length)

        ringbuf.walk(memoryview(mem), PAGE, size - 1, 0, prod, plain, src.ring_run,
                     src.raw, lambda pos: None, src.known if known else None)
        # with the windows plain() accepted remembered, it is asked about
        # pod-a's first record (no: its device is settled by the record
        # path) and second (yes), not the three alike behind them; then
        # pod-c's (held) and the records behind it until the read of its
        # namespace (another thread) is in; without, about every record
        at, offs = PAGE, []
        for r in recs:
            offs.append(at + HDR.size)
            at += (HDR.size + len(r) + 7) & ~7
        if known:
            assert asked[:2] == offs[:2] and asked[2:] == offs[5:5 + len(asked) - 2] \
                and len(asked) > 2, (asked, offs)
        else:
            assert asked == offs
    else:
        for r in recs:
            src.raw(r)
    src.settle()
    src.tick(90_000, {}, 90_000)
    src.check()
    src.close("SIGINT", {})
    return recording.read(out)


@pytest.mark.parametrize("known", [True, False], ids=["known-windows", "plain-every-record"])
def test_record_in_runs_replays_as_record_per_event(tmp_path, monkeypatch, known):
    by_run = record_file(tmp_path / "runs.ipvt", monkeypatch, runs=True, known=known)
    by_one = record_file(tmp_path / "one.ipvt", monkeypatch, runs=False)
    # the same records and snapshots, in the same order
    assert [(t, p) for t, p in by_run.frames()] == [(t, p) for t, p in by_one.frames()]
    types = [ftype for ftype, _, _, _ in article_checks.raw_frames(by_run)]
    assert recording.F_RING in types, "no run reached the file"
    # pod-c's record waited for the read of its namespace: after that snapshot
    kinds = []
    for t, p in by_run.frames():
        if t == recording.F_EVENT:
            kinds.append({POD_A: "a", POD_C: "c"}[struct.unpack_from("<I", p, NETNS)[0]])
        elif t == recording.F_SNAPSHOT:
            kinds.append("snap")
    assert kinds.index("snap") < kinds.index("c") and kinds.count("c") == 1
    a, b = [], []
    replay.run_replay(tmp_path / "runs.ipvt", a.append)
    replay.run_replay(tmp_path / "one.ipvt", b.append)
    assert a == b and len(a) == 11 and all(r["branch"] == "tx.l2.local" for r in a), a

