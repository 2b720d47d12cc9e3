"""Topologies beyond the article (flags, L3S, IPv6, L3 drops) on this real
kernel, in one recording; the checks are in tests/topology_checks.py."""
import os
from pathlib import Path

import pytest

from guest_helpers import skip_unless_probed

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
    skip_unless_probed(plan, check)
    check(rows)
