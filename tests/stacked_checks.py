"""Parents that are not a plain NIC, IPv6 on L3 and L3S, IP fragments
(checks shared by the in-guest test and the fixture replay tests).
Expectations from ipvlan_core.c and the stacked drivers:

- VLAN parent (ipvlan on w0.10): the port's parent is the VLAN device. A
  frame out of the parent is __dev_queue_xmit(w0.10) first; the VLAN driver
  queues the same skb again on w0: the row names the parent, w0.10
  (tx.l2.out_parent). A broadcast from a slave goes to the multicast worker,
  which sends it out of the parent once (one mcast.out_parent, to w0.10) and
  delivers a copy to the other slave. Frames from outside arrive on w0.10's
  rx_handler (rx.local, from w0.10).
- bond parent (active-backup over a veth): the same with bond0 and its
  slave b0.
- L3 port with IPv6 only: slave to slave is tx.l3.local; to outside is
  routed in the parent's netns by ip6_local_out (tx.l3.routed); from
  outside, routed to the parent, rx.local.
- L3S port with IPv6: from outside, rx.l3s.local (ipvlan_l3_rcv, then
  ipvlan_nf_input hands it to the slave).
- ping -s 3000 between two L2 slaves: each echo is three IPv4 fragments,
  each its own skb, each tx.l2.local; the later two carry no ICMP header
  (named "fragment at byte 1480" and "2960", no ICMP type).
"""
from __future__ import annotations

import subprocess

from article_checks import S2A_PROBES, l3s_not_shown, l3s_rx, l3s_rx_not_shown, requires
from ipvtrace.lab.netlab import Lab, LabError

H, O = "ipvt-s-host", "ipvt-s-out"
VA, VB = "ipvt-s-vlan-a", "ipvt-s-vlan-b"
BA = "ipvt-s-bond-a"
L6A, L6B = "ipvt-s-l36-a", "ipvt-s-l36-b"
S6 = "ipvt-s-l3s6"
FA, FB = "ipvt-s-frag-a", "ipvt-s-frag-b"
ALL = [H, O, VA, VB, BA, L6A, L6B, S6, FA, FB]
MODULES = ("8021q", "bonding")


def _ip(lab: Lab, ns: str, *args: str) -> None:
    lab.run(ns, ["ip", *args], check=True)


def _no_dad(lab: Lab, ns: str, dev: str) -> None:
    lab.sysctl(ns, f"net.ipv6.conf.{dev}.accept_dad", "0")


def _v6_wire(lab: Lab, dev: str, prefix: str) -> None:
    """A veth from the host (PREFIX::1) to the outside (PREFIX::fe), no DAD wait."""
    lab.veth(H, dev, O, dev + "p")
    _no_dad(lab, H, dev)
    _no_dad(lab, O, dev + "p")
    lab.addr(H, dev, f"{prefix}::1/64")
    lab.addr(O, dev + "p", f"{prefix}::fe/64")


def _v6_slave(lab: Lab, parent: str, name: str, mode: str, ns: str, cidr: str) -> None:
    lab.ipvlan(H, parent, name, mode, into=ns, rename="eth0")
    _no_dad(lab, ns, "eth0")
    lab.addr(ns, "eth0", cidr)
    _ip(lab, ns, "-6", "route", "add", "default", "dev", "eth0")


