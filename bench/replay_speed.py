"""Benchmark, part 3 and 4 (any machine): replay speed on a recording of
170,000 packets (a million events, in context records), peak memory,
against merely reading the file's bytes; recording size per packet; and
replay speed on the benchmark's own recording from the real kernel (`--own FILE`: what `record`
kept under the flood). Prints one JSON object."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import synth  # noqa: E402
from ipvtrace.capture import ringbuf
from ipvtrace.model import layout
from ipvtrace.output import recording  # noqa: E402


def make(path: Path, packets: int) -> int:
    """A recording of *packets* pod-to-pod packets (one context record of 6
    events each, as tx.l2.local shows on the real kernels), written as
    `record` writes a flood: RING frames of up to ringbuf.RUN_MAX_RECORDS
    records, with clock ticks between them as live writes them."""
    lay = layout.current()
    w = recording.Writer(path, {"format": "ipvtrace-recording", "format_version": 1,
                                "start_ktime": 0, "start_wall": 0, "layout": lay.to_json(),
                                "drop_reasons": {}, "snapshot": synth.snapshot("l2")})
    pod_a, pod_b = synth.pod_a(), synth.pod_b()
    ts = 1_000
    run: list[bytes] = []
    for i in range(packets):
        skb = 0xffff000000000000 + (i % 512) * 256        # pointers get reused
        ctx = i + 1
        hdr = synth.ipv4_icmp("10.0.0.1", "10.0.0.2", seq=i & 0xFFFF)   # a ping flood: each frame its own
        # one record per packet, as the kernel sends a closed context (format 3)
        run.append(synth.context(
            synth.raw("xmit", ts, ctx, skb=skb, head=skb + 1, hdr=hdr, **pod_a),
            [synth.raw("lookup_ret", ts + 1, ctx, aux=0xA, aux2=0xB, **pod_b),
             synth.raw("rcv_frame", ts + 2, ctx, skb=skb, head=skb + 1, aux2=0xB, flags=1),
             synth.raw("fwd", ts + 3, ctx, skb=skb, head=skb + 1, **pod_b),
             synth.raw("fwd_ret", ts + 4, ctx, ret=0)],
            synth.raw("xmit_ret", ts + 5, ctx, ret=0)))
        ts += 10_000
        if len(run) == ringbuf.RUN_MAX_RECORDS or i % 2000 == 0 or i == packets - 1:
            w.ring(synth.ring_span(run), len(run))
            run = []
        if i % 2000 == 0:
            w.tick(ts)
    w.close({"ended_by": "synthetic", "lost_events": 0, "symbols": {}})
    return w.events


# run ipvtrace in the child and report that process's own peak (VmHWM): the
# rusage of children also counts the parent's memory copied at fork
_WRAP = ("import sys\nfrom ipvtrace import cli\nrc = cli.main(sys.argv[1:])\n"
         "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
         "print('peak_kib', hwm.split()[1], file=sys.stderr)\nsys.exit(rc)\n")


def _env() -> dict[str, str]:
    """Python as an installed ipvtrace runs: its modules' bytecode cached
    (pip compiles it at install; here into a directory of the bench's own,
    so nothing is written into the checkout), where a shell with
    PYTHONDONTWRITEBYTECODE compiled every module at every start (~30 ms)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(Path(os.environ.get("IPVTRACE_BENCH_DIR", "build/bench"))
                                     .resolve() / "pycache")
    return env


def timed(args: list[str]) -> tuple[float, int, int]:
    """Seconds, peak RSS (KiB) and lines written (with --json: rows, i.e. packets)."""
    # rows to a file, as `replay --json > rows.json` writes them: through a
    # pipe, this process read and decoded ~1.3 KB a row on the other CPU
    # while it was timed (2026-12-02: 90,577 rows in 3.4 s that way, in
    # 2.0 s to a file)
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", _WRAP, *args], check=True,
                           stdout=out, stderr=subprocess.PIPE, text=True, env=_env())
        dt = time.perf_counter() - t0
        out.seek(0)
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: out.read(1 << 20), b""))
    peak = int([l for l in r.stderr.splitlines() if l.startswith("peak_kib")][-1].split()[1])
    return dt, peak, lines


def own(path: Path) -> dict:
    """Replay speed on a recording the benchmark made on the real kernel."""
    rows_s, _, rows = timed(["replay", str(path), "--json"])
    stats_s, _, _ = timed(["replay", str(path), "--stats"])
    rec = recording.read(path)
    records = rec.trailer.get("events", 0)   # ring records written (frames)
    return {"file": path.name, "bytes": path.stat().st_size, "records": records, "packets": rows,
            "bytes_per_packet": path.stat().st_size / max(1, rows),
            "replay_json_packets_per_s": rows / rows_s, "replay_stats_packets_per_s": rows / stats_s}


def main() -> int:
    out = Path(os.environ.get("IPVTRACE_BENCH_DIR", "build/bench"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "replay-1m.ipvt"
    packets = int(os.environ.get("IPVT_BENCH_PACKETS", "170000"))
    records = make(path, packets)
    size = path.stat().st_size
    t0 = time.perf_counter()
    path.read_bytes()
    read_s = time.perf_counter() - t0
    # the start: Python, its imports and a small recording (the first run
    # also fills the bytecode cache)
    small = str(Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "lab-6.12.ipvt")
    timed(["replay", small, "--json"])
    start_s = min(timed(["replay", small, "--json"])[0] for _ in range(3))
    py = ["replay", str(path)]
    json_s, json_rss, _ = timed(py + ["--json"])
    stats_s, stats_rss, _ = timed(py + ["--stats"])
    mine = Path(sys.argv[sys.argv.index("--own") + 1]) if "--own" in sys.argv else None
    print(json.dumps({
        "own": own(mine) if mine is not None and mine.exists() else None,
        "records": records, "packets": packets, "bytes": size,
        "bytes_per_record": size / records, "bytes_per_packet": size / packets,
        "read_bytes_s": read_s, "start_s": start_s,
        "replay_json_s": json_s, "replay_json_records_per_s": records / json_s,
        "replay_json_packets_per_s": packets / json_s, "replay_json_peak_rss_kib": json_rss,
        "replay_stats_s": stats_s, "replay_stats_records_per_s": records / stats_s,
        "replay_stats_packets_per_s": packets / stats_s, "replay_stats_peak_rss_kib": stats_rss,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
