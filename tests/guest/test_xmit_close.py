"""What closes a TX context on this real kernel: an fexit on
ipvlan_queue_xmit where the kernel has trampolines (probes.trampolines), a
kretprobe on it where raw tracepoints' programs can be preempted
(probes.attach_spec: PREEMPT_RT 6.13+), else the net:net_dev_xmit
tracepoint that xmit_one fires after ipvlan's ndo_start_xmit returned. A
frame sent past xmit_one (AF_PACKET with PACKET_QDISC_BYPASS, as pktgen and
netpoll also do) fires no such tracepoint: its context must not swallow the
packets after it, and the kernel must say it dropped it (stack_stale).
ipvlan_queue_xmit's own return closes it as any."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipvtrace import replay
from ipvtrace.lab import scenarios
from ipvtrace.output import recording

from guest_helpers import two_pods

OUT = Path(os.environ.get("IPVTRACE_OUT", "build/guest")).resolve()
NS = ["ipvt-xc-host", "ipvt-xc-a", "ipvt-xc-b"]
BYPASSED = 3

# one UDP frame from pod a to pod b (an L2 port: both slaves have the
# parent's MAC, so dst MAC == src MAC) written with PACKET_QDISC_BYPASS,
# which hands it to ndo_start_xmit directly (dev_direct_xmit)
SEND = r"""
import socket, struct, sys
mac = bytes.fromhex(sys.argv[1].replace(":", ""))
def csum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s & 0xffff) + (s >> 16)
    return ~((s & 0xffff) + (s >> 16)) & 0xffff
payload = b"ipvtrace-bypass"
udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton(sys.argv[2]), socket.inet_aton(sys.argv[3]))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.setsockopt(263, 20, 1)   # SOL_PACKET, PACKET_QDISC_BYPASS
s.bind(("eth0", 0))
s.send(mac + mac + b"\x08\x00" + ip + udp)
"""


@pytest.fixture
def pods():
    yield from two_pods(NS, "10.79.0")


def on_cpu0(ns: str, cmd: list[str]) -> None:
    """*cmd* in *ns* on CPU 0: a context is per CPU, and the next xmit of
    the same device on that CPU is what finds the bypassed one open."""
    subprocess.run(["ip", "netns", "exec", ns, "taskset", "-c", "0", *cmd], check=True,
                   capture_output=True, timeout=60)


def test_a_bypassed_xmit_is_counted_and_the_next_packets_are_whole(pods):
    rec = OUT / f"xmit-close-{os.uname().release}.ipvt"
    mac = pods.mac(NS[1], "eth0")
    with scenarios.recorder(rec):
        for _ in range(BYPASSED):
            on_cpu0(NS[1], [sys.executable, "-c", SEND, mac, "10.79.0.1", "10.79.0.2"])
            on_cpu0(NS[1], ["ping", "-n", "-c", "1", "-W", "2", "10.79.0.2"])
    rows: list[dict] = []
    summary = replay.run_replay(rec, sink=rows.append)
    pings = [r for r in rows if r["proto"] == "icmp" and r["src"] == "10.79.0.1"
             and r["dst"] == "10.79.0.2"]
    # each echo request came after a bypassed frame on the same device and CPU
    assert len(pings) == BYPASSED, [(r["summary"], r["branch"]) for r in rows]
    assert all(r["complete"] and r["branch"] == "tx.l2.local" and r["delivery"] == "delivered"
               for r in pings), pings
    bypassed = [r for r in rows if r["proto"] == "udp" and r["dport"] == 9
                and r["direction"] == "tx"]
    kstats = summary["trailer"]["kernel_stats"]
    plan = recording.read(rec).header["plan"]
    closes = next(a for a in plan["attach"] if a["name"] == "xmit_ret")
    if closes["symbol"] == "ipvlan_queue_xmit":   # its fexit or kretprobe
        # ipvlan_queue_xmit's own return closed each, xmit_one or not: a
        # whole TX row each (6.12 delivers it to pod b; 6.1's TX lookup
        # misses pod b for such a frame and sends it to the parent), nothing stale
        assert len(bypassed) == BYPASSED, rows
        assert all(r["complete"] and r["branch"] in ("tx.l2.local", "tx.l2.to_parent")
                   for r in bypassed), bypassed
        assert kstats.get("stack_stale", 0) == 0, kstats
        return
    # the bypassed frames' TX contexts never closed: no TX row, and each was
    # counted. (On 6.1 ipvlan's TX lookup misses pod b for such a frame and
    # sends it to the parent: its RX there, a context of its own, has a row.)
    assert not bypassed, rows
    assert kstats.get("stack_stale", 0) >= BYPASSED, kstats
