"""Every rule of the classifier, one catalogue branch at a time, from the
Evidence alone: the facts a kernel context shows (helper ran, device,
return value), as live, replay and stats all hand them to classify().

The kernel's part (which facts a real packet gives) is in the fixtures and
the in-guest suite; here each branch's defining facts are written out, with
a near miss for the branches one fact tells apart."""
import pytest

from ipvtrace.model import catalogue
from ipvtrace.model.classify import (NET_XMIT_SUCCESS, RX_HANDLER_ANOTHER, RX_HANDLER_CONSUMED,
                               RX_HANDLER_PASS, classify)
from ipvtrace.model.evidence import BACKLOG_WHY, Evidence, backlog_drop, worker_delivery, worker_summary
from ipvtrace.model.packet import PacketInfo

NET_XMIT_DROP = 1
POD_A = {"dev": "eth0", "netns": "pod-a", "ifindex": 3}
POD_B = {"dev": "eth0", "netns": "pod-b", "ifindex": 3}
PARENT = {"dev": "ens10", "netns": "host", "ifindex": 2}
UNICAST = PacketInfo(eth_src="02:00:00:00:00:01", eth_dst="02:00:00:00:00:01", ethertype=0x0800,
                     proto="icmp", src="10.0.0.1", dst="10.0.0.2")
MCAST = PacketInfo(eth_src="02:00:00:00:00:01", eth_dst="33:33:00:00:00:01", ethertype=0x86DD,
                   proto="icmp6", src="fe80::1", dst="ff02::1")
ARP_L3 = PacketInfo(eth_src="02:00:00:00:00:01", eth_dst="02:00:00:00:00:09", ethertype=0x0806,
                    proto="arp", src="10.0.0.1", dst="10.0.0.2")
LLDP = PacketInfo(eth_src="02:00:00:00:00:01", eth_dst="02:00:00:00:00:09", ethertype=0x88CC)
NO_BRANCH_RULE = {"tx.drop.no_port"}   # no evidence tells it apart yet (see branches.toml)


def tx(mode="l2", info=UNICAST, flags=(), **kw) -> Evidence:
    return Evidence(direction="tx", frm=POD_A, info=info, mode=mode, flags=list(flags), **kw)


def rx(mode="l2", info=UNICAST, **kw) -> Evidence:
    return Evidence(direction="rx", frm=PARENT, info=info, mode=mode, **kw)


def worker(*steps) -> dict:
    share = [s for s in steps if s is not None]
    return {"mcast": share, "worker_why": worker_summary(share)}


