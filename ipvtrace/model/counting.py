"""`ipvtrace stats`: name the branch of each signature the kernel counted.

In stats mode the BPF program sends no events: it gathers what each context
saw (which helpers ran, on which devices, what they returned, a few bits of
the frame) into a `struct ipvt_sig` and counts identical signatures in a
per-CPU hash map. Here each *distinct* signature is read into the same
Evidence that live and replay build from events, and goes through the same
`classify()`: one rule set; only the counting happens in the kernel.

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

from ipvtrace.model import classify as cls
from ipvtrace.model import evidence
from ipvtrace.model.evidence import Evidence
from ipvtrace.model.layout import SigLayout, sig_layout
from ipvtrace.model.packet import PacketInfo, parse


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
    checks = vals.get("checks", 0)   # (older fixtures: a pad byte, always 0)
    if checks & sl.checks["clone_args"]:
        hflags |= {"clone_mismatch"}
    if checks & sl.checks["lost"]:   # the record was full: some hits are missing
        hflags |= {"lost"}
    return Signature(
        kind=sl.probes.get(vals["kind"], str(vals["kind"])), seen=seen,
        netns=vals["netns"], ifindex=vals["ifindex"], to_netns=vals["to_netns"],
        to_ifindex=vals["to_ifindex"], own_netns=vals["own_netns"],
        own_ifindex=vals["own_ifindex"], ret=vals["ret"], fwd_ret=vals["fwd_ret"],
        reason=vals["reason"], etype=vals["etype"], l4=vals["l4"], hflags=hflags,
    )


def frame_info(sig: Signature) -> PacketInfo:
    """What the kernel kept of the frame (multicast or not, EtherType, L4
    protocol; no addresses), as the parser would have read it."""
    if "runt" in sig.hflags or "no_mac" in sig.hflags:
        return PacketInfo()   # (no MAC header: the kernel kept no L3 fields either)
    dst = b"\x01\x00\x5e\x00\x00\x01" if "dst_mcast" in sig.hflags else b"\x02\0\0\0\0\x01"
    eth = dst + b"\x02\0\0\0\0\x02" + sig.etype.to_bytes(2, "big")
    if sig.etype == 0x0800:
        l3 = bytes([0x45, 0, 0, 20, 0, 0, 0, 0, 64, sig.l4, 0, 0]) + b"\0" * 8
    elif sig.etype == 0x86DD:
        l3 = bytes([0x60, 0, 0, 0, 0, 0, sig.l4, 64]) + b"\0" * 32
    elif sig.etype == 0x0806:
        l3 = bytes([0, 1, 8, 0, 6, 4, 0, 1]) + b"\0" * 20
    else:
        l3 = b""
    return parse(eth + l3)


def evidence_of(sig: Signature, ctx: cls.Context) -> Evidence:
    """The Evidence one counted context gave: the same facts the events of a
    traced packet give, read from the signature's fields and bits."""
    dev = ctx.device
    port = ctx.topo.port_of(sig.netns, sig.ifindex) or {}
    x = Evidence(direction="tx" if sig.kind == "xmit" else "rx",
                 frm=dev(sig.netns, sig.ifindex), info=frame_info(sig),
                 mode=port.get("mode"), flags=list(port.get("flags", [])),
                 l3s_blind=ctx.kernel.l3s_blind)
    if "lost" in sig.hflags:   # as a record flagged IPVT_F_LOST
        x.complete = False
    if sig.kind == "l3_rcv":   # an L3S frame a slave got at LOCAL_IN
        x.ret = cls.RX_HANDLER_PASS
        x.l3s_lookup, x.l3s_owner = True, dev(sig.own_netns, sig.own_ifindex)
        x.nf_input = True
        return x
    seen, to = sig.seen, dev(sig.to_netns, sig.to_ifindex)
    x.ret = sig.ret
    x.runt = "runt" in sig.hflags
    x.found = "lookup_ret" in seen and "found" in sig.hflags
    x.owner = dev(sig.own_netns, sig.own_ifindex) if x.found else None
    x.rcv = "rcv_frame" in seen
    x.rcv_inlined = ctx.kernel.rcv_inlined_rx
    if x.rcv and "clone_mismatch" in sig.hflags:   # checked in the kernel
        x.clone_mismatch = "ipvlan_rcv_frame's arguments were not this packet's (checked in the kernel)"
        x.complete = False
    x.fwd = "fwd" in seen
    x.fwd_to = to if x.fwd else None
    x.fwd_ret = sig.fwd_ret if "fwd_ret" in seen else None
    x.enq = "mc_enqueue" in seen
    for probe in ("local_out", "local_out6"):
        if probe in seen:
            x.local_out, x.local_out_to = probe, to
    x.own_qx = "qxmit" in seen and "own_qx" in sig.hflags
    x.own_qx_to = to if x.own_qx else None
    x.kfree = "kfree" in seen
    if x.kfree:
        x.reason = ctx.drop_reasons.get(sig.reason, str(sig.reason) if sig.reason else None)
    x.consume_own = "consume" in seen and "consume_own" in sig.hflags
    x.helpers = ",".join(sorted(seen)) or "none"
    if x.enq:
        if "kfree_enq" in sig.hflags:
            x.mcast, x.worker_why = [evidence.backlog_drop(sig.reason, ctx)], evidence.BACKLOG_WHY
        else:   # the worker's deliveries are counted on their own (kind mc_work)
            x.worker_why = evidence.worker_summary([])
    return x


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
        probe = next(iter(sig.seen), "fwd")
        m = evidence.worker_delivery(probe, ctx.device(sig.to_netns, sig.to_ifindex), None,
                                     tx_origin=True, rx_by=ctx.kernel.worker_rx)
        return [Outcome(m["branch"], m["delivery"], "-", _ref(m["to"]), None)] if m else []
    v = cls.classify(evidence_of(sig, ctx))
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
