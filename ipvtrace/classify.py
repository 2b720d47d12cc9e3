"""Name the branch a packet took, from the evidence its events carry.

Evidence first, mode second: a branch is chosen from what the kernel did
(which helper ran, on which device, what it returned); the port mode read by
netlink only labels L2 vs L3 where the same evidence means either. Anything
that fits no rule is `unknown`, with its events, never a guess.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import catalogue
from .correlate import Packet
from .decode import Event
from .packet import PacketInfo, parse
from .snapshot import Topology

RX_HANDLER_CONSUMED, RX_HANDLER_ANOTHER, RX_HANDLER_PASS = 0, 1, 3
NET_XMIT_SUCCESS, NET_RX_SUCCESS = 0, 0
RET_PROBES = {"xmit_ret", "rx_ret", "fwd_ret"}


@dataclass
class Context:
    """What classification needs besides the packet: names and symbols."""

    topo: Topology
    drop_reasons: dict[int, str] = field(default_factory=dict)
    symbols: dict[int, str] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)

    def flag(self, name: str) -> int:
        return self.flags.get(name, 0)


@dataclass
class Verdict:
    branch: str
    delivery: str | None
    mode: str | None
    flags: list[str]
    info: PacketInfo
    frm: dict | None
    to: dict | None
    complete: bool
    why: str
    reason: str | None = None
    location: str | None = None
    mcast: list[dict] = field(default_factory=list)


def dev_ref(ev: Event | None, ctx: Context) -> dict | None:
    if ev is None or not ev.has(ctx.flag("has_dev")):
        return None
    return {"dev": ev.ifname, "netns": ctx.topo.ns_name(ev.netns), "ifindex": ev.ifindex}


def dev_str(ref: dict | None) -> str:
    return f"{ref['dev']}@{ref['netns']}" if ref else "-"


def classify(pkt: Packet, ctx: Context) -> Verdict:
    cat = catalogue.load()
    entry = pkt.entry
    if entry is None:
        v = Verdict("unknown", "pending", None, [], PacketInfo(), None, None, False,
                    "the entry event was not seen (lost, or before tracing started)")
    else:
        info = parse(entry.hdr, has_mac=not entry.has(ctx.flag("no_mac")))
        port = ctx.topo.port_of(entry.netns, entry.ifindex) or {}
        v = (_tx if pkt.direction == "tx" else _rx)(Evidence(pkt, ctx, info, port))
    cat.check(v.branch)
    cat.check_delivery(v.delivery)
    for m in v.mcast:
        cat.check(m["branch"])
    return v


def _base_complete(pkt: Packet) -> bool:
    if pkt.entry is None or pkt.ret is None or pkt.lost_overlap or pkt.evicted:
        return False
    if pkt.waiting_for == "worker" and not pkt.worker_done:
        return False
    if pkt.waiting_for == "rx" and (not pkt.cont or pkt.cont_ret is None):
        return False
    return True


def _frees(pkt: Packet, probe: str) -> list[Event]:
    return [e for e in pkt.events if e.probe == probe]


def _drop_details(pkt: Packet, ctx: Context) -> tuple[str | None, str | None]:
    for e in _frees(pkt, "kfree"):
        reason = ctx.drop_reasons.get(e.reason, str(e.reason) if e.reason else None)
        loc = ctx.symbols.get(e.aux) or (f"{e.aux:#x}" if e.aux else None)
        return reason, loc
    return None, None


def _rcv_frame_mismatch(entry: Event, rcv: list[Event], found: list[Event]) -> str | None:
    """ipvlan_rcv_frame is a GCC clone (.isra.N) on Debian's kernels, with an
    argument list the source does not show: (struct ipvl_dev *, struct sk_buff
    **pskb, bool local) on 6.1 and 6.12. Its hit is trusted only when the skb
    it was handed is this context's and its slave is the one
    ipvlan_addr_lookup returned; otherwise the packet is incomplete."""
    for e in rcv:
        if e.skb != entry.skb:
            return f"ipvlan_rcv_frame was handed skb {e.skb:#x}, not this packet's {entry.skb:#x}"
        if found and e.aux2 != found[-1].aux2:
            return (f"ipvlan_rcv_frame's slave {e.aux2:#x} is not the one "
                    f"ipvlan_addr_lookup found ({found[-1].aux2:#x})")
    return None


@dataclass
class Evidence:
    """What one packet's events say, gathered once for the TX and RX rules."""

    pkt: Packet
    ctx: Context
    info: PacketInfo
    port: dict

    def __post_init__(self) -> None:
        pkt, entry = self.pkt, self.pkt.entry
        assert entry is not None
        self.entry = entry
        self.frm = dev_ref(entry, self.ctx)
        self.mode = self.port.get("mode")
        self.flags = list(self.port.get("flags", []))
        self.complete = _base_complete(pkt)
        self.ret = pkt.ret.ret if pkt.ret is not None else None
        self.rcv = pkt.helpers("rcv_frame")
        self.found = [e for e in pkt.helpers("lookup_ret") if e.aux]
        self.fwds = pkt.helpers("fwd")
        self.fwd_rets = pkt.helpers("fwd_ret")
        self.enq = pkt.helpers("mc_enqueue")
        self.louts = pkt.helpers("local_out") + pkt.helpers("local_out6")
        self.qx = pkt.helpers("qxmit")
        self.kfree = _frees(pkt, "kfree")
        self.consume = [e for e in _frees(pkt, "consume") if e.skb == entry.skb]
        self.fam = "l2" if self.mode == "l2" else "l3" if self.mode in ("l3", "l3s") else None
        self.dst = self.info.dst or "?"
        self.clone_mismatch = _rcv_frame_mismatch(entry, self.rcv, self.found)
        if self.clone_mismatch:
            self.complete = False

    def verdict(self, branch: str, delivery: str | None, to: dict | None, why: str,
                **kw) -> Verdict:
        if self.clone_mismatch:
            why = f"{why} (evidence rejected: {self.clone_mismatch})"
        return Verdict(branch, delivery, self.mode, self.flags, self.info, self.frm, to,
                       self.complete, why, **kw)


