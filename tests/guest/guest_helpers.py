"""Helpers of the in-guest suite."""
import pytest

from ipvtrace import probes


def skip_unless_probed(plan: probes.ProbePlan, check) -> None:
    """Skip *check* with the reason when a probe it needs is missing here."""
    missing = [m for m in plan.missing if m["name"] in getattr(check, "needs", ())]
    if missing:
        pytest.skip("; ".join(f"{m['symbol']} is not probe-able on {plan.kernel}: {m['why']}"
                              for m in missing))
