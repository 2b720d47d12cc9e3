"""Topologies beyond the article (checks shared by the in-guest test and the
fixture replay tests): port flags (private,
vepa), L3S, IPv6, and the L3 drops. Expectations from ipvlan_core.c:

- PRIVATE: a slave-to-slave frame is consume_skb'd in ipvlan_xmit_mode_l2/l3
  (tx.l2.private_drop), NET_XMIT_DROP.
- VEPA: every unicast leaves by the parent, even to a sibling slave
  (tx.l2.out_parent).
- L3S: TX takes the L3 code (tx.l3.local, mode l3s); the rx_handler always
  passes, then ipvlan_l3_rcv finds the slave and ipvlan_nf_input hands the
  frame to it at LOCAL_IN (rx.l3s.local); a frame for the parent's own
  address stays with the host (rx.l3s.to_host).
- L3 PRIVATE: as L2 (tx.l3.private_drop).
- MTU: dev_forward_skb refuses a frame longer than the target slave's MTU
  (is_skb_forwardable): tx.l2.local with delivery forward_failed.
- L3, a frame that is neither IPv4 nor IPv6 (sent from a packet socket):
  tx.l3.non_ip_drop; IPv4 to the parent netns's broadcast address: the route
  type is not unicast/local, tx.l3.route_fail.
- A broadcast of our own slave that comes back into the parent (the peer
  reflects it, tc mirred): ipvlan_external_frame says "ours", nothing is
  queued (rx.l2.multicast_own).
- IPv6 on L2: NS to the solicited-node multicast MAC is queued for the worker
  (tx.l2.multicast); echo between slaves is tx.l2.local.
- L3 outbound with a multicast dst MAC is dropped in ipvlan_process_outbound
  (tx.l3.mcast_drop); IPv6 with no route in the parent's netns fails in
  ipvlan_route_v6_outbound (tx.l3.route_fail, ret -ENETUNREACH).
"""
from __future__ import annotations

from article_checks import S2A_PROBES, l3s_not_shown, l3s_rx, l3s_rx_not_shown, requires
from ipvtrace.lab.netlab import Lab


H = "ipvt-t-host"
PA, PB = "ipvt-t-priv-a", "ipvt-t-priv-b"
VA, VB = "ipvt-t-vepa-a", "ipvt-t-vepa-b"
SA, SB, SOUT = "ipvt-t-l3s-a", "ipvt-t-l3s-b", "ipvt-t-l3s-out"
SIXA, SIXB = "ipvt-t-v6-a", "ipvt-t-v6-b"
L3D = "ipvt-t-l3drop"
L3PA, L3PB = "ipvt-t-l3priv-a", "ipvt-t-l3priv-b"
MA, MB = "ipvt-t-mtu-a", "ipvt-t-mtu-b"
REFL, REFL_PEER = "ipvt-t-refl", "ipvt-t-refl-peer"
ALL = [H, PA, PB, VA, VB, SA, SB, SOUT, SIXA, SIXB, L3D, L3PA, L3PB, MA, MB, REFL, REFL_PEER]
# an Ethernet frame with an ethertype that is neither IPv4 nor IPv6 (0x88b5,
# local experimental): dst = src = the L3 slave's MAC, filled in by build()
NON_IP_TYPE = "88b5"


