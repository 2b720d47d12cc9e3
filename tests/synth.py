"""Synthetic events, packed with the real layout and decoded by the real decoder.

For fast tests of correlation and classification; every branch they touch is
also shown on real kernels by the fixture and in-guest tests.
"""
from __future__ import annotations

import struct

from ipvtrace.model import layout
from ipvtrace.model.decode import Decoder, Event

LAY = layout.current()
DEC = Decoder(LAY)
ST = struct.Struct(LAY.fmt)
PROBE_ID = {v: k for k, v in LAY.probes.items()}
F = LAY.flags

# one topology: host netns 1 with parent ens10 (ifindex 2); pods in 10 and 11
HOST, POD_A, POD_B = 1, 10, 11
MAC = bytes.fromhex("020000000001")
OTHER_MAC = bytes.fromhex("020000000099")
BCAST = b"\xff" * 6


def snapshot(mode: str = "l2") -> dict:
    return {
        "namespaces": [{"inum": HOST, "name": "host", "root": False},
                       {"inum": POD_A, "name": "pod-a", "root": False},
                       {"inum": POD_B, "name": "pod-b", "root": False}],
        "devices": [
            {"netns": HOST, "ifindex": 2, "name": "ens10", "kind": "veth", "link": None,
             "link_netns": None},
            {"netns": POD_A, "ifindex": 3, "name": "eth0", "kind": "ipvlan", "link": 2,
             "link_netns": HOST, "ipvlan": {"mode": mode, "flags": []}},
            {"netns": POD_B, "ifindex": 3, "name": "eth0", "kind": "ipvlan", "link": 2,
             "link_netns": HOST, "ipvlan": {"mode": mode, "flags": []}},
        ],
    }


def ipv4_icmp(src: str, dst: str, dmac: bytes = MAC, smac: bytes = MAC, seq: int = 1) -> bytes:
    ip = bytes([0x45, 0, 0, 84, 0, 0, 0x40, 0, 64, 1, 0, 0]) + bytes(map(int, src.split("."))) \
        + bytes(map(int, dst.split(".")))
    icmp = bytes([8, 0, 0, 0, 0, 1]) + struct.pack("!H", seq)
    return dmac + smac + b"\x08\x00" + ip + icmp


def raw(probe: str, ts: int, ctx: int, *, cpu: int = 0, skb: int = 0, head: int = 0,
        ret: int = 0, netns: int = 0, ifindex: int = 0, ifname: str = "", flags: int = 0,
        hdr: bytes = b"", aux: int = 0, aux2: int = 0, reason: int = 0, depth: int = 1) -> bytes:
    if ifname:
        flags |= F["has_dev"]
    if hdr:
        flags |= F["has_hdr"]
    vals = dict(ts=ts, skb=skb, head=head, ctx=ctx, aux=aux, aux2=aux2, ret=ret, cpu=cpu,
                pid=100, netns=netns, ifindex=ifindex, reason=reason, len=len(hdr),
                probe=PROBE_ID[probe], depth=depth, flags=flags, hdr_len=len(hdr), pad=0,
                ifname=ifname.encode(), hdr=hdr)
    data = ST.pack(*(vals[f] for f in LAY.fields))
    return data[:LAY.base_size + len(hdr)]   # the frame's own bytes, as the kernel sends them


def ev(*a, **kw) -> Event:
    return DEC.decode(raw(*a, **kw))


def pod_a(**kw):
    return dict(netns=POD_A, ifindex=3, ifname="eth0", **kw)


def pod_b(**kw):
    return dict(netns=POD_B, ifindex=3, ifname="eth0", **kw)


def parent(**kw):
    return dict(netns=HOST, ifindex=2, ifname="ens10", **kw)


REC = struct.Struct(LAY.rec.fmt)
HIT = struct.Struct(LAY.hit.fmt)


def context(entry: bytes, hits: list[bytes], ret: bytes) -> bytes:
    """The format-3 record the kernel sends for a context whose events, as
    format 2 sent them one by one, are *entry*, *hits* and *ret*: what
    rec_open, hit_begin/hit_end and rec_close in bpf/ipvtrace.c assemble."""
    e, r = DEC.decode(entry), DEC.decode(ret)
    lost = F["lost"] if r.flags & F["lost"] else 0
    vals = dict(ts=e.ts, skb=e.skb, head=e.head, ctx=e.ctx, nhits=len(hits),
                kind=PROBE_ID[e.probe], ret_dt=r.ts - e.ts, pad0=0, ret=r.ret, cpu=e.cpu,
                pid=e.pid, netns=e.netns, ifindex=e.ifindex, pad1=0, len=e.len,
                probe=PROBE_ID["context"], depth=e.depth, flags=e.flags | lost,
                hdr_len=len(e.hdr), pad=0, ifname=e.ifname.encode())
    out = REC.pack(*(vals[f] for f in LAY.rec.fields)) + e.hdr + b"\0" * (-len(e.hdr) % 8)
    for raw_hit in hits:
        h = DEC.decode(raw_hit)
        hv = dict(skb=h.skb, head=h.head, aux=h.aux, aux2=h.aux2, ret=h.ret, dt=h.ts - e.ts,
                  netns=h.netns, ifindex=h.ifindex, reason=h.reason, len=h.len,
                  probe=PROBE_ID[h.probe], flags=h.flags, pad=0, ifname=h.ifname.encode())
        out += HIT.pack(*(hv[f] for f in LAY.hit.fields))
    return out


def ring_span(records: list[bytes], page_off: int = 7) -> bytes:
    """*records* framed as the BPF ring buffer frames them, and as `record`
    writes them in a RING frame: u32 length, u32 page offset, the record,
    zeros to 8 bytes."""
    out = bytearray()
    for r in records:
        out += struct.pack("<II", len(r), page_off) + r + bytes(-len(r) % 8)
    return bytes(out)
