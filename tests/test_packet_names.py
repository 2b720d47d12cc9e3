"""How a captured frame is named in rows (ipvtrace/model/packet.py)."""
import ipaddress
import struct

from hypothesis import given, strategies as st

from ipvtrace.capture.filter_check import FRAMES, MAC_A, MAC_B, _eth, _v4, icmp_echo, udp53
from ipvtrace.model.packet import parse


def test_a_later_ipv4_fragment_has_no_l4_header():
    # ping -s 3000 between two slaves: the second fragment's first bytes are
    # ICMP payload, which rows once showed as "type 136" (the payload's byte)
    first = _eth(MAC_B, MAC_A, 0x0800) + _v4(1, "10.22.0.1", "10.22.0.2", icmp_echo, frag=0x2000)
    later = _eth(MAC_B, MAC_A, 0x0800) + _v4(1, "10.22.0.1", "10.22.0.2",
                                             bytes([136, 0, 0, 0, 0, 0, 0, 0]), frag=0x2000 | 185)
    a, b = parse(first), parse(later)
    assert (a.proto, a.kind, a.icmp_seq, a.frag_offset) == ("icmp", "echo-request", 1, None)
    assert (b.proto, b.kind, b.icmp_seq, b.frag_offset) == ("icmp", None, None, 185 * 8)
    assert b.summary() == "ICMP 10.22.0.1 > 10.22.0.2 fragment at byte 1480"
    udp = parse(_eth(MAC_B, MAC_A, 0x0800) + _v4(17, "10.0.0.1", "10.0.0.2", udp53, frag=1))
    assert (udp.proto, udp.sport, udp.dport) == ("udp", None, None)


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=6, max_size=6),
       st.binary(min_size=6, max_size=6))
def test_addresses_are_written_as_ipaddress_writes_them(ip, dst_mac, src_mac):
    frame = dst_mac + src_mac + struct.pack("!H", 0x0800) + _v4(17, "0.0.0.0", "0.0.0.0", udp53)
    frame = frame[:26] + ip + ip + frame[34:]
    p = parse(frame)
    assert p.src == p.dst == str(ipaddress.IPv4Address(ip))
    assert p.eth_dst == ":".join(f"{x:02x}" for x in dst_mac)
    assert p.eth_src == ":".join(f"{x:02x}" for x in src_mac)


def test_mld_behind_hop_by_hop_is_named():
    # the MLDv2 report a namespace sends when its link comes up: an ICMPv6
    # message behind a hop-by-hop header, named by its type
    frame = next(f for name, f, _ in FRAMES if name == "mld report behind hop-by-hop")
    p = parse(frame)
    assert (p.proto, p.kind, p.dst) == ("icmp6", "mldv2-report", "ff02::16")
