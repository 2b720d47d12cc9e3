"""In-guest suite: what this kernel cannot show is skipped with the reason
(guest_helpers.skip_unless_probed)."""
import pytest

from ipvtrace.capture import probes


@pytest.fixture(scope="session")
def plan() -> probes.ProbePlan:
    return probes.build()
