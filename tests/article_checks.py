"""What the kernel source says each packet of the article scenarios must do.

Shared by the in-guest tests (fresh recordings on a real kernel) and the
fixture tests (recordings kept from Debian 6.1 and 6.12, replayed anywhere).
Every check reads `ipvtrace replay --json`, as a user would.

Source: drivers/net/ipvlan/ipvlan_core.c (ipvlan_xmit_mode_l2/l3,
ipvlan_handle_mode_l2/l3, ipvlan_process_multicast); the branch ids are those
of ipvtrace/model/branches.toml.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

L2_NS1, L2_NS2, L2_HOST, L2_OUT = "ipvt-node1ns", "ipvt-node1ns2", "ipvt-l2host", "ipvt-l2out"
L3_NS1, L3_NS2, L3_HOST = "ipvt-node2ns", "ipvt-node2ns2", "ipvt-l3host"


def requires(*probe_names: str, otherwise=None, covers: tuple[str, ...] = ()):
    """Mark a check with the probes it needs. On a kernel where one is not
    probe-able the in-guest suite runs *otherwise* instead when every missing
    one is in *covers* (what ipvtrace says there: "not shown", checked), and
    skips with the reason when not (a skip fails the real-kernel tier); the
    Debian 12 kernels have them all."""
    def mark(fn):
        fn.needs = probe_names
        fn.otherwise = otherwise
        fn.covers = covers
        return fn
    return mark


def as_shown(check, missing: set[str]):
    """*check* on a recording or kernel whose plan lacks the probes named in
    *missing*: the check itself, its `otherwise` where that covers them
    (what ipvtrace says it cannot show), or None (nothing to check there)."""
    lacking = missing & set(getattr(check, "needs", ()))
    if not lacking:
        return check
    if check.otherwise and lacking <= set(check.covers):
        return check.otherwise
    return None


# ipvlan_skb_to_addr, which 5.10 inlines: an L3S port's owner is not shown
S2A_PROBES = ("s2a", "s2a_ret")


def l3s_not_shown(rx_rows: list) -> None:
    """Where the kernel has no ipvlan_skb_to_addr to probe: the frames an L3S
    port passed are rows that name no branch, are incomplete and say why
    (not a guess between rx.l3s.local and rx.l3s.to_host)."""
    assert rx_rows, "no L3S RX row"
    bad = [(r["branch"], r["complete"], r["why"]) for r in rx_rows
           if r["branch"] != "unknown" or r["complete"]
           or "ipvlan_skb_to_addr is not probe-able" not in r["why"]]
    assert not bad, bad


def l3s_rx_not_shown(rows: list) -> None:
    """Every L3S port's RX row of a recording: l3s_not_shown."""
    l3s_not_shown([r for r in rows if l3s_rx(r)])


def l3s_rx(row: dict) -> bool:
    """A row of a frame an L3S port received: named only where the kernel
    shows ipvlan_skb_to_addr (5.10 inlines it: `unknown` there, by design)."""
    return row["direction"] == "rx" and row["mode"] == "l3s"


def raw_frames(rec):
    """(type, buffer, offset, length) of every frame between a recording's
    header and trailer, ZSTD blocks opened by the reader's own code, RING
    frames not expanded."""
    return rec.raw_frames()


def pack_recording(header, frames, trailer, end=True) -> bytes:
    """A recording built by hand: header, (type, payload) frames as given
    (a ZSTD block is one of them), trailer and end marker unless *end* is
    false; JSON values or raw bytes."""
    from ipvtrace.output import recording

    out = bytearray(recording.MAGIC + struct.pack("<H", recording.CONTAINER_VERSION))
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    out += recording.FRAME.pack(recording.F_HEADER, len(h)) + h
    for t, p in frames:
        out += recording.FRAME.pack(t, len(p)) + p
    if end:
        tr = trailer if isinstance(trailer, bytes) else json.dumps(trailer).encode()
        out += recording.FRAME.pack(recording.F_TRAILER, len(tr)) + tr
        out += recording.END.pack(recording.FRAME.size + len(tr), recording.END_MAGIC)
    return bytes(out)


