"""The recording file: a versioned header, the raw events, and a trailer.

Layout (little endian)::

    b"IPVTREC\\0" u16 container_version
    frames: u8 type, u32 length, payload
        1 HEADER   JSON: format version, ipvtrace version, kernel, probe plan,
                   event layout, snapshot of devices/namespaces/ipvlan modes
        2 EVENT    one ring record exactly as the BPF program submitted it: a
                   closed context (format 3: struct ipvt_rec) or an event
        3 TICK     u64 ktime: the live clock, so replay finalises packets
                   at the same points live did (same output)
        4 SNAPSHOT JSON: devices and namespaces again (taken at the end)
        5 TRAILER  JSON: event count, lost events, why the recording ended
        6 LOST     u64 ktime, u64 count: events the kernel could not hand over
                   (ring buffer full) since the last such frame
        7 RING     (container 2) consecutive EVENTs as the ring buffer framed
                   them, copied in one piece: each u32 length, u32 (the ring's
                   page offset, ignored), the record, zeros to 8 bytes. The
                   BPF program submits 8-byte multiples, so the padding is
                   never bytes the ring held before
        8 ZSTD     (container 3) a block of the frames above (never HEADER,
                   TRAILER or a block), as one zstd frame that states its
                   decompressed size (at most BLOCK_MAX). Read, no longer
                   written
        9 LZ4      (container 4) a block of the frames above, as u32 its
                   decompressed size (at most BLOCK_MAX), u32 the CRC-32 of
                   the compressed bytes that follow, one LZ4 block. The writer gathers
                   frames into blocks of up to BLOCK_BYTES and seals one at
                   every flush; a frame larger than a block goes on its own.
                   LZ4, not zstd: under emulation zstd took half of
                   `record`'s consumer, LZ4 half as much (README, bench)
    u32 length of the trailer frame, b"IPVTEND\\0"

The header and the trailer are never compressed: a file names its kernel and
why it ended without decompressing anything. A block is decompressed only
after its stated size is checked against BLOCK_MAX, into no more than that,
and must decompress to exactly that size, end where its frame ends and (LZ4;
a zstd block that has one) match its checksum.

The file is written as NAME.partial (readable by its owner only: it holds
addresses, headers and namespace names), flushed at least once a second,
and renamed when complete. A recorder that dies (SIGKILL, the OOM killer, a
full disk) leaves a .partial file without trailer or end marker: `read()`
takes it up to its last whole frame and says where it was cut.

Every frame is checked before use (sizes per type, JSON shapes in
ipvtrace/output/header.py, each length against the file), so a malformed file is
one RecordingError, with memory bounded by the file's size plus one block
(BLOCK_MAX).
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from ipvtrace.output import header as schema
from ipvtrace.output.files import private_open

MAGIC = b"IPVTREC\0"
END_MAGIC = b"IPVTEND\0"
CONTAINER_VERSION = 4
READS_CONTAINERS = (1, 2, 3, 4)   # 1: no RING frames; 2: no blocks; 3: ZSTD blocks; 4: LZ4
FRAME = struct.Struct("<BI")
TICK = struct.Struct("<Q")
END = struct.Struct("<I8s")

F_HEADER, F_EVENT, F_TICK, F_SNAPSHOT, F_TRAILER, F_LOST, F_RING, F_ZSTD, F_LZ4 = range(1, 10)
BLOCKS = (F_ZSTD, F_LZ4)
BLOCK_BYTES = 1 << 20   # the writer seals a block when its frames reach this size
BLOCK_MAX = 4 << 20     # the reader refuses blocks that say they are larger
LZ4_HDR = struct.Struct("<II")   # an LZ4 block's decompressed size, its compressed bytes' CRC-32
RING_HDR = struct.Struct("<II")
RING_FLAGS = (1 << 31) | (1 << 30)   # BUSY, DISCARD: never in a written record
LOST = struct.Struct("<QQ")
FIXED_SIZE = {F_TICK: TICK.size, F_LOST: LOST.size}
FLUSH_EVERY_S = 1.0   # a killed recorder loses at most this much


class RecordingError(ValueError):
    """The file is not a readable recording; str() is the one-line reason."""


class WriteError(OSError):
    """The recording could not be written (a full disk, an I/O error); what
    was written before stays in the .partial file."""


class Writer:
    """Append-only writer; `close()` writes the trailer and renames into place."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".partial")
        self._f: BinaryIO = private_open(self.tmp, buffering=1 << 20)
        self.events = 0
        self._lz4 = lz4_block().compress
        # frames not yet sealed into a block: _block[:_used], in room
        # taken once (appending to a growing bytearray copied it again and
        # again; under emulation every copied byte is a step of `rep movsb`)
        self._block = memoryview(bytearray(2 * BLOCK_BYTES))
        self._used = 0
        self._guard(lambda: self._f.write(MAGIC + struct.pack("<H", CONTAINER_VERSION)))
        self._raw_frame(F_HEADER, json.dumps(header).encode())
        self.flush()   # a recorder killed at once still leaves a readable header
        self._flushed = time.monotonic()

    def _guard(self, op):
        try:
            return op()
        except OSError as exc:
            raise WriteError(exc.errno, f"{exc.strerror} writing {self.tmp}") from exc

    def _raw_frame(self, ftype: int, payload: bytes) -> int:
        """A frame written as it is, outside any block (header, trailer)."""
        self._guard(lambda: self._f.write(FRAME.pack(ftype, len(payload)) + payload))
        return FRAME.size + len(payload)

    def _frame(self, ftype: int, payload: bytes | memoryview) -> None:
        if FRAME.size + len(payload) > BLOCK_BYTES:   # a huge snapshot: on its own
            self._seal()
            self._raw_frame(ftype, payload)
            return
        at, n = self._used, len(payload)
        FRAME.pack_into(self._block, at, ftype, n)
        # into a memoryview: one copy (a bytearray's slice assignment copies
        # anything but a bytearray first)
        self._block[at + FRAME.size:at + FRAME.size + n] = payload
        self._used = at + FRAME.size + n   # below 2 * BLOCK_BYTES: sealed at BLOCK_BYTES
        if self._used >= BLOCK_BYTES:
            self._seal()

    def _seal(self) -> None:
        """Compress the gathered frames into one LZ4 block and write it."""
        if not self._used:
            return
        z = self._lz4(self._block[:self._used], store_size=False)
        # the checksum makes a byte changed on the way an error where it
        # would silently be other rows. It is of the compressed bytes: a
        # sixth as many to read as the block's (zlib's CRC-32 of the block
        # took half as long as its compression in the guest), and they are
        # what travels
        z = LZ4_HDR.pack(self._used, zlib.crc32(z)) + z
        self._used = 0   # written or not (a full disk), these frames are done
        self._raw_frame(F_LZ4, z)

    def event(self, raw: bytes) -> None:
        self._frame(F_EVENT, raw)   # appended to the open block
        self.events += 1
        # under a flood the consumer may drain the ring for long between two
        # ticks (and slowly, on a busy CPU): look at the clock every 64 events
        if not self.events & 63 and time.monotonic() - self._flushed >= FLUSH_EVERY_S:
            self.flush()

    def ring(self, span: bytes | memoryview, records: int) -> None:
        """*records* committed ring records, framed as the ring framed them
        (ringbuf.walk): copied once, into the open block."""
        self._frame(F_RING, span)
        self.events += records
        if time.monotonic() - self._flushed >= FLUSH_EVERY_S:
            self.flush()

    def tick(self, ktime: int) -> None:
        self._frame(F_TICK, TICK.pack(ktime))
        if time.monotonic() - self._flushed >= FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Seal the gathered frames and hand them to the kernel: a SIGKILL
        loses nothing written before this (the page cache outlives the
        process)."""
        self._seal()
        self._guard(self._f.flush)
        self._flushed = time.monotonic()

    def lost(self, ktime: int, count: int) -> None:
        self._frame(F_LOST, LOST.pack(ktime, count))

    def snapshot(self, snap: dict) -> None:
        self._frame(F_SNAPSHOT, json.dumps(snap).encode())

    def close(self, trailer: dict) -> None:
        trailer = dict(trailer, events=self.events)
        self._seal()
        n = self._raw_frame(F_TRAILER, json.dumps(trailer).encode())
        self._guard(lambda: self._f.write(END.pack(n, END_MAGIC)))
        self.flush()
        self._guard(lambda: os.fsync(self._f.fileno()))
        self._f.close()
        os.replace(self.tmp, self.path)

    def keep_partial(self) -> Path:
        """Stop writing, keep what reached the file (replay reads a .partial
        up to its last whole frame); returns its path."""
        try:
            self._seal()
            self._f.flush()
        except OSError:
            pass   # the disk is full: what the kernel has is what is kept
        try:
            self._f.close()
        except OSError:
            pass
        return self.tmp


RELEASE_EVERY = 16 << 20   # replay gives back the pages it has read, every 16 MiB


@dataclass
class Recording:
    header: dict
    trailer: dict
    data: bytes | mmap.mmap   # the file, mapped: memory stays bounded however large
    start: int      # offset of the first frame after the header
    end: int        # offset of the trailer frame (or of the cut)
    cut_at: int | None = None   # a file without end marker: where its last whole frame ends
    size: int = 0
    frames_before_cut: int = field(default=0)

    def frames(self, runs: bool = False) -> Iterator[tuple[int, bytes | RingRun]]:
        """(type, payload) for every frame between header and trailer, each
        checked: type, size per type, JSON shape. ZSTD blocks and RING runs
        are opened: their frames and records come as the frames they hold,
        except, with *runs*, a RING frame's records, which come as
        (F_RING, RingRun), one for each stretch of records of one length.
        Stretches one after the other, with one record length and nothing
        but clock ticks between them, come as one RingRun that holds those
        ticks (up to RUN_JOIN_BYTES and RUN_JOIN_TICKS): the recorder hands a
        flood on in runs of at most 256 records, a tick after each poll, and
        replay takes a run's records together."""
        joined = _RunJoiner()
        try:
            for ftype, data, off, n in self.raw_frames():
                if runs and ftype == F_RING:
                    whole = _ring_run(data, off, n)
                    for run in ([whole] if whole is not None else _ring_stretches(data, off, off + n)):
                        yield from joined.add(run)
                    continue
                elif ftype == F_TICK and joined.held(data[off:off + n]):
                    continue
                yield from joined.flush()
                if ftype == F_RING:
                    yield from _ring_records(data, off, off + n)
                elif ftype == F_SNAPSHOT:
                    yield ftype, _json(data[off:off + n], schema.snapshot, f"snapshot at byte {off}")
                else:
                    yield ftype, bytes(data[off:off + n])
        except RecordingError:
            yield from joined.flush()   # what came before a bad frame is replayed, as one by one
            raise
        yield from joined.flush()

    def raw_frames(self) -> Iterator[tuple[int, bytes | mmap.mmap, int, int]]:
        """(type, buffer, offset, length) of every frame, with blocks
        opened (each decompressed once, into a buffer of its own) and RING
        frames as they are; type and size per type checked."""
        data, off, end = self.data, self.start, self.end
        unpack = FRAME.unpack_from
        release = getattr(data, "madvise", None)
        released = 0
        while off < end:
            if release is not None and off - released >= RELEASE_EVERY:
                upto = off & ~(mmap.PAGESIZE - 1)   # drop what is read from our page tables
                release(mmap.MADV_DONTNEED, released, upto - released)
                released = upto
            if off + FRAME.size > end:
                raise RecordingError(f"corrupted: frame header cut at byte {off}")
            ftype, n = unpack(data, off)
            if ftype in BLOCKS and off + FRAME.size + n <= end:
                body = data[off + FRAME.size:off + FRAME.size + n]
                block = _inflate(body, off) if ftype == F_ZSTD else _inflate_lz4(body, off)
                yield from _block_frames(block, 0, len(block), f" in the block at byte {off}")
                off += FRAME.size + n
                continue
            yield from _block_frames(data, off, min(end, off + FRAME.size + n), "", one=True)
            off += FRAME.size + n

    def snapshots(self) -> list[dict]:
        snaps = [self.header.get("snapshot", {})]
        for ftype, payload in self.frames():
            if ftype == F_SNAPSHOT:
                snaps.append(payload)
        return snaps

    def cut_warning(self, path: Path) -> str | None:
        """One line for a file that ends without its end marker."""
        if self.cut_at is None:
            return None
        return (f"{path}: recording cut at byte {self.cut_at} of {self.size} (no end marker: the "
                "recorder was killed or its disk filled); replaying what comes before, "
                "unfinished packets marked incomplete")