def _tx(x: Evidence) -> Verdict:
    pkt, ctx, info, entry, v = x.pkt, x.ctx, x.info, x.entry, x.verdict
    mode, flags, ret, dst, fam = x.mode, x.flags, x.ret, x.dst, x.fam
    rcv, found, fwds, fwd_rets, enq = x.rcv, x.found, x.fwds, x.fwd_rets, x.enq
    louts, qx, kfree, consume = x.louts, x.qx, x.kfree, x.consume

    if enq:
        if fam not in (None, "l2"):
            return v("unknown", None, None, f"multicast enqueue on a port netlink calls {mode}")
        mcast, worker_why = mcast_share(pkt, ctx, tx_origin=True)
        queued = "dropped" if mcast and mcast[0]["branch"] == "mcast.backlog_drop" else "queued"
        return v("tx.l2.multicast", queued, None,
                 f"dst MAC {info.eth_dst} is multicast: ipvlan_multicast_enqueue(tx); {worker_why}",
                 mcast=mcast)
    if rcv or (found and fwds):
        if fam is None:
            return v("unknown", None, None, "a slave owns the destination, but the port mode is unknown")
        owner = dev_ref(found[-1], ctx) if found else None
        to = dev_ref(fwds[-1], ctx) if fwds else owner
        if fwd_rets:
            r = fwd_rets[-1].ret
            delivery = "delivered" if r == NET_RX_SUCCESS else "forward_failed"
            how = f"dev_forward_skb({dev_str(to)}) returned {r}"
        elif kfree and not fwds:
            delivery = "slave_down"
            how = "the target slave was not up: freed in ipvlan_rcv_frame"
        else:
            delivery, how = "pending", "dev_forward_skb's return was not seen"
            x.complete = False
        same = "dst MAC == src MAC, " if fam == "l2" else ""
        return v(f"tx.{fam}.local", delivery, to,
                 f"{same}{dev_str(owner)} owns {dst}: ipvlan_rcv_frame(local) -> {how}")
    if found and consume and ret not in (None, NET_XMIT_SUCCESS):
        if fam is None:
            return v("unknown", "dropped", None, "private drop on a port of unknown mode")
        return v(f"tx.{fam}.private_drop", "dropped", dev_ref(found[-1], ctx),
                 f"{dev_str(dev_ref(found[-1], ctx))} owns {dst} but the port is private: consume_skb")
    if fwds:
        to = dev_ref(fwds[-1], ctx)
        if fwd_rets:
            r = fwd_rets[-1].ret
            delivery = "delivered" if r == NET_RX_SUCCESS else "forward_failed"
        else:
            delivery = "pending"
            x.complete = False
        echo = ""
        if pkt.cont_ret is not None:
            verdict = {RX_HANDLER_PASS: "PASS", RX_HANDLER_ANOTHER: "ANOTHER",
                       RX_HANDLER_CONSUMED: "CONSUMED"}.get(pkt.cont_ret.ret, str(pkt.cont_ret.ret))
            echo = f"; the parent's rx_handler returned {verdict}"
        return v("tx.l2.to_parent", delivery, to,
                 f"dst MAC == src MAC, no slave owns {dst}: dev_forward_skb({dev_str(to)}){echo}")
    if louts:
        to = dev_ref(louts[-1], ctx)
        delivery = "sent" if ret == NET_XMIT_SUCCESS else "dropped"
        vepa = " (VEPA)" if "vepa" in flags else ""
        return v("tx.l3.routed", delivery, to,
                 f"no slave owns {dst}{vepa}: routed in the parent's netns by "
                 f"{louts[-1].probe.replace('local_out6', 'ip6_local_out').replace('local_out', 'ip_local_out')} via {dev_str(to)}")
    own_qx = [e for e in qx if e.skb == entry.skb]
    if own_qx:
        to = dev_ref(own_qx[-1], ctx)
        delivery = "sent" if ret == NET_XMIT_SUCCESS else "dropped"
        why = ("VEPA: every unicast leaves by the parent" if "vepa" in flags else
               f"dst MAC {info.eth_dst} is not ours: out of the parent")
        return v("tx.l2.out_parent", delivery, to, f"{why}, __dev_queue_xmit({dev_str(to)}) ret {ret}")
    if kfree and ret not in (None, NET_XMIT_SUCCESS):
        reason, loc = _drop_details(pkt, ctx)
        kw = {"reason": reason, "location": loc}
        if len(entry.hdr) and len(entry.hdr) < 14 and entry.len < 14:
            return v("tx.drop.runt", "dropped", None, "frame shorter than an Ethernet header", **kw)
        if fam == "l3":
            if info.dst_multicast:
                return v("tx.l3.mcast_drop", "dropped", None,
                         f"L3 port: multicast/broadcast dst MAC {info.eth_dst} is dropped", **kw)
            if info.proto not in ("ipv4", "ipv6", "icmp", "icmp6", "tcp", "udp") and not info.proto.startswith("ip-proto"):
                return v("tx.l3.non_ip_drop", "dropped", None,
                         f"L3 port: {info.proto} is neither IPv4 nor IPv6", **kw)
            return v("tx.l3.route_fail", "dropped", None,
                     f"no slave owns {dst} and the parent netns has no usable route (ret {ret})", **kw)
        return v("unknown", "dropped", None, f"freed inside ipvlan_queue_xmit (ret {ret})", **kw)
    if ret is None:
        return v("unknown", "pending", None, "ipvlan_queue_xmit's return was not seen")
    seen = ",".join(sorted({e.probe for e in pkt.events[1:]})) or "none"
    return v("unknown", None, None, f"no branch fits: ret {ret}, helpers {seen}")


