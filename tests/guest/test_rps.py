"""A frame ipvlan hands to its parent (dev_forward_skb) waits
in a CPU's backlog for the parent's RX. With RPS on the parent's receive
queue that backlog is another CPU's: while a flood keeps that CPU in its
backlog loop, it takes the frame and runs the parent's RX of it (an ipvlan
context of its own) while the sender may still be inside ipvlan_queue_xmit.
The RX context then closes, and its record reaches the ring, before the
TX's. The kernel flags such an RX (IPVT_F_ECHO) and the correlator waits
for its TX: every frame to the parent is one tx.l2.to_parent row joined
with its RX on the other CPU, never an rx.to_host row of its own (what the
correlator made of it before the flag), complete unless the kernel flagged
its RX context as opened inside another program's run (kept_out: exactly
those rows incomplete). On 6.12 under TCG, with
this machine busy, 11 of 10,000 RX records came first (the run kept as
tests/fixtures/rps-6.12.ipvt); 7 of 10,000 and 8 of 20,000 without `stats`
beside `record`. Needs two CPUs (tests/test_real_kernels.py boots a guest
with two for it)."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

import echo_checks
from guest_helpers import assert_stats_equal_record
from ipvtrace import replay
from ipvtrace.capture import probes
from ipvtrace.lab import scenarios
from ipvtrace.lab.netlab import Lab

OUT = Path(os.environ.get("IPVTRACE_OUT", "build/guest")).resolve()
TX_CPU, RX_CPU = 0, 1


# UDP datagrams from the pod to the parent's own address, as fast as the
# sender goes. A datagram the parent's backlog refused (dev_forward_skb
# failed: ENOBUFS) is still a TX row, forward_failed; the sender goes on.
SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    try:
        s.sendto(b"ipvtrace-rps %d" % i, (sys.argv[1], 9))
    except OSError:
        pass
"""
# a socket bound there takes them: no port-unreachable replies from the host
SINK = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9))
print("bound", flush=True)
time.sleep(3600)
"""


def netns(ns: str, *cmd: str, cpu: int | None = None) -> list[str]:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return [*pin, "ip", "netns", "exec", ns, *cmd]


@contextlib.contextmanager
def rps_lab() -> Iterator[Lab]:
    """The article's L2 lab, IPv4 only, its parent's receive queue steered
    to RX_CPU and a socket bound at the parent's address."""
    with Lab(namespaces=scenarios.L2.namespaces) as lab:
        # IPv4 only: no IPv6 autoconfiguration (DAD, MLD reports, router
        # solicitations) from work items and timers during the flood: a
        # probe's program that a task runs on the RX CPU with softirqs on is
        # where an interrupt runs NET_RX inside it, and the hits there are
        # lost (counted: a kprobe's program keeps every kprobe out) or their
        # contexts incomplete (counted: a trampoline's keeps itself out).
        # test_a_busy_rx_cpu_* makes that happen on purpose.
        for ns in scenarios.L2.namespaces:
            for conf in ("all", "default"):
                lab.sysctl(ns, f"net.ipv6.conf.{conf}.disable_ipv6", "1")
        scenarios.L2.build(lab)
        # (its namespace's sysfs: ip netns exec mounts that one)
        subprocess.run(netns(scenarios.L2_HOST, "sh", "-c",
                             f"echo {1 << RX_CPU:x} > /sys/class/net/ens10/queues/rx-0/rps_cpus"),
                       check=True, timeout=60)
        sink = subprocess.Popen(netns(scenarios.L2_HOST, sys.executable, "-c", SINK,
                                      echo_checks.PARENT_IP), stdout=subprocess.PIPE, text=True)
        try:
            assert sink.stdout.readline().strip() == "bound"
            yield lab
        finally:
            sink.kill()
            sink.wait()


def flood() -> None:
    subprocess.run(netns(scenarios.L2_NS1, sys.executable, "-c", SEND,
                         echo_checks.PARENT_IP, str(echo_checks.SENT), cpu=TX_CPU),
                   check=True, timeout=900)


# a ring that holds the whole flood (10,000 datagrams are 6.7 MB of ring
# records, sent in about a second): nothing is lost even when the consumers
# get no CPU meanwhile (with the default 4 MiB, one run beside `stats` lost 3)
RING = ["--ring-pages", "4096"]


def replayed_flood(rec: Path) -> tuple[list[dict], dict, list[dict]]:
    """The recording's rows, run_replay's summary and the delivered rows,
    once checked: nothing lost, every datagram a tx.l2.to_parent row joined
    with its RX, exactly the RX contexts the kernel flagged as opened inside
    another program's run (kept_out) incomplete."""
    rows: list[dict] = []
    replayed = replay.run_replay(rec, sink=rows.append)
    kstats = replayed["trailer"]["kernel_stats"]
    assert replayed["lost_events"] == 0, kstats
    joined = echo_checks.check_to_parent_rows(rows, echo_checks.SENT, TX_CPU, RX_CPU,
                                              kept_out=kstats.get("kept_out", 0))
    return rows, replayed, joined


