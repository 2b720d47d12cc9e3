"""Evidence: what the kernel showed of one ipvlan decision, the classifier's
only input.

Two sources fill it, and nothing else reaches `classify()`: a correlated
Packet of events (live, record's replay) through `from_packet()`, and a
signature the kernel counted (stats) through `counting.evidence_of()`. Each
field is a fact the rules can test (a helper ran, on which device, what it
returned), already named: the rules never look at events or devices again.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ipvtrace.model.correlate import Packet
from ipvtrace.model.decode import Event
from ipvtrace.model.packet import PacketInfo, parse
from ipvtrace.model.topology import Topology


@dataclass(frozen=True)
class KernelFacts:
    """What the probe plan read from this kernel's code that naming needs
    (probes.py decides them; a recording's header keeps the plan)."""

    rcv_inlined_rx: bool = False   # no ipvlan_rcv_frame hit on RX (inlined, or unknown)
    worker_rx: str = "netif_rx"    # how the multicast worker hands RX copies to a slave
    l3s_blind: bool = False        # ipvlan_skb_to_addr not probe-able (inlined on 5.10):
                                   # an L3S port's owner lookup is never seen

    @classmethod
    def from_plan(cls, plan: object) -> "KernelFacts":
        """From a plan as a header keeps it: any JSON value (a file is a
        stranger's); what is not understood keeps the default."""
        if not isinstance(plan, dict):
            return cls()
        worker_rx = plan.get("worker_rx")
        missing = plan.get("missing")
        missing = [m.get("name") for m in missing if isinstance(m, dict)] if isinstance(missing, list) else []
        return cls(rcv_inlined_rx=plan.get("rcv_frame_rx") in ("inlined", "unknown"),
                   worker_rx=worker_rx if worker_rx in WORKER_RX_FNS else "netif_rx",
                   l3s_blind="s2a_ret" in missing)


# the functions ipvlan_process_multicast hands a frame from outside to a
# slave with: netif_rx on 6.1 and 6.12, netif_receive_skb on 7.2
WORKER_RX_FNS = ("netif_rx", "netif_receive_skb")


@dataclass
class Context:
    """What naming needs besides the events: devices, drop reasons, symbols."""

    topo: Topology
    drop_reasons: dict[int, str] = field(default_factory=dict)
    symbols: dict[int, str] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)
    kernel: KernelFacts = field(default_factory=KernelFacts)

    def flag(self, name: str) -> int:
        return self.flags.get(name, 0)

    def device(self, netns: int, ifindex: int) -> dict | None:
        """A device reference from the snapshot (stats: signatures carry no names)."""
        if not ifindex:
            return None
        dev = self.topo.device(netns, ifindex)
        return self.topo.dev_ref(netns, ifindex, dev.get("name", "") if dev else f"if{ifindex}")


@dataclass
class Evidence:
    """One decision's facts. A field left at its default was not seen."""

    direction: str                        # "tx" (ipvlan_queue_xmit) or "rx" (handle_frame)
    frm: dict | None                      # the entry's device
    info: PacketInfo                      # the frame as ipvlan got it
    mode: str | None = None               # the port's mode and flags (netlink)
    flags: list[str] = field(default_factory=list)
    complete: bool = True                 # nothing of this context was lost or missing
    ret: int | None = None                # the entry function's return
    runt: bool = False                    # shorter than an Ethernet header
    found: bool = False                   # ipvlan_addr_lookup found a slave
    owner: dict | None = None             # ... this one
    rcv: bool = False                     # ipvlan_rcv_frame ran
    rcv_inlined: bool = False             # ... has no probe hit on this kernel's RX path
    clone_mismatch: str | None = None     # its .isra clone's arguments were not this packet's
    fwd: bool = False                     # dev_forward_skb ran
    fwd_to: dict | None = None
    fwd_ret: int | None = None
    enq: bool = False                     # ipvlan_multicast_enqueue ran
    mcast: list[dict] = field(default_factory=list)   # the worker's share, one per delivery
    worker_why: str = ""
    local_out: str | None = None          # ip_local_out / ip6_local_out ran (its name)
    local_out_to: dict | None = None
    own_qx: bool = False                  # __dev_queue_xmit of the entry's own skb
    own_qx_to: dict | None = None
    kfree: bool = False                   # skb:kfree_skb inside the context
    reason: str | None = None             # ... its drop reason and location
    location: str | None = None
    consume_own: bool = False             # consume_skb of the entry's own skb
    echo_ret: int | None = None           # the parent's rx_handler verdict on a to-parent frame
    l3s_lookup: bool = False              # L3S: ipvlan_skb_to_addr ran for this frame
    l3s_owner: dict | None = None         # ... and found this slave
    l3s_blind: bool = False               # ... is never seen on this kernel (KernelFacts)
    nf_input: bool = False                # L3S: ipvlan_nf_input at LOCAL_IN
    helpers: str = "none"                 # the helper probes seen, for "no branch fits"

    @property
    def fam(self) -> str | None:
        return "l2" if self.mode == "l2" else "l3" if self.mode in ("l3", "l3s") else None

    @property
    def dst(self) -> str:
        return self.info.dst or "?"