# branch -> (evidence, expected delivery, expected "to")
CASES = {
    "tx.l2.local": (tx(found=True, owner=POD_B, rcv=True, fwd=True, fwd_to=POD_B, fwd_ret=0,
                       ret=NET_XMIT_SUCCESS), "delivered", POD_B),
    "tx.l3.local": (tx("l3", found=True, owner=POD_B, rcv=True, fwd=True, fwd_to=POD_B,
                       fwd_ret=0, ret=NET_XMIT_SUCCESS), "delivered", POD_B),
    "tx.l2.private_drop": (tx(flags=["private"], found=True, owner=POD_B, consume_own=True,
                              ret=NET_XMIT_DROP), "dropped", POD_B),
    "tx.l3.private_drop": (tx("l3", flags=["private"], found=True, owner=POD_B,
                              consume_own=True, ret=NET_XMIT_DROP), "dropped", POD_B),
    "tx.l2.to_parent": (tx(fwd=True, fwd_to=PARENT, fwd_ret=0, echo_ret=RX_HANDLER_PASS,
                           ret=NET_XMIT_SUCCESS), "delivered", PARENT),
    "tx.l2.multicast": (tx(info=MCAST, enq=True, ret=NET_XMIT_SUCCESS,
                           **worker(worker_delivery("fwd", POD_B, 0, True),
                                    worker_delivery("qxmit", PARENT, None, True))),
                        "queued", None),
    "tx.l2.out_parent": (tx(own_qx=True, own_qx_to=PARENT, ret=NET_XMIT_SUCCESS), "sent", PARENT),
    "tx.l3.routed": (tx("l3", local_out="local_out", local_out_to=PARENT, ret=NET_XMIT_SUCCESS),
                     "sent", PARENT),
    "tx.l3.route_fail": (tx("l3", kfree=True, ret=NET_XMIT_DROP), "dropped", None),
    "tx.l3.mcast_drop": (tx("l3", info=MCAST, kfree=True, ret=NET_XMIT_DROP), "dropped", None),
    "tx.l3.non_ip_drop": (tx("l3", info=LLDP, kfree=True, ret=NET_XMIT_DROP), "dropped", None),
    "tx.drop.runt": (tx(info=PacketInfo(), runt=True, kfree=True, ret=NET_XMIT_DROP),
                     "dropped", None),
    "rx.l2.multicast": (rx(info=MCAST, enq=True, ret=RX_HANDLER_PASS,
                           **worker(worker_delivery("netif_rx", POD_B, None, False))),
                        "queued", PARENT),
    "rx.l2.multicast_own": (rx(info=MCAST, ret=RX_HANDLER_PASS), "delivered", PARENT),
    "rx.local": (rx("l3", found=True, owner=POD_B, rcv=True, ret=RX_HANDLER_ANOTHER),
                 "delivered", POD_B),
    "rx.to_host": (rx("l3", info=ARP_L3, ret=RX_HANDLER_PASS), "delivered", PARENT),
    "rx.l3s.to_host": (rx("l3s", ret=RX_HANDLER_PASS, l3s_lookup=True), "delivered", PARENT),
    "rx.l3s.local": (rx("l3s", ret=RX_HANDLER_PASS, l3s_lookup=True, l3s_owner=POD_B,
                        nf_input=True), "delivered", POD_B),
    "rx.drop.bad_mode": (rx("mode7", kfree=True, ret=RX_HANDLER_CONSUMED), "dropped", None),
    "unknown": (tx(ret=NET_XMIT_SUCCESS), None, None),
}
# the worker's share of a queued packet: entries of Verdict.mcast, not rows of
# their own (test_multicast_shares)
SHARES = {"mcast.deliver", "mcast.out_parent", "mcast.backlog_drop"}


def test_every_catalogue_branch_has_a_case():
    ids = set(catalogue.load().branches)
    assert ids - NO_BRANCH_RULE == set(CASES) | SHARES


@pytest.mark.parametrize("branch", sorted(CASES))
def test_branch_from_evidence(branch):
    x, delivery, to = CASES[branch]
    v = classify(x)
    assert (v.branch, v.delivery, v.to) == (branch, delivery, to), v.why
    assert v.complete


def test_multicast_shares():
    """The worker's steps: a copy to each slave, the TX original out of the
    parent (never for an RX origin), or the backlog's drop."""
    x, _, _ = CASES["tx.l2.multicast"]
    v = classify(x)
    assert [(m["branch"], m["to"]) for m in v.mcast] == [("mcast.deliver", POD_B),
                                                         ("mcast.out_parent", PARENT)]
    assert worker_delivery("qxmit", PARENT, None, tx_origin=False) is None
    assert worker_delivery("fwd", POD_B, -1, True)["delivery"] == "forward_failed"

    class Ctx:
        drop_reasons = {2: "NOT_SPECIFIED"}

    full = tx(info=MCAST, enq=True, ret=NET_XMIT_SUCCESS, mcast=[backlog_drop(2, Ctx)],
              worker_why=BACKLOG_WHY)
    v = classify(full)
    assert (v.branch, v.delivery, v.mcast[0]["branch"], v.mcast[0]["reason"]) == \
        ("tx.l2.multicast", "dropped", "mcast.backlog_drop", "NOT_SPECIFIED")