def outer_frames(rec) -> list[tuple[int, int]]:
    """(type, length) of a recording's frames as the file holds them, ZSTD
    blocks unopened."""
    from ipvtrace.output import recording

    out, off = [], rec.start
    while off < rec.end:
        t, n = recording.FRAME.unpack_from(rec.data, off)
        out.append((t, n))
        off += recording.FRAME.size + n
    return out


def ring_record_lengths(rec) -> list[int]:
    """The length of every record in a recording's RING frames (the runs
    `record` copies from the ring in one piece)."""
    from ipvtrace.output import recording

    return [len(payload) for ftype, data, off, n in raw_frames(rec) if ftype == recording.F_RING
            for _, payload in recording._ring_records(data, off, off + n)]


def replay_json(path: Path) -> list[dict]:
    r = subprocess.run([sys.executable, "-m", "ipvtrace", "replay", "--json", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def dev(name: str, netns: str) -> dict:
    return {"dev": name, "netns": netns}


def same_dev(ref: dict | None, want: dict) -> bool:
    return ref is not None and ref["dev"] == want["dev"] and ref["netns"] == want["netns"]


def pick(rows, proto, src, dst, kind):
    return [r for r in rows if r["proto"] == proto and r["src"] == src and r["dst"] == dst
            and r["kind"] == kind]


def expect(rows, branch, delivery, frm, to, n=None):
    assert rows, f"no packets for {branch}"
    if n is not None:
        assert len(rows) == n, [r["summary"] for r in rows]
    for r in rows:
        got = (r["branch"], r["delivery"], r["complete"])
        assert got == (branch, delivery, True), (r["summary"], got, r["why"])
        assert same_dev(r["from"], frm), (r["summary"], r["from"])
        if to is not None:
            assert same_dev(r["to"], to), (r["summary"], r["to"])


def check_l2_pods(rows):
    """Ping 101 -> 102 on one L2 parent: dst MAC == src MAC (shared MAC) and a
    slave owns the dst IP, so both directions are tx.l2.local, delivered by
    dev_forward_skb to the other slave."""
    a, b = dev("eth0", L2_NS1), dev("eth0", L2_NS2)
    expect(pick(rows, "icmp", "192.168.100.101", "192.168.100.102", "echo-request"),
           "tx.l2.local", "delivered", a, b, n=2)
    expect(pick(rows, "icmp", "192.168.100.102", "192.168.100.101", "echo-reply"),
           "tx.l2.local", "delivered", b, a, n=2)


@requires("mc_enqueue", "mc_work", "mc_work_ret")
def check_l2_arp_multicast(rows):
    """The first ARP request is a broadcast: ipvlan_multicast_enqueue(tx); the
    worker gives a clone to every other slave and sends the original out of
    the parent (tx_pkt)."""
    arps = pick(rows, "arp", "192.168.100.101", "192.168.100.102", "request")
    bcast = [r for r in arps if r["eth_dst"] == "ff:ff:ff:ff:ff:ff"]
    assert bcast, [r["summary"] for r in arps]
    for r in bcast:
        assert (r["branch"], r["delivery"], r["complete"]) == ("tx.l2.multicast", "queued", True), r
        delivered = [m for m in r.get("mcast", []) if m["branch"] == "mcast.deliver"]
        out = [m for m in r.get("mcast", []) if m["branch"] == "mcast.out_parent"]
        assert any(same_dev(m["to"], dev("eth0", L2_NS2)) and m["delivery"] == "delivered"
                   for m in delivered), r.get("mcast")
        assert not any(same_dev(m["to"], dev("eth0", L2_NS1)) for m in delivered), \
            "the sender must not get its own broadcast back"
        assert [m["to"]["dev"] for m in out] == ["ens10"], out


@requires("mc_enqueue", "mc_work", "mc_work_ret", "netif_rx")
def check_l2_outside(rows):
    """outside -> node1ns: the parent's rx_handler finds the slave that owns
    .101 (rx.local); the reply's dst MAC is the outside's, so it leaves by the
    parent (tx.l2.out_parent). The outside's ARP broadcast is queued for the
    slaves (rx.l2.multicast) and passed to the host."""
    ens10, pod = dev("ens10", L2_HOST), dev("eth0", L2_NS1)
    expect(pick(rows, "icmp", "192.168.100.254", "192.168.100.101", "echo-request"),
           "rx.local", "delivered", ens10, pod, n=2)
    expect(pick(rows, "icmp", "192.168.100.101", "192.168.100.254", "echo-reply"),
           "tx.l2.out_parent", "sent", pod, ens10, n=2)
    arp = [r for r in pick(rows, "arp", "192.168.100.254", "192.168.100.101", "request")
           if r["eth_dst"] == "ff:ff:ff:ff:ff:ff"]
    assert arp and all(r["branch"] == "rx.l2.multicast" for r in arp), arp
    assert all(any(same_dev(m["to"], pod) for m in r.get("mcast", [])) for r in arp), arp


def check_l2_to_host(rows):
    """outside -> 192.168.100.1 (the parent's own address): no slave owns it,
    RX_HANDLER_PASS (rx.to_host)."""
    ens10 = dev("ens10", L2_HOST)
    expect(pick(rows, "icmp", "192.168.100.254", "192.168.100.1", "echo-request"),
           "rx.to_host", "delivered", ens10, ens10, n=2)


def check_l2_to_parent(rows):
    """node1ns -> 192.168.100.1 with the neighbour pinned to the shared MAC:
    dst MAC == src MAC, no slave owns .1, so dev_forward_skb(parent); the frame
    re-enters the parent's rx_handler, which passes it (PASS = 3)."""
    reqs = pick(rows, "icmp", "192.168.100.101", "192.168.100.1", "echo-request")
    expect(reqs, "tx.l2.to_parent", "delivered", dev("eth0", L2_NS1), dev("ens10", L2_HOST), n=1)
    rx_ret = [e for e in reqs[0]["events"] if e["probe"] == "rx_ret"]
    assert [e["ret"] for e in rx_ret] == [3], reqs[0]["events"]


def check_l3_pods(rows):
    """L3: 192.168.100.201 <-> 192.168.200.201 with `default dev eth0`: a slave
    owns the dst IP (no MAC check in L3), tx.l3.local, delivered."""
    a, b = dev("eth0", L3_NS1), dev("eth0", L3_NS2)
    expect(pick(rows, "icmp", "192.168.100.201", "192.168.200.201", "echo-request"),
           "tx.l3.local", "delivered", a, b, n=2)
    expect(pick(rows, "icmp", "192.168.200.201", "192.168.100.201", "echo-reply"),
           "tx.l3.local", "delivered", b, a, n=2)
    for r in pick(rows, "icmp", "192.168.100.201", "192.168.200.201", "echo-request"):
        assert r["mode"] == "l3", r


def check_l3_outside(rows):
    """L3 -> outside: no slave owns 172.18.22.254, so the packet is routed in
    the parent's netns (ip_local_out, leaving by ens10); the reply comes in on
    ens10 and ipvlan hands it to the owning slave (rx.local)."""
    ens10, pod = dev("ens10", L3_HOST), dev("eth0", L3_NS1)
    expect(pick(rows, "icmp", "192.168.100.201", "172.18.22.254", "echo-request"),
           "tx.l3.routed", "sent", pod, ens10, n=2)
    expect(pick(rows, "icmp", "172.18.22.254", "192.168.100.201", "echo-reply"),
           "rx.local", "delivered", ens10, pod, n=2)


def check_nothing_unknown(rows):
    """Every packet of these scenarios fits a catalogue branch."""
    unknown = [(r["summary"], r["why"]) for r in rows if r["branch"] == "unknown"]
    assert not unknown, unknown


ALL_CHECKS = [check_l2_pods, check_l2_arp_multicast, check_l2_outside, check_l2_to_host,
              check_l2_to_parent, check_l3_pods, check_l3_outside, check_nothing_unknown]