def build(lab: Lab) -> list[tuple[str, str, int, int | None]]:
    """Returns the traffic: (netns, ping target, count, size)."""
    for mod in MODULES:
        r = subprocess.run(["modprobe", mod], capture_output=True, text=True)
        if r.returncode != 0:
            raise LabError(f"modprobe {mod}: {r.stderr.strip()}")
    # VLAN parent; the outside end tagged the same
    lab.veth(H, "w0", O, "w0p")
    _ip(lab, H, "link", "add", "link", "w0", "name", "w0.10", "type", "vlan", "id", "10")
    _ip(lab, O, "link", "add", "link", "w0p", "name", "w0p.10", "type", "vlan", "id", "10")
    lab.link_up(H, "w0.10")
    lab.link_up(O, "w0p.10")
    lab.addr(O, "w0p.10", "10.20.0.254/24")
    for ns, ip in ((VA, "10.20.0.1/24"), (VB, "10.20.0.2/24")):
        lab.ipvlan(H, "w0.10", "vl" + ns[-1], "l2", into=ns, rename="eth0")
        lab.addr(ns, "eth0", ip)
    # bond parent, active-backup over one veth
    _ip(lab, H, "link", "add", "bond0", "type", "bond", "mode", "active-backup")
    lab.veth(H, "b0", O, "b0p")
    _ip(lab, H, "link", "set", "b0", "down")
    _ip(lab, H, "link", "set", "b0", "master", "bond0")
    lab.link_up(H, "bond0")
    lab.link_up(H, "b0")
    lab.addr(O, "b0p", "10.21.0.254/24")
    lab.ipvlan(H, "bond0", "bv", "l2", into=BA, rename="eth0")
    lab.addr(BA, "eth0", "10.21.0.1/24")
    # L3 port, IPv6 only, reachable from outside through the parent's netns
    _v6_wire(lab, "l6", "fd00:60")
    _v6_slave(lab, "l6", "l6a", "l3", L6A, "fd00:61::1/64")
    _v6_slave(lab, "l6", "l6b", "l3", L6B, "fd00:62::1/64")
    _ip(lab, O, "-6", "route", "add", "fd00:61::/64", "via", "fd00:60::1")
    lab.sysctl(H, "net.ipv6.conf.all.forwarding", "1")
    # L3S port, IPv6
    _v6_wire(lab, "s6", "fd00:70")
    _v6_slave(lab, "s6", "s6v", "l3s", S6, "fd00:71::1/64")
    _ip(lab, O, "-6", "route", "add", "fd00:71::/64", "via", "fd00:70::1")
    # two L2 slaves for fragmented pings
    lab.veth(H, "f0", H, "f0p")
    for ns, ip in ((FA, "10.22.0.1/24"), (FB, "10.22.0.2/24")):
        lab.ipvlan(H, "f0", "fv" + ns[-1], "l2", into=ns, rename="eth0")
        lab.addr(ns, "eth0", ip)
    return [(VA, "10.20.0.2", 2, None), (VA, "10.20.0.254", 2, None), (O, "10.20.0.1", 2, None),
            (BA, "10.21.0.254", 2, None), (O, "10.21.0.1", 2, None),
            (L6A, "fd00:62::1", 2, None), (O, "fd00:61::1", 2, None), (L6A, "fd00:60::fe", 2, None),
            (O, "fd00:71::1", 2, None), (FA, "10.22.0.2", 2, 3000)]


def of(rows, src, dst, kind="echo-request"):
    return [r for r in rows if r["src"] == src and r["dst"] == dst and r["kind"] == kind]


def _dev(ref) -> tuple | None:
    return (ref["dev"], ref["netns"]) if isinstance(ref, dict) else None


def _out_parent(rows, src: str, dst: str, parent: str) -> None:
    for kind in ("echo-request",):
        got = of(rows, src, dst, kind)
        assert len(got) == 2 and {(r["branch"], r["delivery"], _dev(r["to"])) for r in got} == {
            ("tx.l2.out_parent", "sent", (parent, H))}, [(r["branch"], r["to"]) for r in got]
    # the ARP broadcast before it: out of the parent once, by the worker
    arp = [r for r in rows if r["proto"] == "arp" and r["kind"] == "request"
           and r["src"] == src and r["dst"] == dst]
    assert arp, "no ARP request seen"
    for r in arp:
        assert r["branch"] == "tx.l2.multicast", r
        outs = [m for m in r["mcast"] if m["branch"] == "mcast.out_parent"]
        assert [_dev(m["to"]) for m in outs] == [(parent, H)], r["mcast"]


def check_vlan_parent_out(rows):
    _out_parent(rows, "10.20.0.1", "10.20.0.254", "w0.10")


def check_vlan_parent_broadcast_to_sibling(rows):
    arp = [r for r in rows if r["proto"] == "arp" and r["kind"] == "request"
           and r["src"] == "10.20.0.1" and r["dst"] == "10.20.0.2"]
    assert arp and all(r["branch"] == "tx.l2.multicast" for r in arp), arp
    for r in arp:
        assert sorted((m["branch"], _dev(m["to"])) for m in r["mcast"]) == [
            ("mcast.deliver", ("eth0", VB)), ("mcast.out_parent", ("w0.10", H))], r["mcast"]
    echo = of(rows, "10.20.0.1", "10.20.0.2")
    assert len(echo) == 2 and {(r["branch"], _dev(r["to"])) for r in echo} == {
        ("tx.l2.local", ("eth0", VB))}, echo