DATA_FRAMES = (F_EVENT, F_TICK, F_SNAPSHOT, F_LOST, F_RING)   # what may stand between header and trailer, or in a block


def _block_frames(data, off: int, end: int, where: str, one: bool = False):
    """(type, data, offset, length) of the frames in data[off:end] (only the
    first when *one*), each checked: a known data frame, its size, inside."""
    unpack = FRAME.unpack_from
    fixed = FIXED_SIZE
    while off < end:
        if off + FRAME.size > end:
            raise RecordingError(f"corrupted: frame header cut at byte {off}{where}")
        ftype, n = unpack(data, off)
        body = off + FRAME.size
        if body + n > end or ftype not in DATA_FRAMES or fixed.get(ftype, n) != n:
            raise RecordingError(f"corrupted: bad frame (type {ftype}, {n} bytes) at byte {off}{where}")
        yield ftype, data, body, n
        off = body + n
        if one:
            return


def lz4_block():
    """The lz4.block module, or a RecordingError naming what to install
    (imported when needed, not at the top: a missing bcc is reported
    before it; `record` asks right after, before it attaches anything)."""
    try:
        import lz4.block
    except ImportError:
        raise RecordingError("recordings are in LZ4 blocks and the Python package lz4 is "
                             "missing: pip install 'lz4>=4'") from None
    return lz4.block