@pytest.mark.cpus(2)
def test_a_to_parent_frame_whose_rx_runs_on_another_cpu_is_one_row():
    """`record` shows every datagram as one joined row, and `stats`, attached
    first and stopped last (as tests/guest/test_stats.py does), counts each
    once: the kernel's count build marks the early RX too."""
    rec = OUT / f"rps-{os.uname().release}.ipvt"
    with scenarios.traced(["stats", "--json", "--interval", "0.5"], OUT / "rps-stats.ready",
                          settle=0.0) as st:
        with scenarios.traced(["record", "-o", str(rec), *RING], OUT / "rps-record.ready"), \
                rps_lab():
            flood()
    # (even with the lab quiet, a task on the RX CPU may free an skb, a raw
    # tracepoint's program with softirqs on, when RPS's interrupt comes:
    # 10 consecutive rows kept_out in one run of three)
    rows, replayed, joined = replayed_flood(rec)
    kstats = replayed["trailer"]["kernel_stats"]
    early = echo_checks.early_echoes(rec)
    final = [json.loads(line) for line in st.stdout.splitlines() if line.startswith("{")][-1]
    assert final.get("ended_by") == "SIGINT"
    assert final["branches"].get("tx.l2.to_parent", 0) >= echo_checks.SENT, final["branches"]
    assert_stats_equal_record(final, replayed)
    print(f"rps: {echo_checks.SENT} to-parent rows, {len(joined)} joined with their RX on "
          f"CPU {RX_CPU} ({kstats.get('kept_out', 0)} incomplete, kept_out); {early} of those RX "
          "records came before their TX record")


BCAST_SRC = "192.168.100.102"   # the other pod (scenarios.L2_NS2)
# a pod's broadcasts, pinned to the RX CPU: each is ipvlan's multicast
# worker's (a work item on that CPU) and, looped back to the sender, a
# netif_rx call with softirqs enabled. It says when its first is sent: the
# flood starts only then (started together, the broadcaster, on the CPU
# the flood's RX keeps busy, sent its first 0.23, 0.41 and 0.64 s into
# floods of 1.4, 1.4 and 0.9 s in 3 runs of 5, and in one CI run none
# before the flood ended)
BROADCAST = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
first = True
while True:
    try:
        s.sendto(b"ipvtrace-rps-bcast", (sys.argv[1], 9))
    except OSError:
        pass
    if first:
        print("sending", flush=True)
        first = False
    time.sleep(0.001)
"""


@pytest.mark.cpus(2)
def test_a_busy_rx_cpu_loses_no_rx_hit_and_flags_each_row_it_could_not_see_whole():
    """While the flood's RX runs on RX_CPU, another pod broadcasts from that
    CPU: the multicast worker runs there and the sender's stack calls
    netif_rx, both with softirqs enabled, so RPS's interrupts run NET_RX
    inside those probes' programs. As kprobes (the plan before ab43095), the
    kernel missed every ipvlan_handle_frame hit of such a softirq as a
    re-entry (107 of 10,000 in one run on 6.12: RX evidence gone, counted
    only as kprobe_missed.rx_ret). As trampolines, nothing is missed; a
    context opened inside another program's run (the broadcaster's
    __dev_queue_xmit, ip_local_out, skb frees) is flagged by the kernel
    (kept_out), and exactly those rows are incomplete: 30, 29 and 0 in three runs."""
    plan = probes.build()
    kinds = {a["name"]: a["kind"] for a in plan.attach}
    assert kinds.get("mc_work") == "fentry" and kinds.get("netif_rx") == "fentry", (
        f"this test needs the worker's probes as trampolines (the default from 5.12, not "
        f"PREEMPT_RT): {kinds}")
    rec = OUT / f"rps-busy-{os.uname().release}.ipvt"
    with scenarios.traced(["record", "-o", str(rec), *RING], OUT / "rps-busy.ready"), \
            rps_lab():
        bcast = subprocess.Popen(netns(scenarios.L2_NS2, sys.executable, "-c", BROADCAST,
                                       "192.168.100.255", cpu=RX_CPU),
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert bcast.stdout.readline().strip() == "sending", "the broadcaster did not start"
            flood()
        finally:
            bcast.kill()
            bcast.wait()
    rows, replayed, joined = replayed_flood(rec)
    kstats = replayed["trailer"]["kernel_stats"]
    # the broadcasts went through the worker on RX_CPU (its hits: the
    # delivery to the other pod, the parent's xmit) while the flood's RX ran
    lo, hi = min(r["ts"] for r in joined), max(r["ts"] for r in joined)
    worker = [r for r in rows if r["branch"] == "tx.l2.multicast" and r.get("mcast")
              and r["src"] == BCAST_SRC and lo <= r["ts"] <= hi
              and any(e["probe"] == "qxmit" and e["cpu"] == RX_CPU for e in r["events"])]
    sent = sorted(r["ts"] for r in rows if r["branch"] == "tx.l2.multicast" and r["src"] == BCAST_SRC)
    assert worker, (f"no broadcast went through the worker on CPU {RX_CPU} during the flood "
                    f"({(hi - lo) / 1e9:.3f} s); {len(sent)} broadcast rows, the first "
                    f"{(sent[0] - lo) / 1e9 if sent else 0:+.3f} s from the flood's first row")
    print(f"rps-busy: {len(worker)} broadcasts through the worker on CPU {RX_CPU}; "
          f"{len(joined)} of {echo_checks.SENT} to-parent rows joined with their RX, "
          f"{kstats.get('kept_out', 0)} of them incomplete (kept_out)")
