"""A frame ipvlan hands to its parent (dev_forward_skb, then netif_rx) waits
in a CPU's backlog for the parent's RX. With RPS on the parent's receive
queue that backlog is another CPU's: while a flood keeps that CPU in its
backlog loop, it takes the frame and runs the parent's RX of it (an ipvlan
context of its own) while the sender may still be inside ipvlan_queue_xmit.
The RX context then closes, and its record reaches the ring, before the
TX's. The kernel flags such an RX (IPVT_F_ECHO) and the correlator waits
for its TX: every frame to the parent is one complete tx.l2.to_parent row
joined with its RX on the other CPU, never an rx.to_host row of its own
(what the correlator made of it before the flag). On 6.12 under TCG, with
this machine busy, 11 of 10,000 RX records came first (the run kept as
tests/fixtures/rps-6.12.ipvt); 7 of 10,000 and 8 of 20,000 without `stats`
beside `record`. Needs two CPUs (tests/test_real_kernels.py boots a guest
with two for it)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import echo_checks
from guest_helpers import assert_stats_equal_record
from ipvtrace import replay
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


@pytest.mark.cpus(2)
def test_a_to_parent_frame_whose_rx_runs_on_another_cpu_is_one_row():
    """`record` shows every datagram as one joined row, and `stats`, attached
    first and stopped last (as tests/guest/test_stats.py does), counts each
    once: the kernel's count build marks the early RX too."""
    rec = OUT / f"rps-{os.uname().release}.ipvt"
    parent_ns = scenarios.L2_HOST
    with scenarios.traced(["stats", "--json", "--interval", "0.5"], OUT / "rps-stats.ready",
                          settle=0.0) as st:
        # a ring that holds the whole flood (10,000 datagrams are 6.7 MB of
        # ring records, sent in about a second): nothing is lost even when
        # the consumers get no CPU meanwhile (with the default 4 MiB, one
        # run beside `stats` lost 3 records)
        with scenarios.traced(["record", "-o", str(rec), "--ring-pages", "4096"],
                              OUT / "rps-record.ready"), \
                Lab(namespaces=scenarios.L2.namespaces) as lab:
            scenarios.L2.build(lab)
            # the parent's receive queue steered to RX_CPU (its namespace's
            # sysfs: ip netns exec mounts that one)
            subprocess.run(netns(parent_ns, "sh", "-c",
                                 f"echo {1 << RX_CPU:x} > /sys/class/net/ens10/queues/rx-0/rps_cpus"),
                           check=True, timeout=60)
            sink = subprocess.Popen(netns(parent_ns, sys.executable, "-c", SINK,
                                          echo_checks.PARENT_IP), stdout=subprocess.PIPE, text=True)
            try:
                assert sink.stdout.readline().strip() == "bound"
                subprocess.run(netns(scenarios.L2_NS1, sys.executable, "-c", SEND,
                                     echo_checks.PARENT_IP, str(echo_checks.SENT), cpu=TX_CPU),
                               check=True, timeout=900)
            finally:
                sink.kill()
                sink.wait()
    rows: list[dict] = []
    replayed = replay.run_replay(rec, sink=rows.append)
    assert replayed["lost_events"] == 0, replayed["trailer"]["kernel_stats"]
    joined = echo_checks.check_to_parent_rows(rows, echo_checks.SENT, TX_CPU, RX_CPU)
    early = echo_checks.early_echoes(rec)
    final = [json.loads(line) for line in st.stdout.splitlines() if line.startswith("{")][-1]
    assert final.get("ended_by") == "SIGINT"
    assert final["branches"].get("tx.l2.to_parent", 0) >= echo_checks.SENT, final["branches"]
    assert_stats_equal_record(final, replayed)
    print(f"rps: {echo_checks.SENT} to-parent rows, {len(joined)} joined with their RX on "
          f"CPU {RX_CPU}; {early} of those RX records came before their TX record")
