"""The in-kernel filter and the replay filter select the same packets.

For each filter expression, bpf/filter_check.c is built with the C the
kernel side gets (-DIPVT_FILTER_EXPR) and run on test frames through
BPF_PROG_TEST_RUN; each verdict is compared with the replay filter's on the
row ipvtrace makes of the same frame (packet.parse). Run by
scripts/compile-check on this machine's kernel (root); exits 1 and names
every disagreement.
"""
from __future__ import annotations

import ctypes
import struct
import sys

from ipvtrace.capture import bpfsys, loader
from ipvtrace.model import filterexpr, layout, packet

# the expressions: every primitive, with directions, negation, combinations
EXPRESSIONS = (
    "arp", "ip", "ip6", "icmp", "icmp6", "tcp", "udp", "not arp",
    "host 10.0.0.1", "src host 10.0.0.1", "dst host 10.0.0.2", "host 224.0.0.22",
    "host fd00::1", "dst host ff02::16", "src host fe80::1",
    "port 53", "src port 5353", "dst port 53", "udp and dst port 53",
    "icmp6 and dst host ff02::16", "ip and not icmp", "(tcp or udp) and host 10.0.0.2",
)


def _eth(dst: str, src: str, etype: int) -> bytes:
    return bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) \
        + struct.pack("!H", etype)


def _v4(proto: int, src: str, dst: str, payload: bytes, opts: bytes = b"",
        frag: int = 0) -> bytes:
    ihl = 5 + len(opts) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(opts) + len(payload), 0, frag, 64,
                      proto, 0, bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    return hdr + opts + payload


def _v6(nxt: int, src: str, dst: str, payload: bytes) -> bytes:
    import ipaddress

    return struct.pack("!IHBB", 6 << 28, len(payload), nxt, 64) \
        + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload


MAC_A, MAC_B, BCAST = "02:00:00:00:00:01", "02:00:00:00:00:02", "ff:ff:ff:ff:ff:ff"
udp53 = struct.pack("!HHHH", 5353, 53, 8, 0)
tcp80 = struct.pack("!HHIIHHHH", 40000, 80, 0, 0, 0x5000, 0, 0, 0)
icmp_echo = bytes([8, 0, 0, 0, 0, 1, 0, 1]) + bytes(16)
# (name, frame, has_mac)
FRAMES = (
    ("icmp echo", _eth(MAC_B, MAC_A, 0x0800) + _v4(1, "10.0.0.1", "10.0.0.2", icmp_echo), True),
    ("udp dns", _eth(MAC_B, MAC_A, 0x0800) + _v4(17, "10.0.0.1", "10.0.0.2", udp53), True),
    ("udp dns, first fragment", _eth(MAC_B, MAC_A, 0x0800)
     + _v4(17, "10.0.0.1", "10.0.0.2", udp53, frag=0x2000), True),
    # a later fragment whose first bytes read as ports 5353 > 53: it has no ports
    ("udp, a later fragment", _eth(MAC_B, MAC_A, 0x0800)
     + _v4(17, "10.0.0.1", "10.0.0.2", udp53, frag=185), True),
    ("tcp", _eth(MAC_B, MAC_A, 0x0800) + _v4(6, "10.0.0.2", "10.0.0.1", tcp80), True),
    ("igmp with router alert", _eth("01:00:5e:00:00:16", MAC_A, 0x0800)
     + _v4(2, "10.0.0.1", "224.0.0.22", bytes([0x22, 0, 0, 0, 0, 0, 0, 1]) + bytes(8),
           opts=bytes([0x94, 4, 0, 0])), True),
    ("arp request", _eth(BCAST, MAC_A, 0x0806) + bytes.fromhex("0001080006040001")
     + bytes.fromhex(MAC_A.replace(":", "")) + bytes([10, 0, 0, 1]) + bytes(6) + bytes([10, 0, 0, 2]),
     True),
    ("icmp6 ns", _eth("33:33:ff:00:00:01", MAC_A, 0x86dd)
     + _v6(58, "fe80::1", "ff02::1:ff00:1", bytes([135, 0, 0, 0, 0, 0, 0, 0]) + bytes(16)), True),
    ("mld report behind hop-by-hop", _eth("33:33:00:00:00:16", MAC_A, 0x86dd)
     + _v6(0, "fe80::1", "ff02::16", bytes([58, 0, 5, 2, 0, 0, 1, 0])
           + bytes([143, 0, 0, 0, 0, 0, 0, 1]) + bytes(20)), True),
    ("udp6 dns", _eth(MAC_B, MAC_A, 0x86dd) + _v6(17, "fd00::1", "fd00::2", udp53), True),
    ("tcp6", _eth(MAC_B, MAC_A, 0x86dd) + _v6(6, "fd00::2", "fd00::1", tcp80), True),
    ("lldp (not ip)", _eth("01:80:c2:00:00:0e", MAC_A, 0x88CC) + bytes(40), True),
    ("l3 only: icmp", _v4(1, "10.0.0.1", "10.0.0.2", icmp_echo), False),
    ("l3 only: udp6", _v6(17, "fd00::1", "fd00::2", udp53), False),
)


def replay_verdict(expr: filterexpr.Node, frame: bytes, has_mac: bool) -> bool:
    info = packet.parse(frame, has_mac=has_mac)
    row = {"proto": info.proto, "src": info.src, "dst": info.dst,
           "sport": info.sport, "dport": info.dport}
    return expr.match(row)


def main() -> int:
    bcc = loader.import_bcc()
    bad = 0
    for text in EXPRESSIONS:
        expr = filterexpr.parse(text)
        b = bcc.BPF(src_file=str(layout.BPF_DIR / "filter_check.c").encode(),
                    cflags=["-w", f"-I{layout.BPF_DIR}", f"-DIPVT_FILTER_EXPR={expr.c()}"])
        fn = b.load_func(b"filter_check", bcc.BPF.SCHED_CLS)
        for name, frame, has_mac in FRAMES:
            b["nomac"][ctypes.c_int(0)] = ctypes.c_uint32(0 if has_mac else 1)
            data = frame if has_mac else bytes(12) + b"\x08\x00" + frame
            if len(data) < 14:
                data = data + bytes(14 - len(data))
            kernel = bpfsys.test_run(fn.fd, data) == 1
            replay = replay_verdict(expr, frame, has_mac)
            if kernel != replay:
                bad += 1
                print(f"filter_check: {text!r} on {name}: kernel {kernel}, replay {replay}")
        b.cleanup()
    n = len(EXPRESSIONS) * len(FRAMES)
    print(f"filter_check: {n - bad} of {n} verdicts agree "
          f"({len(EXPRESSIONS)} filters x {len(FRAMES)} frames)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
