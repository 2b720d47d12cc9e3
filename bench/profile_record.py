"""Where `record`'s consumer (or `live --json`'s, with --live-json) spends its
CPU under the benchmark's flood: py-spy samples it for the flood's length (in
the guest, as root, like datapath.py):

    python -m ipvtrace.lab.vm --kernel 6.12 --work build/prof -- \\
        sh -c "python bench/profile_record.py build/prof/6.12/out [--native] [--live-json]"

Writes OUT/record.raw (or live-json.raw: py-spy's collapsed stacks) and
prints the rates and the busiest frames, leaf and inclusive. --nonblocking: the process is not stopped to be
sampled (with --native it must be, and then it loses records: 2026-12-04,
25k of 35k, so those samples say where a stalled consumer was)."""
from __future__ import annotations

import collections
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import datapath as dp  # noqa: E402
from ipvtrace.lab.netlab import Lab  # noqa: E402

SPY = Path(sys.executable).parent / "py-spy"


def main() -> int:
    if not SPY.exists():   # a bench tool, not a dependency of ipvtrace: installed by hand
        print(f"profile_record: {SPY} missing: {Path(sys.executable).parent}/pip install py-spy",
              file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    native = "--native" in sys.argv
    live = "--live-json" in sys.argv
    name = "live-json" if live else "record"
    for m in ("ipvlan", "veth"):
        subprocess.run(["modprobe", m])
    scratch = Path(tempfile.mkdtemp())
    with Lab(namespaces=dp.LAB_NAMESPACES) as lab:
        dp.build(lab)
        print("untraced", round(dp.udp_rate(lab)["pps"]), flush=True)
        ready = scratch / "ready"
        args = ["live", "--json"] if live else ["record", "-o", str(scratch / "r.ipvt")]
        rows = open(scratch / "rows.json", "w")   # (a pipe nobody reads would block live)
        proc = subprocess.Popen([sys.executable, "-m", "ipvtrace", *args,
                                 "--ready-file", str(ready)],
                                stdout=rows, stderr=subprocess.PIPE, text=True)
        dp.wait_file(ready, proc)
        spy = subprocess.Popen([str(SPY), "record", "--pid", str(proc.pid), "--duration",
                                str(dp.SECONDS + 1), "--rate", "50", "-f", "raw", "-o",
                                str(out / f"{name}.raw"),
                                *(["--native"] if native else ["--nonblocking"])],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        cpu0 = dp.cpu_s(proc.pid)
        res = dp.udp_rate(lab)
        print(name, round(res["pps"]), "consumer CPU s", round(dp.cpu_s(proc.pid) - cpu0, 2),
              flush=True)
        print(spy.communicate()[0][-600:], flush=True)
        proc.send_signal(signal.SIGINT)
        print(proc.communicate(timeout=600)[1][-300:], flush=True)
    rows.close()
    print("rows", (scratch / "rows.json").read_text().count("\n"))
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in (out / f"{name}.raw").read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        leaf[frames[-1]] += int(n)
        for frame in set(frames):
            inclusive[frame] += int(n)
    for frame, n in leaf.most_common(20):
        print(n, frame)
    print("inclusive:")
    for frame, n in inclusive.most_common(40):
        print(n, frame)
    return 0


if __name__ == "__main__":
    sys.exit(main())
