"""`ipvtrace lab` as a user runs it, on this real kernel: every scenario of
the article, then the checks of tests/lab_checks.py on what it recorded."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lab_checks

OUT = Path(os.environ.get("IPVTRACE_OUT", "build/guest")).resolve()


@pytest.fixture(scope="module")
def lab_run():
    path = OUT / f"lab-{os.uname().release}.ipvt"
    r = subprocess.run([sys.executable, "-m", "ipvtrace", "lab", "-o", str(path)],
                       capture_output=True, text=True, timeout=1800)
    (OUT / "lab-output.txt").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "where the kernel disagrees with the article" in r.stdout
    return r.stdout, lab_checks.load(path)


@pytest.mark.parametrize("check", lab_checks.ALL_CHECKS, ids=lambda c: c.__name__)
def test_lab(lab_run, check):
    check(*lab_run[1])


def test_lab_output_names_the_disagreement(lab_run):
    out = lab_run[0]
    assert "1 where the kernel disagrees" in out
    assert "KERNEL DISAGREES" in out and "ipvlan port, mode l2" in out


def test_lab_leaves_nothing(lab_run):
    left = sorted(p.name for p in Path("/run/netns").glob("ipvt-*"))
    assert left == []


def test_lab_refuses_names_in_use():
    subprocess.run(["ip", "netns", "add", "ipvt-1-host"], check=True)
    try:
        r = subprocess.run([sys.executable, "-m", "ipvtrace", "lab", "l2-pods"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "ipvt-1-host already exist" in lines[0], r.stderr
        assert sorted(p.name for p in Path("/run/netns").glob("ipvt-*")) == ["ipvt-1-host"]
    finally:
        subprocess.run(["ip", "netns", "del", "ipvt-1-host"], check=True)


@pytest.mark.parametrize("delay", [0.3, 2.0, 6.0])
def test_lab_interrupted_leaves_nothing(delay):
    """Ctrl-C (SIGINT to the process group) while the lab is being built or
    the recorder is starting: every namespace goes, no process stays."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "ipvtrace", "lab", "l2-host"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not Path("/run/netns/ipvt-2c-node1ns").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.1)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert sorted(p.name for p in Path("/run/netns").glob("ipvt-*")) == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "ipvtrace record" not in ps and "ipvtrace lab" not in ps
