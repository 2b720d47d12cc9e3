"""Benchmark, part 1 and 2 (runs as root on a kernel with ipvlan, e.g. in the
VM): UDP packets/s between two ipvlan namespaces, untraced vs traced by
ipvtrace (stats, record, live --json, record with a filter matching nothing,
stats with its probes attached but disarmed) and by a reference bpftrace
script; start-up time of ipvtrace vs a minimal bcc program, each both cold
(right after the page cache is dropped) and warm. Prints one JSON object."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ipvtrace.capture import bpfsys, probes
from ipvtrace.lab import scenarios
from ipvtrace.lab.netlab import Lab

NS = ["ipvt-bench-host", "ipvt-bench-a", "ipvt-bench-b"]
SECONDS = int(os.environ.get("IPVT_BENCH_SECONDS", "8"))
HERE = Path(__file__).resolve().parent


SOAK_SECONDS = int(os.environ.get("IPVT_BENCH_SOAK_SECONDS", "90"))


def rss_kib(pid: int) -> dict:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


# a veth pair between two namespaces that never touches ipvlan: what probes
# on __dev_queue_xmit, netif_rx and the skb free tracepoints cost the node's
# other traffic
VETH = ("ipvt-bench-v1", "ipvt-bench-v2", "10.98.0.2")
IPVLAN = (NS[1], NS[2], "10.99.0.2")


LAB_NAMESPACES = NS + list(VETH[:2])


def build(lab: Lab) -> None:
    """The benchmark's two paths: pod to pod through an L2 ipvlan port
    (IPVLAN), and a veth pair that never touches ipvlan (VETH)."""
    lab.veth(VETH[0], "v0", VETH[1], "v1")
    lab.addr(VETH[0], "v0", "10.98.0.1/24")
    lab.addr(VETH[1], "v1", "10.98.0.2/24")
    lab.veth(NS[0], "ens10", NS[0], "peer")
    for ns, ip in ((NS[1], "10.99.0.1/24"), (NS[2], "10.99.0.2/24")):
        lab.ipvlan(NS[0], "ens10", "ipvl0", "l2", into=ns, rename="eth0")
        lab.addr(ns, "eth0", ip)
    lab.ping(NS[1], "10.99.0.2", 1)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listening(ns: str, port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until a TCP socket listens on *port* in namespace *ns*: a client
    started a fixed second after the server (as before 2026-12-02) found
    nobody there when two emulated guests shared the machine, and the
    one-off server then waited for it until its timeout."""
    t0 = time.monotonic()
    while True:
        r = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}"],
                           capture_output=True, text=True)
        if r.stdout.strip():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the server in {ns} exited: {proc.returncode}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"nothing listens on {port} in {ns} after {timeout:.0f} s")
        time.sleep(0.1)


def udp_rate(lab: Lab, seconds: int = SECONDS, during=None, path=IPVLAN) -> dict:
    src, dst, dst_ip = path
    srv = subprocess.Popen(["ip", "netns", "exec", dst, "iperf3", "-s", "-1", "-J"],
                           stdout=subprocess.PIPE, text=True)
    listening(dst, 5201, srv)
    cli_proc = subprocess.Popen(["ip", "netns", "exec", src, "iperf3", "-c", dst_ip, "-u",
                                 "-b", "0", "-l", "64", "-t", str(seconds), "-J"],
                                stdout=subprocess.PIPE, text=True)
    if during is not None:
        during(cli_proc)
    cli_out, _ = cli_proc.communicate(timeout=seconds + 60)
    cli = cli_proc
    try:
        srv_out, _ = srv.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        srv.kill()
        srv.communicate()
        raise RuntimeError(f"iperf3's server did not end; the client exited {cli.returncode}: "
                           f"{cli_out[-600:]}") from None
    s = json.loads(srv_out)["end"]["sum"]
    return {"pps": s["packets"] / s["seconds"] if s["seconds"] else 0.0,
            "lost_pct_udp": s.get("lost_percent"), "client_rc": cli.returncode}


def wait_file(path: Path, proc: subprocess.Popen, timeout: float = 900) -> float:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"exited early: {proc.returncode}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("not ready")
        time.sleep(0.05)
    return time.monotonic() - t0


