"""What a tracer leaves when it dies or its disk fills, on this real kernel:
a recording that replays up to where it stopped, and no probe left behind
once the next ipvtrace starts; and pods created and deleted while `record`
runs under traffic cost no events."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipvtrace import doctor
from ipvtrace.capture import probes

from guest_helpers import two_pods, wait_ready

import article_checks as art
import topology_checks as topo
from ipvtrace.lab import scenarios
from ipvtrace.lab.netlab import Lab

OUT = Path(os.environ.get("IPVTRACE_OUT", "build/guest")).resolve()
NS = ["ipvt-sv-host", "ipvt-sv-a", "ipvt-sv-b"]
TRACEFS = Path("/sys/kernel/tracing")


@pytest.fixture
def pods():
    yield from two_pods(NS, "10.78.0")


def start(args: list[str], ready: Path) -> subprocess.Popen:
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "ipvtrace", *args, "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_ready(ready, proc)
    return proc


def flood(ns: str, dst: str, seconds: float, interval: float | None = None,
          extra: list[str] = ()) -> subprocess.Popen:
    """Echo requests for *seconds*: as many as the guest sends (ping -f), or
    one per *interval* seconds; *extra*: more ping options (-b)."""
    rate = ["-i", str(interval)] if interval else ["-f"]
    return subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-n", "-q", *rate, *extra, "-w",
                             str(int(seconds)), dst], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def tiny_ring(out: Path, ready: Path, floods: list[tuple[str, str, list[str]]]) -> tuple[list[dict], dict]:
    """`record` with a 4 KiB ring while (netns, dst, ping options) floods run
    for 3 s at once: the rows its recording replays as, and its trailer,
    which counted lost events (the floods overran the ring)."""
    from ipvtrace.output import recording

    out.unlink(missing_ok=True)
    proc = start(["record", "-o", str(out), "--ring-pages", "1"], ready)
    for f in [flood(ns, dst, 3, extra=extra) for ns, dst, extra in floods]:
        f.wait()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    r = replay(out)
    assert r.returncode == 0, r.stderr[-2000:]
    trailer = recording.read(out).trailer
    assert trailer["lost_events"] > 0, "the flood should overrun a 4 KiB ring"
    return [json.loads(l) for l in r.stdout.splitlines()], trailer


def replay(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipvtrace", "replay", "--json", str(path)],
                          capture_output=True, text=True, timeout=600)


def test_killed_then_full_disk(pods, tmp_path):
    """SIGKILL in the middle of a flood: what reached the file replays (one
    warning, exit 0) and the kernel keeps the killed tracer's return probes,
    which doctor names. The next start (a recorder on a 512 KiB file system,
    under a flood) removes them; when its disk fills it stops, says so,
    exits non-zero and keeps a .partial file that replays. Afterwards nothing
    of ours stays in kprobe_events."""
    out = OUT / "killed.ipvt"
    partial = Path(str(out) + ".partial")
    partial.unlink(missing_ok=True)
    proc = start(["record", "-o", str(out)], tmp_path / "ready")
    # 200 echo requests a second: a flood this emulated guest's recorder can
    # follow (ping -f starves it of CPU: then nothing can be written at all)
    f = flood(NS[1], "10.78.0.2", 5, interval=0.005)
    time.sleep(3.5)   # in the middle of it
    proc.kill()
    proc.wait()
    f.wait()
    left = probes.leftover_probe_events(TRACEFS)
    assert left and all(pid == proc.pid for _, pid in left), left
    checks, _ = doctor.run_checks()
    named = [c for c in checks if c.name == "leftover probes"]
    assert named and not named[0].ok and str(proc.pid) in named[0].detail
    header_end = 15 + int.from_bytes(partial.read_bytes()[11:15], "little")
    assert partial.stat().st_size > header_end + 10_000, "frames reach the file at least once a second"
    assert partial.stat().st_mode & 0o777 == 0o600
    r = replay(partial)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and "cut at byte" in r.stderr, r.stderr
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    echo = [x for x in rows if x["kind"] == "echo-request" and x["complete"]]
    assert echo and {x["branch"] for x in echo} == {"tx.l2.local"}

    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], check=True)
    try:
        full = disk / "full.ipvt"
        nxt = start(["record", "-o", str(full)], tmp_path / "ready2")
        f = flood(NS[1], "10.78.0.2", 60)
        try:
            _, err = nxt.communicate(timeout=300)
        finally:
            f.kill()
            f.wait()
        assert "removed" in err and "left in kprobe_events" in err, err
        assert nxt.returncode != 0, err
        assert "No space left on device" in err and "kept in" in err, err
        assert "Traceback" not in err
        kept = Path(str(full) + ".partial")
        assert kept.exists() and kept.stat().st_size > 100_000
        r = replay(kept)
        assert r.returncode == 0 and "cut at byte" in r.stderr, r.stderr[-2000:]
        rows = [json.loads(l) for l in r.stdout.splitlines()]
        assert any(x["branch"] == "tx.l2.local" and x["complete"] for x in rows)
    finally:
        subprocess.run(["umount", str(disk)])
    assert probes.leftover_probe_events(TRACEFS) == []
    text = (TRACEFS / "kprobe_events").read_text()
    assert f"_bcc_{proc.pid}" not in text and f"_bcc_{nxt.pid}" not in text, text


def test_pod_churn_under_record_loses_nothing(pods, tmp_path):
    """100 pods (a namespace and an ipvlan slave each) created and deleted
    while record runs and two pods talk: each new device is looked up once
    (its IPv6 start-up traffic goes through ipvlan), and no event is lost.

    The pods come and go ten at a time, so a multicast frame reaches at
    most 12 slaves. With all 100 up at once the records depended on the
    boot: ipvlan filters multicast per slave by a 256-bucket hash of the
    group's MAC salted with a random per-boot secret (ipvlan_mac_hash,
    ipvlan_jhash_secret). In one CI guest the pods' MLDv2 reports
    (33:33:00:00:00:16) passed the filters of about 44 slaves each (7,021
    deliveries from the 158 reports kept; 200 from 200 on other boots): a
    secret under which that group shares a bucket with one the pods joined.
    That run made 96,000 records in a few seconds instead of the usual
    20,000 and lost 40,000. Ten at a time bounds the fan-out on any boot,
    so what is tested is the refresh, not the secret."""
    out = OUT / "churn.ipvt"
    out.unlink(missing_ok=True)
    proc = start(["record", "-o", str(out)], tmp_path / "ready")
    talk = subprocess.Popen(["ip", "netns", "exec", NS[1], "ping", "-n", "-q", "-i", "0.05",
                             "-w", "600", "10.78.0.2"], stdout=subprocess.DEVNULL)
    churn = [f"ipvt-ch-{i}" for i in range(100)]
    try:
        t0 = time.monotonic()
        for i in range(0, len(churn), 10):
            pods.pods(NS[0], "ens10", churn[i:i + 10], "l2")
            time.sleep(2)
            pods.remove_pods(churn[i:i + 10])
        churn_s = time.monotonic() - t0
    finally:
        talk.kill()
        talk.wait()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    from ipvtrace.output import recording
    rec = recording.read(out)
    ks = rec.trailer["kernel_stats"]
    # what the refresh could cost: records the ring had no room for (the
    # consumer stalled while it read netlink; now another thread reads).
    # Hits the kernel skipped a program for (bpf_prog_active held) are
    # another matter, counted as skipped.* and marked incomplete: 3 were
    # seen here once on 6.1 (xmit_ret, lookup_ret, fwd_ret), cause not
    # determined
    assert not any(k.startswith("lost.") for k in ks), ks
    snaps = rec.snapshots()
    names = {d["name"] for s in snaps for d in s.get("devices", []) if d.get("kind") == "ipvlan"}
    assert "eth0" in names
    print(f"churn: 100 pods in {churn_s:.1f} s, {rec.trailer['events']} events, "
          f"{len(snaps)} snapshots, refresh {rec.trailer.get('refresh_s')} s, at most "
          f"{rec.trailer.get('refresh_held_max')} records held, "
          f"{rec.trailer.get('refresh_hold_waits')} waits")


def test_a_tiny_ring_under_a_flood_never_gives_a_complete_row_on_partial_evidence(pods, tmp_path):
    """A 4 KiB ring and ping -f between two L2 pods: most events are lost.
    Every row still marked complete carries the branch this topology
    dictates (pod to pod: tx.l2.local, delivered; broadcast and multicast:
    tx.l2.multicast from a pod, rx.l2.multicast from the parent's peer); the loss is counted and its packets are incomplete."""
    rows, trailer = tiny_ring(OUT / "tiny-ring.ipvt", tmp_path / "ready", [(NS[1], "10.78.0.2", [])])
    complete = [x for x in rows if x["complete"]]
    # (most packets lose their entry event with the rest: they give no row)
    assert any(x["branch"] == "tx.l2.local" for x in complete), rows[:5]
    check_two_pods_rows(complete)
    print(f"tiny ring: {len(rows)} rows, {len(complete)} complete, "
          f"{trailer['lost_events']} events lost")


def test_record_under_a_flood_wakes_its_consumer_in_batches(pods, tmp_path):
    """ping -f between two L2 pods under `record`: the kernel wakes the
    consumer once per batch of records (bpf/ipvtrace.c ring_wake), not for
    the first record after every time it caught up. The consumer writes one
    TICK frame per pass of its loop, so the file counts the passes: one per
    wake-up, per 200 ms poll, and per return at once to records that came
    while it wrote the last ones. Before the batches: a pass per 12 records
    in the 6.12 guest's flood (bench/run at 02:19). With them: a pass per
    300 records (6.1, kprobes: 12,519 records, 42 passes) to 400 (6.12,
    trampolines: 44,387 records, 111 passes, more of them returns at once
    under the faster flood). The recording replays, its pod-to-pod rows
    with their branch."""
    from ipvtrace.output import recording

    out = OUT / "batches.ipvt"
    out.unlink(missing_ok=True)
    proc = start(["record", "-o", str(out)], tmp_path / "ready")
    t0 = time.monotonic()
    flood(NS[1], "10.78.0.2", 4).wait()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    ran_s = time.monotonic() - t0
    assert proc.returncode == 0, err
    rec = recording.read(out)
    kinds = [ftype for ftype, _ in rec.frames()]
    records, ticks = kinds.count(recording.F_EVENT), kinds.count(recording.F_TICK)
    assert records == rec.trailer["events"] > 2000, (records, rec.trailer)
    # polls: one per 200 ms while the recorder ran, with 2 s of stop after
    # it; the rest (wake-ups every 1,024 records, returns at once): at most
    # one pass per 100 records, 8 times fewer than before the batches
    assert ticks <= records / 100 + (ran_s + 2) / 0.2 + 2, (ticks, records, ran_s)
    r = replay(out)
    assert r.returncode == 0, r.stderr[-2000:]
    complete = [x for x in (json.loads(l) for l in r.stdout.splitlines()) if x["complete"]]
    assert any(x["branch"] == "tx.l2.local" for x in complete), complete[:5]
    check_two_pods_rows(complete)
    print(f"batches: {records} records, {ticks} ticks in {ran_s:.1f} s, "
          f"{rec.trailer['lost_events']} lost")


def test_live_json_under_a_flood_prints_what_its_recording_replays(pods, tmp_path):
    """live --json -o under a ping flood, on the mapped ring: records alike
    reach the rows in runs (written a run at once; their RING frames reach
    the file), and the lines live printed are the lines its recording
    replays to, every complete pod-to-pod row with its branch."""
    from ipvtrace.output import recording

    out, printed, ready = tmp_path / "live.ipvt", tmp_path / "live.json", tmp_path / "ready"
    with open(printed, "w") as rows:
        proc = subprocess.Popen([sys.executable, "-m", "ipvtrace", "live", "--json", "-o", str(out),
                                 "--ready-file", str(ready)], stdout=rows,
                                stderr=subprocess.PIPE, text=True)
        try:
            wait_ready(ready, proc)
            flood(NS[1], "10.78.0.2", 4).wait()
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    r = replay(out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == printed.read_text()
    rec = recording.read(out)
    assert recording.F_RING in [ftype for ftype, _, _, _ in art.raw_frames(rec)]
    complete = [x for x in (json.loads(l) for l in r.stdout.splitlines()) if x["complete"]]
    assert sum(x["branch"] == "tx.l2.local" for x in complete) > 1000, len(complete)
    check_two_pods_rows(complete)


def check_two_pods_rows(complete: list[dict]) -> None:
    """The branch two L2 pods on one parent dictate for each complete row."""
    for x in complete:
        if x["proto"] in ("icmp",) and {x["src"], x["dst"]} == {"10.78.0.1", "10.78.0.2"}:
            assert (x["branch"], x["delivery"]) == ("tx.l2.local", "delivered"), x
        elif (x.get("eth_dst") or "") == "ff:ff:ff:ff:ff:ff" or (x.get("eth_dst") or "").startswith("33:33"):
            # sent by a pod: the multicast branch of xmit; received on the
            # parent (peer0's own IPv6 router solicitations and MLD reports
            # arrive on ens10): the multicast branch of handle_frame
            want = {"tx": "tx.l2.multicast", "rx": "rx.l2.multicast"}[x["direction"]]
            assert x["branch"] == want, x
        else:
            assert x["branch"] != "unknown", x


HOG = """
import os, sys, time
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    time.sleep(0.05)
    t = time.monotonic() + 0.3
    while time.monotonic() < t:
        pass
"""


def test_a_task_preempted_inside_ipvlan_keeps_its_context(pods, tmp_path):
    """ping -f between two pods while a SCHED_FIFO task on the same CPU wakes
    every 50 ms and runs for 300 ms. On PREEMPT_RT it preempts the pinging
    task wherever it is, often inside ipvlan_queue_xmit, for longer than the
    200 ms after which a per-CPU context counts as left over from a missed
    return: the task's own context must still be there when it resumes
    (seen before: a route-fail TX whose return "never ran", in both tracers,
    with no probe missed). No context is dropped unless a return probe was
    missed, and every complete row carries its topology's branch. (On a
    kernel without PREEMPT_RT nothing preempts ipvlan, which runs with
    bottom halves off: the same facts hold there trivially.)"""
    out = OUT / "preempted.ipvt"
    out.unlink(missing_ok=True)
    proc = start(["record", "-o", str(out)], tmp_path / "ready")
    pin = ["taskset", "-c", "0"]
    hog = subprocess.Popen([*pin, sys.executable, "-c", HOG, "8"])
    f = subprocess.Popen([*pin, "ip", "netns", "exec", NS[1], "ping", "-n", "-q", "-f", "-w", "8",
                          "10.78.0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    f.wait()
    hog.wait()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert hog.returncode == 0
    from ipvtrace.output import recording
    trailer = recording.read(out).trailer
    ks = trailer["kernel_stats"]
    missed = sum(v for k, v in ks.items() if k.startswith(("kprobe_missed.", "skipped.")))
    assert ks.get("stack_stale", 0) <= missed, ks
    r = replay(out)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    complete = [x for x in rows if x["complete"]]
    if not missed and not trailer["lost_events"]:
        # nothing was lost: every packet's evidence is whole (before the fix,
        # on 6.1-rt: 2 of 3526 rows incomplete, stack_stale 2, nothing lost)
        assert len(complete) == len(rows), [x for x in rows if not x["complete"]][:3]
    assert sum(x["branch"] == "tx.l2.local" for x in complete) > 100, rows[:5]
    check_two_pods_rows(complete)
    print(f"preempted: {len(rows)} rows, {len(complete)} complete, kernel stats {ks}")


# Floods whose packets span more than one record (the to-parent echo's RX,
# the L3S hooks, the multicast worker) or cross the parent both ways, all at
# once through one tiny ring; the branch each flow's packets must take
# (src, dst, kind) -> (branch, delivery), from ipvlan_core.c as the article
# and topology checks spell it out
SPANNING_FLOODS = [
    (art.L2_NS1, "192.168.100.1", []),       # to the parent: TX, then the parent's RX of it
    (art.L2_OUT, "192.168.100.101", []),     # into a pod through the parent, reply out of it
    (art.L2_NS2, "192.168.100.101", []),     # pod to pod, L2
    (art.L2_NS2, "192.168.100.255", ["-b"]),  # a broadcast: the multicast worker's deliveries
    (art.L2_OUT, "192.168.100.255", ["-b"]),  # one from outside: the parent's RX, then the worker's
    (art.L2_OUT, "192.168.100.1", []),       # to the parent's own address: passed to the host
    (topo.SIXA, "fd00:6::2", []),            # IPv6 pod to pod, L2
    (art.L3_NS1, "172.18.22.254", []),       # L3: routed out, the reply back in
    (topo.SOUT, "10.4.0.1", []),             # L3S RX: rx_handler PASS, then l3_rcv and nf_input
    (topo.SA, "10.5.0.1", []),               # L3S TX to a sibling
]
DICTATED = {
    ("192.168.100.101", "192.168.100.1", "echo-request"): ("tx.l2.to_parent", "delivered"),
    ("192.168.100.254", "192.168.100.101", "echo-request"): ("rx.local", "delivered"),
    ("192.168.100.101", "192.168.100.254", "echo-reply"): ("tx.l2.out_parent", "sent"),
    ("192.168.100.102", "192.168.100.101", "echo-request"): ("tx.l2.local", "delivered"),
    ("192.168.100.101", "192.168.100.102", "echo-reply"): ("tx.l2.local", "delivered"),
    ("192.168.100.102", "192.168.100.255", "echo-request"): ("tx.l2.multicast", "queued"),
    ("192.168.100.254", "192.168.100.255", "echo-request"): ("rx.l2.multicast", "queued"),
    ("192.168.100.254", "192.168.100.1", "echo-request"): ("rx.to_host", "delivered"),
    ("fd00:6::1", "fd00:6::2", "echo-request"): ("tx.l2.local", "delivered"),
    ("fd00:6::2", "fd00:6::1", "echo-reply"): ("tx.l2.local", "delivered"),
    ("192.168.100.201", "172.18.22.254", "echo-request"): ("tx.l3.routed", "sent"),
    ("172.18.22.254", "192.168.100.201", "echo-reply"): ("rx.local", "delivered"),
    ("10.3.0.254", "10.4.0.1", "echo-request"): ("rx.l3s.local", "delivered"),
    ("10.4.0.1", "10.3.0.254", "echo-reply"): ("tx.l3.routed", "sent"),
    ("10.4.0.1", "10.5.0.1", "echo-request"): ("tx.l3.local", "delivered"),
    ("10.5.0.1", "10.4.0.1", "echo-reply"): ("tx.l3.local", "delivered"),
}


def test_a_tiny_ring_under_floods_that_span_records_never_gives_a_complete_row_on_partial_evidence(tmp_path, plan):
    """As the test above, for packets whose story is more than one record:
    a frame ipvlan forwarded to its parent is joined with the parent's RX of
    it, an L3S frame with the l3mdev and LOCAL_IN hooks' events, a broadcast
    with the worker's run. Ten floods at once through a 4 KiB ring: a
    record of such a packet may be lost while another of its records is
    kept. Every complete row of a flooded flow carries its flow's branch and
    delivery; no complete row is `unknown`."""
    namespaces = [*scenarios.L2.namespaces, *scenarios.L3.namespaces, *topo.ALL]
    with Lab(namespaces=namespaces) as lab:
        scenarios.L2.build(lab)
        scenarios.L3.build(lab)
        topo.build(lab)
        for ns, dst, _ in SPANNING_FLOODS:    # neighbours resolved before the floods
            lab.ping(ns, dst, 1)
        rows, trailer = tiny_ring(OUT / "tiny-ring-spanning.ipvt", tmp_path / "ready",
                                  SPANNING_FLOODS)
    complete = [x for x in rows if x["complete"]]
    seen: dict[tuple, int] = {}
    for x in complete:
        flow = (x["src"], x["dst"], x["kind"])
        if flow in DICTATED:
            assert (x["branch"], x["delivery"]) == DICTATED[flow], (x["summary"], x["why"], x["events"])
            seen[flow] = seen.get(flow, 0) + 1
        else:
            assert x["branch"] != "unknown", (x["summary"], x["why"])
    # each story that spans records kept some packets whole under the loss;
    # an L3S port's RX has a branch only where ipvlan_skb_to_addr is
    # probe-able (5.10 inlines it: incomplete `unknown` rows there, by design)
    spanning = [("192.168.100.101", "192.168.100.1", "echo-request"),
                ("192.168.100.102", "192.168.100.255", "echo-request"),
                ("192.168.100.254", "192.168.100.255", "echo-request")]
    missing = {m["name"] for m in plan.missing}
    if not missing & set(topo.check_l3s_tx_local_and_rx_pass.needs):
        spanning.append(("10.3.0.254", "10.4.0.1", "echo-request"))
    for flow in spanning:
        assert seen.get(flow), (flow, seen)
    print(f"tiny ring, spanning floods: {len(rows)} rows, {len(complete)} complete, "
          f"{trailer['lost_events']} events lost; complete per flow {sorted(seen.items())}")