def dev_ref(ev: Event | None, ctx: Context) -> dict | None:
    """The device an event names, as the kernel named it at that moment."""
    if ev is None or not ev.has(ctx.flag("has_dev")):
        return None
    return ctx.topo.dev_ref(ev.netns, ev.ifindex, ev.ifname)


def dev_str(ref: dict | None) -> str:
    return f"{ref['dev']}@{ref['netns']}" if ref else "-"


def worker_delivery(probe: str, to: dict | None, ret: int | None, tx_origin: bool,
                    rx_by: str = "netif_rx") -> dict | None:
    """One step of the multicast worker for a queued packet: a copy to a
    slave (dev_forward_skb for a TX origin; for RX *rx_by*, the function
    the `netif_rx` probe is on: KernelFacts.worker_rx), or the TX original
    out of the parent. Shared by events and counted signatures."""
    if probe in ("fwd", "netif_rx"):
        return {"branch": "mcast.deliver", "to": to,
                "delivery": "delivered" if ret in (None, 0) else "forward_failed",
                "by": "dev_forward_skb" if probe == "fwd" else rx_by}
    if probe == "qxmit" and tx_origin:
        return {"branch": "mcast.out_parent", "to": to, "delivery": "sent", "by": "__dev_queue_xmit"}
    return None


def backlog_drop(reason: int, ctx: Context) -> dict:
    """ipvlan_multicast_enqueue freed the skb: the backlog was full (or a PAUSE frame)."""
    return {"branch": "mcast.backlog_drop", "to": None, "delivery": "dropped",
            "by": "ipvlan_multicast_enqueue", "reason": ctx.drop_reasons.get(reason, reason or None)}


def worker_summary(mcast: list[dict]) -> str:
    n = sum(1 for m in mcast if m["branch"] == "mcast.deliver")
    parent = " and out of the parent" if any(m["branch"] == "mcast.out_parent" for m in mcast) else ""
    return f"the worker delivered it to {n} slave(s){parent}"


BACKLOG_WHY = "the multicast backlog was full: freed in ipvlan_multicast_enqueue"


# -- from events (live, replay) ------------------------------------------------

def _base_complete(pkt: Packet) -> bool:
    if pkt.entry is None or pkt.ret is None or pkt.lost_overlap or pkt.evicted:
        return False
    if pkt.waiting_for == "worker" and not pkt.worker_done:
        return False
    if pkt.waiting_for == "rx" and (not pkt.cont or pkt.cont_ret is None):
        return False
    if pkt.waiting_for == "tx":   # a to-parent frame's RX whose TX never came
        return False
    return True


def rcv_frame_mismatch(entry: Event, rcv: Sequence[Event], found: Sequence[Event]) -> str | None:
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