def tracing_labels() -> dict[str, list[str]]:
    """An fentry/fexit program is named after the function it traces (as
    the kernel keeps it: 15 bytes), and dev_forward_skb has two: each name's
    probes in the order the loader attaches them (the plan's, SPECS order)."""
    out: dict[str, list[str]] = {}
    for sp in probes.SPECS:
        tr = sp.trampoline
        if tr and not tr.module:   # (a module's, loaded by ipvtrace, keeps its on_ name)
            out.setdefault(tr.function[:15], []).append(f"{sp.name} ({tr.kind} {tr.function})")
    return out


def prog_costs(pid: int) -> list[dict]:
    """What each BPF program of process *pid* cost during the flood: hits and
    ns per hit, from the kernel's own accounting (on while bpfsys.enable_stats' fd is open,
    read with bpftool), most expensive first."""
    r = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    if r.returncode != 0:
        return []
    progs = json.loads(r.stdout)
    labels = tracing_labels()
    mine = [p for p in progs if any(x.get("pid") == pid for x in p.get("pids", []))]
    if not any(p.get("pids") for p in progs):   # a bpftool without pid iterators
        mine = [p for p in progs if str(p.get("name", "")).startswith(("on_", "tracepoint__"))
                or (p.get("type") == "tracing" and p.get("name") in labels)]
    out = []
    seen: dict[str, int] = {}
    for p in sorted(mine, key=lambda p: p.get("id", 0)):   # load order
        name = str(p.get("name"))
        if p.get("type") == "tracing" and name in labels:
            i = seen[name] = seen.get(name, -1) + 1
            name = labels[name][min(i, len(labels[name]) - 1)]
        cnt, ns = p.get("run_cnt", 0), p.get("run_time_ns", 0)
        out.append({"prog": name, "type": p.get("type"), "hits": cnt,
                    "ns_per_hit": round(ns / cnt) if cnt else None, "total_ms": round(ns / 1e6, 1)})
    return sorted(out, key=lambda x: -x["total_ms"])


def disarm(pid: int) -> None:
    """Set the `armed` flag of process *pid*'s programs back to 0 (bpftool):
    every probe stays attached and runs, but none opens a context, so no
    evidence is gathered. The packet rate then is the floor the attach
    points themselves set (trampolines, the kprobe, the tracepoints, and
    the few loads each program does before it returns)."""
    r = subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True, check=True)
    maps = json.loads(r.stdout)
    ids = [m["id"] for m in maps if m.get("name") == "armed"
           and any(x.get("pid") == pid for x in m.get("pids", []))]
    if not any(m.get("pids") for m in maps):   # a bpftool without pid iterators: the only one
        ids = [m["id"] for m in maps if m.get("name") == "armed"]
    if len(ids) != 1:
        raise RuntimeError(f"{len(ids)} maps named armed for process {pid}, not 1: "
                           + json.dumps([m for m in maps if m.get("name") == "armed"]))
    subprocess.run(["bpftool", "map", "update", "id", str(ids[0]), "key", "0", "0", "0", "0",
                    "value", "0", "0", "0", "0"], check=True)


