"""In-guest suite: where this kernel cannot show what a check needs, the
check asserts that ipvtrace says so, or is skipped with the reason
(guest_helpers.probed_or_said)."""
import os

import pytest

from ipvtrace.capture import probes


@pytest.fixture(scope="session")
def plan() -> probes.ProbePlan:
    return probes.build()


_LEFT_OUT = pytest.StashKey[list]()   # the tests cpus(n) deselected here, with why


def pytest_collection_modifyitems(config, items):
    """A test marked cpus(n) is deselected, not skipped, on a guest with
    fewer CPUs: the real-kernel tier fails on any skip, and boots a guest
    with two CPUs for those tests alone (tests/test_real_kernels.py). The
    summary names what was left out."""
    have = len(os.sched_getaffinity(0))
    out = [i for i in items if (m := i.get_closest_marker("cpus")) and m.args[0] > have]
    if out:
        config.hook.pytest_deselected(items=out)
        items[:] = [i for i in items if i not in out]
        config.stash[_LEFT_OUT] = [f"{i.nodeid} (needs {i.get_closest_marker('cpus').args[0]} "
                                   f"CPUs, this guest has {have})" for i in out]


def pytest_terminal_summary(terminalreporter, config):
    for line in config.stash.get(_LEFT_OUT, []):
        terminalreporter.write_line(f"deselected: {line}")
