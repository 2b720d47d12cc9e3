"""`ipvtrace stats`: name the branch of each signature the kernel counted.

In stats mode the BPF program sends no events: it gathers what each context
saw (which helpers ran, on which devices, what they returned, a few bits of
the frame) into a `struct ipvt_sig` and counts identical signatures in a
per-CPU hash map. Here each *distinct* signature becomes a small Packet of
events and goes through the same `classify()` that live and replay use, so
there is one rule set; only the counting happens in the kernel.

Three kinds of signature are not a whole packet:
- the parent's RX of a frame a slave forwarded to it (tx.l2.to_parent): the
  kernel marks it (IPVT_H_ECHO) and it is not counted again, as the
  correlator joins it to its TX in live and replay;
- the multicast worker's deliveries (kind mc_work): one count per delivery,
  named by the classifier's multicast rule;
- L3S frames that reached LOCAL_IN for a slave (kind l3_rcv): rx.l3s.local.
  The same frames were counted once more when the rx_handler passed them (as
  rx.l3s.to_host, since the rx_handler alone cannot tell): that count is
  moved, so each frame is counted once.
"""
from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass

from . import classify as cls
from .correlate import Packet
from .decode import Event
from .layout import SigLayout, sig_layout

ENTRY_SKB, ENQ_SKB, OTHER_SKB = 0x1000, 0x2000, 0x3000
OWNER = 0x4000   # the ipvl_dev the lookup found (the kernel compared it)
# helper probes in the order the driver runs them, for the synthetic packet
CLONE_ARGS = 0x01   # IPVT_C_CLONE_ARGS
HELPER_ORDER = ("rcv_frame", "lookup_ret", "mc_enqueue", "fwd", "fwd_ret", "local_out",
                "local_out6", "qxmit", "kfree", "consume")


@dataclass(frozen=True, slots=True)
class Signature:
    kind: str
    seen: frozenset[str]
    netns: int
    ifindex: int
    to_netns: int
    to_ifindex: int
    own_netns: int
    own_ifindex: int
    ret: int
    fwd_ret: int
    reason: int
    etype: int
    l4: int
    hflags: frozenset[str]


def decode(raw: bytes, sl: SigLayout | None = None) -> Signature:
    sl = sl or sig_layout()
    vals = dict(zip(sl.fields, struct.unpack(sl.fmt, raw[: struct.calcsize(sl.fmt)])))
    seen = frozenset(name for pid, name in sl.probes.items() if vals["seen"] & (1 << pid))
    hflags = frozenset(name for name, bit in sl.hflags.items() if vals["hflags"] & bit)
    if vals.get("checks", 0) & CLONE_ARGS:   # (older fixtures: a pad byte, always 0)
        hflags |= {"clone_mismatch"}
    return Signature(
        kind=sl.probes.get(vals["kind"], str(vals["kind"])), seen=seen,
        netns=vals["netns"], ifindex=vals["ifindex"], to_netns=vals["to_netns"],
        to_ifindex=vals["to_ifindex"], own_netns=vals["own_netns"],
        own_ifindex=vals["own_ifindex"], ret=vals["ret"], fwd_ret=vals["fwd_ret"],
        reason=vals["reason"], etype=vals["etype"], l4=vals["l4"], hflags=hflags,
    )


def synth_frame(sig: Signature) -> bytes:
    """Frame bytes that parse to what the kernel saw: multicast or not,
    EtherType, L4 protocol (addresses are zero: stats does not keep them)."""
    dst = b"\x01\x00\x5e\x00\x00\x01" if "dst_mcast" in sig.hflags else b"\x02\0\0\0\0\x01"
    eth = dst + b"\x02\0\0\0\0\x02" + sig.etype.to_bytes(2, "big")
    if sig.etype == 0x0800:
        return eth + bytes([0x45, 0, 0, 20, 0, 0, 0, 0, 64, sig.l4, 0, 0]) + b"\0" * 8
    if sig.etype == 0x86DD:
        return eth + bytes([0x60, 0, 0, 0, 0, 0, sig.l4, 64]) + b"\0" * 32
    if sig.etype == 0x0806:
        return eth + bytes([0, 1, 8, 0, 6, 4, 0, 1]) + b"\0" * 20
    return eth


class _Events:
    """Makes the synthetic events of one signature."""

    def __init__(self, ctx: cls.Context) -> None:
        self.ctx = ctx
        self.has_dev = ctx.flag("has_dev")

    def ev(self, probe: str, netns: int = 0, ifindex: int = 0, **kw) -> Event:
        flags = kw.pop("flags", 0)
        name = ""
        if ifindex:
            flags |= self.has_dev
            dev = self.ctx.topo.device(netns, ifindex)
            name = dev.get("name", "") if dev else f"if{ifindex}"
        base = dict(ts=0, skb=0, head=0, ctx=0, aux=0, aux2=0, ret=0, cpu=0, pid=0,
                    netns=netns, ifindex=ifindex, reason=0, len=0, probe=probe, depth=0,
                    flags=flags, hdr=b"", ifname=name)
        base.update(kw)
        return Event(**base)


