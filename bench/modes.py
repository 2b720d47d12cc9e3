"""stats, record and live --json against untraced on the ipvlan path (and
stats with its probes attached but disarmed: the floor they set), each
traced run between two untraced ones, in ROUNDS rounds: how the modes
compare in one guest. Meant for `python -m ipvtrace.lab.vm --icount 3`,
where rates count guest instructions and the host's load does not move
them (bench/run's real-time figures swing by 20%). Runs as root on a kernel
with ipvlan:

  .venv/bin/python -m ipvtrace.lab.vm --kernel 6.12 --cpus 2 --icount 3 \\
      --work build/bench/modes -- python bench/modes.py

Prints one JSON object: every run, and per mode the median of its ratios,
its consumer's CPU seconds during the flood, and (live --json) the rows it
printed against the packets that passed."""
from __future__ import annotations

import json
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import datapath as dp  # noqa: E402
from ipvtrace.lab.netlab import Lab  # noqa: E402

ROUNDS = int(os.environ.get("IPVT_MODES_ROUNDS", "2"))


def main() -> int:
    for m in ("ipvlan", "veth"):
        subprocess.run(["modprobe", m])
    out_dir = Path(os.environ.get("IPVTRACE_OUT", "/tmp")).resolve()
    ready = out_dir / "modes.ready"
    py = [sys.executable, "-m", "ipvtrace"]
    # the recording on the guest's own tmpfs, not the 9p share (datapath.main)
    scratch = Path(tempfile.mkdtemp(prefix="ipvt-modes-"))
    try:
        return _run(out_dir, ready, py, scratch / "modes.ipvt")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(out_dir: Path, ready: Path, py: list[str], rec: Path) -> int:
    stats = py + ["stats", "--json", "--interval", "2", "--ready-file", str(ready)]
    modes = {
        "stats": lambda: stats,
        # the same stats, then every probe attached and running, none
        # gathering evidence (datapath.disarm)
        "stats disarmed": lambda: stats,
        "record": lambda: py + ["record", "-o", str(rec),
                                "--ready-file", str(ready)],
        "live --json": lambda: py + ["live", "--json", "--ready-file", str(ready)],
    }
    runs: list[dict] = []
    with Lab(namespaces=dp.LAB_NAMESPACES) as lab:
        dp.build(lab)
        runs.append({"run": "untraced", "pps": dp.udp_rate(lab)["pps"]})
        for _ in range(ROUNDS):
            for name, cmd in modes.items():
                out = rec if name == "record" else None
                res = dp.traced(lab, cmd(), ready, out, disarmed=name == "stats disarmed")
                runs.append({"run": name, **{k: res.get(k) for k in (
                    "pps", "tool_cpu_s", "rows", "events", "lost_events", "stderr_tail")}})
                runs.append({"run": "untraced", "pps": dp.udp_rate(lab)["pps"]})
    ratios: dict[str, list[float]] = {}
    for i, r in enumerate(runs):
        if r["run"] != "untraced":
            base = (runs[i - 1]["pps"] + runs[i + 1]["pps"]) / 2
            ratios.setdefault(r["run"], []).append(round(r["pps"] / base, 3))
    print(json.dumps({"kernel": os.uname().release, "runs": runs, "ratios": ratios,
                      "median": {k: statistics.median(v) for k, v in ratios.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
