"""Topologies beyond the article (checks shared by the in-guest test and the
fixture replay tests): port flags (private,
vepa), L3S, IPv6, and the L3 drops. Expectations from ipvlan_core.c:

- PRIVATE: a slave-to-slave frame is consume_skb'd in ipvlan_xmit_mode_l2/l3
  (tx.l2.private_drop), NET_XMIT_DROP.
- VEPA: every unicast leaves by the parent, even to a sibling slave
  (tx.l2.out_parent).
- L3S: TX takes the L3 code (tx.l3.local, mode l3s); the rx_handler always
  passes (rx.l3s.to_host).
- IPv6 on L2: NS to the solicited-node multicast MAC is queued for the worker
  (tx.l2.multicast); echo between slaves is tx.l2.local.
- L3 outbound with a multicast dst MAC is dropped in ipvlan_process_outbound
  (tx.l3.mcast_drop); IPv6 with no route in the parent's netns fails in
  ipvlan_route_v6_outbound (tx.l3.route_fail, ret -ENETUNREACH).
"""
from __future__ import annotations

from ipvtrace.netlab import Lab


H = "ipvt-t-host"
PA, PB = "ipvt-t-priv-a", "ipvt-t-priv-b"
VA, VB = "ipvt-t-vepa-a", "ipvt-t-vepa-b"
SA, SB, SOUT = "ipvt-t-l3s-a", "ipvt-t-l3s-b", "ipvt-t-l3s-out"
SIXA, SIXB = "ipvt-t-v6-a", "ipvt-t-v6-b"
L3D = "ipvt-t-l3drop"
ALL = [H, PA, PB, VA, VB, SA, SB, SOUT, SIXA, SIXB, L3D]


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
    lab.run(L3D, ["sysctl", "-q", "-w", "net.ipv4.icmp_echo_ignore_broadcasts=0"])
    return [(PA, "10.1.0.2", 2), (VA, "10.2.0.2", 2), (SA, "10.5.0.1", 2), (SOUT, "10.4.0.1", 2),
            (SIXA, "fd00:6::2", 2), (L3D, "224.0.0.1", 1), (L3D, "fd00:99::1", 1)]


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


def check_l3s_tx_local_and_rx_pass(rows):
    got = of(rows, "10.4.0.1", "10.5.0.1")
    assert len(got) == 2 and {(r["branch"], r["mode"], r["delivery"]) for r in got} == {
        ("tx.l3.local", "l3s", "delivered")}, got
    rx = of(rows, "10.3.0.254", "10.4.0.1")
    assert rx and {r["branch"] for r in rx} == {"rx.l3s.to_host"}, rx


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
    unknown = [(r["summary"], r["why"]) for r in rows if r["branch"] == "unknown"]
    assert not unknown, unknown


ALL_CHECKS = [check_private_drop, check_vepa_out_parent, check_l3s_tx_local_and_rx_pass,
              check_ipv6_l2, check_l3_multicast_drop, check_l3_ipv6_route_fail,
              check_nothing_unknown]
