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

from ipvtrace import doctor, probes
from ipvtrace.netlab import Lab

OUT = Path(os.environ.get("IPVTRACE_OUT", "build/guest")).resolve()
NS = ["ipvt-sv-host", "ipvt-sv-a", "ipvt-sv-b"]
TRACEFS = Path("/sys/kernel/tracing")


def ours_in_kprobe_events() -> list[str]:
    names = [n for n, _ in probes.leftover_probe_events(TRACEFS)]
    text = (TRACEFS / "kprobe_events").read_text()
    return [l for l in text.splitlines() if "_bcc_" in l and any(n in l for n in names)] or \
        [l for l in text.splitlines() if "ipvlan" in l or "dev_forward_skb" in l]


@pytest.fixture
def pods():
    with Lab(namespaces=NS) as lab:
        lab.veth(NS[0], "ens10", NS[0], "peer0")
        for ns, ip in ((NS[1], "10.78.0.1/24"), (NS[2], "10.78.0.2/24")):
            lab.ipvlan(NS[0], "ens10", "ipvl0", "l2", into=ns, rename="eth0")
            lab.addr(ns, "eth0", ip)
        yield lab


def start(args: list[str], ready: Path) -> subprocess.Popen:
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "ipvtrace", *args, "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 600
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < end, "not ready after 600 s"
        time.sleep(0.2)
    return proc


def flood(ns: str, dst: str, seconds: float) -> subprocess.Popen:
    """As many echo requests as the guest sends in *seconds* (ping -f)."""
    return subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-n", "-q", "-f", "-w",
                             str(int(seconds)), dst], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def replay(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipvtrace", "replay", "--json", str(path)],
                          capture_output=True, text=True, timeout=600)


def test_full_disk_keeps_what_was_written(pods, tmp_path):
    """record on a 512 KiB file system under a flood: it stops, says so,
    exits non-zero, and the .partial file replays."""
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], check=True)
    try:
        out = disk / "full.ipvt"
        proc = start(["record", "-o", str(out)], tmp_path / "ready")
        f = flood(NS[1], "10.78.0.2", 60)
        try:
            _, err = proc.communicate(timeout=300)
        finally:
            f.kill()
            f.wait()
        assert proc.returncode != 0, err
        assert "No space left on device" in err and "kept in" in err, err
        assert "Traceback" not in err
        partial = Path(str(out) + ".partial")
        assert partial.exists() and partial.stat().st_size > 100_000
        assert partial.stat().st_mode & 0o777 == 0o600
        r = replay(partial)
        assert r.returncode == 0 and "cut at byte" in r.stderr, r.stderr[-2000:]
        rows = [json.loads(l) for l in r.stdout.splitlines()]
        assert any(x["branch"] == "tx.l2.local" and x["complete"] for x in rows)
    finally:
        subprocess.run(["umount", str(disk)])
    assert ours_in_kprobe_events() == []


def test_sigkill_leaves_a_replayable_file_and_the_next_start_cleans_up(pods, tmp_path):
    out = OUT / "killed.ipvt"
    partial = Path(str(out) + ".partial")
    partial.unlink(missing_ok=True)
    proc = start(["record", "-o", str(out)], tmp_path / "ready")
    f = flood(NS[1], "10.78.0.2", 4)
    time.sleep(3)   # in the middle of the flood
    proc.kill()
    proc.wait()
    f.wait()
    # the kernel kept the killed tracer's return probes (bcc made them in tracefs)
    left = probes.leftover_probe_events(TRACEFS)
    assert left and all(pid == proc.pid for _, pid in left), left
    checks, _ = doctor.run_checks()
    named = [c for c in checks if c.name == "leftover probes"]
    assert named and not named[0].ok and str(proc.pid) in named[0].detail
    # what reached the file before the kill replays: one warning, exit 0
    assert partial.stat().st_size > 10_000, "frames reach the file at least once a second"
    r = replay(partial)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and "cut at byte" in r.stderr
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    echo = [x for x in rows if x["kind"] == "echo-request" and x["complete"]]
    assert echo and {x["branch"] for x in echo} == {"tx.l2.local"}
    assert any(not x["complete"] for x in rows) or rows[-1]["complete"]
    # the next ipvtrace removes them at start; once it stops, nothing of ours stays
    nxt = start(["live", "--json", "--duration", "1"], tmp_path / "ready2")
    _, err = nxt.communicate(timeout=300)
    assert nxt.returncode == 0, err
    assert "removed" in err and "left in kprobe_events" in err
    assert probes.leftover_probe_events(TRACEFS) == []
    text = (TRACEFS / "kprobe_events").read_text()
    assert f"_bcc_{proc.pid}" not in text and f"_bcc_{nxt.pid}" not in text, text


