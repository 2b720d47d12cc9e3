"""`ipvtrace stats` on real kernels, replayed anywhere: the kernel's counters
(struct ipvt_sig -> count, read at the end of tests/guest/test_stats.py on
Debian 6.1 and 6.12) are named again by today's classifier and compared with
the replay of `record`'s file of the same traffic, branch by branch."""
import json
from pathlib import Path

import pytest

from ipvtrace import replay
from ipvtrace.model import classify, counting, layout
from ipvtrace.model.topology import Topology
from ipvtrace.output import recording

FIX = Path(__file__).parent / "fixtures"
KERNELS = ["6.1", "6.12"]


def named(kernel: str) -> tuple[dict, dict]:
    reading = json.loads((FIX / f"stats-{kernel}.json").read_text())
    rec = recording.read(FIX / f"stats-{kernel}.ipvt")
    ctx = classify.Context(topo=Topology.from_snapshots(rec.snapshots()),
                           drop_reasons={int(k): v for k, v in rec.header["drop_reasons"].items()},
                           flags=layout.current().flags)
    sigs: dict = {}
    for key, n in reading["signatures"].items():
        s = counting.decode(bytes.fromhex(key))
        sigs[s] = sigs.get(s, 0) + n
    branches: dict[str, int] = {}
    for o, n in counting.Tally(ctx).rows(sigs).items():
        branches[o.branch] = branches.get(o.branch, 0) + n
    return reading, branches


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_counters_name_the_same_branches_as_the_replay(kernel):
    reading, branches = named(kernel)
    replayed = replay.run_replay(FIX / f"stats-{kernel}.ipvt", sink=None)
    assert reading["kprobe_misses_total"] == 0 and replayed["lost_events"] == 0
    assert branches == replayed["branches"]
    assert sum(n for b, n in branches.items() if not b.startswith("mcast.")) == replayed["packets"]


@pytest.mark.parametrize("kernel", KERNELS)
def test_naming_again_gives_what_stats_printed(kernel):
    """The same classifier named them on the kernel: a change of a rule that
    alters a stats row shows up here (then refresh the fixtures knowingly)."""
    reading, branches = named(kernel)
    assert branches == reading["branches"]
