"""scenarios.interrupt, how the lab and bench stop a tool whose run failed:
SIGINT first, so the tool detaches its probes and finishes its file as it
does for a user's Ctrl-C; a kill only when it does not end in time."""
import subprocess
import sys
import time
from pathlib import Path

from ipvtrace.lab import scenarios

# a stand-in tool: on SIGINT it finishes its file (after a short while), as
# `ipvtrace record` does; told to, it ignores SIGINT
TOOL = r"""
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
# its own handler, as ipvtrace installs one (lifecycle.py): a job a shell
# puts in the background without job control (CI's nohup ... &) inherits
# SIGINT ignored, and Python then leaves it ignored
signal.signal(signal.SIGINT, signal.SIG_IGN if sys.argv[2] == "ignore"
              else signal.default_int_handler)
try:   # (from the first write on: start() sends nothing before it)
    out.write_text("started")
    time.sleep(600)
except KeyboardInterrupt:
    time.sleep(0.3)
    out.write_text("finished")
"""


def start(out: Path, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", TOOL, str(out), mode],
                            stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 60
    while not (out.exists() and out.read_text() == "started"):
        assert time.monotonic() < end and proc.poll() is None, "the stand-in tool did not start"
        time.sleep(0.05)
    return proc


def test_a_running_tool_gets_sigint_and_finishes_its_file(tmp_path):
    out = tmp_path / "file"
    proc = start(out, "stop")
    scenarios.interrupt(proc, 60)
    assert proc.returncode == 0
    assert out.read_text() == "finished"


def test_a_tool_that_ignores_sigint_is_killed_after_the_timeout(tmp_path):
    out = tmp_path / "file"
    proc = start(out, "ignore")
    t0 = time.monotonic()
    scenarios.interrupt(proc, 1.0)
    assert proc.returncode == -9
    assert 1.0 <= time.monotonic() - t0 < 30
    assert out.read_text() == "started"


def test_a_tool_that_has_ended_is_left_alone(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    scenarios.interrupt(proc, 1.0)
    assert proc.returncode == 3