def _rx(x: Evidence) -> Verdict:
    pkt, ctx, info, v = x.pkt, x.ctx, x.info, x.verdict
    mode, ret, dst, frm = x.mode, x.ret, x.dst, x.frm
    rcv, found, enq = x.rcv, x.found, x.enq

    if ret is None:
        return v("unknown", "pending", None, "ipvlan_handle_frame's return was not seen")
    if rcv and ret == RX_HANDLER_ANOTHER:
        to = dev_ref(found[-1], ctx) if found else None
        return v("rx.local", "delivered", to,
                 f"{dev_str(to)} owns {dst}: ipvlan_rcv_frame -> skb->dev = slave, RX_HANDLER_ANOTHER")
    if enq and ret == RX_HANDLER_PASS:
        mcast, worker_why = mcast_share(pkt, ctx, tx_origin=False)
        queued = "dropped" if mcast and mcast[0]["branch"] == "mcast.backlog_drop" else "queued"
        return v("rx.l2.multicast", queued, frm,
                 f"multicast from outside: a clone is queued (ipvlan_multicast_enqueue), "
                 f"the original passes to the host; {worker_why}", mcast=mcast)
    if ret == RX_HANDLER_CONSUMED and _frees(pkt, "kfree"):
        reason, loc = _drop_details(pkt, ctx)
        return v("rx.drop.bad_mode", "dropped", None, f"port mode {mode!r} unknown to ipvlan: freed",
                 reason=reason, location=loc)
    if ret == RX_HANDLER_PASS:
        if mode == "l3s":
            return _l3s(x)
        if info.dst_multicast and mode == "l2":
            return v("rx.l2.multicast_own", "delivered", frm,
                     "multicast sent by one of our own slaves: passed to the host, nothing queued")
        owner = "no slave owns " + dst if info.src or info.dst else "no L3 header ipvlan knows"
        return v("rx.to_host", "delivered", frm, f"{owner}: RX_HANDLER_PASS to the parent's stack")
    return v("unknown", None, None, f"no branch fits: rx_handler returned {ret}")