def _rx_from(rows, src: str, dst: str, parent: str, slave_ns: str) -> None:
    got = of(rows, src, dst)
    assert len(got) == 2 and {(r["branch"], r["delivery"], _dev(r["from"]), _dev(r["to"]))
                              for r in got} == {
        ("rx.local", "delivered", (parent, H), ("eth0", slave_ns))}, got


def check_vlan_parent_in(rows):
    _rx_from(rows, "10.20.0.254", "10.20.0.1", "w0.10", VA)


def check_bond_parent_out(rows):
    _out_parent(rows, "10.21.0.1", "10.21.0.254", "bond0")


def check_bond_parent_in(rows):
    _rx_from(rows, "10.21.0.254", "10.21.0.1", "bond0", BA)


def check_l3_ipv6(rows):
    local = of(rows, "fd00:61::1", "fd00:62::1")
    assert len(local) == 2 and {(r["branch"], r["mode"], _dev(r["to"])) for r in local} == {
        ("tx.l3.local", "l3", ("eth0", L6B))}, local
    routed = of(rows, "fd00:61::1", "fd00:60::fe")
    assert len(routed) == 2 and {(r["branch"], r["delivery"], _dev(r["to"])) for r in routed} == {
        ("tx.l3.routed", "sent", ("l6", H))}, routed
    assert all("ip6_local_out" in r["why"] for r in routed)
    _rx_from(rows, "fd00:60::fe", "fd00:61::1", "l6", L6A)


def _l3s_ipv6_not_shown(rows):
    got = of(rows, "fd00:70::fe", "fd00:71::1")
    assert len(got) == 2, [(r["branch"], r["why"]) for r in got]
    l3s_not_shown(got)


@requires("l3_rcv", "nf_input", "s2a", "s2a_ret", otherwise=_l3s_ipv6_not_shown,
          covers=S2A_PROBES)
def check_l3s_ipv6_from_outside(rows):
    got = of(rows, "fd00:70::fe", "fd00:71::1")
    assert len(got) == 2 and {(r["branch"], r["delivery"], r["complete"], _dev(r["to"]))
                              for r in got} == {
        ("rx.l3s.local", "delivered", True, ("eth0", S6))}, [(r["branch"], r["why"]) for r in got]


def check_fragments(rows):
    pings = [r for r in rows if r["src"] == "10.22.0.1" and r["dst"] == "10.22.0.2"
             and r["proto"] == "icmp"]
    firsts = [r for r in pings if r["kind"] == "echo-request"]
    later = [r for r in pings if r["kind"] is None]
    assert len(firsts) == 2 and len(later) == 4, [r["summary"] for r in pings]
    assert sorted(r["summary"].rsplit(" ", 1)[1] for r in later) == ["1480", "1480", "2960", "2960"]
    assert all(r["sport"] is None and r["dport"] is None for r in later)
    assert {(r["branch"], r["delivery"], _dev(r["to"])) for r in pings} == {
        ("tx.l2.local", "delivered", ("eth0", FB))}, pings


def _unnamed(rows) -> list[tuple]:
    return [(r["branch"], r["complete"], r["summary"], r["why"]) for r in rows
            if r["branch"] == "unknown" or not r["complete"]]


def check_nothing_unknown(rows):
    """Every row of these topologies is complete and has a branch (but an L3S
    port's RX rows: the next check)."""
    bad = _unnamed(r for r in rows if not l3s_rx(r))
    assert rows and not bad, bad


@requires("l3_rcv", "nf_input", "s2a", "s2a_ret", otherwise=l3s_rx_not_shown, covers=S2A_PROBES)
def check_l3s_rx_named(rows):
    """An L3S port's RX rows too, where the kernel shows its lookup (5.10
    inlines ipvlan_skb_to_addr: there they are incomplete `unknown`, by design)."""
    got = [r for r in rows if l3s_rx(r)]
    assert got and not _unnamed(got), _unnamed(got)


ALL_CHECKS = [check_vlan_parent_out, check_vlan_parent_broadcast_to_sibling, check_vlan_parent_in,
              check_bond_parent_out, check_bond_parent_in, check_l3_ipv6,
              check_l3s_ipv6_from_outside, check_fragments, check_nothing_unknown,
              check_l3s_rx_named]