def build(lab: Lab) -> list[tuple[str, str, int]]:
    """Returns the traffic: (netns, ping target, count)."""
    # private L2 port: pinned neighbours so ICMP is sent at all
    lab.veth(H, "p0", H, "p0peer")
    for ns, ip in ((PA, "10.1.0.1/24"), (PB, "10.1.0.2/24")):
        lab.ipvlan(H, "p0", f"pv{ns[-1]}", "l2", flag="private", into=ns, rename="eth0")
        lab.addr(ns, "eth0", ip)
    mac = lab.mac(H, "p0")
    lab.neigh(PA, "eth0", "10.1.0.2", mac)
    # vepa L2 port
    lab.veth(H, "v0", H, "v0peer")
    for ns, ip in ((VA, "10.2.0.1/24"), (VB, "10.2.0.2/24")):
        lab.ipvlan(H, "v0", f"vv{ns[-1]}", "l2", flag="vepa", into=ns, rename="eth0")
        lab.addr(ns, "eth0", ip)
    lab.neigh(VA, "eth0", "10.2.0.2", lab.mac(H, "v0"))
    # L3S port, with an outside namespace that routes to the slave
    lab.veth(H, "s0", SOUT, "ext0")
    lab.addr(H, "s0", "10.3.0.1/24")
    lab.addr(SOUT, "ext0", "10.3.0.254/24")
    for ns, ip in ((SA, "10.4.0.1/24"), (SB, "10.5.0.1/24")):
        lab.ipvlan(H, "s0", f"sv{ns[-1]}", "l3s", into=ns, rename="eth0")
        lab.addr(ns, "eth0", ip)
        lab.route(ns, "default", dev="eth0")
    lab.route(SOUT, "10.4.0.0/24", via="10.3.0.1")
    # IPv6 on an L2 port (no DAD wait)
    lab.veth(H, "x0", H, "x0peer")
    for ns, ip in ((SIXA, "fd00:6::1/64"), (SIXB, "fd00:6::2/64")):
        lab.ipvlan(H, "x0", f"xv{ns[-1]}", "l2", into=ns, rename="eth0")
        lab.sysctl(ns, "net.ipv6.conf.eth0.accept_dad", "0")
        lab.addr(ns, "eth0", ip)
    # L3 drops: multicast dst, and IPv6 with no route in the parent netns
    lab.veth(H, "d0", H, "d0peer")
    lab.ipvlan(H, "d0", "dv", "l3", into=L3D, rename="eth0")
    lab.sysctl(L3D, "net.ipv6.conf.eth0.accept_dad", "0")
    lab.addr(L3D, "eth0", "10.6.0.1/24")
    lab.addr(L3D, "eth0", "fd00:7::1/64")
    lab.route(L3D, "default", dev="eth0")
    lab.route(L3D, "::/0", dev="eth0")
    lab.addr(H, "d0", "10.66.0.1/24")        # 10.66.0.255: broadcast in the parent netns
    # L3 private port
    lab.veth(H, "q0", H, "q0peer")
    for ns, ip in ((L3PA, "10.8.0.1/24"), (L3PB, "10.9.0.1/24")):
        lab.ipvlan(H, "q0", f"qv{ns[-1]}", "l3", flag="private", into=ns, rename="eth0")
        lab.addr(ns, "eth0", ip)
        lab.route(ns, "default", dev="eth0")
    # MTU: the receiving slave's MTU is smaller than the frame
    lab.veth(H, "m0", H, "m0peer")
    for ns, ip in ((MA, "10.10.0.1/24"), (MB, "10.10.0.2/24")):
        lab.ipvlan(H, "m0", f"mv{ns[-1]}", "l2", into=ns, rename="eth0")
        lab.addr(ns, "eth0", ip)
    lab.mtu(MB, "eth0", 1000)
    lab.neigh(MA, "eth0", "10.10.0.2", lab.mac(H, "m0"))
    # reflection: the parent's peer sends every frame straight back
    lab.veth(H, "r0", REFL_PEER, "rpeer")
    lab.run(REFL_PEER, ["tc", "qdisc", "add", "dev", "rpeer", "clsact"], check=True)
    lab.run(REFL_PEER, ["tc", "filter", "add", "dev", "rpeer", "ingress", "matchall",
                        "action", "mirred", "egress", "redirect", "dev", "rpeer"], check=True)
    lab.ipvlan(H, "r0", "rv", "l2", into=REFL, rename="eth0")
    lab.addr(REFL, "eth0", "10.11.0.1/24")
    return [(PA, "10.1.0.2", 2), (VA, "10.2.0.2", 2), (SA, "10.5.0.1", 2), (SOUT, "10.4.0.1", 2),
            (SIXA, "fd00:6::2", 2), (L3D, "224.0.0.1", 1), (L3D, "fd00:99::1", 1),
            (L3D, "10.66.0.255", 1), (L3PA, "10.9.0.1", 1), (MA, "10.10.0.2", 1, 1200),
            (REFL, "10.11.0.99", 1)]


def send_non_ip(lab: Lab) -> None:
    mac = lab.mac(L3D, "eth0").replace(":", "")
    lab.send_raw(L3D, "eth0", mac + mac + NON_IP_TYPE + "00" * 46)


def of(rows, src, dst, kind="echo-request"):
    return [r for r in rows if r["src"] == src and r["dst"] == dst and r["kind"] == kind]


def check_private_drop(rows):
    got = of(rows, "10.1.0.1", "10.1.0.2")
    # NET_XMIT_DROP reaches ping's sendmsg, which tries again: more than 2
    assert len(got) >= 2 and {(r["branch"], r["delivery"]) for r in got} == {
        ("tx.l2.private_drop", "dropped")}, got
    assert all(r["flags"] == ["private"] for r in got)


def check_vepa_out_parent(rows):
    got = of(rows, "10.2.0.1", "10.2.0.2")
    assert got and {r["branch"] for r in got} == {"tx.l2.out_parent"}, got
    assert all(r["to"]["dev"] == "v0" for r in got)


def _l3s_tx_local(rows):
    got = of(rows, "10.4.0.1", "10.5.0.1")
    assert len(got) == 2 and {(r["branch"], r["mode"], r["delivery"]) for r in got} == {
        ("tx.l3.local", "l3s", "delivered")}, got


def _l3s_tx_local_rx_not_shown(rows):
    """Without ipvlan_skb_to_addr: the TX side as everywhere, the RX side
    said to be not shown."""
    _l3s_tx_local(rows)
    l3s_not_shown(of(rows, "10.3.0.254", "10.4.0.1"))


@requires("l3_rcv", "nf_input", "s2a", "s2a_ret", otherwise=_l3s_tx_local_rx_not_shown,
          covers=S2A_PROBES)
