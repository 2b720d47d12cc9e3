"""live and record on a real kernel: start, stop by duration or signal,
nothing left attached, files complete."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipvtrace import replay
from ipvtrace.capture import probes
from ipvtrace.output import recording
from guest_helpers import trampolines_expected, two_pods, wait_ready

OUT = Path(os.environ.get("IPVTRACE_OUT", "build/guest")).resolve()
NS = ["ipvt-lc-host", "ipvt-lc-a", "ipvt-lc-b"]


def kprobes_of_ours() -> list[str]:
    text = Path("/sys/kernel/tracing/kprobe_events").read_text()
    return [l for l in text.splitlines() if "ipvlan" in l or "dev_forward_skb" in l]


@pytest.fixture
def pods():
    yield from two_pods(NS, "10.77.0")


def lines_while_running(proc: subprocess.Popen, want: int, timeout: float) -> bytes:
    """What *proc* wrote to its stdout pipe until *want* lines are there,
    read while it runs; fails if it exits or *timeout* passes first."""
    import select

    got, fd = b"", proc.stdout.fileno()
    end = time.monotonic() + timeout
    while got.count(b"\n") < want:
        assert proc.poll() is None, f"exited before writing {want} lines: {got!r}"
        left = end - time.monotonic()
        assert left > 0, f"{want} lines not written in {timeout} s: {got!r}"
        if select.select([fd], [], [], min(left, 0.5))[0]:
            got += os.read(fd, 1 << 16)
    return got


def test_live_json_duration(pods, tmp_path):
    """Rows reach a reader of the pipe while live runs (each line is
    flushed: a pipe would otherwise hold them until the end), and the
    duration ends it with nothing attached."""
    ready = tmp_path / "ready"
    # with a tcpdump-style filter, run in the kernel: ARP and the other
    # direction's traffic of other hosts never reach user space
    proc = subprocess.Popen([sys.executable, "-m", "ipvtrace", "live", "--json",
                             "--duration", "20", "--ready-file", str(ready),
                             "icmp", "and", "dst", "host", "10.77.0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    early = b""
    try:
        wait_ready(ready, proc)
        t0 = time.monotonic()
        assert pods.ping(NS[1], "10.77.0.2", 3)
        # the duration runs from the ready file: what is left of it, less a margin
        early = lines_while_running(proc, 3, 20 - (time.monotonic() - t0) - 3)
    finally:
        rest, err_b = proc.communicate(timeout=300)
    out, err = (early + rest).decode(), err_b.decode()
    assert proc.returncode == 0, err
    assert "ipvtrace: tracing (" in err and " probes)" in err
    rows = [json.loads(l) for l in out.splitlines()]
    echo = [r for r in rows if r["kind"] == "echo-request" and r["dst"] == "10.77.0.2"]
    assert len(echo) == 3 and {r["branch"] for r in echo} == {"tx.l2.local"}, rows
    assert len(rows) == 3, [r["summary"] for r in rows]   # no ARP, no replies
    assert kprobes_of_ours() == []


TRAMPOLINES = {"xmit": "fentry", "xmit_ret": "fexit", "lookup_ret": "fexit", "fwd": "fentry",
               "fwd_ret": "fexit", "qxmit": "fentry", "local_out": "fentry",
               "mc_work": "fentry", "mc_work_ret": "fexit"}


KPROBES = {"xmit": "kprobe", "xmit_ret": "raw_tracepoint", "lookup_ret": "kretprobe",
           "fwd": "kprobe", "fwd_ret": "kretprobe", "qxmit": "kprobe", "local_out": "kprobe",
           "mc_work": "kprobe", "mc_work_ret": "kretprobe"}


@pytest.mark.parametrize("setting", ["default", "0"])
def test_trampolines_by_default_kprobes_when_turned_off(pods, tmp_path, setting):
    """By default, where the kernel allows (5.12+, its BTF; not PREEMPT_RT),
    the vmlinux helpers, ipvlan_queue_xmit's entry and return,
    ipvlan_addr_lookup's return and the multicast worker's run and its
    netif_rx are fentry/fexit programs (the module's
    loaded by ipvtrace itself), and a context opened inside one of their runs
    is flagged from the programs' marks. IPVTRACE_TRAMPOLINES=0 gives kprobes
    and the net_dev_xmit tracepoint instead. Either way the pods' pings get
    the same branch, and the end leaves nothing attached."""
    env = dict(os.environ)
    env.pop(probes.TRAMPOLINES_ENV, None)
    if setting != "default":
        env[probes.TRAMPOLINES_ENV] = setting
    out, ready = tmp_path / "plan.ipvt", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "ipvtrace", "record", "-o", str(out),
                             "--ready-file", str(ready)], stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        wait_ready(ready, proc)
        assert pods.ping(NS[1], "10.77.0.2", 3)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 130), err
    plan = recording.read(out).header["plan"]
    kinds = {a["name"]: a["kind"] for a in plan["attach"]}
    if setting == "default" and trampolines_expected():
        assert {n: kinds.get(n) for n in TRAMPOLINES} == TRAMPOLINES, kinds
        # a context opened inside one of these programs' runs, or on_xmit's
        # under a kprobe's, is flagged (probes.keepout_cflags): every
        # watched program's mark was found (not the multicast worker's
        # three: their hits count only in its run, probes.WORKER_ONLY)
        marked = sum(map(probes.watched, plan["attach"]))
        assert f"-DIPVT_WATCH_ACTIVE={marked}" in plan["cflags"], plan["cflags"]
        assert any(f.startswith("-DIPVT_BPF_PROG_ACTIVE=") for f in plan["cflags"])
        assert "programs are watched" not in err, err
        # read only in an interrupt where no trampoline's program can be
        # preempted (Debian's 6.x: voluntary), else at every context open
        assert (("-DIPVT_KEEPOUT_INTERRUPTED_ONLY" in plan["cflags"])
                != probes.trampolines_preemptible(os.uname().release)), plan["cflags"]
    else:   # turned off; or PREEMPT_RT, before 5.12
        assert {n: kinds.get(n) for n in TRAMPOLINES} == KPROBES, kinds
    # the worker's hand-off: an fentry on netif_rx with the others; where the
    # worker calls another function (7.2's netif_receive_skb), a kprobe there
    tramp = setting == "default" and trampolines_expected()
    assert kinds["netif_rx"] == ("fentry" if tramp and plan["worker_rx"] == "netif_rx"
                                 else "kprobe"), (kinds, plan["worker_rx"])
    # the programs count their runs only where the kernel does not count the
    # hits it skipped them for (before 6.7: hits minus runs, loader.skipped)
    assert ("-DIPVT_COUNT_RUNS" in plan["cflags"]) != plan["counts_skipped"], plan["cflags"]
    assert plan["counts_skipped"] == (probes.kernel_version(os.uname().release)
                                      >= probes.COUNTS_SKIPPED_SINCE)
    rows: list[dict] = []
    replay.run_replay(out, sink=rows.append)
    echo = [r for r in rows if r["kind"] == "echo-request" and r["dst"] == "10.77.0.2"]
    assert len(echo) == 3, [(r["summary"], r["branch"]) for r in rows]
    assert all(r["complete"] and r["branch"] == "tx.l2.local" and r["delivery"] == "delivered"
               for r in echo), echo
    assert kprobes_of_ours() == []


def test_record_stops_on_sigterm(pods, tmp_path):
    # a pod without an `ip netns` name (as a container runtime makes them):
    # the recording names its namespace after the process holding it
    holder = subprocess.Popen(["unshare", "-n", "sleep", "600"])
    try:
        _record_sigterm(pods, tmp_path, holder.pid)
    finally:
        holder.kill()
        holder.wait()


def _record_sigterm(pods, tmp_path, holder_pid):
    time.sleep(0.5)
    with pods.ipr(NS[0]) as ipr:
        ipr.link("add", ifname="anon0", kind="ipvlan", link=ipr.link_lookup(ifname="ens10")[0],
                 ipvlan_mode=0)
        ipr.link("set", index=ipr.link_lookup(ifname="anon0")[0], net_ns_pid=holder_pid)
    out, ready = OUT / "sigterm.ipvt", tmp_path / "ready"
    out.unlink(missing_ok=True)   # a work dir may hold one from an earlier run
    proc = subprocess.Popen([sys.executable, "-m", "ipvtrace", "record", "-o", str(out),
                             "--ready-file", str(ready)], stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(ready, proc)
        assert pods.ping(NS[2], "10.77.0.1", 1)
        assert not out.exists(), "the file appears only when complete"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rec = recording.read(out)
    assert rec.trailer["ended_by"] == "SIGTERM" and rec.trailer["events"] > 0
    snap = rec.header["snapshot"]
    anon = [n for n in snap["namespaces"] if n["name"] == f"pid:{holder_pid}(sleep)"]
    assert len(anon) == 1, snap["namespaces"]
    devs = [d for d in snap["devices"] if d["netns"] == anon[0]["inum"]]
    assert {(d["name"], d.get("ipvlan", {}).get("mode")) for d in devs} >= {("anon0", "l2")}, devs
    assert not Path(str(out) + ".partial").exists()
    assert kprobes_of_ours() == []


def test_live_dashboard_on_a_terminal(pods, tmp_path):
    """On a terminal `live` shows the dashboard; at the end the summary."""
    ready = tmp_path / "ready"
    cmd = f"{sys.executable} -m ipvtrace live --duration 6 --ready-file {ready}"
    # the terminal's output goes to a file, not a pipe nobody reads while the
    # probes compile: a full pipe would block `script`, the pty, then ipvtrace
    screen = tmp_path / "screen"
    with open(screen, "w") as f:
        proc = subprocess.Popen(["script", "-qec", cmd, "/dev/null"], stdout=f,
                                stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, COLUMNS="160", TERM="xterm"))
        try:
            wait_ready(ready, proc)
            assert pods.ping(NS[1], "10.77.0.2", 2)
        finally:
            proc.wait(timeout=300)
    out = screen.read_text(errors="replace")
    assert proc.returncode == 0, out[-2000:]
    assert " probes   packets " in out and "lost events 0" in out
    assert "tx.l2.local" in out and "echo-request" in out
    assert "Traceback" not in out


def test_a_filter_keeps_a_rejected_broadcasts_worker_run_out(pods, tmp_path):
    """The in-kernel filter rejects a frame at its context's entry; a
    rejected broadcast's multicast-worker run (other contexts: a kworker,
    maybe another CPU) must stay out of the ring too, else each of its
    events reaches user space with no packet to belong to
    (`unattributed_events`). ARP requests and a broadcast echo are
    rejected here; the unicast echoes to 10.77.0.2 are kept, whole."""
    out, ready = OUT / "filtered-broadcast.ipvt", tmp_path / "ready"
    out.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "ipvtrace", "record", "-o", str(out),
                             "--ready-file", str(ready), "icmp", "and", "dst", "host", "10.77.0.2"],
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(ready, proc)
        pods.run(NS[1], ["ip", "neigh", "flush", "dev", "eth0"], check=True)
        assert pods.ping(NS[1], "10.77.0.2", 3)          # an ARP broadcast first: rejected
        pods.run(NS[1], ["ping", "-n", "-q", "-b", "-c", "3", "-i", "0.2", "10.77.0.255"])
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    r = subprocess.run([sys.executable, "-m", "ipvtrace", "replay", str(out), "--stats", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["branches"] == {"tx.l2.local": 3}, summary
    assert summary["unattributed_events"] == 0 and summary["lost_events"] == 0, summary
