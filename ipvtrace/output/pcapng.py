"""Write the recorded frames as pcapng, each with its branch as a comment.

The frames are the headers ipvtrace captured at ipvlan's entry points (up to
128 bytes each: the original length is kept), so tshark/Wireshark show what
ipvlan saw and, in the packet comment, what it did with it.
"""
from __future__ import annotations

import struct
from typing import BinaryIO

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
SNAPLEN = 128


def _opt(code: int, data: bytes) -> bytes:
    pad = (-len(data)) % 4
    return struct.pack("<HH", code, len(data)) + data + b"\0" * pad


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


class PcapngWriter:
    def __init__(self, f: BinaryIO, app: str) -> None:
        self.f = f
        shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _opt(4, app.encode()) + _opt(0, b"")
        f.write(_block(0x0A0D0D0A, shb))
        # interface 0: Ethernet frames; 1: L3 packets without a MAC header
        for link in (LINKTYPE_ETHERNET, LINKTYPE_RAW):
            idb = struct.pack("<HHI", link, 0, SNAPLEN) + _opt(9, bytes([9])) + _opt(0, b"")
            f.write(_block(1, idb))   # if_tsresol 9: nanoseconds
        self.count = 0

    def packet(self, ts_ns: int, data: bytes, orig_len: int, comment: str, l3_only: bool) -> None:
        iface = 1 if l3_only else 0
        pad = (-len(data)) % 4
        body = struct.pack("<IIIII", iface, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data),
                           max(orig_len, len(data)))
        body += data + b"\0" * pad + _opt(1, comment.encode()) + _opt(0, b"")
        self.f.write(_block(6, body))
        self.count += 1


def comment(row: dict) -> str:
    def dev(ref):
        return f"{ref['dev']}@{ref['netns']}" if ref else "-"

    parts = [f"ipvtrace branch={row['branch']}", f"delivery={row.get('delivery') or '-'}",
             f"from={dev(row.get('from'))}", f"to={dev(row.get('to'))}"]
    if row.get("mode"):
        parts.append(f"mode={row['mode']}")
    if row.get("reason"):
        parts.append(f"reason={row['reason']}")
    for m in row.get("mcast", []):
        parts.append(f"{m['branch']}->{dev(m.get('to'))}")
    return " ".join(parts)
