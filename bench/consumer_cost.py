"""What `record`'s consumer spends on a record of a flood, in instructions
(callgrind: stable where wall time on these machines is not): ringbuf.walk
over a mapped ring of 2,000 pod-to-pod context records whose key is known,
handing runs to recording.Writer (its compression included). Runs its inner part under
valgrind with 0 and --laps laps and prints the difference per record, by
where it goes (compression: zstd before container 4, LZ4 and
CRC-32 since; memcpy; the rest). Any machine with valgrind.

    python bench/consumer_cost.py [--laps 10]

ipvtrace is imported from the current directory: run it in another
checkout (git worktree) to compare two versions."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

RECORDS = 2000
HERE = Path(__file__).resolve().parent


def inner(laps: int) -> None:
    import mmap
    import struct

    sys.path.insert(0, os.getcwd())
    sys.path.insert(1, str(HERE.parent / "tests"))
    from ipvtrace.capture import ringbuf
    from ipvtrace.model import layout
    from ipvtrace.output import recording

    import synth
    from test_count_by_shape import local_tx

    page, size = 4096, 1 << 21
    recs = [local_tx(1 + i, 10**12 + i * 10_000, 0x10000 + (i % 7) * 0x100, seq=i)
            for i in range(RECORDS)]
    span = b"".join(struct.pack("<II", len(r), 7) + r + bytes(-len(r) % 8) for r in recs)
    ring = mmap.mmap(-1, page + 2 * size)
    ring[page:page + len(span)] = span
    # the window live.py keys records by: kind, netns, ifindex, probe
    win = struct.Struct("<36xI24xIi10xH")
    keys = {win.unpack_from(ring, page + 8)}
    at = (*range(36, 40), *range(64, 72), 80, 81)
    try:
        known = ringbuf.Known(win.unpack_from, win.size, keys, at)
    except TypeError:   # a version before the stretches
        known = ringbuf.Known(win.unpack_from, win.size, keys)
    w = recording.Writer(Path(tempfile.mkdtemp()) / "x.ipvt", {
        "format": "ipvtrace-recording", "format_version": 3, "start_ktime": 0,
        "layout": layout.current().to_json(), "drop_reasons": {}, "snapshot": synth.snapshot()})
    views = "view" in ringbuf.walk.__code__.co_varnames
    for _ in range(laps):
        args = (ring, page, size - 1, 0, len(span), lambda *a: False, w.ring,
                lambda p: None, lambda p: None, known)
        if views:
            with memoryview(ring) as view:
                ringbuf.walk(*args, view)
        else:
            ringbuf.walk(*args)
    w.close({})


def instructions(laps: int) -> dict[str, int]:
    """Instructions by function name of one run of inner(laps)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "cg.out"
        # one hash seed: dict and set layouts otherwise move the count by ~10% from run to run
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, __file__, "--inner", str(laps)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=dict(os.environ, PYTHONHASHSEED="0"))
        text = subprocess.run(["callgrind_annotate", "--threshold=100", str(out)],
                              check=True, capture_output=True, text=True).stdout
    got: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)", line)
        if m and "PROGRAM TOTALS" not in line:
            got[m.group(2)] = got.get(m.group(2), 0) + int(m.group(1).replace(",", ""))
    return got


def main() -> int:
    if sys.argv[1:2] == ["--inner"]:
        inner(int(sys.argv[2]))
        return 0
    laps = int(sys.argv[sys.argv.index("--laps") + 1]) if "--laps" in sys.argv else 10
    base, run = instructions(0), instructions(laps)
    diff = {k: run.get(k, 0) - base.get(k, 0) for k in set(base) | set(run)}
    n = laps * RECORDS

    def part(pred) -> float:
        return round(sum(v for k, v in diff.items() if pred(k)) / n)

    print(json.dumps({
        "records": n,
        "instructions_per_record": round(sum(diff.values()) / n),
        "compression": part(lambda k: any(w in k.lower() for w in ("zstd", "lz4", "crc32"))),
        "memcpy": part(lambda k: "memcpy" in k or "memmove" in k),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
