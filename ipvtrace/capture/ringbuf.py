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
from typing import Callable

BUSY, DISCARD = 1 << 31, 1 << 30
HDR = 8
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


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
        prod_pos = _U64.unpack_from(self._prod, 0)[0]
        cons_pos = _U64.unpack_from(self._cons, 0)[0]
        data, base, mask, n = self._prod, self._page, self._mask, 0
        u32 = _U32.unpack_from
        while cons_pos < prod_pos:
            off = base + (cons_pos & mask)
            hdr = u32(data, off)[0]
            if hdr & BUSY:
                break
            length = hdr & ~(BUSY | DISCARD)
            if not hdr & DISCARD:
                handle(data[off + HDR:off + HDR + length])
                n += 1
            cons_pos += (length + HDR + 7) & ~7
            if n & 255 == 0:   # give the space back as we go, not only at the end
                _U64.pack_into(self._cons, 0, cons_pos)
        _U64.pack_into(self._cons, 0, cons_pos)
        return n

    def close(self) -> None:
        self._ep.close()
        self._cons.close()
        self._prod.close()
