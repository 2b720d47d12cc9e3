"""Every catalogue branch is shown by a real kernel: each one appears, for
each of Debian's 6.1 and 6.12, in the recordings the in-guest suite made
there (kept under tests/fixtures/), except those docs/branches.md lists with
the reason no kernel run can show them."""
from pathlib import Path

import pytest

import article_checks
from ipvtrace.model import catalogue

FIXTURES = Path(__file__).parent / "fixtures"


def observed(kernel: str) -> tuple[set[str], set[str]]:
    branches, deliveries = set(), set()
    for name in ("article", "topologies", "lab"):
        for row in article_checks.replay_json(FIXTURES / f"{name}-{kernel}.ipvt"):
            branches.add(row["branch"])
            deliveries.add(row["delivery"])
            for m in row.get("mcast", []):
                branches.add(m["branch"])
                deliveries.add(m["delivery"])
    return branches, deliveries


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_every_branch_observed(kernel):
    cat = catalogue.load()
    want = {b.id for b in cat.branches.values() if not b.not_observed and b.id != "unknown"}
    got, deliveries = observed(kernel)
    assert want - got == set(), f"not shown on {kernel}: {sorted(want - got)}"
    unexplained = {b for b in got - want if b != "unknown"}
    assert unexplained == set(), f"shown although docs say it cannot be: {unexplained}"
    assert {"delivered", "sent", "queued", "dropped", "forward_failed"} <= deliveries


def test_docs_page_is_the_catalogue():
    page = (Path(__file__).parent.parent / "docs" / "branches.md").read_text()
    assert page == catalogue.markdown(), "run: ipvtrace branches --markdown > docs/branches.md"
