"""Read a BPF ring buffer through its mapped pages, without a callback per record.

bcc's `ring_buffer_poll` calls back into Python through ctypes once per
record; under load that call, not the record, is most of the consumer's
cost. The ring buffer's pages can be mapped directly (as libbpf does): one
consumer page (read-write), one producer page and the data pages mapped
twice in a row (read-only), so a record never wraps. Each record starts with
an 8-byte header: u32 length with a BUSY bit (still being written) and a
DISCARD bit, u32 page offset; records are 8-byte aligned.

The producer publishes a record by clearing BUSY with a release store; these
plain loads are acquire loads only on a strongly ordered CPU (x86), so
`usable()` says no elsewhere and the caller keeps bcc's callback there.
"""
from __future__ import annotations

import mmap
import platform
import select
import struct
from typing import Callable, NamedTuple

BUSY, DISCARD = 1 << 31, 1 << 30
HDR = 8
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


# plain(data, offset, length): may this record go on as it is (in a run)?
Plain = Callable[[object, int, int], bool]
# run(ring_bytes, records): committed records as the ring frames them; in a
# view of the ring that is valid only during the call (copy what is kept)
Run = Callable[[memoryview, int], None]
RUN_MAX_RECORDS = 256   # a run is handed on (and its space given back) at least this often


class Known(NamedTuple):
    """Records plain() already accepted, by the key *peek* reads from a
    record's first *size* bytes: one unpack and a set lookup in place of a
    Python call per record (2.7x faster a record on the build machine).
    *keys* is the caller's: it adds what plain() accepts and empties it
    whenever plain()'s answer for a key may change. *at* are the offsets of
    the bytes peek reads (the others are padding to it): records behind a
    known one with the same ring header and the same bytes there are known
    too, and walk() checks a stretch of them at once (_alike_behind)."""

    peek: Callable[[object, int], tuple]
    size: int
    keys: set
    at: tuple[int, ...] = ()


ALIKE_MIN = 8   # a shorter stretch is walked record by record: checking it at once costs more


def _alike_behind(data, off: int, step: int, most: int, at: tuple[int, ...]) -> int:
    """How many records from data[off] on (at most *most*), each *step*
    bytes, have the first's ring header (so: its length, committed, not
    discarded) and its bytes at HDR + *at*: one strided slice per byte
    compared, not a Python step per record. Reads nothing past off +
    most*step. The header's last byte (BUSY, DISCARD) is read first: a
    record behind one still being written is never looked at."""
    n = most
    for k in (3, 0, 1, 2, *(HDR + a for a in at)):
        plane = bytes(data[off + k:off + k + n * step:step])
        n -= len(plane.lstrip(plane[:1]))
        if n <= 1:
            return 1
    return n


def walk(data, base: int, mask: int, cons_pos: int, prod_pos: int, plain: Plain, run: Run,
         one: Callable[[bytes], None], give_back: Callable[[int], None],
         known: Known | None = None, view: memoryview | None = None) -> int:
    """Hand the committed records between *cons_pos* and *prod_pos* on:
    consecutive ones that *plain* accepts as one *run* (a slice of *view*,
    a memoryview of *data*, when given: valid until the space is given back,
    i.e. during the call; else of *data*; 8-byte ring headers included: u32
    length, u32 page offset), every other one to *one* alone, copied;
    discarded records to neither. The data pages
    are mapped twice in a row, so a run never wraps: at most the ring's
    size, it starts in the first copy. Space is given back only behind
    what was handed on. A record whose key is in *known* is plain without
    asking, and so are the records behind it that _alike_behind finds
    alike. Returns how many records were handed on."""
    u32 = _U32.unpack_from
    spans = view if view is not None else data
    peek, size, keys, at = known if known is not None else (None, 1 << 62, set(), ())
    n = run_n = since = 0
    run_at = run_end = 0
    while cons_pos < prod_pos:
        off = base + (cons_pos & mask)
        hdr = u32(data, off)[0]
        if hdr & BUSY:
            break
        length = hdr & ~(BUSY | DISCARD)
        step = (length + HDR + 7) & ~7
        took = 1
        if not hdr & DISCARD and ((length >= size and peek(data, off + HDR) in keys)
                                  or plain(data, off + HDR, length)):
            if not run_n:
                run_at = run_end = off
            most = min(RUN_MAX_RECORDS - since, (prod_pos - cons_pos) // step)
            if at and most >= ALIKE_MIN and length >= size and peek(data, off + HDR) in keys:
                took = _alike_behind(data, off, step, most, at)
            run_end += step * took
            run_n += took
        else:
            if run_n:
                run(spans[run_at:run_end], run_n)
                n, run_n = n + run_n, 0
            if not hdr & DISCARD:
                one(bytes(data[off + HDR:off + HDR + length]))
                n += 1
        cons_pos += step * took
        since += took
        if since >= RUN_MAX_RECORDS:   # hand on and give the space back as we go
            if run_n:
                run(spans[run_at:run_end], run_n)
                n, run_n = n + run_n, 0
            give_back(cons_pos)
            since = 0
    if run_n:
        run(spans[run_at:run_end], run_n)
        n += run_n
    give_back(cons_pos)
    return n


def _never(_data, _off: int, _length: int) -> bool:
    return False


def _no_run(_span: bytes, _n: int) -> None:
    raise AssertionError("no record is plain")


def usable() -> bool:
    return platform.machine() in ("x86_64", "i686", "i386")


class MappedRing:
    """The consumer side of one BPF_MAP_TYPE_RINGBUF map."""

    def __init__(self, map_fd: int, data_size: int) -> None:
        if data_size & (data_size - 1):
            raise ValueError(f"ring buffer size {data_size} is not a power of two")
        page = mmap.PAGESIZE
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(map_fd, page + 2 * data_size, mmap.MAP_SHARED,
                               mmap.PROT_READ, offset=page)
        self._page = page
        self._mask = data_size - 1
        self._ep = select.epoll()
        self._ep.register(map_fd, select.EPOLLIN)

    def wait(self, timeout_ms: int) -> None:
        """Until data is there or the timeout passes (a signal ends it early)."""
        try:
            self._ep.poll(timeout_ms / 1000)
        except InterruptedError:
            pass

    def consume(self, handle: Callable[[bytes], None]) -> int:
        """Hand every committed record to *handle*; returns how many."""
        return self.consume_runs(_never, _no_run, handle)

    def consume_runs(self, plain: Plain, run: Run, one: Callable[[bytes], None],
                     known: Known | None = None) -> int:
        """Like consume(), but hand on whole runs of records, ring headers
        and all, without a Python call per record beyond *plain*: see walk()."""
        prod_pos = _U64.unpack_from(self._prod, 0)[0]
        cons_pos = _U64.unpack_from(self._cons, 0)[0]

        def give_back(pos: int) -> None:
            _U64.pack_into(self._cons, 0, pos)

        # runs are handed on as views of the ring, not copies: the writer
        # copies them once, into its block (the mmap itself is read: its
        # strided slices are a plain loop, a memoryview's a call per byte)
        with memoryview(self._prod) as view:
            return walk(self._prod, self._page, self._mask, cons_pos, prod_pos, plain, run, one,
                        give_back, known, view)

    def close(self) -> None:
        self._ep.close()
        self._cons.close()
        try:
            self._prod.close()
        except BufferError:
            # a view of the ring is still referenced: an error raised while
            # a run was handed on (a full disk) keeps that run in its
            # traceback. The pages are unmapped when it goes; the caller
            # goes on detaching
            pass