def test_pod_churn_under_record_loses_nothing(pods, tmp_path):
    """100 pods (a namespace and an ipvlan slave each) created and deleted
    while record runs and two pods talk: each new device is looked up once
    (its IPv6 start-up traffic goes through ipvlan), and no event is lost."""
    out = OUT / "churn.ipvt"
    out.unlink(missing_ok=True)
    proc = start(["record", "-o", str(out)], tmp_path / "ready")
    talk = subprocess.Popen(["ip", "netns", "exec", NS[1], "ping", "-n", "-q", "-i", "0.05",
                             "-w", "600", "10.78.0.2"], stdout=subprocess.DEVNULL)
    churn = [f"ipvt-ch-{i}" for i in range(100)]
    try:
        t0 = time.monotonic()
        for i, ns in enumerate(churn):
            pods.add_namespace(ns)
            pods.ipvlan(NS[0], "ens10", f"ch{i}", "l2", into=ns, rename="eth0")
            pods.addr(ns, "eth0", f"10.78.{1 + i // 200}.{1 + i % 200}/16")
        time.sleep(2)
        for ns in churn:
            pods.remove_namespace(ns)
        churn_s = time.monotonic() - t0
    finally:
        talk.kill()
        talk.wait()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    from ipvtrace import recording
    rec = recording.read(out)
    assert rec.trailer["lost_events"] == 0, rec.trailer["kernel_stats"]
    snaps = rec.snapshots()
    names = {d["name"] for s in snaps for d in s.get("devices", []) if d.get("kind") == "ipvlan"}
    assert "eth0" in names
    print(f"churn: 100 pods in {churn_s:.1f} s, {rec.trailer['events']} events, "
          f"{len(snaps)} snapshots, refresh {rec.trailer.get('refresh_s')}")


def test_a_tiny_ring_under_a_flood_never_gives_a_complete_row_on_partial_evidence(pods, tmp_path):
    """A 4 KiB ring and ping -f between two L2 pods: most events are lost.
    Every row still marked complete carries the branch this topology
    dictates (pod to pod: tx.l2.local, delivered; broadcast and multicast:
    tx.l2.multicast); the loss is counted and its packets are incomplete."""
    out = OUT / "tiny-ring.ipvt"
    out.unlink(missing_ok=True)
    proc = start(["record", "-o", str(out), "--ring-pages", "1"], tmp_path / "ready")
    f = flood(NS[1], "10.78.0.2", 5)
    f.wait()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    r = replay(out)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    from ipvtrace import recording
    trailer = recording.read(out).trailer
    assert trailer["lost_events"] > 0, "the flood should overrun a 4 KiB ring"
    complete = [x for x in rows if x["complete"]]
    assert complete and len(complete) < len(rows)
    for x in complete:
        if x["proto"] in ("icmp",) and {x["src"], x["dst"]} == {"10.78.0.1", "10.78.0.2"}:
            assert (x["branch"], x["delivery"]) == ("tx.l2.local", "delivered"), x
        elif (x.get("eth_dst") or "") == "ff:ff:ff:ff:ff:ff" or (x.get("eth_dst") or "").startswith("33:33"):
            assert x["branch"] == "tx.l2.multicast", x
        else:
            assert x["branch"] != "unknown", x
    print(f"tiny ring: {len(rows)} rows, {len(complete)} complete, "
          f"{trailer['lost_events']} events lost")
