"""Check ipvtrace/capture/ringbuf.py against this machine's kernel (run by
scripts/compile-check, as root, where bcc finds kernel headers): every record
a BPF program submits comes out once, in order, intact, while the 16 KiB ring
wraps around many times."""
from __future__ import annotations

import socket
import struct
import sys

from ipvtrace.capture import loader
from ipvtrace.capture.ringbuf import MappedRing
from ipvtrace.model import layout

PACKETS = 5000


def main() -> int:
    bcc = loader.import_bcc()
    b = bcc.BPF(src_file=str(layout.BPF_DIR / "ringbuf_check.c").encode(), cflags=["-w"])
    try:
        fn = b.load_func(b"on_packet", bcc.BPF.SOCKET_FILTER)
        bcc.BPF.attach_raw_socket(fn, b"lo")
        ring = MappedRing(b["events"].map_fd, 4 * 4096)
        got: list[bytes] = []
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(PACKETS):
            s.sendto(b"x" * (i % 64), ("127.0.0.1", 9))
            if i % 50 == 0:
                ring.consume(got.append)
        ring.wait(200)
        ring.consume(got.append)
        sent = b["sent"][0].value
        recs = [struct.unpack_from("<QII", r) + (len(r),) for r in got]
        seqs = [r[0] for r in recs]
        bad = [r for r in recs if r[2] != 0x1B7ACE or r[3] != (24 if r[0] & 1 else 16)]
        if bad or seqs != list(range(len(seqs))) or len(seqs) != sent or sent < PACKETS:
            print(f"ringbuf-check: FAILED: {len(seqs)} records of {sent} sent, "
                  f"{len(bad)} malformed, in order: {seqs == sorted(seqs)}")
            return 1
        print(f"ringbuf-check: {len(seqs)} records of {sent} sent, in order, intact "
              f"({sum(r[3] + 8 for r in recs) // (4 * 4096)} wraps of the ring)")
        ring.close()
        # the kernel's count of hits it skipped this program for: where the
        # tracer reads it (loader.fdinfo_misses), without a bpf syscall
        with open(f"/proc/self/fdinfo/{fn.fd}") as f:
            named = "recursion_misses:" in f.read()
        if not named or loader.fdinfo_misses(fn.fd) != 0:
            print("ringbuf-check: FAILED: fdinfo names no recursion_misses of 0")
            return 1
        print("ringbuf-check: fdinfo recursion_misses read (0)")
        return 0
    finally:
        b.cleanup()


if __name__ == "__main__":
    sys.exit(main())
