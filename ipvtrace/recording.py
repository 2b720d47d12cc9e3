"""The recording file: a versioned header, the raw events, and a trailer.

Layout (little endian)::

    b"IPVTREC\\0" u16 container_version
    frames: u8 type, u32 length, payload
        1 HEADER   JSON: format version, ipvtrace version, kernel, probe plan,
                   event layout, snapshot of devices/namespaces/ipvlan modes
        2 EVENT    one raw event exactly as the BPF program submitted it
        3 TICK     u64 ktime: the live clock, so replay finalises packets
                   at the same points live did (same output)
        4 SNAPSHOT JSON: devices and namespaces again (taken at the end)
        5 TRAILER  JSON: event count, lost events, why the recording ended
        6 LOST     u64 ktime, u64 count: events the kernel could not hand over
                   (ring buffer full) since the last such frame
    u32 length of the trailer frame, b"IPVTEND\\0"

The file is written as NAME.partial and renamed when complete, so a file by
the name the user gave is always whole; the end marker lets replay refuse a
truncated one before printing anything.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

MAGIC = b"IPVTREC\0"
END_MAGIC = b"IPVTEND\0"
CONTAINER_VERSION = 1
FRAME = struct.Struct("<BI")
TICK = struct.Struct("<Q")
END = struct.Struct("<I8s")

F_HEADER, F_EVENT, F_TICK, F_SNAPSHOT, F_TRAILER, F_LOST = 1, 2, 3, 4, 5, 6
LOST = struct.Struct("<QQ")


class RecordingError(ValueError):
    """The file is not a readable recording; str() is the one-line reason."""


class Writer:
    """Append-only writer; `close()` writes the trailer and renames into place."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".partial")
        self._f: BinaryIO = open(self.tmp, "wb", buffering=1 << 20)
        self._f.write(MAGIC + struct.pack("<H", CONTAINER_VERSION))
        self._frame(F_HEADER, json.dumps(header).encode())
        self.events = 0

    def _frame(self, ftype: int, payload: bytes) -> int:
        self._f.write(FRAME.pack(ftype, len(payload)))
        self._f.write(payload)
        return FRAME.size + len(payload)

    def event(self, raw: bytes) -> None:
        self._f.write(FRAME.pack(F_EVENT, len(raw)) + raw)   # one buffered write per event
        self.events += 1

    def tick(self, ktime: int) -> None:
        self._frame(F_TICK, TICK.pack(ktime))

    def lost(self, ktime: int, count: int) -> None:
        self._frame(F_LOST, LOST.pack(ktime, count))

    def snapshot(self, snap: dict) -> None:
        self._frame(F_SNAPSHOT, json.dumps(snap).encode())

    def close(self, trailer: dict) -> None:
        trailer = dict(trailer, events=self.events)
        n = self._frame(F_TRAILER, json.dumps(trailer).encode())
        self._f.write(END.pack(n, END_MAGIC))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop a half-written file (nothing by the user's name is created)."""
        try:
            self._f.close()
        finally:
            self.tmp.unlink(missing_ok=True)


RELEASE_EVERY = 16 << 20   # replay gives back the pages it has read, every 16 MiB


@dataclass
class Recording:
    header: dict
    trailer: dict
    data: bytes | mmap.mmap   # the file, mapped: memory stays bounded however large
    start: int      # offset of the first frame after the header
    end: int        # offset of the trailer frame

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """(type, payload) for every frame between header and trailer."""
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
            off += FRAME.size
            if off + n > end or ftype not in (F_EVENT, F_TICK, F_SNAPSHOT, F_LOST):
                raise RecordingError(f"corrupted: bad frame (type {ftype}, {n} bytes) at byte {off - FRAME.size}")
            yield ftype, data[off:off + n]
            off += n

    def snapshots(self) -> list[dict]:
        snaps = [self.header.get("snapshot", {})]
        for ftype, payload in self.frames():
            if ftype == F_SNAPSHOT:
                snaps.append(json.loads(payload))
        return snaps


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
    if not data:
        raise RecordingError(f"{path}: empty file, not a recording")
    if data[:len(MAGIC)] != MAGIC:
        if Path(str(path) + ".partial").exists() or str(path).endswith(".partial"):
            raise RecordingError(f"{path}: not a complete recording (an interrupted .partial file)")
        raise RecordingError(f"{path}: not an ipvtrace recording (bad magic)")
    if len(data) < len(MAGIC) + 2:
        raise RecordingError(f"{path}: truncated inside the file header")
    (version,) = struct.unpack_from("<H", data, len(MAGIC))
    if version != CONTAINER_VERSION:
        raise RecordingError(
            f"{path}: recording container version {version}; this ipvtrace reads version {CONTAINER_VERSION}"
        )
    off = len(MAGIC) + 2
    header, off = _json_frame(data, off, F_HEADER, path, "header")
    if len(data) < off + END.size or data[-8:] != END_MAGIC:
        raise RecordingError(
            f"{path}: truncated: no end-of-recording marker (was the recorder killed?)"
        )
    tlen, _ = END.unpack_from(data, len(data) - END.size)
    tstart = len(data) - END.size - tlen
    if tstart < off:
        raise RecordingError(f"{path}: corrupted: bad trailer length")
    trailer, tend = _json_frame(data, tstart, F_TRAILER, path, "trailer")
    if tend != len(data) - END.size:
        raise RecordingError(f"{path}: corrupted: trailer does not end at the end marker")
    return Recording(header=header, trailer=trailer, data=data, start=off, end=tstart)


def _json_frame(data: bytes, off: int, want: int, path: Path, what: str) -> tuple[dict, int]:
    if off + FRAME.size > len(data):
        raise RecordingError(f"{path}: truncated before the {what}")
    ftype, n = FRAME.unpack_from(data, off)
    if ftype != want:
        raise RecordingError(f"{path}: corrupted: expected the {what} at byte {off}")
    off += FRAME.size
    if off + n > len(data):
        raise RecordingError(f"{path}: truncated inside the {what}")
    try:
        obj = json.loads(data[off:off + n])
    except ValueError:
        raise RecordingError(f"{path}: corrupted {what} (not JSON)") from None
    if not isinstance(obj, dict):
        raise RecordingError(f"{path}: corrupted {what}")
    return obj, off + n
