"""Helpers of the in-guest suite."""
import subprocess
import time
from pathlib import Path

import pytest

from ipvtrace.capture import probes
from ipvtrace.lab.netlab import Lab


def skip_unless_probed(plan: probes.ProbePlan, check) -> None:
    """Skip *check* with the reason when a probe it needs is missing here."""
    missing = [m for m in plan.missing if m["name"] in getattr(check, "needs", ())]
    if missing:
        pytest.skip("; ".join(f"{m['symbol']} is not probe-able on {plan.kernel}: {m['why']}"
                              for m in missing))


def two_pods(ns: list[str], subnet: str):
    """A parent (veth ens10 in ns[0]) and two L2 pods ns[1], ns[2] holding
    SUBNET.1 and SUBNET.2 (/24): a context manager yielding the Lab."""
    lab = Lab(namespaces=ns)
    with lab:
        lab.veth(ns[0], "ens10", ns[0], "peer0")
        for pod, ip in ((ns[1], f"{subnet}.1/24"), (ns[2], f"{subnet}.2/24")):
            lab.ipvlan(ns[0], "ens10", "ipvl0", "l2", into=pod, rename="eth0")
            lab.addr(pod, "eth0", ip)
        yield lab


def wait_ready(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Until ipvtrace's --ready-file exists (the probes are attached)."""
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        assert time.monotonic() < end, f"not ready after {timeout:.0f} s"
        time.sleep(0.2)