def traced(lab: Lab, cmd: list[str], ready: Path, out_path: Path | None = None,
           env: dict | None = None, path=IPVLAN, costs: bool = False,
           disarmed: bool = False) -> dict:
    ready.unlink(missing_ok=True)
    t0 = time.monotonic()
    # stdout to a file: a pipe nobody reads until the end fills after a few
    # dozen rows and blocks `live --json` in write() while the kernel drops
    # its records (runs before 2026-12-02 17:31 measured that blocked tool)
    out_f = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stdout=out_f, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})))
    stats_fd = None
    try:
        startup = wait_file(ready, proc)
        if disarmed:
            disarm(proc.pid)
        # the kernel's run-time accounting, held by an fd (bpfsys.enable_stats),
        # not the global sysctl another process may turn off; it costs two clock
        # reads per program run, so only in the runs that ask for it
        stats_fd = bpfsys.enable_stats() if costs else None
        cpu0 = cpu_s(proc.pid)
        res = udp_rate(lab, path=path)
        res["tool_cpu_s"] = round(cpu_s(proc.pid) - cpu0, 2)   # the tool's own CPU during the flood
        if costs:
            res["prog_costs"] = prog_costs(proc.pid)
    except BaseException:
        # a run that failed (not ready, bpftool, the flood) leaves no tool attached
        scenarios.interrupt(proc, 900)
        raise
    finally:
        if stats_fd is not None:
            os.close(stats_fd)
    res["rss_kib"] = rss_kib(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=900)
    out_f.seek(0)
    out = out_f.read()
    out_f.close()
    if "--json" in cmd and "live" in cmd:
        res["rows"] = out.count("\n")
    if "stats" in cmd:   # its last reading: what the kernel counted, misses
        last = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        res["counted_packets"] = last["packets"]
        res["branches"] = last["branches"]
        res["kprobe_misses"] = last["kprobe_misses_total"]
        res["kernel_stats"] = last["kernel_stats"]
    res["startup_s"] = startup
    res["stop_s"] = time.monotonic() - t0 - startup
    lost = [l for l in err.splitlines() if "LOST" in l or "lost" in l]
    res["stderr_tail"] = err.strip().splitlines()[-1:] + lost[-1:]
    if out_path is not None and out_path.exists():
        from ipvtrace.output import recording
        rec = recording.read(out_path)
        res["events"] = rec.trailer["events"]
        res["lost_events"] = rec.trailer["lost_events"]
        res["bytes"] = out_path.stat().st_size
    return res


def soak(lab: Lab, cmd: list[str], ready: Path) -> dict:
    """`live --json` under the flood for SOAK_SECONDS: its memory every 10 s.
    Under emulation it loses events (returns among them), so this also runs
    the correlator's eviction of packets that can never finish."""
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_file(ready, proc)
    samples: list[tuple[float, int]] = []

    def watch(cli: subprocess.Popen) -> None:
        t0 = time.monotonic()
        while cli.poll() is None:
            samples.append((round(time.monotonic() - t0, 1), rss_kib(proc.pid)["VmRSS"]))
            time.sleep(10)

    res = udp_rate(lab, SOAK_SECONDS, during=watch)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=900)
    res["rss_samples_kib"] = samples
    res["seconds"] = SOAK_SECONDS
    res["summary_tail"] = [l for l in err.splitlines() if "evicted" in l or "lost" in l][-3:]
    return res


def bpftrace_ref(lab: Lab, out_dir: Path) -> dict:
    out = out_dir / "bpftrace-ref.out"
    with open(out, "w") as f:
        proc = subprocess.Popen(["bpftrace", str(HERE / "ref.bt")], stdout=f,
                                stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while "Attaching" not in out.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() - t0 > 300:
            raise RuntimeError("bpftrace did not attach: " + out.read_text()[-500:])
        time.sleep(0.05)
    startup = time.monotonic() - t0
    res = udp_rate(lab)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=300)
    res["startup_s"] = startup
    with open(out, errors="replace") as f:
        res["lines"] = sum(1 for _ in f)
    out.unlink()
    return res


def minimal_bcc_startup() -> float:
    code = ("from bcc import BPF\nimport sys,time\nt=time.monotonic()\n"
            "b=BPF(text='int kprobe__ipvlan_queue_xmit(void *ctx){return 0;}')\n"
            "print(time.monotonic()-t)\n")
    t0 = time.monotonic()
    subprocess.run(["/usr/bin/python3", "-c", code], check=True, capture_output=True)
    return time.monotonic() - t0


def drop_caches() -> bool:
    """Empty the page cache, so that the next start reads its libraries
    (bcc's LLVM, Python's modules) from disk again, as the first start after
    boot does (in the VM the root is 9p with cache=loose; run natively, this
    empties the host's cache). Until 2026-12-05 the first `stats` start was
    measured cold and the minimal program warm (04:13: 22.7 s against 15.8
    and 16.0 s for the later stats starts); start-ups are now compared cold
    with cold, warm with warm. False (said on stderr) where the kernel
    refused: then no start is cold, and the report says so."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError as e:
        print(f"datapath: cannot drop the page cache ({e}): no start-up is cold", file=sys.stderr)
        return False


def clocksource() -> str:
    """The kernel's clocksource: every BPF timestamp reads it. Under
    emulation the watchdog may drop tsc for hpet, whose every read is a
    trip to the device model, and the probes' cost with it."""
    try:
        return Path("/sys/devices/system/clocksource/clocksource0/current_clocksource") \
            .read_text().strip()
    except OSError:
        return "?"