def _stated_size(size: int, off: int) -> None:
    """A block's stated size (negative: none), checked before any memory
    is taken for it."""
    if not 0 < size <= BLOCK_MAX:
        what = "no size" if size < 0 else f"{size} bytes"
        raise RecordingError(f"corrupted: bad compressed block at byte {off} ({what}; at most {BLOCK_MAX})")


def _inflate(z, off: int) -> bytes:
    """The frames of one ZSTD block (container 3), its stated size checked
    before any memory is taken for it."""
    try:
        import zstandard
    except ImportError:
        raise RecordingError("this recording is in zstd blocks (container 3) and the Python "
                             "package zstandard is missing: pip install 'zstandard>=0.20'") from None
    try:
        size = zstandard.frame_content_size(z)
    except zstandard.ZstdError:
        size = -2
    _stated_size(size, off)
    # a window no larger than a block: a frame cannot make the decoder reserve more
    d = zstandard.ZstdDecompressor(max_window_size=BLOCK_MAX).decompressobj()
    try:
        block = d.decompress(z)
    except zstandard.ZstdError as exc:
        raise RecordingError(f"corrupted: compressed block at byte {off} does not decompress ({exc})") from None
    if not d.eof or d.unused_data or len(block) != size:
        raise RecordingError(f"corrupted: compressed block at byte {off} does not end where its frame ends")
    return block


