"""Topologies beyond the article (flags, L3S, IPv6, L3 drops) on this real
kernel, in one recording; the checks are in tests/topology_checks.py."""
import os
from pathlib import Path

import pytest

from guest_helpers import probed_or_said

import article_checks
import topology_checks as checks
from ipvtrace.lab import scenarios
from ipvtrace.lab.netlab import Lab

OUT = Path(os.environ.get("IPVTRACE_OUT", "build/guest")).resolve()


@pytest.fixture(scope="module")
def rows():
    path = OUT / f"topologies-{os.uname().release}.ipvt"
    with Lab(namespaces=checks.ALL) as lab:
        traffic = checks.build(lab)
        with scenarios.recorder(path):
            for ns, dst, n, *size in traffic:
                lab.ping(ns, dst, n, size=size[0] if size else None)
            checks.send_non_ip(lab)
    return article_checks.replay_json(path)


@pytest.mark.parametrize("check", checks.ALL_CHECKS, ids=lambda c: c.__name__)
def test_topology(rows, check, plan):
    probed_or_said(plan, check)(rows)


def test_record_wrote_runs_of_the_ring_and_no_padding(rows):
    """`record` copied runs of the ring to the file (RING frames): every
    record in them is a multiple of 8 bytes, so the ring added no padding,
    which would hold bytes of records the ring held before."""
    from ipvtrace.output import recording

    rec = recording.read(OUT / f"topologies-{os.uname().release}.ipvt")
    lengths = article_checks.ring_record_lengths(rec)
    assert lengths, "no RING frame: record took the per-record path"
    assert all(n % 8 == 0 for n in lengths), sorted(set(n % 8 for n in lengths))

