"""What the kernel does with each step of `ipvtrace lab` (the article's six
scenarios), checked on fresh lab runs in the guest and on the kept ones.

Reachability is the kernel's answer, which is not always the article's: with
method 1 (gateway address on the parent ens10) the namespace's ARP for the
gateway is a broadcast that ipvlan's multicast worker gives to the other
slaves and sends out of the parent (ipvlan_process_multicast, tx_pkt) — the
parent's own stack never sees it, so nobody answers.
"""
from __future__ import annotations

import json
from pathlib import Path

import article_checks
from ipvtrace.labrun import assign, steps_path

# step label -> what the kernel does (reachable)
KERNEL_REACHABLE = {
    "node1ns -> node1ns2": True,
    "node1ns2 -> node1ns": True,
    "method 1: gateway 192.168.100.1 on ens10": False,
    "method 2: gateway on host-side ipvl_10": True,
    "method 3: host IP on ipvl_10, route dev eth0": True,
    "methods 1/2, no SNAT: the world cannot answer": False,
    "methods 1/2 with SNAT on the host": True,
    "method 3: leaves by ens10 directly": True,
    "node2ns -> node2ns2": True,
    "node2ns2 -> node2ns": True,
    "node2ns -> host 172.18.22.115": True,
    "host -> node2ns2": True,
    "no route back on the outside": False,
    "outside routes 192.168.100.0/24 via ens10's IP": True,
    "outside -> node2ns": True,
}


def load(path: Path) -> tuple[list[dict], dict[str, list[dict]]]:
    steps = json.loads(steps_path(path).read_text())
    rows = article_checks.replay_json(path)
    return steps, assign(rows, steps)


def branches(rows, kind, src=None, dst=None):
    return [(r["branch"], r["delivery"]) for r in rows
            if r["kind"] == kind and (src is None or r["src"] == src)
            and (dst is None or r["dst"] == dst)]


def check_reachability(steps, by_step):
    seen = {(d["scenario"], d["step"]): d["reachable"] for d in steps}
    want = {(d["scenario"], d["step"]): KERNEL_REACHABLE[d["step"]] for d in steps}
    assert seen == want


def check_method1_arp_never_reaches_the_host(steps, by_step):
    rows = by_step["method 1: gateway 192.168.100.1 on ens10"]
    arps = [r for r in rows if r["proto"] == "arp" and r["dst"] == "192.168.100.1"]
    assert arps, rows
    for r in arps:
        assert r["branch"] == "tx.l2.multicast"
        assert [m["branch"] for m in r["mcast"]] == ["mcast.out_parent"], r["mcast"]
    assert not branches(rows, "echo-request"), "no ICMP leaves without the gateway's MAC"


def check_method2(steps, by_step):
    rows = by_step["method 2: gateway on host-side ipvl_10"]
    assert set(branches(rows, "echo-request", dst="172.18.22.114")) == {("tx.l2.to_parent", "delivered")}
    replies = [r for r in rows if r["kind"] == "echo-reply"]
    assert replies and {(r["branch"], r["from"]["dev"]) for r in replies} == {("tx.l2.local", "ipvl_10")}


def check_method3(steps, by_step):
    rows = by_step["method 3: host IP on ipvl_10, route dev eth0"]
    req = [r for r in rows if r["kind"] == "echo-request"]
    assert req and {(r["branch"], r["to"]["dev"]) for r in req} == {("tx.l2.local", "ipvl_10")}


def check_snat(steps, by_step):
    rows = by_step["methods 1/2 with SNAT on the host"]
    assert set(branches(rows, "echo-request")) == {("tx.l2.to_parent", "delivered")}
    assert set(branches(rows, "echo-reply")) == {("tx.l2.local", "delivered")}
    no_snat = by_step["methods 1/2, no SNAT: the world cannot answer"]
    assert set(branches(no_snat, "echo-request")) == {("tx.l2.to_parent", "delivered")}
    assert not branches(no_snat, "echo-reply")


def check_method3_outside(steps, by_step):
    rows = by_step["method 3: leaves by ens10 directly"]
    assert set(branches(rows, "echo-request")) == {("tx.l2.out_parent", "sent")}
    assert set(branches(rows, "echo-reply")) == {("rx.local", "delivered")}


def check_l3(steps, by_step):
    for label in ("node2ns -> node2ns2", "node2ns2 -> node2ns"):
        rows = [r for r in by_step[label] if r["from"]["netns"].startswith("ipvt-4-")]
        assert set(branches(rows, "echo-request")) == {("tx.l3.local", "delivered")}
        assert {r["mode"] for r in rows if r["proto"] == "icmp"} == {"l3"}


def check_l3_as_typed_turns_l2(steps, by_step):
    """`ip link add ... mode l2` on the same parent re-sets the whole port:
    both slaves are L2 now, and the pods ARP for each other."""
    rows = [r for r in by_step["node2ns -> node2ns2"] if r["from"]["netns"].startswith("ipvt-4b-")]
    assert {r["mode"] for r in rows} == {"l2"}
    assert set(branches(rows, "echo-request")) == {("tx.l2.local", "delivered")}
    assert any(r["proto"] == "arp" for r in rows)


def check_l3_host(steps, by_step):
    for label in ("node2ns -> host 172.18.22.115", "host -> node2ns2"):
        rows = by_step[label]
        assert set(branches(rows, "echo-request")) == {("tx.l3.local", "delivered")}
        assert set(branches(rows, "echo-reply")) == {("tx.l3.local", "delivered")}


def check_l3_outside(steps, by_step):
    assert set(branches(by_step["no route back on the outside"], "echo-request")) == {
        ("tx.l3.routed", "sent")}
    rows = by_step["outside routes 192.168.100.0/24 via ens10's IP"]
    assert set(branches(rows, "echo-request")) == {("tx.l3.routed", "sent")}
    assert set(branches(rows, "echo-reply")) == {("rx.local", "delivered")}
    rows = by_step["outside -> node2ns"]
    assert set(branches(rows, "echo-request")) == {("rx.local", "delivered")}


def check_every_row_classified(steps, by_step):
    bad = [(r["summary"], r["why"]) for rows in by_step.values() for r in rows
           if r["branch"] == "unknown" or not r["complete"]]
    assert not bad, bad


ALL_CHECKS = [check_reachability, check_method1_arp_never_reaches_the_host, check_method2,
              check_method3, check_snat, check_method3_outside, check_l3,
              check_l3_as_typed_turns_l2, check_l3_host, check_l3_outside,
              check_every_row_classified]