def _inflate_lz4(z, off: int) -> bytes:
    """The frames of one LZ4 block: its stated size and its checksum
    checked before any memory is taken for it, the decoder given no more
    room than that size, and the result's size checked."""
    lz4 = lz4_block()
    size, crc = LZ4_HDR.unpack_from(z) if len(z) >= LZ4_HDR.size else (-1, 0)
    _stated_size(size, off)
    body = memoryview(z)[LZ4_HDR.size:]
    if zlib.crc32(body) != crc:
        raise RecordingError(f"corrupted: compressed block at byte {off} does not match its checksum")
    try:
        # the safe decoder: it never writes past *size* nor reads past the input
        block = lz4.decompress(body, uncompressed_size=size)
    except lz4.LZ4BlockError:
        raise RecordingError(f"corrupted: compressed block at byte {off} does not decompress "
                             "(or does not end where its frame ends)") from None
    if len(block) != size:
        raise RecordingError(f"corrupted: compressed block at byte {off} holds {len(block)} bytes, "
                             f"not the {size} it states")
    return block


def ring_step(length: int) -> int:
    """How far a ring record of *length* bytes reaches: its header, itself,
    padded to 8 bytes (as the BPF ring buffer lays records out)."""
    return (length + RING_HDR.size + 7) & ~7


def _ring_records(data, off: int, end: int) -> Iterator[tuple[int, bytes]]:
    """The EVENTs of one RING frame (data[off:end]), each header checked."""
    unpack = RING_HDR.unpack_from
    while off < end:
        if off + RING_HDR.size > end:
            raise _bad_ring_record(data, off, end)
        length, _ = unpack(data, off)
        step = ring_step(length)
        if length & RING_FLAGS or off + step > end:
            raise _bad_ring_record(data, off, end)
        yield F_EVENT, bytes(data[off + RING_HDR.size:off + RING_HDR.size + length])
        off += step


