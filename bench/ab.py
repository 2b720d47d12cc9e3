"""Interleaved A/B (runs as root on a kernel with ipvlan, e.g. in the VM):
`ipvtrace ARGS` from two checkouts of this repository against untraced, on
the benchmark's two paths (pod to pod through ipvlan, and a veth pair that
never touches it), in ROUNDS rounds whose A/B order alternates. This
machine's packet rate drifts by 20% between runs minutes apart: a change
that costs a few microseconds a packet shows only against untraced runs
beside it, so each traced run is divided by the mean of the untraced runs
just before and after it.

    python bench/ab.py /path/to/checkout-a /path/to/checkout-b [stats --json]

Prints one JSON object: each run's packets/s, and per checkout the median
of its ratios per path."""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import datapath  # noqa: E402
from ipvtrace.lab.netlab import Lab  # noqa: E402

ROUNDS = int(os.environ.get("IPVT_AB_ROUNDS", "3"))
PATHS = {"ipvlan": datapath.IPVLAN, "veth": datapath.VETH}


def untraced(lab: Lab) -> dict[str, float]:
    return {name: datapath.udp_rate(lab, path=p)["pps"] for name, p in PATHS.items()}


def traced(lab: Lab, checkout: Path, args: list[str], ready: Path) -> dict[str, float]:
    """Both paths' packet rates while `ipvtrace ARGS` from *checkout* is attached."""
    ready.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(checkout))
    # stdout to a file, as bench/run sends it (`live --json` pays for its writes)
    out_f = tempfile.TemporaryFile("w")
    proc = subprocess.Popen([sys.executable, "-m", "ipvtrace", *args, "--ready-file", str(ready)],
                            cwd=checkout, env=env, stdout=out_f,
                            stderr=subprocess.PIPE, text=True)
    try:
        datapath.wait_file(ready, proc)
        return {name: datapath.udp_rate(lab, path=p)["pps"] for name, p in PATHS.items()}
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=900)
        out_f.close()
        if proc.returncode not in (0, 130):
            raise RuntimeError(f"{checkout}: exit {proc.returncode}: {err[-1000:]}")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    a, b = Path(argv[0]).resolve(), Path(argv[1]).resolve()
    args = argv[2:] or ["stats", "--json", "--interval", "2"]
    ready = Path(os.environ.get("IPVTRACE_OUT", "/tmp")).resolve() / "ab.ready"
    runs: list[dict] = []
    with Lab(namespaces=datapath.LAB_NAMESPACES) as lab:
        datapath.build(lab)
        runs.append({"run": "untraced", **untraced(lab)})
        for r in range(ROUNDS):
            for name, checkout in ((("a", a), ("b", b)) if r % 2 == 0 else (("b", b), ("a", a))):
                runs.append({"run": name, **traced(lab, checkout, args, ready)})
                runs.append({"run": "untraced", **untraced(lab)})
    ratios: dict[str, dict[str, list[float]]] = {"a": {}, "b": {}}
    for i, run in enumerate(runs):
        if run["run"] == "untraced":
            continue
        for path in PATHS:
            base = (runs[i - 1][path] + runs[i + 1][path]) / 2
            ratios[run["run"]].setdefault(path, []).append(run[path] / base)
    print(json.dumps({
        "kernel": os.uname().release, "args": args, "a": str(a), "b": str(b), "runs": runs,
        "median_of_untraced": {k: {p: round(statistics.median(v), 3) for p, v in per.items()}
                               for k, per in ratios.items()},
        "ratios": {k: {p: [round(x, 3) for x in v] for p, v in per.items()}
                   for k, per in ratios.items()},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
