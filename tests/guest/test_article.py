"""The article's L2 and L3 scenarios on this real kernel, recorded with
`ipvtrace record` and checked through `ipvtrace replay --json`.

One recording for the whole module: the BPF program is compiled once per
kernel (about a minute under emulation).
"""
import os
from pathlib import Path

import pytest

from guest_helpers import probed_or_said

import article_checks as checks
from ipvtrace.lab import scenarios

OUT = Path(os.environ.get("IPVTRACE_OUT", "build/guest")).resolve()


@pytest.fixture(scope="module")
def recording() -> Path:
    assert os.geteuid() == 0, "the in-guest suite runs as root"
    assert Path("/sys/module/ipvlan").exists(), "ipvlan module missing: modprobe ipvlan"
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"article-{os.uname().release}.ipvt"
    ran = scenarios.record_scenarios(["article-l2", "article-l3"], path)
    reach = {s.label: s.reachable for sc in ran for s in sc.steps}
    (OUT / "reachability.txt").write_text("".join(f"{v}\t{k}\n" for k, v in reach.items()))
    return path


@pytest.fixture(scope="module")
def rows(recording):
    return checks.replay_json(recording)


@pytest.mark.parametrize("check", checks.ALL_CHECKS, ids=lambda c: c.__name__)
def test_article(rows, check, plan):
    probed_or_said(plan, check)(rows)


def test_no_namespace_left(recording):
    left = [p.name for p in Path("/run/netns").glob("ipvt-*")] if Path("/run/netns").exists() else []
    assert left == []


def test_recording_complete(recording):
    from ipvtrace.output import recording as rec

    r = rec.read(recording)
    assert r.trailer["ended_by"] == "SIGINT"
    assert r.trailer["events"] > 0
    assert r.header["kernel"] == os.uname().release
    names = {p["name"] for p in r.header["plan"]["attach"]}
    assert {"xmit", "xmit_ret", "rx", "rx_ret", "fwd", "qxmit", "local_out"} <= names
    modes = [d["ipvlan"]["mode"] for d in r.header["snapshot"]["devices"] if d.get("ipvlan")]
    assert sorted(modes) == ["l2", "l2", "l3", "l3"], modes