def _bad_ring_record(data, off: int, end: int) -> RecordingError:
    """The error for the ring record header at data[off:] (one that is cut
    short, flagged or longer than the frame's rest)."""
    if off + RING_HDR.size > end:
        return RecordingError(f"corrupted: ring record header cut at byte {off}")
    return RecordingError(f"corrupted: bad ring record ({RING_HDR.unpack_from(data, off)[0]:#x}) "
                          f"at byte {off}")


@dataclass(slots=True)
class RingRun:
    """Ring records of one length, kept in one piece: record i is
    blob[i*step + RING_HDR.size:][:length] (a RING frame, a stretch of one,
    or such stretches joined, with the clock ticks the file had between
    them). replay counts or writes the records of such a run together
    (Pipeline.count_alike, rows_alike)."""

    blob: bytes
    length: int
    step: int
    count: int
    ticks: tuple[tuple[int, int], ...] = ()   # clock ticks (i, ktime) of the file before record i

    def records(self, start: int = 0) -> Iterator[bytes]:
        blob, length = self.blob, self.length
        for at in range(start * self.step + RING_HDR.size, len(blob), self.step):
            yield blob[at:at + length]


RUN_JOIN_BYTES = 1 << 20   # adjacent RING runs joined into one: at most this much
RUN_JOIN_TICKS = 256       # ... and this many clock ticks among them


