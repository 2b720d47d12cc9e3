"""Name a packet from the first bytes the BPF program captured.

Only what a person needs to recognise their packet: addresses, protocol,
ports, ICMP/ARP/NDP kind. Truncated headers give what could be read.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, replace

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
    p.proto, proto, l4 = proto_of(etype, l3)
    if etype == ETH_P_ARP:
        _arp(p, l3)
    elif etype == ETH_P_IP and proto is not None:
        p.src = socket.inet_ntoa(l3[12:16])   # the dotted quad ipaddress writes, in C
        p.dst = socket.inet_ntoa(l3[16:20])
        if l4 < 0:   # a fragment after the first: its bytes are the datagram's middle
            p.frag_offset = (struct.unpack_from("!H", l3, 6)[0] & 0x1FFF) * 8
        else:
            _l4(p, proto, l3[l4:])
    elif etype == ETH_P_IPV6 and proto is not None:
        p.src = str(ipaddress.IPv6Address(l3[8:24]))
        p.dst = str(ipaddress.IPv6Address(l3[24:40]))
        _l4(p, proto, l3[l4:])
    return p


def proto_of(etype: int | None, l3: bytes) -> tuple[str, int | None, int]:
    """The protocol of an L3 header as a PacketInfo names it; the IP
    protocol number (None: not IP, or its header was not captured whole);
    where the L4 header starts in *l3* (-1: none, an IPv4 fragment after
    the first). IPv6 skips a hop-by-hop header (MLD reports carry one)."""
    if etype == ETH_P_ARP:
        return "arp", None, -1
    if etype == ETH_P_IP:
        if len(l3) < 20:
            return "ipv4", None, -1
        frag = struct.unpack_from("!H", l3, 6)[0] & 0x1FFF
        return _proto_name(l3[9]), l3[9], -1 if frag else (l3[0] & 0x0F) * 4
    if etype == ETH_P_IPV6:
        if len(l3) < 40:
            return "ipv6", None, -1
        nxt, at = l3[6], 40
        if nxt == 0 and len(l3) >= 48:
            nxt, at = l3[40], 40 + (l3[41] + 1) * 8
        return _proto_name(nxt), nxt, at
    return "?", None, -1


def rule_facts(hdr: bytes, has_mac: bool = True) -> tuple[bool, str]:
    """What the classifier's rules read of a frame to choose a branch:
    whether its dst MAC is multicast, and its protocol (the rest only
    names it in rows). As parse() gives them, without naming the rest:
    frames that agree on these are counted alike (replay --stats), and
    `stats` keeps no more of a frame in the kernel."""
    n = len(hdr)
    if has_mac and n >= 34:   # untagged IPv4 and IPv6 whole: a flood's frames, read in place
        if hdr[12] == 0x08 and hdr[13] == 0x00:
            return bool(hdr[0] & 1), _PROTO_NAMES[hdr[23]]
        if hdr[12] == 0x86 and hdr[13] == 0xDD and n >= 54:
            nxt = hdr[20]
            return bool(hdr[0] & 1), _PROTO_NAMES[hdr[54] if nxt == 0 and n >= 62 else nxt]
    where = l3_of(hdr, has_mac)
    if where is None:
        return False, "?"
    return bool(has_mac and hdr[0] & 1), proto_of(where[0], hdr[where[1]:])[0]


def rule_fact_bytes(hdr: bytes, has_mac: bool = True) -> tuple[int, ...] | None:
    """The offsets of the bytes rule_facts reads of *hdr*: another frame of
    the same length with the same bytes there has the same rule facts (and
    the same offsets). None where rule_facts reads more than a few fixed
    bytes (tags, other protocols, short frames). Lets replay --stats check
    a run of records by a few bytes each (model/alike.py)."""
    n = len(hdr)
    if has_mac and n >= 34:
        if hdr[12] == 0x08 and hdr[13] == 0x00:
            return (0, 12, 13, 23)
        if hdr[12] == 0x86 and hdr[13] == 0xDD and n >= 54:
            return (0, 12, 13, 20, 54) if hdr[20] == 0 and n >= 62 else (0, 12, 13, 20)
    return None


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


_PROTO_NAMES = tuple(_proto_name(p) for p in range(256))


def _l4(p: PacketInfo, proto: int, b: bytes) -> None:
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


def info_key(info: PacketInfo) -> tuple:
    """What a row shows of a frame, but its ICMP sequence number (only the
    summary shows that)."""
    return (info.eth_src, info.eth_dst, info.ethertype, info.proto, info.src, info.dst,
            info.sport, info.dport, info.kind, info.icmp_id, info.nd_target, info.arp_sha,
            info.frag_offset)


_NAMES_MAX = 4096   # frames remembered: a flood has a few flows, a stranger's file any number


class FrameNames:
    """`info_key` and `summary` of parse(frame), each flow's worked out once.

    A flood's frames differ in bytes parse() never reads (IP ID, TTL,
    checksums, the payload) and, for pings, in the sequence number. For an
    untagged IPv4 or IPv6 frame (no hop-by-hop header) the key is the bytes
    parse() reads but the sequence number, which is put into the summary
    afterwards; any other frame is parsed every time. A remembered summary
    is used only where the seq-less summary and the seq give back exactly
    what parse() gave (checked when it is remembered)."""

    def __init__(self) -> None:
        self._memo: dict[tuple, tuple[tuple, str, bool]] = {}

    def of(self, hdr: bytes, has_mac: bool) -> tuple[tuple, str]:
        key, seq_at = _flow_bytes(hdr, has_mac)
        if key is None:
            info = parse(hdr, has_mac)
            return info_key(info), info.summary()
        got = self._memo.get(key)
        if got is None:
            info = parse(hdr, has_mac)
            base = replace(info, icmp_seq=None).summary() if seq_at else info.summary()
            got = (info_key(info), base, bool(seq_at))
            if seq_at and f"{base} seq {info.icmp_seq}" != info.summary():
                return got[0], info.summary()   # not how this flow's summary is written: no memo
            if len(self._memo) >= _NAMES_MAX:
                self._memo.clear()
            self._memo[key] = got
        ikey, base, with_seq = got
        if with_seq:
            return ikey, f"{base} seq {hdr[seq_at] << 8 | hdr[seq_at + 1]}"
        return ikey, base

    def of_run(self, hdr: bytes, has_mac: bool) -> tuple[tuple, tuple[int, ...], str, int] | None:
        """For frames of hdr's length equal to it at the returned offsets:
        (their `info_key`, those offsets, their summary without the
        sequence number, where that number is in each frame (0: the summary
        shows none)). The summary of such a frame is the one of() gives,
        with `seq N` added where it shows one. None for a frame whose
        summary is not made so (no flow key, or not remembered)."""
        offsets = flow_byte_offsets(hdr, has_mac)
        if offsets is None:
            return None
        self.of(hdr, has_mac)
        key, seq_at = _flow_bytes(hdr, has_mac)
        got = self._memo.get(key)
        if got is None:
            return None
        ikey, base, with_seq = got
        return ikey, offsets, base, seq_at if with_seq else 0


def flow_byte_offsets(hdr: bytes, has_mac: bool) -> tuple[int, ...] | None:
    """The offsets of the bytes _flow_bytes keys *hdr* by (its echo
    sequence number not among them): a frame of the same length with the
    same bytes there has the same key, so the same row names and summary
    but the sequence number. None where _flow_bytes keys nothing. Lets
    replay --json check a run of records by a few bytes each."""
    n = len(hdr)
    if not has_mac or n < 34:
        return None
    if hdr[12] == 0x08 and hdr[13] == 0x00:
        l4, proto = 14 + (hdr[14] & 0x0F) * 4, hdr[23]
        head = (*range(15), 20, 21, 23, *range(26, 34))
        echo = proto == 1 and n - l4 >= 8 and hdr[l4] in (0, 8)
    elif hdr[12] == 0x86 and hdr[13] == 0xDD and n >= 54 and hdr[20] != 0:
        l4, proto = 54, hdr[20]
        head = (*range(14), 20, *range(22, 54))
        echo = n - l4 >= 8 and ((proto == 1 and hdr[l4] in (0, 8))
                                or (proto == 58 and hdr[l4] in (128, 129)))
    else:
        return None
    if proto in (6, 17):
        tail = range(l4, min(n, l4 + 4))
    elif echo:
        tail = (l4, l4 + 4, l4 + 5)
    else:
        tail = range(l4, min(n, l4 + 24))
    return head + tuple(tail)


def _flow_bytes(hdr: bytes, has_mac: bool) -> tuple[tuple | None, int]:
    """The bytes parse() reads of an untagged IPv4/IPv6 frame, but an echo's
    sequence number, and where that is (0: none); (None, 0) for any other
    frame."""
    n = len(hdr)
    if not has_mac or n < 34:
        return None, 0
    if hdr[12] == 0x08 and hdr[13] == 0x00:
        l4, proto, addrs = 14 + (hdr[14] & 0x0F) * 4, hdr[23], hdr[26:34]
        head = (4, hdr[0:15], hdr[20:22], proto)    # MACs, EtherType, IHL, fragment, protocol
        echo = proto == 1 and n - l4 >= 8 and hdr[l4] in (0, 8)
    elif hdr[12] == 0x86 and hdr[13] == 0xDD and n >= 54 and hdr[20] != 0:
        l4, proto, addrs = 54, hdr[20], hdr[22:54]
        head = (6, hdr[0:14], proto)
        echo = n - l4 >= 8 and ((proto == 1 and hdr[l4] in (0, 8))
                                or (proto == 58 and hdr[l4] in (128, 129)))
    else:
        return None, 0
    if proto in (6, 17):
        tail = hdr[l4:l4 + 4]                        # the ports
    elif echo:
        return head + (addrs, hdr[l4:l4 + 1] + hdr[l4 + 4:l4 + 6]), l4 + 6   # type, id; seq apart
    else:
        tail = hdr[l4:l4 + 24]                       # all _l4 may read (an ND target at most)
    return head + (addrs, tail, n - l4 >= 8), 0
