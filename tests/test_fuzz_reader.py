"""Hostile recordings: the reader, mutated from real kernels' recordings.

Every input either replays or fails with RecordingError (one line, exit 2 in
the CLI); nothing else may escape, and memory stays bounded by the file.
Mutations act where a stranger's file would differ: JSON values of the
header, snapshots and trailer replaced by values of any type, frame headers
and event bytes flipped, frames cut, repeated or dropped.

The fast tier tries IPVTRACE_FUZZ_EXAMPLES inputs per strategy (default 150);
`IPVTRACE_FUZZ_EXAMPLES=20000 scripts/test tests/test_fuzz_reader.py` is the
long run.
"""
from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipvtrace import replay
from ipvtrace.output import recording
from ipvtrace.output.jsonlines import JsonSink
from article_checks import pack_recording as pack

FIX = Path(__file__).parent / "fixtures"
EXAMPLES = int(os.environ.get("IPVTRACE_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def frames_of(path: Path) -> tuple[dict, list[tuple[int, bytes]], dict]:
    rec = recording.read(path)
    frames = []
    for t, p in rec.frames():
        frames.append((t, json.dumps(p).encode() if t == recording.F_SNAPSHOT else bytes(p)))
        if len(frames) >= 120:   # small inputs: many of them per second
            break
    return rec.header, frames, rec.trailer


def as_ring(base: tuple[dict, list[tuple[int, bytes]], dict]):
    """The same recording as `record` writes it on the mapped ring: runs of
    events in RING frames, each framed as the ring framed it."""
    header, frames, trailer = base
    out: list[tuple[int, bytes]] = []
    for t, p in frames:
        if t != recording.F_EVENT:
            out.append((t, p))
            continue
        rec = recording.RING_HDR.pack(len(p), 0) + p
        rec += bytes(-len(rec) % 8)
        if out and out[-1][0] == recording.F_RING and len(out[-1][1]) < 2000:
            out[-1] = (recording.F_RING, out[-1][1] + rec)
        else:
            out.append((recording.F_RING, rec))
    return header, out, trailer


def seal(ftype: int, raw: bytes) -> bytes:
    """*raw* as a block of *ftype*: LZ4 as the writer seals it now
    (container 4), ZSTD as it did (container 3)."""
    if ftype == recording.F_LZ4:
        import lz4.block

        z = lz4.block.compress(raw, store_size=False)
        return recording.LZ4_HDR.pack(len(raw), zlib.crc32(z)) + z
    import zstandard

    return zstandard.ZstdCompressor(level=1, write_checksum=True).compress(raw)


def unseal(ftype: int, block: bytes) -> bytes:
    if ftype == recording.F_LZ4:
        import lz4.block

        size, _ = recording.LZ4_HDR.unpack_from(block)
        return lz4.block.decompress(block[recording.LZ4_HDR.size:], uncompressed_size=size)
    import zstandard

    return zstandard.ZstdDecompressor().decompress(block)


def as_blocks(base: tuple[dict, list[tuple[int, bytes]], dict], per_block: int = 16,
              ftype: int = recording.F_LZ4):
    """The same recording in blocks of *per_block* frames, as the writer
    seals them (LZ4) or sealed them (ZSTD)."""
    header, frames, trailer = base
    out = []
    for i in range(0, len(frames), per_block):
        raw = b"".join(recording.FRAME.pack(t, len(p)) + p for t, p in frames[i:i + per_block])
        out.append((ftype, seal(ftype, raw)))
    return header, out, trailer


def flood_base() -> tuple[dict, list[tuple[int, bytes]], dict]:
    """A flood as `record` writes it: RING frames of 20 records alike, which
    replay --stats counts at once (Pipeline.count_alike), ticks between."""
    import synth
    from ipvtrace.model import layout
    from test_count_alike import flood

    recs = flood(60)
    frames: list[tuple[int, bytes]] = []
    for i in range(0, 60, 20):
        frames.append((recording.F_RING, synth.ring_span(recs[i:i + 20])))
        frames.append((recording.F_TICK, recording.TICK.pack(10**12 + (i + 20) * 10_000)))
    header = {"format": "ipvtrace-recording", "format_version": 3, "start_ktime": 0,
              "start_wall": 0, "layout": layout.current().to_json(), "drop_reasons": {},
              "snapshot": synth.snapshot("l2")}
    return header, frames, {"ended_by": "synthetic", "lost_events": 0, "events": 60,
                            "symbols": {}}


BASES = {k: frames_of(FIX / f"{k}.ipvt") for k in ("article-6.12", "topologies-6.1")}
BASES["article-6.12-ring"] = as_ring(BASES["article-6.12"])
BASES["article-6.12-zstd"] = as_blocks(BASES["article-6.12-ring"], ftype=recording.F_ZSTD)
BASES["article-6.12-lz4"] = as_blocks(BASES["article-6.12-ring"])
BASES["flood-ring"] = flood_base()
BASES["flood-zstd"] = as_blocks(BASES["flood-ring"], per_block=2, ftype=recording.F_ZSTD)
BASES["flood-lz4"] = as_blocks(BASES["flood-ring"], per_block=2)
BLOCKED = ["article-6.12-zstd", "article-6.12-lz4", "flood-zstd", "flood-lz4"]


def test_a_ring_framed_recording_replays_as_its_events(tmp_path):
    """The fuzz base of RING frames is itself the same recording."""
    rows = []
    for name in ("article-6.12", "article-6.12-ring", "article-6.12-zstd", "article-6.12-lz4"):
        p = tmp_path / f"{name}.ipvt"
        p.write_bytes(pack(*BASES[name]))
        got: list[dict] = []
        replay.run_replay(p, sink=got.append)
        rows.append(got)
    assert rows[0] == rows[1] == rows[2] == rows[3] and rows[0]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def paths(obj, prefix=()):
    """Every (path) to a value inside a JSON object."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            yield from paths(v, prefix + (i,))


def replace_at(obj, path, value):
    if not path:
        return value
    obj = json.loads(json.dumps(obj))
    cur = obj
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return obj


COUNTED = ("packets", "events", "branches", "drops", "lost_events", "unattributed_events",
           "evicted")


def survives(tmp_path: Path, data: bytes) -> None:
    """Replays or fails in one line; counting alone (replay --stats, which
    counts records by shape) ends as the rows do; and JSON lines with rows
    reused (pipeline.record, model/rowreuse.py; a ring run's together,
    Pipeline.rows_alike) are the lines without."""
    p = tmp_path / "fuzz.ipvt"
    p.write_bytes(data)
    ends = []
    reused, whole = JsonSink(io.StringIO(), flush=False), JsonSink(io.StringIO(), flush=False)
    for sink in (lambda row: whole(row), reused, None):
        try:
            s = replay.run_replay(p, sink=sink)
            ends.append({k: s[k] for k in COUNTED})
        except recording.RecordingError as exc:
            assert "\n" not in str(exc)
            ends.append(str(exc))
    assert ends[0] == ends[1] == ends[2]
    assert reused.out.getvalue() == whole.out.getvalue()


@SETTINGS
@given(base=st.sampled_from(sorted(BASES)), where=st.sampled_from(["header", "trailer", "snapshot"]),
       pick=st.integers(min_value=0), value=json_values, data=st.data())
def test_json_frames_of_any_shape(tmp_path_factory, base, where, pick, value, data):
    header, frames, trailer = BASES[base]
    if where == "header":
        ps = list(paths(header))
        header = replace_at(header, ps[pick % len(ps)], value)
    elif where == "trailer":
        ps = list(paths(trailer))
        trailer = replace_at(trailer, ps[pick % len(ps)], value)
    else:
        snap = json.loads(json.dumps(header.get("snapshot", {})))
        ps = list(paths(snap))
        new = json.dumps(replace_at(snap, ps[pick % len(ps)], value), allow_nan=True).encode()
        frames = frames[:5] + [(recording.F_SNAPSHOT, new)] + frames[5:]
    survives(tmp_path_factory.mktemp("j"), pack(header, frames, trailer))


def test_a_key_that_does_not_print_is_escaped_in_the_one_line_error(tmp_path):
    """Found by the test above: a key of the file's own (layout.flags,
    trailer.kernel_stats) named in the error came out as it was, so a
    newline in it split the one-line error and a terminal escape in it
    reached the terminal."""
    header, frames, trailer = BASES["article-6.12"]
    header = replace_at(header, ("layout", "flags", "\n\x1b[2J"), None)
    p = tmp_path / "keys.ipvt"
    p.write_bytes(pack(header, frames, trailer))
    with pytest.raises(recording.RecordingError) as exc:
        replay.run_replay(p, sink=None)
    assert str(exc.value).endswith("corrupted header: layout.flags.\\n\\x1b[2J is not an integer")
    survives(tmp_path, pack(header, frames, trailer))


@SETTINGS
@given(base=st.sampled_from(sorted(BASES)),
       edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.none() | st.integers(min_value=0), end=st.booleans())
def test_bytes_flipped_and_cut(tmp_path_factory, base, edits, cut, end):
    header, frames, trailer = BASES[base]
    data = bytearray(pack(header, frames, trailer, end=end))
    hlen = 15 + len(json.dumps(header))
    for pos, val in edits:   # past the header: frame headers and event bytes
        data[hlen + pos % (len(data) - hlen)] = val
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    survives(tmp_path_factory.mktemp("b"), bytes(data))


@SETTINGS
@given(base=st.sampled_from(sorted(BASES)), ftype=st.integers(0, 255),
       payload=st.binary(max_size=300), at=st.integers(min_value=0))
def test_frames_of_any_type_and_size(tmp_path_factory, base, ftype, payload, at):
    header, frames, trailer = BASES[base]
    i = at % (len(frames) + 1)
    frames = frames[:i] + [(ftype, payload)] + frames[i:]
    survives(tmp_path_factory.mktemp("f"), pack(header, frames, trailer))


@SETTINGS
@given(base=st.sampled_from(BLOCKED), block=st.integers(min_value=0),
       edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.none() | st.integers(min_value=0))
def test_frames_inside_a_block_flipped_and_cut(tmp_path_factory, base, block, edits, cut):
    """Flipped compressed bytes mostly fail to decompress; these flips are
    made before compression, so the frames a block holds are checked too
    (in the flood's, the records of runs counted at once)."""
    header, frames, trailer = BASES[base]
    i = block % len(frames)
    ftype = frames[i][0]
    raw = bytearray(unseal(ftype, frames[i][1]))
    for pos, val in edits:
        raw[pos % len(raw)] = val
    if cut is not None:
        raw = raw[: cut % (len(raw) + 1)]
    frames = list(frames)
    frames[i] = (ftype, seal(ftype, bytes(raw)))
    survives(tmp_path_factory.mktemp("z"), pack(header, frames, trailer))


@pytest.mark.parametrize("hdr_max", [2**33, 2**62, 10**6])
def test_a_huge_size_in_the_header_allocates_nothing(tmp_path, hdr_max):
    """The file names a size; the reader never allocates what a file says
    before checking it (here under a 512 MiB address-space limit)."""
    header, frames, trailer = BASES["article-6.12"]
    header = json.loads(json.dumps(header))
    header["layout"]["hdr_max"] = hdr_max
    header["layout"]["fmt"] = header["layout"]["fmt"].replace("128s", f"{hdr_max}s")
    p = tmp_path / "huge.ipvt"
    p.write_bytes(pack(header, frames, trailer))
    limit = 512 << 20
    r = subprocess.run([sys.executable, "-m", "ipvtrace", "replay", str(p)], capture_output=True,
                       text=True, timeout=60,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr
    assert r.stderr.startswith("ipvtrace: error: ") and "layout" in r.stderr, r.stderr


# -- merged files (ipvtrace merge): the same promise ------------------------

def _merged_base() -> bytes:
    import tempfile

    from ipvtrace.merge import run_merge

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "m.ipvt"
        run_merge([FIX / "two-nodes-l3-a.ipvt", FIX / "two-nodes-l3-b.ipvt"], out, ["a", "b"])
        return out.read_bytes()


MERGED = _merged_base()


def survives_merged(tmp_path: Path, data: bytes) -> None:
    from ipvtrace.merge import replay_merged

    p = tmp_path / "fuzz.ipvt"
    p.write_bytes(data)
    try:
        replay_merged(p, sink=lambda row: None)
    except recording.RecordingError as exc:
        assert "\n" not in str(exc)


@SETTINGS
@given(edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.none() | st.integers(min_value=0))
def test_merged_file_bytes_flipped_and_cut(tmp_path_factory, edits, cut):
    data = bytearray(MERGED)
    for pos, val in edits:
        data[pos % len(data)] = val
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    survives_merged(tmp_path_factory.mktemp("m"), bytes(data))


@SETTINGS
@given(pick=st.integers(min_value=0), value=json_values)
def test_merged_header_of_any_shape(tmp_path_factory, pick, value):
    from ipvtrace.output import merged

    fixed = len(merged.MAGIC) + 2 + merged.HEAD.size
    (n,) = merged.HEAD.unpack_from(MERGED, len(merged.MAGIC) + 2)
    header = json.loads(MERGED[fixed:fixed + n])
    ps = list(paths(header))
    raw = json.dumps(replace_at(header, ps[pick % len(ps)], value), allow_nan=True).encode()
    data = MERGED[:len(merged.MAGIC) + 2] + merged.HEAD.pack(len(raw)) + raw + MERGED[fixed + n:]
    survives_merged(tmp_path_factory.mktemp("h"), data)


def test_a_snapshot_without_the_optional_keys_replays(tmp_path):
    """The schema lets a namespace's name and a device's link be absent (a
    flipped byte renames the key: seen as KeyError 'name' in
    test_bytes_flipped_and_cut): replay reads them as absent."""
    header, frames, trailer = BASES[sorted(BASES)[0]]
    snap = {"namespaces": [{"inum": 4026531992}],
            "devices": [{"netns": 4026531992, "ifindex": 7, "kind": "veth", "link_nsid": 3}]}
    frames = [(recording.F_SNAPSHOT, json.dumps(snap).encode())] + frames
    survives(tmp_path, pack(header, frames, trailer))