def mcast_share(pkt: Packet, ctx: Context, tx_origin: bool) -> tuple[list[dict], str]:
    """The worker's share of a queued packet (one entry per delivery), and why."""
    enq_skb = {e.skb for e in pkt.helpers("mc_enqueue")}
    for e in pkt.helpers("kfree"):
        if e.skb in enq_skb:
            return [backlog_drop(e.reason, ctx)], BACKLOG_WHY
    if not pkt.worker_done:
        return [], "the multicast worker's run was not seen"
    out: list[dict] = []
    evs = pkt.worker
    for i, e in enumerate(evs):
        if e.probe in ("fwd", "netif_rx") and e.skb in enq_skb:
            continue   # the queued skb itself, not a copy
        r = None
        if e.probe == "fwd":
            nxt = next((x for x in evs[i + 1:] if x.probe == "fwd_ret" and x.ctx == e.ctx), None)
            r = nxt.ret if nxt is not None else None
        step = worker_delivery(e.probe, dev_ref(e, ctx), r, tx_origin, ctx.kernel.worker_rx)
        if step is not None:
            out.append(step)
            if step["branch"] == "mcast.out_parent":
                # the frame's last step in ipvlan_process_multicast: what the
                # run does with this memory after it is the same send on the
                # device below a VLAN or bond parent, the parent's peer
                # reflecting it, or the memory freed and reused (seen on 5.10:
                # the outside's ARP reply, sent and received within the send)
                break
    return out, worker_summary(out)


def _helper_names(by: dict[str, tuple[Event, ...]], entry_probe: str) -> str:
    """The helper probes a packet's context saw ("no branch fits" names them)."""
    names = [p for p in by if p != entry_probe or len(by[p]) > 1]
    return ",".join(sorted(names)) or "none"


def from_packet(pkt: Packet, ctx: Context) -> Evidence:
    """A correlated packet's events, named once."""
    entry = pkt.entry
    if entry is None:
        return Evidence(direction="?", frm=None, info=PacketInfo(), complete=False)
    info = parse(entry.hdr, has_mac=not entry.has(ctx.flag("no_mac")))
    port = ctx.topo.port_of(entry.netns, entry.ifindex) or {}
    by = pkt.by_probe()
    found = [e for e in by.get("lookup_ret", ()) if e.aux]
    rcv = by.get("rcv_frame", ())
    fwds, fwd_rets = by.get("fwd", ()), by.get("fwd_ret", ())
    louts = by.get("local_out", ()) + by.get("local_out6", ())
    own_qx = [e for e in by.get("qxmit", ()) if e.skb == entry.skb]
    kfree = by.get("kfree", ())
    x = Evidence(
        direction=pkt.direction, frm=dev_ref(entry, ctx), info=info,
        mode=port.get("mode"), flags=list(port.get("flags", [])),
        complete=_base_complete(pkt),
        ret=pkt.ret.ret if pkt.ret is not None else None,
        runt=bool(len(entry.hdr) and len(entry.hdr) < 14 and entry.len < 14),
        found=bool(found), owner=dev_ref(found[-1], ctx) if found else None,
        rcv=bool(rcv), rcv_inlined=ctx.kernel.rcv_inlined_rx, l3s_blind=ctx.kernel.l3s_blind,
        clone_mismatch=rcv_frame_mismatch(entry, rcv, found),
        fwd=bool(fwds), fwd_to=dev_ref(fwds[-1], ctx) if fwds else None,
        fwd_ret=fwd_rets[-1].ret if fwd_rets else None,
        enq="mc_enqueue" in by,
        local_out=louts[-1].probe if louts else None,
        local_out_to=dev_ref(louts[-1], ctx) if louts else None,
        # the first: the parent; a VLAN or bond parent queues it again below
        own_qx=bool(own_qx), own_qx_to=dev_ref(own_qx[0], ctx) if own_qx else None,
        kfree=bool(kfree),
        consume_own=any(e.skb == entry.skb for e in by.get("consume", ())),
        echo_ret=pkt.cont_ret.ret if pkt.cont_ret is not None else None,
        helpers=_helper_names(by, entry.probe),
    )
    if kfree:
        e = kfree[0]
        x.reason = ctx.drop_reasons.get(e.reason, str(e.reason) if e.reason else None)
        x.location = ctx.symbols.get(e.aux) or (f"{e.aux:#x}" if e.aux else None)
    if x.enq:
        x.mcast, x.worker_why = mcast_share(pkt, ctx, tx_origin=x.direction == "tx")
    s2a = [e for e in pkt.cont if e.probe == "s2a_ret"]
    if s2a:
        x.l3s_lookup = True
        x.l3s_owner = dev_ref(s2a[0], ctx) if s2a[0].aux else None
    x.nf_input = any(e.probe == "nf_input" for e in pkt.cont)
    if x.clone_mismatch:
        x.complete = False
    return x