def _l3s(x: Evidence) -> Verdict:
    """L3S: the rx_handler passed; ipvlan's l3mdev and LOCAL_IN hooks decide."""
    cont, v, dst = x.pkt.cont, x.verdict, x.dst
    s2a = [e for e in cont if e.probe == "s2a_ret"]
    nf = [e for e in cont if e.probe == "nf_input"]
    owner = dev_ref(s2a[0], x.ctx) if s2a and s2a[0].aux else None
    if owner is None:
        why = (f"L3S: ipvlan_l3_rcv found no slave owning {dst}: the parent's stack keeps it"
               if s2a else "L3S: the rx_handler always passes; no l3mdev lookup for this frame")
        return v("rx.l3s.to_host", "delivered", x.frm, why)
    if nf:
        return v("rx.l3s.local", "delivered", owner,
                 f"L3S: ipvlan_l3_rcv: {dev_str(owner)} owns {dst}, routed in its netns; "
                 f"ipvlan_nf_input set skb->dev = {owner['dev']} at LOCAL_IN")
    x.complete = False
    return v("rx.l3s.local", "pending", owner,
             f"L3S: ipvlan_l3_rcv: {dev_str(owner)} owns {dst}; LOCAL_IN (ipvlan_nf_input) not seen")


def _backlog_drop(pkt: Packet, ctx: Context) -> dict | None:
    """ipvlan_multicast_enqueue freed the skb: the backlog was full (or a PAUSE frame)."""
    enq = {e.skb for e in pkt.helpers("mc_enqueue")}
    for e in _frees(pkt, "kfree"):
        if e.skb in enq:
            return {"branch": "mcast.backlog_drop", "to": None, "delivery": "dropped",
                    "by": "ipvlan_multicast_enqueue",
                    "reason": ctx.drop_reasons.get(e.reason, e.reason or None)}
    return None


def mcast_share(pkt: Packet, ctx: Context, tx_origin: bool) -> tuple[list[dict], str]:
    """The worker's share of a queued packet: one entry per delivery."""
    dropped = _backlog_drop(pkt, ctx)
    if dropped is not None:
        return [dropped], "the multicast backlog was full: freed in ipvlan_multicast_enqueue"
    if not pkt.worker_done:
        return [], "the multicast worker's run was not seen"
    out: list[dict] = []
    evs = pkt.worker
    enq_skb = {e.skb for e in pkt.helpers("mc_enqueue")}
    for i, e in enumerate(evs):
        if e.probe in ("fwd", "netif_rx") and e.skb not in enq_skb:
            r = None
            if e.probe == "fwd":
                nxt = next((x for x in evs[i + 1:] if x.probe == "fwd_ret" and x.ctx == e.ctx), None)
                r = nxt.ret if nxt is not None else None
            delivery = "delivered" if r in (None, 0) else "forward_failed"
            out.append({"branch": "mcast.deliver", "to": dev_ref(e, ctx), "delivery": delivery,
                        "by": "dev_forward_skb" if e.probe == "fwd" else "netif_rx"})
        elif e.probe == "qxmit" and tx_origin:
            out.append({"branch": "mcast.out_parent", "to": dev_ref(e, ctx), "delivery": "sent",
                        "by": "__dev_queue_xmit"})
    n = sum(1 for m in out if m["branch"] == "mcast.deliver")
    parent = " and out of the parent" if any(m["branch"] == "mcast.out_parent" for m in out) else ""
    return out, f"the worker delivered it to {n} slave(s){parent}"


def event_json(ev: Event, ctx: Context) -> dict:
    d: dict = {"probe": ev.probe, "cpu": ev.cpu, "ts": ev.ts}
    if ev.probe in RET_PROBES:
        d["ret"] = ev.ret
    elif ev.probe == "lookup_ret":
        d["ret"] = f"{ev.aux:#x}" if ev.aux else 0
    ref = dev_ref(ev, ctx)
    if ref:
        d["dev"] = dev_str(ref)
    if ev.skb:
        d["skb"] = f"{ev.skb:#x}"
    if ev.probe in ("rcv_frame", "mc_enqueue"):
        d["local" if ev.probe == "rcv_frame" else "tx_pkt"] = ev.has(ctx.flag("local"))
    if ev.probe in ("kfree", "consume"):
        if ev.reason:
            d["reason"] = ctx.drop_reasons.get(ev.reason, ev.reason)
        if ev.aux:
            d["location"] = ctx.symbols.get(ev.aux, f"{ev.aux:#x}")
    return d
