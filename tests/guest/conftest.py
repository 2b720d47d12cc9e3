"""In-guest suite: where this kernel cannot show what a check needs, the
check asserts that ipvtrace says so, or is skipped with the reason
(guest_helpers.probed_or_said)."""
import pytest

from ipvtrace.capture import probes


@pytest.fixture(scope="session")
def plan() -> probes.ProbePlan:
    return probes.build()
