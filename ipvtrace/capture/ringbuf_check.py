"""Check ipvtrace/capture/ringbuf.py against this machine's kernel (run by
scripts/compile-check, as root, where bcc finds kernel headers): every record
a BPF program submits comes out once, in order, intact, while the 16 KiB ring
wraps around many times."""
from __future__ import annotations

import os
import socket
import struct
import sys

from ipvtrace.capture import bpfsys, loader
from ipvtrace.capture.ringbuf import MappedRing
from ipvtrace.model import layout

PACKETS = 5000


def main() -> int:
    bcc = loader.import_bcc()
    # the kernel counts the program's runs while this fd is open: checks
    # where bpfsys reads the counters (run_cnt must equal the program's own count)
    stats = bpfsys.enable_stats()
    try:
        return _check(bcc)
    finally:
        os.close(stats)


def _check(bcc) -> int:
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
        # the kernel's count of hits it skipped this program for, as the
        # tracer reads it (bpfsys.ProgInfo) and as fdinfo prints it
        with open(f"/proc/self/fdinfo/{fn.fd}") as f:
            named = "recursion_misses:" in f.read()
        _, run_cnt, by_info = bpfsys.ProgInfo(fn.fd).run_stats()
        sent_after = b["sent"][0].value
        if not sent <= run_cnt <= sent_after:
            print(f"ringbuf-check: FAILED: BPF_OBJ_GET_INFO_BY_FD says {run_cnt} runs, "
                  f"the program counted {sent} to {sent_after}")
            return 1
        if not named or loader.fdinfo_misses(fn.fd) != 0 or by_info != 0:
            print("ringbuf-check: FAILED: recursion_misses not 0 in fdinfo and "
                  f"BPF_OBJ_GET_INFO_BY_FD ({by_info})")
            return 1
        print(f"ringbuf-check: BPF_OBJ_GET_INFO_BY_FD: {run_cnt} runs as counted, "
              "recursion_misses 0 as fdinfo says")
        return 0
    finally:
        b.cleanup()


if __name__ == "__main__":
    sys.exit(main())