def test_one_fact_tells_branches_apart():
    """Near misses: the fact that decides, and nothing else, changed."""
    # a forward that failed is not a delivery
    assert classify(tx(found=True, owner=POD_B, rcv=True, fwd=True, fwd_to=POD_B, fwd_ret=1,
                       ret=NET_XMIT_SUCCESS)).delivery == "forward_failed"
    # a slave that owns the address but was down: freed in ipvlan_rcv_frame
    assert classify(tx(found=True, owner=POD_B, rcv=True, kfree=True,
                       ret=NET_XMIT_DROP)).delivery == "slave_down"
    # no dev_forward_skb return: pending and incomplete
    v = classify(tx(found=True, owner=POD_B, rcv=True, fwd=True, fwd_to=POD_B))
    assert (v.branch, v.delivery, v.complete) == ("tx.l2.local", "pending", False)
    # L3S: the l3mdev lookup found a slave but LOCAL_IN was not seen
    v = classify(rx("l3s", ret=RX_HANDLER_PASS, l3s_lookup=True, l3s_owner=POD_B))
    assert (v.branch, v.delivery, v.complete) == ("rx.l3s.local", "pending", False)
    # the .isra clone's arguments were another packet's: the row says so and is incomplete
    v = classify(tx(found=True, owner=POD_B, rcv=True, fwd=True, fwd_to=POD_B, fwd_ret=0,
                    ret=NET_XMIT_SUCCESS, clone_mismatch="handed skb 0x1", complete=False))
    assert v.branch == "tx.l2.local" and not v.complete and "evidence rejected" in v.why
    # the same multicast passed by an L3 port is just passed to the host
    assert classify(rx("l3", info=MCAST, ret=RX_HANDLER_PASS)).branch == "rx.to_host"
    # a mode netlink never told: no local branch is guessed
    assert classify(tx(None, found=True, owner=POD_B, rcv=True, fwd=True, fwd_to=POD_B,
                       fwd_ret=0)).branch == "unknown"
    # VEPA: out of the parent even for a local MAC, and said so
    assert "VEPA" in classify(tx(flags=["vepa"], own_qx=True, own_qx_to=PARENT,
                                 ret=NET_XMIT_SUCCESS)).why
    # no return seen: pending
    assert classify(rx()).delivery == "pending"
    # a kernel that inlines ipvlan_rcv_frame into its RX path (7.2) gives no
    # hit for it: the slave the lookup found and RX_HANDLER_ANOTHER name
    # rx.local there, and the row says the hit cannot exist; where the RX path
    # calls the probed symbol (6.1, 6.12) its hit stays required
    v = classify(rx("l3", found=True, owner=POD_B, rcv_inlined=True, ret=RX_HANDLER_ANOTHER))
    assert (v.branch, v.delivery, v.to, v.complete) == ("rx.local", "delivered", POD_B, True)
    assert "inlined" in v.why
    assert classify(rx("l3", found=True, owner=POD_B, ret=RX_HANDLER_ANOTHER)).branch == "unknown"
    assert classify(rx("l3", rcv_inlined=True, ret=RX_HANDLER_ANOTHER)).branch == "unknown"


def test_kernel_facts_from_a_recorded_plan():
    """A recording's header keeps the probe plan; what naming needs of it is
    read back defensively (a file is a stranger's): the defaults are 6.1's
    and 6.12's behaviour, which older recordings also had."""
    from ipvtrace.model.evidence import KernelFacts

    assert KernelFacts.from_plan(None) == KernelFacts() == KernelFacts.from_plan({})
    assert KernelFacts.from_plan({"rcv_frame_rx": "inlined", "worker_rx": "netif_receive_skb"}) == \
        KernelFacts(rcv_inlined_rx=True, worker_rx="netif_receive_skb")
    assert KernelFacts.from_plan({"rcv_frame_rx": "unknown"}).rcv_inlined_rx
    assert KernelFacts.from_plan({"rcv_frame_rx": ["inlined"], "worker_rx": {"x": 1}}) == KernelFacts()
    assert KernelFacts.from_plan({"worker_rx": "system"}).worker_rx == "netif_rx"
    # the worker's RX copy is named by the function the probe was on
    assert worker_delivery("netif_rx", POD_B, None, False, "netif_receive_skb")["by"] == \
        "netif_receive_skb"


def test_l3s_on_a_kernel_that_cannot_show_the_lookup():
    """5.10 inlines ipvlan_skb_to_addr: an L3S frame's owner lookup is never
    seen there, so a passed frame is neither rx.l3s.local nor rx.l3s.to_host
    but an incomplete unknown that says why (where the lookup is probe-able,
    no lookup means the parent keeps it)."""
    from ipvtrace.model.evidence import KernelFacts

    assert KernelFacts.from_plan({"missing": [{"name": "s2a"}, {"name": "s2a_ret"}]}).l3s_blind
    assert not KernelFacts.from_plan({"missing": "s2a_ret"}).l3s_blind
    v = classify(rx("l3s", ret=RX_HANDLER_PASS, l3s_blind=True))
    assert (v.branch, v.complete) == ("unknown", False) and "not probe-able" in v.why
    v = classify(rx("l3s", ret=RX_HANDLER_PASS))
    assert (v.branch, v.complete) == ("rx.l3s.to_host", True)
