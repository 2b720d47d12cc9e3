"""Name a packet from the first bytes the BPF program captured.

Only what a person needs to recognise their packet: addresses, protocol,
ports, ICMP/ARP/NDP kind. Truncated headers give what could be read.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

ETH_P_IP, ETH_P_ARP, ETH_P_IPV6, ETH_P_8021Q = 0x0800, 0x0806, 0x86DD, 0x8100
IPPROTO = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6"}
ICMP4 = {0: "echo-reply", 3: "unreachable", 8: "echo-request", 11: "time-exceeded"}
ICMP6 = {1: "unreachable", 128: "echo-request", 129: "echo-reply",
         130: "mld-query", 131: "mld-report", 132: "mld-done",
         133: "router-solicit", 134: "router-advert",
         135: "neighbor-solicit", 136: "neighbor-advert", 143: "mldv2-report"}


def mac_str(b: bytes) -> str:
    return b.hex(":")


def is_multicast_mac(mac: str | None) -> bool:
    return bool(mac) and int(mac[:2], 16) & 1 == 1


@dataclass(slots=True)
class PacketInfo:
    eth_src: str | None = None
    eth_dst: str | None = None
    ethertype: int | None = None
    proto: str = "?"
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    kind: str | None = None         # echo-request, arp-request, neighbor-solicit, ...
    icmp_id: int | None = None
    icmp_seq: int | None = None
    nd_target: str | None = None
    arp_sha: str | None = None
    frag_offset: int | None = None  # an IPv4 fragment after the first: no L4 header in it

    @property
    def dst_multicast(self) -> bool:
        return is_multicast_mac(self.eth_dst)

    def summary(self) -> str:
        if self.proto == "arp":
            if self.kind == "reply":
                return f"ARP reply {self.src} is-at {self.arp_sha}"
            return f"ARP {self.kind or '?'} who-has {self.dst} tell {self.src}"
        parts = [self.proto.upper() if self.proto != "?" else f"ethertype {self.ethertype:#06x}"
                 if self.ethertype is not None else "?"]
        if self.src or self.dst:
            s = f"{self.src}:{self.sport}" if self.sport is not None else f"{self.src}"
            d = f"{self.dst}:{self.dport}" if self.dport is not None else f"{self.dst}"
            parts.append(f"{s} > {d}")
        if self.kind:
            parts.append(self.kind)
        if self.icmp_seq is not None:
            parts.append(f"seq {self.icmp_seq}")
        if self.nd_target:
            parts.append(f"target {self.nd_target}")
        if self.frag_offset is not None:
            parts.append(f"fragment at byte {self.frag_offset}")
        return " ".join(parts)


def l3_of(hdr: bytes, has_mac: bool = True) -> tuple[int | None, int] | None:
    """(EtherType, offset of the L3 header) of a captured frame; None when
    its Ethernet header was not captured whole. Without a MAC header the
    EtherType is guessed from the IP version."""
    if not has_mac:
        return ({4: ETH_P_IP, 6: ETH_P_IPV6}.get(hdr[0] >> 4) if hdr else None), 0
    if len(hdr) < 14:
        return None
    etype = struct.unpack_from("!H", hdr, 12)[0]
    if etype == ETH_P_8021Q and len(hdr) >= 18:
        return struct.unpack_from("!H", hdr, 16)[0], 18
    return etype, 14


def parse(hdr: bytes, has_mac: bool = True) -> PacketInfo:
    p = PacketInfo()
    where = l3_of(hdr, has_mac)
    if where is None:
        return p
    if has_mac:
        p.eth_dst, p.eth_src = mac_str(hdr[0:6]), mac_str(hdr[6:12])
    etype, off = where
    p.ethertype = etype
    l3 = hdr[off:]
    if etype == ETH_P_ARP:
        _arp(p, l3)
    elif etype == ETH_P_IP:
        _ipv4(p, l3)
    elif etype == ETH_P_IPV6:
        _ipv6(p, l3)
    return p


def _arp(p: PacketInfo, b: bytes) -> None:
    p.proto = "arp"
    if len(b) < 28:
        return
    op = struct.unpack_from("!H", b, 6)[0]
    p.kind = {1: "request", 2: "reply"}.get(op, f"op{op}")
    p.arp_sha = mac_str(b[8:14])
    p.src = socket.inet_ntoa(b[14:18])
    p.dst = socket.inet_ntoa(b[24:28])


def _proto_name(proto: int) -> str:
    return IPPROTO.get(proto, f"ip-proto-{proto}")


def _l4(p: PacketInfo, proto: int, b: bytes) -> None:
    p.proto = _proto_name(proto)
    if proto in (6, 17) and len(b) >= 4:
        p.sport, p.dport = struct.unpack_from("!HH", b, 0)
    elif proto == 1 and len(b) >= 8:
        p.kind = ICMP4.get(b[0], f"type {b[0]}")
        if b[0] in (0, 8):
            p.icmp_id, p.icmp_seq = struct.unpack_from("!HH", b, 4)
    elif proto == 58 and len(b) >= 8:
        p.kind = ICMP6.get(b[0], f"type {b[0]}")
        if b[0] in (128, 129):
            p.icmp_id, p.icmp_seq = struct.unpack_from("!HH", b, 4)
        elif b[0] in (135, 136) and len(b) >= 24:
            p.nd_target = str(ipaddress.IPv6Address(b[8:24]))


def _ipv4(p: PacketInfo, b: bytes) -> None:
    p.proto = "ipv4"
    if len(b) < 20:
        return
    ihl = (b[0] & 0x0F) * 4
    p.src = socket.inet_ntoa(b[12:16])   # the dotted quad ipaddress writes, in C
    p.dst = socket.inet_ntoa(b[16:20])
    frag = struct.unpack_from("!H", b, 6)[0] & 0x1FFF
    if frag:   # its first bytes are the datagram's middle: no ports, no ICMP type
        p.proto = _proto_name(b[9])
        p.frag_offset = frag * 8
        return
    _l4(p, b[9], b[ihl:])


def _ipv6(p: PacketInfo, b: bytes) -> None:
    p.proto = "ipv6"
    if len(b) < 40:
        return
    p.src = str(ipaddress.IPv6Address(b[8:24]))
    p.dst = str(ipaddress.IPv6Address(b[24:40]))
    nxt, rest = b[6], b[40:]
    # hop-by-hop options (MLD reports carry one)
    if nxt == 0 and len(rest) >= 8:
        nxt, rest = rest[0], rest[(rest[1] + 1) * 8:]
    _l4(p, nxt, rest)