def check_l3s_tx_local_and_rx_pass(rows):
    _l3s_tx_local(rows)
    rx = of(rows, "10.3.0.254", "10.4.0.1")
    assert rx and {(r["branch"], r["delivery"], r["complete"]) for r in rx} == {
        ("rx.l3s.local", "delivered", True)}, [(r["branch"], r["why"]) for r in rx]
    assert {r["to"]["netns"] for r in rx} == {SA}


def check_ipv6_l2(rows):
    ns = [r for r in rows if r["kind"] == "neighbor-solicit" and r["src"] == "fd00:6::1"]
    assert ns and all(r["branch"] == "tx.l2.multicast" for r in ns), ns
    echo = of(rows, "fd00:6::1", "fd00:6::2")
    assert len(echo) == 2 and {(r["branch"], r["delivery"]) for r in echo} == {
        ("tx.l2.local", "delivered")}, echo
    assert of(rows, "fd00:6::2", "fd00:6::1", "echo-reply")


def check_l3_multicast_drop(rows):
    got = of(rows, "10.6.0.1", "224.0.0.1")
    assert got and {(r["branch"], r["delivery"]) for r in got} == {
        ("tx.l3.mcast_drop", "dropped")}, got


def check_l3_ipv6_route_fail(rows):
    got = of(rows, "fd00:7::1", "fd00:99::1")
    assert got and {(r["branch"], r["delivery"]) for r in got} == {
        ("tx.l3.route_fail", "dropped")}, got
    rets = {e["ret"] for r in got for e in r["events"] if e["probe"] == "xmit_ret"}
    assert rets == {-101}, rets


def check_nothing_unknown(rows):
    """No row without a branch (but an L3S port's RX rows: the next check)."""
    unknown = [(r["summary"], r["why"]) for r in rows
               if r["branch"] == "unknown" and not l3s_rx(r)]
    assert not unknown, unknown


@requires("l3_rcv", "nf_input", "s2a", "s2a_ret", otherwise=l3s_rx_not_shown, covers=S2A_PROBES)
def check_l3s_rx_named(rows):
    """An L3S port's RX rows have a branch where the kernel shows its lookup
    (5.10 inlines ipvlan_skb_to_addr: there they are `unknown`, by design)."""
    got = [r for r in rows if l3s_rx(r)]
    unknown = [(r["summary"], r["why"]) for r in got if r["branch"] == "unknown"]
    assert got and not unknown, unknown


def check_l3_private_drop(rows):
    got = of(rows, "10.8.0.1", "10.9.0.1")
    assert got and {(r["branch"], r["delivery"]) for r in got} == {
        ("tx.l3.private_drop", "dropped")}, got


def check_forward_failed_mtu(rows):
    got = of(rows, "10.10.0.1", "10.10.0.2")
    assert got and {(r["branch"], r["delivery"]) for r in got} == {
        ("tx.l2.local", "forward_failed")}, [(r["branch"], r["delivery"], r["why"]) for r in got]


def check_l3_route_fail_v4_broadcast(rows):
    got = of(rows, "10.6.0.1", "10.66.0.255")
    assert got and {(r["branch"], r["delivery"]) for r in got} == {
        ("tx.l3.route_fail", "dropped")}, got


def check_l3_non_ip_drop(rows):
    got = [r for r in rows if r["from"] and r["from"]["netns"] == L3D and r["proto"] == "?"]
    assert got and {(r["branch"], r["delivery"]) for r in got} == {
        ("tx.l3.non_ip_drop", "dropped")}, got


@requires("mc_enqueue", "mc_work", "mc_work_ret")
def check_multicast_own(rows):
    arp = [r for r in rows if r["proto"] == "arp" and r["dst"] == "10.11.0.99"]
    tx = [r for r in arp if r["direction"] == "tx"]
    back = [r for r in arp if r["direction"] == "rx"]
    assert tx and {r["branch"] for r in tx} == {"tx.l2.multicast"}, tx
    assert back and {(r["branch"], r["delivery"]) for r in back} == {
        ("rx.l2.multicast_own", "delivered")}, back


def check_free_locations_named(rows):
    """Where the kernel freed a packet's skb is named as a function, never a
    bare address: `record` names what the kernel's free_sites map saw (its
    trailer), live names each as it goes. The L3 drops are kfree_skb'd in
    ipvlan code on every kernel."""
    where = [loc for r in rows for loc in
             [r.get("location")] + [e.get("location") for e in r.get("events", [])] if loc]
    assert any(r["branch"] == "tx.l3.mcast_drop" and r.get("location", "").startswith("ipvlan_")
               for r in rows), "no L3 multicast drop named in ipvlan code"
    bare = [loc for loc in where if loc.startswith("0x")]
    assert where and not bare, bare


ALL_CHECKS = [check_free_locations_named, check_l3_private_drop, check_forward_failed_mtu, check_l3_route_fail_v4_broadcast,
              check_l3_non_ip_drop, check_multicast_own, check_private_drop, check_vepa_out_parent, check_l3s_tx_local_and_rx_pass,
              check_ipv6_l2, check_l3_multicast_drop, check_l3_ipv6_route_fail,
              check_nothing_unknown, check_l3s_rx_named]
