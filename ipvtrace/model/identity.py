"""A packet's identity: the bytes of its headers that no hop between two
nodes rewrites, so one packet seen by two kernels is recognised as one.

Used by `ipvtrace merge` to join a frame leaving node A by its ipvlan port
with its arrival at node B. The Ethernet header is left out (L3 mode sends
with the parent's MAC; a router between the nodes rewrites both), and so are
the IPv4 TTL and header checksum and the IPv6 hop limit (a routed hop
decrements them). What stays: addresses, protocol, the IPv4 id and fragment
field, lengths, the IPv6 flow label, and the first 8 bytes of the transport
header (ports and TCP sequence number, ICMP type, id and sequence) — but not
the UDP and ICMP checksums there: with checksum offload the sender's copy
holds a partial sum that the NIC (or the stack, later) completes.
"""
from __future__ import annotations

from ipvtrace.model.packet import ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, l3_of

L4_BYTES = 8
# where the first 8 bytes of a transport header hold its checksum
CSUM_AT = {17: 6, 1: 2, 58: 2}   # UDP, ICMP, ICMPv6 (TCP's is past byte 8)


def of_frame(hdr: bytes, has_mac: bool = True) -> bytes | None:
    """The identity of a captured frame (as the entry probe copied it), or
    None when too little of it was captured to tell packets apart."""
    where = l3_of(hdr, has_mac)
    if where is None:
        return None
    etype, off = where
    l3 = bytes(hdr[off:])
    if etype == ETH_P_IP:
        return _ipv4(l3)
    if etype == ETH_P_IPV6:
        return _ipv6(l3)
    if etype == ETH_P_ARP and len(l3) >= 28:
        return b"arp" + l3[:28]
    return None


def _ipv4(b: bytes) -> bytes | None:
    if len(b) < 20 or b[0] >> 4 != 4:
        return None
    ihl = (b[0] & 0x0F) * 4
    if ihl < 20 or len(b) < ihl + L4_BYTES:
        return None
    # version/ihl, tos, total length, id, frag | protocol | src, dst
    return b"4" + b[0:8] + b[9:10] + b[12:20] + _l4(b[9], b[ihl:ihl + L4_BYTES])


def _ipv6(b: bytes) -> bytes | None:
    if len(b) < 40 + L4_BYTES or b[0] >> 4 != 6:
        return None
    # version/class/flow label, payload length, next header | src, dst
    return b"6" + b[0:7] + b[8:40] + _l4(b[6], b[40:40 + L4_BYTES])


def _l4(proto: int, head: bytes) -> bytes:
    at = CSUM_AT.get(proto)
    if at is None:
        return head
    return head[:at] + b"\0\0" + head[at + 2:]
