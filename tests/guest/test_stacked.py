"""VLAN and bond parents, IPv6 on L3 and L3S ports, IP fragments
(tests/stacked_checks.py) on this real kernel: `record`'s rows checked
against what the topology dictates, and `stats` attached at the same time
counting the same branches (the kernel's half counts a send out of a
stacked parent once, as the classifier does)."""
import json
import os
from pathlib import Path

import pytest

import stacked_checks as checks
from guest_helpers import assert_stats_equal_record, probed_or_said
from ipvtrace import replay
from ipvtrace.lab import scenarios
from ipvtrace.lab.netlab import Lab

import article_checks

OUT = Path(os.environ.get("IPVTRACE_OUT", "build/guest")).resolve()


@pytest.fixture(scope="module")
def run():
    rel = os.uname().release
    rec = OUT / f"stacked-{rel}.ipvt"
    # as tests/guest/test_stats.py: stats attached first and stopped last, the
    # namespaces made and removed while both are attached, so both tools see
    # every packet of them (their own router solicitations too)
    with scenarios.traced(["stats", "--json", "--interval", "0.5"], OUT / "stacked-stats.ready",
                          settle=0.0) as st:
        with scenarios.recorder(rec):
            with Lab(namespaces=checks.ALL) as lab:
                traffic = checks.build(lab)
                for ns, dst, n, size in traffic:
                    assert lab.ping(ns, dst, n, size=size), f"ping {dst} from {ns} got no reply"
    readings = [json.loads(line) for line in st.stdout.splitlines() if line.startswith("{")]
    return article_checks.replay_json(rec), readings[-1], replay.run_replay(rec, sink=None)


@pytest.mark.parametrize("check", checks.ALL_CHECKS, ids=lambda c: c.__name__)
def test_stacked(run, check, plan):
    probed_or_said(plan, check)(run[0])


def test_stats_counts_what_record_saw(run):
    _, final, replayed = run
    assert final.get("ended_by") == "SIGINT"
    assert final["branches"].get("mcast.out_parent", 0) > 0, final["branches"]
    assert_stats_equal_record(final, replayed)
