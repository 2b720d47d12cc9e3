"""What the attach mechanism alone costs: empty bpftrace programs on the
attach points a pod-to-pod packet hits under `ipvtrace stats` (kprobes and
kretprobes as ipvtrace uses them; fentry/fexit where the kernel's BTF allows;
entries only; returns only), each run between two untraced runs and compared
with the pair of them (this machine's rate drifts by 20% from one run to the
next). Runs as root on a kernel with ipvlan, e.g. in the VM:

  .venv/bin/python -m ipvtrace.lab.vm --kernel 6.12 --work build/bench/mech -- \\
      python bench/mechanism.py

Not part of bench/run (it adds about ten minutes under emulation). With
`--icount 3` on the vm command, the rates count guest instructions: steady
where real-time emulation swings by 20%."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datapath as dp  # noqa: E402
from ipvtrace.lab.netlab import Lab  # noqa: E402


def rcv_frame_symbol() -> str:
    """ipvlan_rcv_frame, or the GCC clone it is on this kernel."""
    for line in open("/proc/kallsyms"):
        f = line.split()
        if len(f) >= 3 and f[2].startswith("ipvlan_rcv_frame"):
            return f[2]
    return "ipvlan_rcv_frame"


def scripts() -> dict[str, str]:
    rcv = rcv_frame_symbol()
    entries = (f"kprobe:ipvlan_queue_xmit, kprobe:dev_forward_skb, kprobe:__dev_queue_xmit, "
               f"kprobe:{rcv} {{ }}\n")
    returns = "kretprobe:ipvlan_queue_xmit, kretprobe:ipvlan_addr_lookup, kretprobe:dev_forward_skb { }\n"
    frees = "tracepoint:skb:consume_skb, tracepoint:skb:kfree_skb { }\n"
    fentry = ("kfunc:ipvlan:ipvlan_queue_xmit, kfunc:vmlinux:dev_forward_skb, "
              "kfunc:vmlinux:__dev_queue_xmit { }\n"
              "kretfunc:ipvlan:ipvlan_queue_xmit, kretfunc:ipvlan:ipvlan_addr_lookup, "
              f"kretfunc:vmlinux:dev_forward_skb {{ }}\nkprobe:{rcv} {{ }}\n")
    return {"kprobes and kretprobes": entries + returns + frees,
            "fentry/fexit (kprobe on the clone)": fentry + frees,
            "kprobes on entries only": entries,
            "kretprobes only": returns,
            # one at a time: what each kind of attach point costs alone
            "kprobe ipvlan_queue_xmit": "kprobe:ipvlan_queue_xmit { }\n",
            "kprobe dev_forward_skb": "kprobe:dev_forward_skb { }\n",
            "kprobe __dev_queue_xmit": "kprobe:__dev_queue_xmit { }\n",
            f"kprobe {rcv}": f"kprobe:{rcv} {{ }}\n",
            "kretprobe ipvlan_queue_xmit": "kretprobe:ipvlan_queue_xmit { }\n",
            "kretprobe ipvlan_addr_lookup": "kretprobe:ipvlan_addr_lookup { }\n",
            "kretprobe dev_forward_skb": "kretprobe:dev_forward_skb { }\n",
            "tracepoints skb frees": frees}


def bpftrace_rate(lab: Lab, script: str, out_dir: Path, n: int) -> dict:
    src, out = out_dir / f"mech-{n}.bt", out_dir / f"mech-{n}.out"
    src.write_text(script)
    with open(out, "w") as f:
        proc = subprocess.Popen(["bpftrace", str(src)], stdout=f, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while "Attaching" not in out.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() - t0 > 300:
            return {"error": out.read_text(errors="replace")[-800:]}
        time.sleep(0.05)
    res = dp.udp_rate(lab)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:   # (seen once under TCG: bpftrace hung detaching)
        proc.kill()
        proc.wait()
    return res


def main() -> int:
    for m in ("ipvlan", "veth"):
        subprocess.run(["modprobe", m])
    out_dir = Path(os.environ.get("IPVTRACE_OUT", "/tmp")).resolve()
    ready = out_dir / "mech.ready"
    runs: list[tuple[str, float]] = []
    with Lab(namespaces=dp.LAB_NAMESPACES) as lab:
        dp.build(lab)
        runs.append(("untraced", dp.udp_rate(lab)["pps"]))
        for n, (name, script) in enumerate(scripts().items()):
            res = bpftrace_rate(lab, script, out_dir, n)
            if "error" in res:
                print(f"{name}: bpftrace failed: {res['error']}", file=sys.stderr)
            runs.append((name, res.get("pps", 0.0)))
            runs.append(("untraced", dp.udp_rate(lab)["pps"]))
        runs.append(("ipvtrace stats", dp.traced(
            lab, [sys.executable, "-m", "ipvtrace", "stats", "--json", "--interval", "2",
                  "--ready-file", str(ready)], ready)["pps"]))
        runs.append(("untraced", dp.udp_rate(lab)["pps"]))
    print(json.dumps({"kernel": os.uname().release, "runs": runs}))
    for i, (name, pps) in enumerate(runs):
        if name == "untraced":
            print(f"  {name:36s} {pps:9,.0f} packets/s")
            continue
        base = (runs[i - 1][1] + runs[i + 1][1]) / 2
        extra = 1e6 / pps - 1e6 / base if pps else float("nan")
        print(f"  {name:36s} {pps:9,.0f} packets/s = {pps / base:.2f} of the untraced runs "
              f"beside it ({extra:+.1f} µs a packet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