def main() -> int:
    for m in ("ipvlan", "veth"):
        subprocess.run(["modprobe", m])
    out_dir = Path(os.environ.get("IPVTRACE_OUT", "/tmp")).resolve()
    ready = out_dir / "bench.ready"
    # what the tools write goes to a local file system, as on a node: in the
    # VM the output share is 9p without a cache, where every flush is a
    # round trip to the host (py-spy: a fifth of `record`'s consumer on
    # 2026-12-02); bpftrace's reference writes there too. The recording the
    # host replays is copied out after its run.
    scratch = Path(tempfile.mkdtemp(prefix="ipvt-bench-"))
    try:
        return _main(out_dir, ready, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _main(out_dir: Path, ready: Path, scratch: Path) -> int:
    results: dict = {"kernel": os.uname().release, "cpus": os.cpu_count(), "seconds": SECONDS,
                     "clocksource": {"start": clocksource()}}
    with Lab(namespaces=LAB_NAMESPACES) as lab:
        build(lab)
        py = [sys.executable, "-m", "ipvtrace"]
        results["untraced"] = udp_rate(lab)
        results["caches_dropped"] = drop_caches()   # the first stats start is the cold one
        results["stats"] = traced(lab, py + ["stats", "--json", "--interval", "2",
                                             "--ready-file", str(ready)], ready)
        rec = scratch / "bench-record.ipvt"
        results["record"] = traced(lab, py + ["record", "-o", str(rec), "--ready-file", str(ready)],
                                   ready, rec)
        shutil.copyfile(rec, out_dir / rec.name)   # replayed on the host (bench/run)
        # the same, reading the ring buffer through bcc's per-event callback
        rec_bcc = scratch / "bench-record-bcc.ipvt"
        results["record_bcc_callback"] = traced(
            lab, py + ["record", "-o", str(rec_bcc), "--ready-file", str(ready)], ready, rec_bcc,
            env={"IPVTRACE_RINGBUF": "bcc"})
        results["live_json"] = traced(lab, py + ["live", "--json", "--ready-file", str(ready)], ready)
        # the floor: every probe attached and running, none gathering evidence
        results["stats_disarmed"] = traced(lab, py + ["stats", "--json", "--interval", "2",
                                                      "--ready-file", str(ready)], ready,
                                           disarmed=True)
        results["filter_nothing"] = traced(
            lab, py + ["record", "-o", str(scratch / "bench-none.ipvt"), "--ready-file", str(ready),
                       "host", "192.0.2.77"], ready, scratch / "bench-none.ipvt")
        results["bpftrace_ref"] = bpftrace_ref(lab, scratch)
        results["soak_live_json"] = soak(lab, py + ["live", "--json", "--ready-file", str(ready)],
                                         ready)
        # what each probe costs per hit (a run of its own: the accounting costs too)
        results["stats_costs"] = traced(lab, py + ["stats", "--json", "--interval", "2",
                                                   "--ready-file", str(ready)], ready, costs=True)
        # the same for the record build: what sending each packet's record costs
        results["record_costs"] = traced(
            lab, py + ["record", "-o", str(scratch / "bench-costs.ipvt"), "--ready-file",
                       str(ready)], ready, scratch / "bench-costs.ipvt", costs=True)
        results["untraced_again"] = udp_rate(lab)
        # traffic that never touches ipvlan, untraced and under stats / record
        results["veth_untraced"] = udp_rate(lab, path=VETH)
        results["veth_stats"] = traced(lab, py + ["stats", "--json", "--interval", "2",
                                                  "--ready-file", str(ready)], ready, path=VETH)
        rec_v = scratch / "bench-veth.ipvt"
        results["veth_record"] = traced(lab, py + ["record", "-o", str(rec_v), "--ready-file",
                                                   str(ready)], ready, rec_v, path=VETH)
        results["veth_untraced_again"] = udp_rate(lab, path=VETH)
    results["caches_dropped"] = drop_caches() and results["caches_dropped"]
    results["minimal_bcc_startup_cold_s"] = minimal_bcc_startup()
    results["minimal_bcc_startup_s"] = minimal_bcc_startup()   # warm: right after the cold one
    results["clocksource"]["end"] = clocksource()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
