"""The real-kernel tier: Debian's 6.1 and 6.12 kernels and their PREEMPT_RT builds boot in
QEMU (KVM when it works, software emulation otherwise), in parallel, and each
runs the in-guest suite (tests/guest/run) as root on its own ipvlan driver.
On PREEMPT_RT softirqs run in threads and a task can be preempted inside a
probed function: the same suite shows the per-task context stack holds.
Those guests have one vCPU each; the tests that need a second (marked
cpus(2), deselected in them) run afterwards in a 6.12 guest with two.

Nothing is skipped here: a guest that cannot boot, a probe that cannot attach
or an in-guest test that is skipped is a failure of this tier.
"""
import os
import shutil
from pathlib import Path
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import pytest

from ipvtrace.lab.vm import REPO, guest_script, qemu

# Debian 12's kernels always; IPVTRACE_EXTRA_KERNELS adds releases installed
# beside them (scripts/extra-kernel installs sid's newest), each checked like
# these and against the 6.12 fixture
EXTRA = os.environ.get("IPVTRACE_EXTRA_KERNELS", "").split()
KERNELS = ["6.1", "6.12", "6.1-rt", "6.12-rt", *EXTRA]
# PREEMPT_RT runs the datapath part of the suite (every topology, the article,
# stats == record, loss, kill and churn): where per-CPU state kept between a
# probe and its return could be overwritten by a preempting task. The lab and
# lifecycle modules test user space alone, the same on both 6.1 builds.
RT_TESTS = ("tests/guest/test_prereq.py tests/guest/test_article.py "
            "tests/guest/test_topologies.py tests/guest/test_stacked.py "
            "tests/guest/test_stats.py tests/guest/test_survival.py")
GUEST_TESTS = {"6.1-rt": RT_TESTS, "6.12-rt": RT_TESTS}
# in-guest tests that need two CPUs (marked cpus(2); the one-vCPU guests above
# deselect them): a guest of Debian 12's 6.12 with two, alone, after the others
SMP_KERNEL, SMP_TESTS = "6.12", "tests/guest/test_rps.py"
WORK = REPO / "build" / "vm-test"

pytestmark = pytest.mark.vm


def test_kernel_aliases_pick_the_flavour():
    """'6.1' is the generic build even with the RT one installed beside it (a
    glob 6.1.*-amd64 matches both, and sorts -rt- last); a full release is
    taken as it is."""
    for version in ("6.1", "6.12"):
        generic, rt = qemu.resolve_kernel(version), qemu.resolve_kernel(f"{version}-rt")
        assert "-rt-" not in generic and generic.startswith(version + ".")
        assert "-rt-" in rt and rt.startswith(version + ".")
        assert qemu.resolve_kernel(rt) == rt and qemu.resolve_kernel(generic) == generic
    with pytest.raises(qemu.VMError):
        qemu.resolve_kernel("6.1.0-0-nonexistent-amd64")


@pytest.fixture(scope="module")
def guests():
    def one(kernel, cpus):
        work = WORK / kernel
        shutil.rmtree(work, ignore_errors=True)   # no recording from an earlier run
        try:
            only = GUEST_TESTS.get(kernel) or (RT_TESTS if "-rt-" in kernel else None)
            cmd = f"IPVTRACE_GUEST_TESTS='{only}' sh tests/guest/run" if only else "sh tests/guest/run"
            return kernel, qemu.run(kernel, guest_script(cmd), work, cpus=cpus, timeout=3000)
        except qemu.VMError as exc:
            return kernel, exc

    # two emulated guests share this 2-core machine well; a third at the same
    # time made all three slower than running it after them. One vCPU each:
    # TCG with two has oopsed at boot on 6.1-rt (int3 in text patching)
    out = {}
    with ThreadPoolExecutor(2) as ex:
        out.update(ex.map(lambda k: one(k, 1), ["6.1", "6.12"]))
    with ThreadPoolExecutor(2) as ex:
        out.update(ex.map(lambda k: one(k, 1), ["6.1-rt", "6.12-rt"]))
    with ThreadPoolExecutor(2) as ex:
        out.update(ex.map(lambda k: one(k, 1), EXTRA))
    return out


