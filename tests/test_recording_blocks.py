"""Recordings in compressed blocks (LZ4 from container 4, zstd in container
3): what the writer seals, when, and what the reader refuses before it
spends memory on a block."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import lz4.block
import pytest
import zstandard

from ipvtrace import replay
from ipvtrace.output import recording
from article_checks import outer_frames, pack_recording

FIX = Path(__file__).parent / "fixtures"
HEADER_FIXTURE = FIX / "article-6.12.ipvt"


def header() -> dict:
    return recording.read(HEADER_FIXTURE).header


def events_of(path: Path) -> list[bytes]:
    return [p for t, p in recording.read(path).frames() if t == recording.F_EVENT]


def fixture_events() -> list[bytes]:
    return events_of(HEADER_FIXTURE)


def test_a_recording_is_written_in_blocks_and_reads_back_the_same(tmp_path):
    events = fixture_events()
    w = recording.Writer(tmp_path / "r.ipvt", header())
    for e in events:
        w.event(e)
    w.tick(123)
    w.close({"stopped_by": "SIGINT"})
    rec = recording.read(tmp_path / "r.ipvt")
    assert [t for t, _ in outer_frames(rec)] == [recording.F_LZ4]
    assert [p for t, p in rec.frames() if t == recording.F_EVENT] == events
    assert [t for t, _ in rec.frames()][-1] == recording.F_TICK
    raw = sum(recording.FRAME.size + len(e) for e in events)
    compressed = sum(n for _, n in outer_frames(rec))
    assert compressed * 3 < raw, (compressed, raw)   # records of one flow are alike


def test_blocks_are_sealed_at_their_size_and_a_huge_frame_goes_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(recording, "BLOCK_BYTES", 4096)
    events = (fixture_events() * 3)[:120]
    big = {"namespaces": [], "devices": [], "pad": "x" * 10_000}
    w = recording.Writer(tmp_path / "r.ipvt", header())
    for e in events[:60]:
        w.event(e)
    w.snapshot(big)
    for e in events[60:120]:
        w.event(e)
    w.close({"stopped_by": "SIGINT"})
    rec = recording.read(tmp_path / "r.ipvt")
    frames = outer_frames(rec)
    assert frames.count((recording.F_SNAPSHOT, len(json.dumps(big)))) == 1
    blocks = [n for t, n in frames if t == recording.F_LZ4]
    assert len(blocks) >= 3 and all(t in (recording.F_LZ4, recording.F_SNAPSHOT) for t, _ in frames)
    got = [t for t, _ in rec.frames()]
    assert got.index(recording.F_SNAPSHOT) == 60 and len(got) == 121
    assert [p for t, p in rec.frames() if t == recording.F_EVENT] == events[:120]


def test_a_killed_recorder_keeps_every_block_it_flushed(tmp_path):
    """What flush() handed over is in the file as whole blocks: a .partial
    file replays up to there (a SIGKILL loses at most the last second)."""
    events = fixture_events()
    w = recording.Writer(tmp_path / "r.ipvt", header())
    for e in events[:50]:
        w.event(e)
    w.flush()
    for e in events[50:80]:
        w.event(e)   # gathered, not sealed: lost with the process
    rec = recording.read(w.tmp)
    assert rec.cut_at is not None
    assert events_of(w.tmp) == events[:50]
    w.keep_partial()
    assert events_of(w.tmp) == events[:80]


def test_a_byte_changed_in_a_written_block_is_refused_never_read_as_other_frames(tmp_path):
    """Recordings travel: a block the writer sealed carries its checksum,
    so one changed bit anywhere in it (the literals included, which LZ4
    alone would decode into other bytes) is a one-line error, never other
    frames replayed with exit 0. (A few bits of a block may be slack:
    changed, they decode to the same frames, which is no harm.)"""
    w = recording.Writer(tmp_path / "r.ipvt", header())
    for e in fixture_events():
        w.event(e)
    w.close({"stopped_by": "SIGINT"})
    data = (tmp_path / "r.ipvt").read_bytes()
    rec = recording.parse(data, "r.ipvt")
    [(ftype, n)] = outer_frames(rec)
    assert ftype == recording.F_LZ4
    body = rec.start + recording.FRAME.size
    want = list(rec.frames())
    refused = 0
    for pos in range(body, body + n):
        for bit in (0, 5):
            changed = bytearray(data)
            changed[pos] ^= 1 << bit
            try:
                got = list(recording.parse(bytes(changed), "c.ipvt").frames())
            except recording.RecordingError as exc:
                assert "compressed block" in str(exc), exc
                refused += 1
            else:
                assert got == want, f"bit {bit} of block byte {pos - body} read as other frames"
    assert refused > 0.95 * 2 * n, (refused, n)


def file_with(blocks: list[bytes]) -> bytes:
    return pack_recording(header(), [(recording.F_ZSTD, b) for b in blocks], {"stopped_by": "SIGINT"})


def tick() -> bytes:
    return recording.FRAME.pack(recording.F_TICK, 8) + recording.TICK.pack(1)


def z(raw: bytes, **kw) -> bytes:
    return zstandard.ZstdCompressor(**kw).compress(raw)


def with_size(frame: bytes, size: int) -> bytes:
    """A zstd frame whose 4-byte content size field says *size*."""
    f = bytearray(frame)
    assert f[4] >> 6 == 2, "expected a 4-byte content size"
    struct.pack_into("<I", f, 5 if f[4] & 0x20 else 6, size)
    return bytes(f)


def refused(tmp_path: Path, data: bytes, *words: str) -> None:
    p = tmp_path / "bad.ipvt"
    p.write_bytes(data)
    with pytest.raises(recording.RecordingError) as exc:
        replay.run_replay(p, sink=lambda row: None)
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_blocks_a_reader_refuses(tmp_path):
    big = tick() * 8192   # 106 KiB of frames: a 4-byte size field
    refused(tmp_path, file_with([z(tick(), write_content_size=False)]), "no size")
    refused(tmp_path, file_with([z(b"")]), "0 bytes")
    refused(tmp_path, file_with([with_size(z(big), recording.BLOCK_MAX + 1)]), "at most")
    refused(tmp_path, file_with([with_size(z(big), 70_000)]), "does not decompress")
    refused(tmp_path, file_with([z(tick()) + b"xyz"]), "does not end")
    refused(tmp_path, file_with([b"\x28\xb5\x2f\xfd" + b"garbage"]), "block at byte")
    nested = recording.FRAME.pack(recording.F_ZSTD, len(z(tick()))) + z(tick())
    refused(tmp_path, file_with([z(nested)]), "type 8", "in the block")
    h = json.dumps(header()).encode()
    refused(tmp_path, file_with([z(recording.FRAME.pack(recording.F_HEADER, len(h)) + h)]), "type 1")
    refused(tmp_path, file_with([z(tick()[:-1])]), "in the block")


def lz4_block(raw: bytes, size: int | None = None, crc: int | None = None) -> bytes:
    """An LZ4 block as the writer seals it, or stating another size or checksum."""
    z = lz4.block.compress(raw, store_size=False)
    return recording.LZ4_HDR.pack(len(raw) if size is None else size,
                                  zlib.crc32(z) if crc is None else crc) + z


def test_lz4_blocks_a_reader_refuses(tmp_path):
    def lz4_file(blocks: list[bytes]) -> bytes:
        return pack_recording(header(), [(recording.F_LZ4, b) for b in blocks],
                              {"stopped_by": "SIGINT"})

    big = tick() * 8192
    assert list(recording.parse(lz4_file([lz4_block(big)]), "ok").frames())   # the baseline reads
    refused(tmp_path, lz4_file([b"\x01\x00"]), "no size")
    refused(tmp_path, lz4_file([lz4_block(b"")]), "0 bytes")
    refused(tmp_path, lz4_file([lz4_block(big, size=recording.BLOCK_MAX + 1)]), "at most")
    refused(tmp_path, lz4_file([lz4_block(big, size=70_000)]), "does not decompress")
    refused(tmp_path, lz4_file([lz4_block(big, size=len(big) + 8)]), f"holds {len(big)} bytes")
    trailing = lz4.block.compress(tick(), store_size=False) + b"xyz"
    refused(tmp_path, lz4_file([recording.LZ4_HDR.pack(len(tick()), zlib.crc32(trailing)) + trailing]),
            "does not decompress")
    refused(tmp_path, lz4_file([lz4_block(big, crc=1)]), "checksum")
    refused(tmp_path, lz4_file([recording.LZ4_HDR.pack(100, zlib.crc32(b"garbage")) + b"garbage"]),
            "block at byte")
    nested = recording.FRAME.pack(recording.F_LZ4, len(lz4_block(tick()))) + lz4_block(tick())
    refused(tmp_path, lz4_file([lz4_block(nested)]), "type 9", "in the block")
    refused(tmp_path, lz4_file([lz4_block(tick()[:-1])]), "in the block")


def read_in_a_child(p: Path) -> tuple[str, int]:
    """What reading *p* whole says (its error) and how much the reading
    process grew (KiB of peak RSS), in a process of its own."""
    probe = ("import resource, sys\n"
             "from ipvtrace.output import recording\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "try:\n"
             "    list(recording.read(sys.argv[1]).frames())\n"
             "except recording.RecordingError as exc:\n"
             "    print(str(exc))\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    r = subprocess.run([sys.executable, "-c", probe, str(p)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    msg, grew_kib = r.stdout.splitlines()
    return msg, int(grew_kib)


def test_an_lz4_block_that_lies_about_its_size_costs_no_memory(tmp_path):
    """An LZ4 block stating 4 KiB that holds 64 MiB of zeros is refused
    with no more room taken than it states."""
    bomb = lz4_block(bytes(64 << 20), size=4096)
    p = tmp_path / "bomb.ipvt"
    p.write_bytes(pack_recording(header(), [(recording.F_LZ4, bomb)], {"stopped_by": "SIGINT"}))
    msg, grew_kib = read_in_a_child(p)
    assert "does not decompress" in msg
    assert grew_kib < 16 * 1024, f"the reader grew by {grew_kib} KiB"


def test_a_block_that_lies_about_its_size_costs_no_memory(tmp_path):
    """A block stating 4 KiB that holds 1 GiB of zeros (32 KiB compressed)
    is refused before the reader holds more than a few of its blocks."""
    bomb = with_size(z(bytes(1 << 30)), 4096)
    p = tmp_path / "bomb.ipvt"
    p.write_bytes(file_with([bomb]))
    msg, grew_kib = read_in_a_child(p)
    assert "compressed block" in msg
    assert grew_kib < 64 * 1024, f"the reader grew by {grew_kib} KiB"


def test_a_newer_container_is_named_in_one_line(tmp_path):
    """A file from a later ipvtrace: one line naming its version and the
    versions this one reads, exit 2."""
    data = bytearray(HEADER_FIXTURE.read_bytes())
    newer = max(recording.READS_CONTAINERS) + 1
    struct.pack_into("<H", data, len(recording.MAGIC), newer)
    p = tmp_path / "newer.ipvt"
    p.write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-m", "ipvtrace", "replay", str(p)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"container version {newer}; this ipvtrace reads versions 1, 2, 3 and 4" in r.stderr


def without(module: str, *args: str) -> subprocess.CompletedProcess:
    """`ipvtrace ARGS` in a Python where *module* cannot be imported (a
    venv made without the project's dependencies)."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from ipvtrace.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=60)


def test_a_missing_codec_package_is_named_in_one_line(tmp_path):
    """Without lz4, replay of a recording in LZ4 blocks and `record -o` (before
    anything is attached) each say which package to install; without
    zstandard, so does replay of a container-3 recording. One line, no
    traceback."""
    w = recording.Writer(tmp_path / "r.ipvt", header())
    for e in fixture_events():
        w.event(e)
    w.close({"stopped_by": "SIGINT"})
    cases = [("lz4", ["replay", str(tmp_path / "r.ipvt")], 2),
             ("lz4", ["record", "-o", str(tmp_path / "new.ipvt"), "--duration", "1"], 1),
             ("zstandard", ["replay", str(FIX / "topologies-6.1.ipvt")], 2)]   # container 3
    for module, args, code in cases:
        r = without(module, *args)
        assert r.returncode == code and r.stderr.count("\n") == 1, (args, r.stderr)
        assert f"package {module} is missing: pip install" in r.stderr, r.stderr
    assert not list(tmp_path.glob("new.ipvt*"))   # nothing written, nothing attached