def synth_packet(sig: Signature, ctx: cls.Context) -> Packet:
    """The events a traced packet with this signature would have had."""
    mk = _Events(ctx)
    no_mac = ctx.flag("no_mac") if "no_mac" in sig.hflags else 0
    if "runt" in sig.hflags:
        hdr, length = b"\0" * 10, 10
    else:
        hdr = b"" if no_mac else synth_frame(sig)
        length = max(len(hdr), 60)
    entry_probe = "xmit" if sig.kind == "xmit" else "rx"
    entry = mk.ev(entry_probe, sig.netns, sig.ifindex, skb=ENTRY_SKB, hdr=hdr, len=length,
                  flags=no_mac)
    pkt = Packet(entry=entry, events=[entry])
    if sig.kind == "l3_rcv":   # an L3S frame a slave got at LOCAL_IN
        pkt.ret = mk.ev("rx_ret", ret=cls.RX_HANDLER_PASS)
        pkt.cont = [mk.ev("s2a_ret", sig.own_netns, sig.own_ifindex, aux=1), mk.ev("nf_input")]
        return pkt
    to = (sig.to_netns, sig.to_ifindex)
    for probe in HELPER_ORDER:
        if probe not in sig.seen:
            continue
        if probe == "lookup_ret":
            found = "found" in sig.hflags
            e = (mk.ev(probe, sig.own_netns, sig.own_ifindex, aux=1, aux2=OWNER)
                 if found else mk.ev(probe))
        elif probe == "rcv_frame":   # its arguments as the kernel checked them
            bad = "clone_mismatch" in sig.hflags
            e = mk.ev(probe, skb=OTHER_SKB if bad else ENTRY_SKB, aux2=OWNER)
        elif probe in ("fwd", "local_out", "local_out6"):
            e = mk.ev(probe, *to, skb=OTHER_SKB)
        elif probe == "fwd_ret":
            e = mk.ev(probe, ret=sig.fwd_ret)
        elif probe == "mc_enqueue":
            e = mk.ev(probe, skb=ENQ_SKB)
        elif probe == "qxmit":
            own = "own_qx" in sig.hflags
            e = mk.ev(probe, *(to if own else (0, 0)), skb=ENTRY_SKB if own else OTHER_SKB)
        elif probe == "kfree":
            e = mk.ev(probe, skb=ENQ_SKB if "kfree_enq" in sig.hflags else OTHER_SKB,
                      reason=sig.reason)
        elif probe == "consume":
            e = mk.ev(probe, skb=ENTRY_SKB if "consume_own" in sig.hflags else OTHER_SKB)
        else:
            e = mk.ev(probe)
        pkt.events.append(e)
    pkt.ret = mk.ev(f"{entry_probe}_ret", ret=sig.ret)
    if "mc_enqueue" in sig.seen and "kfree_enq" not in sig.hflags:
        pkt.worker_done = True   # the worker's deliveries are counted on their own
    return pkt


@dataclass(frozen=True, slots=True)
class Outcome:
    """One counted line: a branch, what became of the packet, from and to."""

    branch: str
    delivery: str | None
    frm: str
    to: str
    reason: str | None


def _ref(ref: dict | None) -> str:
    return cls.dev_str(ref)


def outcomes(sig: Signature, ctx: cls.Context) -> list[Outcome]:
    """What one occurrence of *sig* counts as (several for a worker run)."""
    if "echo" in sig.hflags:
        return []   # the parent's RX of a tx.l2.to_parent frame: counted with its TX
    if sig.kind == "mc_work":
        mk = _Events(ctx)
        probe = next(iter(sig.seen), "fwd")
        ev = mk.ev(probe, sig.to_netns, sig.to_ifindex, skb=OTHER_SKB)
        pkt = Packet(entry=None, worker=[ev], worker_done=True)
        mcast, _ = cls.mcast_share(pkt, ctx, tx_origin=True)
        return [Outcome(m["branch"], m["delivery"], "-", _ref(m["to"]), None) for m in mcast]
    v = cls.classify(synth_packet(sig, ctx), ctx)
    out = [Outcome(v.branch, v.delivery, _ref(v.frm), _ref(v.to), v.reason)]
    out += [Outcome(m["branch"], m["delivery"], _ref(v.frm), _ref(m.get("to")), m.get("reason"))
            for m in v.mcast]
    return out


class Tally:
    """Counted signatures -> packets per outcome, named once per signature."""

    def __init__(self, ctx: cls.Context) -> None:
        self.ctx = ctx
        self._named: dict[Signature, list[Outcome]] = {}

    def forget_names(self) -> None:
        """Device names changed (a new snapshot): name signatures again."""
        self._named.clear()

    def unknown_devices(self, counts: dict[Signature, int]) -> set[tuple[int, int]]:
        """(netns, ifindex) of devices the signatures name that no snapshot has."""
        topo = self.ctx.topo
        return {
            (ns, ix)
            for s in counts
            for ns, ix in ((s.netns, s.ifindex), (s.to_netns, s.to_ifindex),
                           (s.own_netns, s.own_ifindex))
            if ix and topo.device(ns, ix) is None
        }

    def portless_parents(self, counts: dict[Signature, int]) -> set[tuple[int, int]]:
        """Parents whose rx_handler ran but that no snapshot ties to a port
        (read before their first slave existed): their mode is not known."""
        topo = self.ctx.topo
        return {(s.netns, s.ifindex) for s in counts
                if s.kind == "rx" and s.ifindex and topo.port_of(s.netns, s.ifindex) is None}

    def rows(self, counts: dict[Signature, int]) -> Counter[Outcome]:
        out: Counter[Outcome] = Counter()
        moved: Counter[str] = Counter()
        for sig, n in counts.items():
            named = self._named.get(sig)
            if named is None:
                named = self._named[sig] = outcomes(sig, self.ctx)
            for o in named:
                out[o] += n
            if sig.kind == "l3_rcv":
                moved[named[0].frm] += n
        for frm, n in moved.items():   # those frames were counted as passed, too
            for o in [o for o in out if o.branch == "rx.l3s.to_host" and o.frm == frm]:
                take = min(n, out[o])
                out[o] -= take
                n -= take
                if out[o] == 0:
                    del out[o]
        return out
