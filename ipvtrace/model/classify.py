"""Name the branch a packet took, from its Evidence.

Evidence first, mode second: a branch is chosen from what the kernel did
(which helper ran, on which device, what it returned); the port mode read by
netlink only labels L2 vs L3 where the same evidence means either. Anything
that fits no rule is `unknown`, with its events, never a guess. The rules see
only an Evidence (ipvtrace/model/evidence.py): the same for live, replay and stats.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ipvtrace.model import catalogue
from ipvtrace.model.decode import Event
from ipvtrace.model.evidence import Context, Evidence, dev_ref, dev_str
from ipvtrace.model.packet import PacketInfo

__all__ = ["Context", "Evidence", "Verdict", "classify", "event_json"]

RX_HANDLER_CONSUMED, RX_HANDLER_ANOTHER, RX_HANDLER_PASS = 0, 1, 3
NET_XMIT_SUCCESS, NET_RX_SUCCESS = 0, 0
RET_PROBES = {"xmit_ret", "rx_ret", "fwd_ret"}


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


def classify(x: Evidence) -> Verdict:
    """The branch *x* shows, checked against the catalogue."""
    cat = catalogue.load()
    if x.direction not in ("tx", "rx"):
        v = Verdict("unknown", "pending", None, [], PacketInfo(), None, None, False,
                    "the entry event was not seen (lost, or before tracing started)")
    else:
        v = (_tx if x.direction == "tx" else _rx)(x)
    cat.check(v.branch)
    cat.check_delivery(v.delivery)
    for m in v.mcast:
        cat.check(m["branch"])
    return v


def _v(x: Evidence, branch: str, delivery: str | None, to: dict | None, why: str,
       **kw) -> Verdict:
    if x.clone_mismatch:
        why = f"{why} (evidence rejected: {x.clone_mismatch})"
    return Verdict(branch, delivery, x.mode, x.flags, x.info, x.frm, to, x.complete, why, **kw)


def _tx(x: Evidence) -> Verdict:
    info, mode, flags, ret, dst, fam = x.info, x.mode, x.flags, x.ret, x.dst, x.fam

    def v(*a, **kw) -> Verdict:
        return _v(x, *a, **kw)

    if x.enq:
        if fam not in (None, "l2"):
            return v("unknown", None, None, f"multicast enqueue on a port netlink calls {mode}")
        queued = "dropped" if x.mcast and x.mcast[0]["branch"] == "mcast.backlog_drop" else "queued"
        return v("tx.l2.multicast", queued, None,
                 f"dst MAC {info.eth_dst} is multicast: ipvlan_multicast_enqueue(tx); {x.worker_why}",
                 mcast=x.mcast)
    if x.rcv or (x.found and x.fwd):
        if fam is None:
            return v("unknown", None, None, "a slave owns the destination, but the port mode is unknown")
        to = x.fwd_to if x.fwd else x.owner
        if x.fwd_ret is not None:
            r = x.fwd_ret
            delivery = "delivered" if r == NET_RX_SUCCESS else "forward_failed"
            how = f"dev_forward_skb({dev_str(to)}) returned {r}"
        elif x.kfree and not x.fwd:
            delivery = "slave_down"
            how = "the target slave was not up: freed in ipvlan_rcv_frame"
        else:
            delivery, how = "pending", "dev_forward_skb's return was not seen"
            x.complete = False
        same = "dst MAC == src MAC, " if fam == "l2" else ""
        return v(f"tx.{fam}.local", delivery, to,
                 f"{same}{dev_str(x.owner)} owns {dst}: ipvlan_rcv_frame(local) -> {how}")
    if x.found and x.consume_own and ret not in (None, NET_XMIT_SUCCESS):
        if fam is None:
            return v("unknown", "dropped", None, "private drop on a port of unknown mode")
        return v(f"tx.{fam}.private_drop", "dropped", x.owner,
                 f"{dev_str(x.owner)} owns {dst} but the port is private: consume_skb")
    if x.fwd:
        to = x.fwd_to
        if x.fwd_ret is not None:
            delivery = "delivered" if x.fwd_ret == NET_RX_SUCCESS else "forward_failed"
        else:
            delivery = "pending"
            x.complete = False
        echo = ""
        if x.echo_ret is not None:
            verdict = {RX_HANDLER_PASS: "PASS", RX_HANDLER_ANOTHER: "ANOTHER",
                       RX_HANDLER_CONSUMED: "CONSUMED"}.get(x.echo_ret, str(x.echo_ret))
            echo = f"; the parent's rx_handler returned {verdict}"
        return v("tx.l2.to_parent", delivery, to,
                 f"dst MAC == src MAC, no slave owns {dst}: dev_forward_skb({dev_str(to)}){echo}")
    if x.local_out:
        to = x.local_out_to
        delivery = "sent" if ret == NET_XMIT_SUCCESS else "dropped"
        vepa = " (VEPA)" if "vepa" in flags else ""
        fn = "ip6_local_out" if x.local_out == "local_out6" else "ip_local_out"
        return v("tx.l3.routed", delivery, to,
                 f"no slave owns {dst}{vepa}: routed in the parent's netns by {fn} via {dev_str(to)}")
    if x.own_qx:
        to = x.own_qx_to
        delivery = "sent" if ret == NET_XMIT_SUCCESS else "dropped"
        why = ("VEPA: every unicast leaves by the parent" if "vepa" in flags else
               f"dst MAC {info.eth_dst} is not ours: out of the parent")
        return v("tx.l2.out_parent", delivery, to, f"{why}, __dev_queue_xmit({dev_str(to)}) ret {ret}")
    if x.kfree and ret not in (None, NET_XMIT_SUCCESS):
        kw = {"reason": x.reason, "location": x.location}
        if x.runt:
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
    return v("unknown", None, None, f"no branch fits: ret {ret}, helpers {x.helpers}")


def _rx(x: Evidence) -> Verdict:
    info, mode, ret, dst, frm = x.info, x.mode, x.ret, x.dst, x.frm

    def v(*a, **kw) -> Verdict:
        return _v(x, *a, **kw)

    if ret is None:
        return v("unknown", "pending", None, "ipvlan_handle_frame's return was not seen")
    if ret == RX_HANDLER_ANOTHER and (x.rcv or (x.rcv_inlined and x.found)):
        how = "ipvlan_rcv_frame" if x.rcv else (
            "ipvlan_rcv_frame (inlined in this kernel's RX path: no hit of its own)")
        return v("rx.local", "delivered", x.owner,
                 f"{dev_str(x.owner)} owns {dst}: {how} -> skb->dev = slave, RX_HANDLER_ANOTHER")
    if x.enq and ret == RX_HANDLER_PASS:
        queued = "dropped" if x.mcast and x.mcast[0]["branch"] == "mcast.backlog_drop" else "queued"
        return v("rx.l2.multicast", queued, frm,
                 f"multicast from outside: a clone is queued (ipvlan_multicast_enqueue), "
                 f"the original passes to the host; {x.worker_why}", mcast=x.mcast)
    if ret == RX_HANDLER_CONSUMED and x.kfree:
        return v("rx.drop.bad_mode", "dropped", None, f"port mode {mode!r} unknown to ipvlan: freed",
                 reason=x.reason, location=x.location)
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
    owner, dst = x.l3s_owner, x.dst
    if owner is None and x.l3s_blind:
        # the lookup that decides is never seen here: no branch is guessed
        x.complete = False
        return _v(x, "unknown", None, None,
                  f"L3S: this kernel's ipvlan_skb_to_addr is not probe-able (inlined): whether a "
                  f"slave owns {dst} (rx.l3s.local) or the parent keeps it (rx.l3s.to_host) is not shown")
    if owner is None:
        why = (f"L3S: ipvlan_l3_rcv found no slave owning {dst}: the parent's stack keeps it"
               if x.l3s_lookup else "L3S: the rx_handler always passes; no l3mdev lookup for this frame")
        return _v(x, "rx.l3s.to_host", "delivered", x.frm, why)
    if x.nf_input:
        return _v(x, "rx.l3s.local", "delivered", owner,
                  f"L3S: ipvlan_l3_rcv: {dev_str(owner)} owns {dst}, routed in its netns; "
                  f"ipvlan_nf_input set skb->dev = {owner['dev']} at LOCAL_IN")
    x.complete = False
    return _v(x, "rx.l3s.local", "pending", owner,
              f"L3S: ipvlan_l3_rcv: {dev_str(owner)} owns {dst}; LOCAL_IN (ipvlan_nf_input) not seen")


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