class _RunJoiner:
    """RING runs of one record length with only TICK frames between them,
    gathered into one RingRun (Recording.frames)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._runs: list[RingRun] = []
        self._ticks: list[tuple[int, int]] = []   # absorbed: (records before it, ktime)
        self._held: list[bytes] = []              # ticks after the last run: not yet absorbed
        self._records = self._bytes = 0

    def add(self, run: RingRun) -> Iterator[tuple[int, bytes | RingRun]]:
        if self._runs:
            first = self._runs[0]
            if ((run.length, run.step) != (first.length, first.step)
                    or self._bytes + len(run.blob) > RUN_JOIN_BYTES):
                yield from self.flush()
        self._ticks += [(self._records, TICK.unpack(t)[0]) for t in self._held]
        self._held.clear()
        self._runs.append(run)
        self._records += run.count
        self._bytes += len(run.blob)

    def held(self, tick) -> bool:
        """Keep a TICK frame after a run, until the next frame says where
        it goes: False when there is no run to join, or when the run has
        RUN_JOIN_TICKS already (a file of ticks is not held in memory)."""
        if not self._runs or len(self._ticks) + len(self._held) >= RUN_JOIN_TICKS:
            return False
        self._held.append(bytes(tick))
        return True

    def flush(self) -> Iterator[tuple[int, bytes | RingRun]]:
        """The joined run, then the ticks that came after it."""
        if not self._runs:
            return
        runs, held = self._runs, self._held
        if len(runs) == 1:
            yield F_RING, runs[0]
        else:
            first = runs[0]
            yield F_RING, RingRun(b"".join(r.blob for r in runs), first.length, first.step,
                                  self._records, tuple(self._ticks))
        self._reset()
        for t in held:
            yield F_TICK, t


def _ring_run(data, off: int, n: int) -> RingRun | None:
    """The RING frame data[off:off+n] as a RingRun when every record's
    header gives the first's length (no flags) and they fill it exactly;
    None otherwise: _ring_stretches reads it, checking each."""
    if n < RING_HDR.size:
        return None
    length, _ = RING_HDR.unpack_from(data, off)
    step = ring_step(length)
    if length & RING_FLAGS or n % step:
        return None
    blob = bytes(data[off:off + n])
    lengths = memoryview(blob).cast("I")[::step // 4]
    if lengths[1:] != lengths[:-1]:
        return None
    return RingRun(blob, length, step, n // step)


def _ring_stretches(data, off: int, end: int) -> Iterator[RingRun]:
    """The records of the RING frame data[off:end] as RingRuns, one for
    each stretch of records of one length (a frame _ring_run does not take
    whole: another kind of record among a flood's), each header checked
    as _ring_records checks it; the stretches before a bad header come
    first, then its error."""
    unpack = RING_HDR.unpack_from
    start, first = off, -1
    while off < end:
        length = unpack(data, off)[0] if off + RING_HDR.size <= end else RING_FLAGS
        step = ring_step(length)
        if length & RING_FLAGS or off + step > end:
            break
        if length != first:
            if off > start:
                yield _stretch(data, start, off, first)
            start, first = off, length
        off += step
    if off > start:
        yield _stretch(data, start, off, first)
    if off < end:
        raise _bad_ring_record(data, off, end)


def _stretch(data, start: int, stop: int, length: int) -> RingRun:
    step = ring_step(length)
    return RingRun(bytes(data[start:stop]), length, step, (stop - start) // step)


def _json(raw: bytes, check, what: str):
    try:
        obj = json.loads(bytes(raw))
    except (ValueError, RecursionError):
        raise RecordingError(f"corrupted {what} (not JSON)") from None
    try:
        return check(obj)
    except schema.BadFrame as exc:
        raise RecordingError(f"corrupted {what}: {exc}") from None


def read(path: Path) -> Recording:
    """Open and check a recording; raise RecordingError with a one-line reason."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except FileNotFoundError:
        raise RecordingError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RecordingError(f"{path}: is a directory, not a recording") from None
    except PermissionError:
        raise RecordingError(f"{path}: permission denied") from None
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return parse(data, path)


def parse(data: bytes | mmap.mmap | memoryview, path: Path | str) -> Recording:
    """Check a recording held in *data* (a mapped file, or one node's part
    of a merged file); *path* names it in errors."""
    if not data:
        raise RecordingError(f"{path}: empty file, not a recording")
    if len(data) < len(MAGIC) + 2:
        if MAGIC.startswith(bytes(data[:len(MAGIC)])):
            raise RecordingError(f"{path}: truncated inside the file header")
        raise RecordingError(f"{path}: not an ipvtrace recording (bad magic)")
    if bytes(data[:len(MAGIC)]) != MAGIC:
        raise RecordingError(f"{path}: not an ipvtrace recording (bad magic)")
    (version,) = struct.unpack_from("<H", data, len(MAGIC))
    if version not in READS_CONTAINERS:
        raise RecordingError(
            f"{path}: recording container version {version}; this ipvtrace reads versions "
            + ", ".join(map(str, READS_CONTAINERS[:-1])) + f" and {READS_CONTAINERS[-1]}")
    off = len(MAGIC) + 2
    header, off = _json_frame(data, off, F_HEADER, path, "header", schema.header)
    if len(data) >= off + END.size and bytes(data[-8:]) == END_MAGIC:
        tlen, _ = END.unpack_from(data, len(data) - END.size)
        tstart = len(data) - END.size - tlen
        if tstart < off:
            raise RecordingError(f"{path}: corrupted: bad trailer length")
        trailer, tend = _json_frame(data, tstart, F_TRAILER, path, "trailer", schema.trailer)
        if tend != len(data) - END.size:
            raise RecordingError(f"{path}: corrupted: trailer does not end at the end marker")
        return Recording(header=header, trailer=trailer, data=data, start=off, end=tstart,
                         size=len(data))
    # no end marker: the recorder died. Keep every whole frame before the cut
    # (a trailer frame there means the end marker alone is missing).
    end, n = off, 0
    while end + FRAME.size <= len(data):
        ftype, flen = FRAME.unpack_from(data, end)
        if ftype == F_TRAILER or end + FRAME.size + flen > len(data):
            break
        end += FRAME.size + flen
        n += 1
    return Recording(header=header, trailer={}, data=data, start=off, end=end, cut_at=end,
                     size=len(data), frames_before_cut=n)


def _json_frame(data, off: int, want: int, path: Path, what: str, check) -> tuple[dict, int]:
    if off + FRAME.size > len(data):
        raise RecordingError(f"{path}: truncated before the {what}")
    ftype, n = FRAME.unpack_from(data, off)
    if ftype != want:
        raise RecordingError(f"{path}: corrupted: expected the {what} at byte {off}")
    off += FRAME.size
    if off + n > len(data):
        raise RecordingError(f"{path}: truncated inside the {what}")
    try:
        return _json(data[off:off + n], check, what), off + n
    except RecordingError as exc:
        raise RecordingError(f"{path}: {exc}") from None