@pytest.fixture(scope="module")
def smp_guest(guests):
    """SMP_TESTS in a two-vCPU guest, once the one-vCPU guests are done (two
    vCPUs each for a pair of guests on this 2-core machine slowed all)."""
    work = WORK / "smp"
    shutil.rmtree(work, ignore_errors=True)
    try:
        return qemu.run(SMP_KERNEL, guest_script(f"IPVTRACE_GUEST_TESTS='{SMP_TESTS}' sh tests/guest/run"),
                        work, cpus=2, timeout=1800)
    except qemu.VMError as exc:
        return exc


def failures(junit: Path, cap: int = 4000) -> str:
    """What each failed in-guest test said (its assertion and the end of its
    traceback), from the guest's junit.xml: the tail of the guest's log holds
    only the durations table, and CI keeps nothing else of the run."""
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return ""
    out = []
    for case in root.iter("testcase"):
        for bad in (*case.findall("failure"), *case.findall("error")):
            text = (bad.text or "").strip()
            out.append(f"{case.get('classname')}::{case.get('name')}: {bad.get('message', '')}\n"
                       f"{text[-cap:]}")
    return "\n\n".join(out)


@pytest.mark.parametrize("kernel", KERNELS)
def test_in_guest_suite(guests, kernel):
    r = guests[kernel]
    assert not isinstance(r, Exception), str(r)
    tail = "\n".join(r.log.splitlines()[-40:])
    assert r.kernel == qemu.resolve_kernel(kernel), r.kernel
    assert ("-rt-" in r.kernel) == ("-rt" in kernel), r.kernel
    assert r.rc == 0, f"{r.kernel}: in-guest suite failed:\n{failures(WORK / kernel / 'junit.xml') or tail}"
    suite = ET.parse(WORK / kernel / "junit.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["tests"] >= 10 and counts["failures"] == counts["errors"] == 0, counts
    assert counts["skipped"] == 0, f"skipped in the guest: {counts}"
    print(f"{r.kernel}: {counts['tests']} in-guest tests passed in {r.seconds:.0f} s ({r.accel})")


def test_two_cpu_guest_suite(smp_guest):
    """The tests that need a second CPU (RPS: the parent's RX on another CPU
    than the sender's TX) ran in a guest that has one, and passed."""
    r = smp_guest
    assert not isinstance(r, Exception), str(r)
    assert "guest: " + r.kernel + ", 2 cpu" in r.log, r.log[-2000:]
    assert r.rc == 0, f"{r.kernel}: two-CPU suite failed:\n{failures(WORK / 'smp' / 'junit.xml') or r.log[-3000:]}"
    suite = ET.parse(WORK / "smp" / "junit.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    ran = {case.get("name") for case in suite.iter("testcase")}
    assert {"test_a_to_parent_frame_whose_rx_runs_on_another_cpu_is_one_row",
            "test_a_busy_rx_cpu_loses_no_rx_hit_and_flags_each_row_it_could_not_see_whole"} <= ran, ran
    counts = {k: int(suite.get(k, 0)) for k in ("failures", "errors", "skipped")}
    assert counts == {"failures": 0, "errors": 0, "skipped": 0}, counts
    print(f"{r.kernel}: {len(ran)} two-CPU in-guest tests passed in {r.seconds:.0f} s ({r.accel})")


@pytest.mark.parametrize("kernel", KERNELS)
def test_fresh_recording_agrees_with_kept_fixture(guests, kernel):
    """The kept fixture still shows what this kernel does: same branches for
    the same kinds of packet."""
    import article_checks as checks

    fresh = sorted((WORK / kernel).glob("article-*.ipvt"))
    assert fresh, "the guest wrote no recording"
    # an RT build must take the branches its generic build took
    # and a newer kernel those of the newest kept one
    kept = REPO / "tests" / "fixtures" / (f"article-{kernel.removesuffix('-rt')}.ipvt"
                                          if kernel in ("6.1", "6.12", "6.1-rt", "6.12-rt")
                                          else "article-6.12.ipvt")

    def kinds(path):
        return {(r["proto"], r["kind"], r["src"], r["dst"], r["branch"], r["delivery"])
                for r in checks.replay_json(path)
                if r["proto"] == "icmp" or (r["proto"] == "arp" and r["eth_dst"] == "ff:ff:ff:ff:ff:ff")}

    assert kinds(fresh[-1]) == kinds(kept)
